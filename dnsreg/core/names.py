"""DNS names: label rules for service names, ids and tags, and name arithmetic.

Names travel through the core as tuples of lower-case ``str`` labels without
the root label, e.g. ``("web", "service", "local")``. DNS compares names
case-insensitively (RFC 4343 §3), so folding once at the edge is enough.
"""

from __future__ import annotations

import re

from dnsreg.core.errors import InvalidInput

Name = tuple[str, ...]

# RFC 1123 §2.1 host-name labels: letters, digits, hyphen; no hyphen at either end.
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

MAX_NAME_OCTETS = 255  # RFC 1035 §2.3.4, counted in wire form
MAX_LABEL_OCTETS = 63


def check_label(value: str, *, field: str) -> str:
    """Validate a service name, instance id or tag, and return it in lower case."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{field}: must be a non-empty DNS label", field=field)
    folded = value.lower()
    if len(folded) > MAX_LABEL_OCTETS:
        raise InvalidInput(
            f"{field}: {value!r} is longer than {MAX_LABEL_OCTETS} characters", field=field
        )
    if not _LABEL.match(folded):
        raise InvalidInput(
            f"{field}: {value!r} is not a DNS label (letters, digits and '-', "
            "not starting or ending with '-')",
            field=field,
        )
    return folded


def parse_name(text: str) -> Name:
    """Parse a dotted name (trailing dot optional) into folded labels."""
    stripped = text.strip().rstrip(".")
    if not stripped:
        return ()
    labels = tuple(label.lower() for label in stripped.split("."))
    if any(not label for label in labels):
        raise InvalidInput(f"{text!r} has an empty label")
    if any(len(label) > MAX_LABEL_OCTETS for label in labels):
        raise InvalidInput(f"{text!r} has a label longer than {MAX_LABEL_OCTETS} octets")
    if wire_length(labels) > MAX_NAME_OCTETS:
        raise InvalidInput(f"{text!r} is longer than {MAX_NAME_OCTETS} octets")
    return labels


def wire_length(name: Name) -> int:
    """Octets the name takes on the wire, root label included."""
    return sum(len(label.encode("latin-1")) + 1 for label in name) + 1


def to_text(name: Name) -> str:
    """Absolute presentation form, with the trailing dot."""
    return ".".join(name) + "."


def is_subdomain(name: Name, origin: Name) -> bool:
    """True when ``name`` is ``origin`` or lies below it."""
    return len(name) >= len(origin) and name[len(name) - len(origin) :] == origin


def relative(name: Name, origin: Name) -> Name:
    """The labels of ``name`` left of ``origin`` (``name`` must be below it)."""
    return name[: len(name) - len(origin)]
