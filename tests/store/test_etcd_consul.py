"""Consul TTL checks on two dnsreg nodes sharing one etcd: a report through either node counts.

The node that owns a check (highest-random-weight hashing) is the one that expires
it, while the service may report to any node: its reports must be shared, or the
owner would expire a check that is being passed elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.store.etcd_fixtures import (  # noqa: F401 - fixtures
    EtcdCluster,
    etcd_fixture,
    needs_etcd,
    poll,
)
from tests.store.test_etcd import Node, nodes

pytestmark = needs_etcd


def state(node: Node, service: str, id: str) -> str | None:
    instance = node.server.registry.get(service, id)
    return None if instance is None else instance.checks[0].state.value


async def test_ttl_reports_through_any_node_keep_the_check_passing(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url) as (a, b):
        body = {"Name": "job", "ID": "job-1", "Address": "10.0.0.5", "Port": 80,
                "Check": {"TTL": "2s"}}  # fmt: skip
        async with a.http.put(a.base + "/v1/agent/service/register", json=body) as resp:
            assert resp.status == 200, await resp.text()
        await poll(lambda: b.server.registry.get("job", "job-1") is not None, within=2)
        owner, other = (a, b) if a.store.owns_check("job", "job-1") else (b, a)
        assert not other.store.owns_check("job", "job-1")
        # Report only through the node that does not own the check, for well over the
        # TTL: the owner must hear every report, so the check never goes critical.
        async with other.http.put(other.base + "/v1/agent/check/pass/service:job-1") as resp:
            assert resp.status == 200, await resp.text()
        await poll(lambda: state(owner, "job", "job-1") == "passing", within=2)
        passed_at = len(owner.changes)
        until = time.monotonic() + 5
        while time.monotonic() < until:
            await asyncio.sleep(0.5)  # the service's own reporting period
            async with other.http.put(other.base + "/v1/agent/check/pass/service:job-1") as resp:
                assert resp.status == 200, await resp.text()
        went_critical = [
            c for c in owner.changes[passed_at:]
            if c.after is not None and c.after.checks[0].state.value == "critical"
        ]  # fmt: skip
        assert went_critical == []
        assert state(owner, "job", "job-1") == state(other, "job", "job-1") == "passing"
        # Silence: the owner expires it, and both nodes see it critical.
        await poll(lambda: state(a, "job", "job-1") == state(b, "job", "job-1") == "critical",
                   within=5)  # fmt: skip
