"""A token bucket for log lines: refusals are logged, but a flood cannot flood the log.

Pure: the caller passes ``now``; tests drive it with a fake clock.
"""

from __future__ import annotations


class LogBudget:
    """Allow ``burst`` lines at once, refilled at ``burst`` per ``per`` seconds.

    :meth:`allow` says whether to log now, and how many lines were held back since the
    last one that was logged, so that line can say so.
    """

    def __init__(self, burst: int = 10, per: float = 60.0) -> None:
        if burst < 1 or per <= 0:
            raise ValueError("burst must be at least 1 and per above 0")
        self.burst = burst
        self.rate = burst / per
        self._tokens = float(burst)
        self._last: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> tuple[bool, int]:
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            held, self.suppressed = self.suppressed, 0
            return True, held
        self.suppressed += 1
        return False, 0
