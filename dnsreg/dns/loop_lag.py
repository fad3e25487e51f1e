"""How late the event loop runs its callbacks: the lag every query waits behind.

A timer is due every ``interval`` seconds; how much later than due it runs is
the time some callback held the loop (a slow answer, a big HTTP body, a
store write). Exported as ``dnsreg_event_loop_lag_seconds`` (a histogram)
and the worst lag seen (``dnsreg_event_loop_lag_max_seconds``). Twenty
timer callbacks a second cost nothing the DNS path could notice.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LoopLag:
    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.samples = 0
        self.worst = 0.0
        self.last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.interval
        self._timer = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        self.observe(max(0.0, now - self._due))
        self._due = now + self.interval
        self._timer = loop.call_at(self._due, self._tick)

    def observe(self, lag: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.total += lag
        self.samples += 1
        self.last = lag
        self.worst = max(self.worst, lag)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LoopLagCollector(Collector):
    def __init__(self, lag: LoopLag) -> None:
        self.lag = lag

    def collect(self) -> Iterator[HistogramMetricFamily | GaugeMetricFamily]:
        lag = self.lag
        cumulative, buckets = 0, []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), lag.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            "dnsreg_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 50 ms",
            buckets=buckets,
            sum_value=lag.total,
        )
        yield GaugeMetricFamily(
            "dnsreg_event_loop_lag_max_seconds",
            "The longest event loop lag seen since the start",
            value=lag.worst,
        )
