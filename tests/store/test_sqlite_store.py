"""The embedded store when the disk refuses a write: 503, and memory matches the disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import dns.rcode

from dnsreg.core.registry import Change
from dnsreg.store.sqlite import RECOVERY_PROBE, SqliteStore
from tests.helpers import Running, async_wait_until


def _make_read_only(store: SqliteStore) -> sqlite3.Connection:
    """Swap the store's connection for a read-only one: every commit now fails for real."""
    writable = store._db
    assert writable is not None
    store._db = sqlite3.connect(
        f"file:{store.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
    )
    return writable


async def test_a_failed_commit_changes_nothing_and_status_says_why(running: Running) -> None:
    await running.register("web", "web-1", address="10.0.0.1", port=80)
    store = running.server.store
    assert isinstance(store, SqliteStore)
    seen: list[Change] = []
    store.subscribe(seen.append)
    revision = running.server.registry.revision
    writable = _make_read_only(store)
    try:
        url = f"{running.base}/v1/services/web/instances/web-2"
        async with running.http.put(url, json={"address": "10.0.0.2", "port": 80}) as resp:
            assert resp.status == 503
            error = (await resp.json())["error"]
            assert "could not commit: database is read-only" in error
        async with running.http.put(
            f"{running.base}/v1/services/web/instances/web-1",
            json={"address": "10.0.0.9", "port": 80},
        ) as resp:
            assert resp.status == 503
        async with running.http.delete(f"{running.base}/v1/services/web/instances/web-1") as resp:
            assert resp.status == 503
        # Nothing that was refused is served, and nothing moved: no event, no revision.
        reply = await running.query("web.service.local", "A")
        assert reply.rcode() == dns.rcode.NOERROR
        assert {r.to_text() for rrset in reply.answer for r in rrset} == {"10.0.0.1"}
        assert running.server.registry.get("web", "web-2") is None
        assert running.server.registry.revision == revision
        assert seen == []
        async with running.http.get(f"{running.base}/v1/status") as resp:
            status = await resp.json()
        assert status["status"] == "degraded"
        assert "database is read-only" in status["reason"]
        assert status["revision"] == revision
    finally:
        assert store._db is not None
        store._db.close()
        store._db = writable
    # The disk is writable again: writes go through, the next revision is the next number.
    body = await running.register("web", "web-2", address="10.0.0.2", port=80)
    assert body["revision"] == revision + 1
    assert [c.revision for c in seen] == [revision + 1]
    async with running.http.get(f"{running.base}/v1/status") as resp:
        assert (await resp.json())["status"] == "ok"


async def test_degraded_status_recovers_without_a_write(running: Running) -> None:
    store = running.server.store
    assert isinstance(store, SqliteStore)
    writable = _make_read_only(store)
    try:
        async with running.http.put(
            f"{running.base}/v1/services/web/instances/web-1",
            json={"address": "10.0.0.1", "port": 80},
        ) as resp:
            assert resp.status == 503
        assert store.degraded is not None
    finally:
        assert store._db is not None
        store._db.close()
        store._db = writable
    # The writer probes with a commit of its own while degraded.
    await async_wait_until(lambda: store.degraded is None, within=RECOVERY_PROBE + 3)


async def test_rows_survive_a_restart_byte_for_byte(tmp_path: Path, running: Running) -> None:
    body = {"address": "10.0.0.7", "port": 81, "tags": ["a"], "meta": {"k": "v=w"}, "ttl": "1m"}
    await running.register("api", "api-1", **body)
    store = running.server.store
    assert isinstance(store, SqliteStore)
    await running.server.stop()
    from tests.helpers import start_server

    again = await start_server(running.server.config)
    try:
        inst = again.registry.require("api", "api-1")
        assert inst.reg.meta == (("k", "v=w"),)
        assert inst.reg.tags == ("a",)
        assert inst.reg.ttl == 60
    finally:
        await again.stop()
