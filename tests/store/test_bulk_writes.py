"""Crowds of writes in bounded slices: many leases lapsing at once are expired in batches,
a burst of registrations is committed a bounded group at a time, and the lease counts
self-preservation and /metrics need are taken without one long walk."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

from dnsreg.core.model import Registration
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.store.census import count_leases
from dnsreg.store.sqlite import EXPIRE_BATCH, FLUSH_MAX, SqliteStore
from tests.helpers import FakeClock


def _reg(n: int, ttl: float) -> Registration:
    address = ipaddress.ip_address(f"10.1.{n >> 8}.{n & 255}")
    return Registration(service=f"svc{n % 7}", id=f"i{n}", address=address, port=80, ttl=ttl)


async def test_a_crowd_of_lapsed_leases_expires_in_batches_and_all_of_it(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SqliteStore(tmp_path / "db.sqlite3", Registry(), clock)
    await store.start()
    try:
        count = 2 * EXPIRE_BATCH + 10
        await asyncio.gather(*(store.register(_reg(n, 10)) for n in range(count)))
        await store.register(_reg(count, 0))  # no lease: stays
        commits: list[float] = []
        store.commit_observer = commits.append
        seen: list[Change] = []
        store.subscribe(seen.append)
        clock.advance(11)
        # The store's own expiry timer may take a batch of these meanwhile: what
        # everyone sees is the total.
        await store.expire_now()
        assert len(seen) == count
        assert {c.kind for c in seen} == {ChangeKind.EXPIRED}
        assert len(commits) >= 3  # at most EXPIRE_BATCH a commit: 250 + 250 + 10
        assert len(store.registry) == 1
    finally:
        await store.close()
    # What was committed is what a restart finds.
    again = SqliteStore(tmp_path / "db.sqlite3", Registry(), clock)
    await again.start()
    try:
        assert len(again.registry) == 1
    finally:
        await again.close()


async def test_a_burst_of_registrations_is_committed_a_bounded_group_at_a_time(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "db.sqlite3", Registry(), FakeClock())
    await store.start()
    try:
        commits: list[float] = []
        store.commit_observer = commits.append
        count = 2 * FLUSH_MAX + 1
        changes = await asyncio.gather(*(store.register(_reg(n, 30)) for n in range(count)))
        assert len(changes) == count
        assert len(store.registry) == count
        assert len(commits) >= 3  # never more than FLUSH_MAX writes in one
    finally:
        await store.close()


async def test_lease_counts_match_a_plain_count() -> None:
    registry = Registry()
    now = 1_000.0
    for n in range(12_000):  # more than one slice
        registry.register(_reg(n, 0 if n % 3 == 0 else 30), now)
    for n in range(1, 12_000, 3):  # a third renewed ...
        registry.heartbeat(f"svc{n % 7}", f"i{n}", now + 20)
    # ... at +20 s: the others are two thirds through their 30 s without one.
    everything = await count_leases(registry, now + 20)
    assert everything.leases == 8_000
    assert everything.lapsing == 4_000
    renewed = await count_leases(registry, now + 20, renewed_only=True)
    assert (renewed.leases, renewed.lapsing) == (4_000, 0)
