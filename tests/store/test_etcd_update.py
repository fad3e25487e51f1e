"""DNS UPDATE on the etcd store: one update is one etcd txn, seen whole by every node."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dnsreg.core.registry import ChangeKind
from tests.dns.test_update import KEYS, WEB_KEY, nsupdate
from tests.store.etcd_fixtures import (  # noqa: F401 - fixtures
    EtcdCluster,
    etcd_fixture,
    needs_etcd,
    poll,
)
from tests.store.test_etcd import nodes

pytestmark = [
    needs_etcd,
    pytest.mark.skipif(shutil.which("nsupdate") is None, reason="needs nsupdate (bind9-dnsutils)"),
]
Z = "service.local"


async def test_one_update_is_one_etcd_revision_on_every_node(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, url, tsig_keys=KEYS) as (a, b):
        await a.register("web", "web-1")
        await a.register("web", "web-2", address="10.0.0.6")
        await poll(lambda: b.server.registry.get("web", "web-2") is not None, within=2)
        commands = f"""
update add web-3.web.{Z} 30 SRV 0 1 8083 web-3.web.{Z}.
update add web-3.web.{Z} 30 A 10.0.0.7
update delete web-1.web.{Z}
update delete web-2.web.{Z}
"""
        code, out = await nsupdate(a.server.dns_port, commands, "-y", WEB_KEY)
        assert code == 0, out
        await poll(lambda: b.server.registry.get("web", "web-1") is None, within=2)
        for node in (a, b):
            assert sorted(i.reg.id for i in node.server.registry.instances("web").values()) == [
                "web-3"
            ]
            last = node.changes[-3:]
            assert {c.revision for c in last} == {node.revision}  # one etcd revision
            assert sorted((c.id, c.kind) for c in last) == [
                ("web-1", ChangeKind.DEREGISTERED),  # deregistered, not expired, on both
                ("web-2", ChangeKind.DEREGISTERED),
                ("web-3", ChangeKind.REGISTERED),
            ]
        assert a.revision == b.revision
        assert (await a.addresses(f"web-3.web.{Z}")) == {"10.0.0.7"}
        assert (await b.addresses(f"web-3.web.{Z}")) == {"10.0.0.7"}


async def test_a_refused_update_leaves_etcd_untouched(etcd: EtcdCluster, tmp_path: Path) -> None:
    url = etcd.store_url()
    async with nodes(tmp_path, url, tsig_keys=KEYS) as (a,):
        await a.register("web", "web-1", tags=["canary"])
        before = a.revision
        # web-2 is fine, but an instance id equal to web-1's tag is a name clash (SPEC §1).
        commands = f"""
update add web-2.web.{Z} 30 SRV 0 1 8082 web-2.web.{Z}.
update add web-2.web.{Z} 30 A 10.0.0.8
update add canary.web.{Z} 30 SRV 0 1 8084 canary.web.{Z}.
update add canary.web.{Z} 30 A 10.0.0.9
"""
        code, out = await nsupdate(a.server.dns_port, commands, "-y", WEB_KEY)
        assert code != 0
        assert "update failed: REFUSED" in out
        assert a.revision == before
        assert set(a.server.registry.instances("web")) == {"web-1"}
        assert (await a.status())["revision"] == before
