"""The cyclic GC kept off the loop: long-lived objects frozen, pauses measured and exported."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dnsreg.gc_tuning import BULK_MADE, FULL_EVERY, GcTuning
from tests.helpers import Running, async_wait_until


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Only the test's own collections run (none triggered by its allocations), and
    what it freezes is handed back to the collector afterwards."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _full_collection(tuning: GcTuning) -> float:
    """A full collection's pause as the tuning measured it (through gc.callbacks)."""
    before = tuning.sums[2]
    gc.collect()
    return tuning.sums[2] - before


async def test_a_slow_full_collection_freezes_what_lives_and_the_next_one_is_fast(
    unfrozen: None,
) -> None:
    tuning = GcTuning(check_every=0.01)
    tuning.start()
    try:
        # 300 000 long-lived containers: what 100 000 registered instances amount to.
        alive = [[n] for n in range(300_000)]
        # The registry standing still: a slow collection is someone else's objects.
        slow = _full_collection(tuning)
        assert slow > tuning.refreeze_over, slow
        tuning._quiet_changes = -1
        await async_wait_until(lambda: tuning._quiet_changes == 0)
        assert tuning.freezes == 0
        # Slow again, what it walks stayed: the second in a row freezes.
        slow = _full_collection(tuning)
        assert slow > tuning.refreeze_over, slow
        await async_wait_until(lambda: tuning.freezes == 1)
        assert tuning.frozen >= len(alive)
        fast = _full_collection(tuning)
        assert fast < slow / 3, (slow, fast)
        assert tuning.worst >= slow
        assert tuning.freezes == 1  # a fast collection asks for no freeze
    finally:
        tuning.stop()
    assert tuning._callback not in gc.callbacks


async def test_a_slow_full_collection_after_changes_freezes_at_once(unfrozen: None) -> None:
    tuning = GcTuning(check_every=0.01)
    tuning.start()
    try:
        alive = [[n] for n in range(300_000)]
        for _ in range(200):  # changes, fewer than a burst
            tuning.changed()
        assert _full_collection(tuning) > tuning.refreeze_over
        await async_wait_until(lambda: tuning.freezes == 1)
        assert tuning.frozen >= len(alive)
    finally:
        tuning.stop()


async def test_objects_queries_keep_are_frozen_once_they_grew_by_a_burst(
    unfrozen: None,
) -> None:
    """Answer records a crowd of queries built (no registry change): frozen in bulk too,
    counted from the last freeze; evictions move the baseline down, not the count up."""
    kept = [0]
    tuning = GcTuning(check_every=0.01)
    tuning.watch(lambda: kept[0])
    tuning.start()
    try:
        kept[0] = BULK_MADE - 1
        for _ in range(2):
            tuning._quiet_changes = -1
            await async_wait_until(lambda: tuning._quiet_changes == 0)
        assert tuning.freezes == 0
        kept[0] = BULK_MADE
        await async_wait_until(lambda: tuning.freezes == 1)
        kept[0] = 10  # evicted
        tuning._quiet_changes = -1
        await async_wait_until(lambda: tuning._quiet_changes == 0)
        kept[0] = 10 + BULK_MADE - 1
        tuning._quiet_changes = -1
        await async_wait_until(lambda: tuning._quiet_changes == 0)
        assert tuning.freezes == 1
        kept[0] = 10 + BULK_MADE
        await async_wait_until(lambda: tuning.freezes == 2)
    finally:
        tuning.stop()


async def test_the_tail_of_a_burst_is_frozen_once_the_registry_is_quiet(
    unfrozen: None,
) -> None:
    tuning = GcTuning(check_every=0.01, bulk_changes=1_000)
    tuning.start()
    try:
        for _ in range(150):  # fewer than a burst, more than a trickle
            tuning.changed()
        await async_wait_until(lambda: tuning.freezes == 1)
        assert tuning.changes == 0
        for _ in range(99):  # a trickle: left to the collector
            tuning.changed()
        for _ in range(3):
            tuning._quiet_changes = -1
            await async_wait_until(lambda: tuning._quiet_changes == 99)
        assert tuning.freezes == 1
    finally:
        tuning.stop()


async def test_a_burst_of_changes_is_frozen(unfrozen: None) -> None:
    tuning = GcTuning(check_every=0.01, bulk_changes=100)
    tuning.start()
    try:
        for _ in range(99):
            tuning.changed()
        for _ in range(3):  # fewer than a burst: three looks, no freeze
            tuning._quiet_changes = -1
            await async_wait_until(lambda: tuning._quiet_changes == 99)
        assert tuning.freezes == 0
        tuning.changed()
        await async_wait_until(lambda: tuning.freezes == 1)
        assert tuning.changes == 0
    finally:
        tuning.stop()


async def test_the_server_exports_its_gc_pauses_and_freezes(running: Running) -> None:
    await running.register("web", "web-1")
    gc.collect()
    async with running.http.get(running.base + "/metrics") as resp:
        text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    # Frozen at start-up, after the store loaded.
    assert samples[("dnsreg_gc_freezes_total", ())] >= 1
    assert samples[("dnsreg_gc_frozen_objects", ())] > 0
    full = samples[("dnsreg_gc_pause_seconds_count", (("generation", "2"),))]
    assert full >= 1  # the collection above, at least
    assert samples[("dnsreg_gc_pause_max_seconds", ())] > 0
    for generation in "012":
        assert ("dnsreg_gc_pause_seconds_bucket", (("generation", generation), ("le", "+Inf"))) in (
            samples
        )
        assert ("dnsreg_gc_pause_seconds_sum", (("generation", generation),)) in samples


async def test_full_collections_run_less_often_while_tuned_and_as_before_after() -> None:
    before = gc.get_threshold()
    tuning = GcTuning(check_every=10)
    tuning.start()
    try:
        assert gc.get_threshold() == (before[0], before[1], FULL_EVERY)
    finally:
        tuning.stop()
    assert gc.get_threshold() == before
