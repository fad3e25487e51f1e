"""Keeping the cyclic garbage collector's pauses off the event loop.

A full (generation 2) collection walks every object the process holds: with
100 000 instances registered that is some 300 000 objects and 30-60 ms during
which no DNS query is answered. The registry's objects live as long as the
process (instances are immutable values; refcounting frees the replaced ones,
no cycle needs the collector), so they are moved out of the collector's reach
with :func:`gc.freeze` after the start-up load, after (and during) a burst of
changes (at most once per ``check_every``; its tail once the registry is quiet),
when what queries keep grew by a burst's worth, and whenever a full collection
still took longer than ``refreeze_over`` (whatever piled up since the last
freeze) while the registry changed, or twice in a row. A frozen full collection walks only what
is young: microseconds.

The price: a cycle frozen while alive is never collected once it is garbage.
Registry objects are not cycles; what else is alive at a freeze (a request in
flight) is small, and the young generations are collected just before. A slow
collection while the registry stood still (a crowd of connections) freezes
nothing, for that reason, unless the next one is slow too.
``dnsreg_gc_frozen_objects`` shows the total.

Every collection's pause is measured through :data:`gc.callbacks` and
exported: ``dnsreg_gc_pause_seconds{generation}`` (a histogram),
``dnsreg_gc_pause_max_seconds``, ``dnsreg_gc_freezes_total`` and
``dnsreg_gc_frozen_objects``.

The callback runs inside the collector, in whichever thread allocated (the
store's writer thread too): it only adds to plain numbers, takes no lock (a
``prometheus_client`` metric's lock, held by the interrupted code, would
deadlock) and never freezes there; a timer on the loop does.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger("dnsreg")

BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
REFREEZE_OVER = 0.005  # seconds: a full collection slower than this triggers a freeze
BULK_CHANGES = 1_000  # registry changes since the last freeze that make a burst
CHECK_EVERY = 0.5  # seconds between two looks at whether to freeze
SLOW_AND_CHANGED = 100  # changes since the last freeze that make a slow collection ours
# Generation-1 collections between two full ones (CPython's default: 10). With what lives
# long frozen, a full collection walks what the last freeze left out, the same whenever it
# runs: running it 5x less often lands 5x fewer of its pauses on queries, while the young
# generations still free short-lived cycles as often as before.
FULL_EVERY = 50
# Long-lived objects made by queries (answer records, material) since the last freeze
# that make a burst too: 20 000 of them cost a full collection ~12 ms to walk.
BULK_MADE = 20_000


class GcTuning:
    def __init__(
        self,
        *,
        refreeze_over: float = REFREEZE_OVER,
        bulk_changes: int = BULK_CHANGES,
        check_every: float = CHECK_EVERY,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.refreeze_over = refreeze_over
        self.bulk_changes = bulk_changes
        self.check_every = check_every
        self.clock = clock
        self.counts = [[0] * (len(BUCKETS) + 1) for _ in range(3)]
        self.sums = [0.0, 0.0, 0.0]
        self.worst = 0.0
        self.freezes = 0
        self.frozen = 0
        self.changes = 0  # since the last freeze
        self._quiet_changes = -1  # the change count at the previous look
        self._slow_full = False  # a slow full collection since the last look
        self._slow_streak = 0  # slow full collections in a row, none frozen in between
        self._started: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        # Counts of long-lived objects other parts make without a registry change.
        self._made: list[Callable[[], int]] = []
        self._thresholds: tuple[int, int, int] | None = None  # as they were before start
        self._made_at_freeze = 0

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Measure collections from now on, and look every ``check_every`` whether to freeze."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)
        self._thresholds = gc.get_threshold()
        gen0, gen1, _ = self._thresholds
        gc.set_threshold(gen0, gen1, FULL_EVERY)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.check_every, self._check)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -------------------------------------------------------------- freezing
    def freeze(self, why: str) -> None:
        """Move every object alive now out of the collector's reach.

        The young generations are collected first (they are small: well under a
        millisecond), so short-lived cycles are freed rather than frozen for good.
        """
        gc.collect(1)
        # What is about to be frozen, counted in what is not frozen yet (small after
        # the first freeze); gc.get_freeze_count() would walk everything frozen so
        # far (~5 ms per 300 000 objects) at every freeze.
        self.frozen += sum(len(gc.get_objects(generation)) for generation in range(3))
        gc.freeze()
        self.freezes += 1
        self.changes = 0
        self._made_at_freeze = self._made_now()
        self._slow_full = False
        self._slow_streak = 0
        log.debug("gc: froze %d objects (%s)", self.frozen, why)

    def changed(self, *_: Any) -> None:
        """A store subscriber: one registry change."""
        self.changes += 1

    def watch(self, made: Callable[[], int]) -> None:
        """Also freeze once ``made()`` (objects some part keeps, e.g. the DNS answer
        records queries build) grew by :data:`BULK_MADE` since the last freeze."""
        self._made.append(made)
        self._made_at_freeze = self._made_now()

    def _made_now(self) -> int:
        return sum(made() for made in self._made)

    def _check(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.check_every, self._check)
        if self._slow_full and (self.changes >= SLOW_AND_CHANGED or self._slow_streak >= 2):
            self.freeze("a full collection took over %g ms" % (self.refreeze_over * 1e3))
        elif self.changes >= self.bulk_changes:
            # A burst (ended or going on): what it made lives on, freeze it before the
            # next full collection walks it; during a long burst each full collection
            # then walks at most one interval's worth of new objects.
            self.freeze(f"{self.changes} changes")
        elif self.changes >= SLOW_AND_CHANGED and self.changes == self._quiet_changes:
            # The tail of a burst, quiet since the last look: what it made stays too.
            self.freeze(f"{self.changes} changes, then quiet")
        elif self._made:
            made = self._made_now()
            # Shrunk (evictions): the baseline follows, so only new growth counts.
            self._made_at_freeze = min(self._made_at_freeze, made)
            if made - self._made_at_freeze >= BULK_MADE:
                self.freeze(f"{made - self._made_at_freeze} objects kept by queries")
        # A slow collection with the registry (nearly) unchanged may be a crowd of
        # connections or requests: transient, and cycles frozen now could never be
        # collected once they close. It is left to the collector, unless the next
        # full collection is slow too (what it walks stayed: answer material built
        # by queries, a crowd that lives on).
        self._slow_full = False
        self._quiet_changes = self.changes

    # ------------------------------------------------------------- measuring
    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = self.clock()
            return
        started, self._started = self._started, None
        if started is None:
            return
        pause = self.clock() - started
        generation = min(max(int(info.get("generation", 0)), 0), 2)
        self.observe(generation, pause)

    def observe(self, generation: int, pause: float) -> None:
        self.counts[generation][bisect.bisect_left(BUCKETS, pause)] += 1
        self.sums[generation] += pause
        self.worst = max(self.worst, pause)
        if generation == 2:
            slow = pause > self.refreeze_over
            self._slow_full = self._slow_full or slow
            self._slow_streak = self._slow_streak + 1 if slow else 0


class GcCollector(Collector):
    def __init__(self, tuning: GcTuning) -> None:
        self.tuning = tuning

    def collect(
        self,
    ) -> Iterator[HistogramMetricFamily | GaugeMetricFamily | CounterMetricFamily]:
        t = self.tuning
        pauses = HistogramMetricFamily(
            "dnsreg_gc_pause_seconds",
            "How long one cyclic garbage collection held the process, by generation",
            labels=["generation"],
        )
        for generation in range(3):
            cumulative, buckets = 0, []
            bounds = (*map(str, BUCKETS), "+Inf")
            for bound, count in zip(bounds, t.counts[generation], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            pauses.add_metric([str(generation)], buckets, t.sums[generation])
        yield pauses
        yield GaugeMetricFamily(
            "dnsreg_gc_pause_max_seconds",
            "The longest garbage collection pause since the start",
            value=t.worst,
        )
        yield CounterMetricFamily(
            "dnsreg_gc_freezes",
            "Times the long-lived objects were moved out of the collector's reach (gc.freeze)",
            value=t.freezes,
        )
        yield GaugeMetricFamily(
            "dnsreg_gc_frozen_objects",
            "Objects moved out of the cyclic collector's reach (counted when frozen)",
            value=t.frozen,
        )
