"""Durations as users write them: ``30``, ``1.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``."""

from __future__ import annotations

import re

from dnsreg.core.errors import InvalidInput

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: float | int | str, *, field: str = "duration") -> float:
    """Return ``value`` in seconds; a bare number means seconds."""
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: expected a duration, got a boolean", field=field)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _PATTERN.match(value)
        if match is None:
            raise InvalidInput(
                f"{field}: {value!r} is not a duration (use seconds or '500ms', '30s', '5m', '1h')",
                field=field,
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise InvalidInput(f"{field}: must be a finite, non-negative duration", field=field)
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds the way ``parse_duration`` reads them back."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"
