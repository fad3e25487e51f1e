"""/metrics of a real server after real traffic: names, label sets, Prometheus conventions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from dnsreg import __version__
from tests.helpers import FakeClock, Running, make_config, start_server
from tests.store.etcd_fixtures import EtcdCluster, etcd_fixture, needs_etcd  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
INSTANCE_ROUTE = "/v1/services/{service}/instances/{id}"


async def scrape(running: Running) -> tuple[str, list[Sample]]:
    async with running.http.get(running.base + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return text, samples


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, [s for s in samples if s.name == name])
    return found[0]


async def test_metrics_after_http_and_dns_traffic(running: Running) -> None:
    await running.register("web", "web-1", address="10.0.0.1")
    await running.register("web", "web-1", address="10.0.0.2")  # a replace: 200
    await running.register("db", "db-1", address="10.0.0.9")
    async with running.http.put(running.base + "/v1/services/web/instances/web-1/heartbeat"):
        pass
    async with running.http.get(running.base + "/v1/services/web/instances/nosuch") as resp:
        assert resp.status == 404
    async with running.http.get(running.base + "/no/such/route") as resp:
        assert resp.status == 404
    async with running.http.request("BREW", running.base + "/no/such/route") as resp:
        assert resp.status == 400  # aiohttp refuses methods it does not know
    for _ in range(3):  # one miss, then two hits from the answer cache
        reply = await running.query("web.service.local", "A")
        assert [r.to_text() for r in reply.answer[0]] == ["10.0.0.2"]
    await running.query("nosuch.service.local", "SRV")
    await running.query("nosuch.service.local", "SRV")

    text, samples = await scrape(running)

    # Process and interpreter collectors on the server's own registry.
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds",
                 "process_cpu_seconds_total", "process_start_time_seconds"):  # fmt: skip
        assert value(samples, name) > 0, name
    assert any(s.name == "python_info" for s in samples)
    assert any(s.name == "python_gc_collections_total" for s in samples)
    assert value(samples, "dnsreg_build_info", version=__version__) == 1

    # HTTP by route template (never the raw path), method and status.
    requests = "dnsreg_http_requests_total"
    assert value(samples, requests, route=INSTANCE_ROUTE, method="PUT", status="201") == 2
    assert value(samples, requests, route=INSTANCE_ROUTE, method="PUT", status="200") == 1
    heartbeat_route = INSTANCE_ROUTE + "/heartbeat"
    assert value(samples, requests, route=heartbeat_route, method="PUT", status="200") == 1
    assert value(samples, requests, route=INSTANCE_ROUTE, method="GET", status="404") == 1
    assert value(samples, requests, route="unmatched", method="GET", status="404") == 1
    assert not [s for s in samples if "web-1" in s.labels.get("route", "")]
    assert not [s for s in samples if s.labels.get("method") == "BREW"]
    brewed = [s for s in samples if s.name == requests and s.labels["method"] == "other"]
    assert [s.value for s in brewed] == [1]
    assert value(samples, "dnsreg_http_request_duration_seconds_count", route=INSTANCE_ROUTE) == 4
    buckets = [
        s for s in samples
        if s.name == "dnsreg_http_request_duration_seconds_bucket"
        and s.labels["route"] == INSTANCE_ROUTE
    ]  # fmt: skip
    assert buckets[-1].labels["le"] == "+Inf"
    assert buckets[-1].value == 4

    # DNS by qtype and rcode, cache hits and misses.
    responses = "dnsreg_dns_responses_total"
    assert value(samples, responses, qtype="A", rcode="NOERROR") == 3
    assert value(samples, responses, qtype="SRV", rcode="NXDOMAIN") == 2
    assert value(samples, "dnsreg_dns_cache_hits_total") == 3  # 2 A + 1 SRV
    assert value(samples, "dnsreg_dns_cache_misses_total") == 2

    # Store commits: one per write batch, each timed.
    assert value(samples, "dnsreg_store_commit_duration_seconds_count") >= 3
    assert value(samples, "dnsreg_store_commit_duration_seconds_sum") > 0

    # No *_created series: they only repeat the start time.
    assert "_created" not in text


async def test_lapsing_leases_gauge_goes_back_to_zero(tmp_path: Path) -> None:
    clock = FakeClock()
    server = await start_server(make_config(tmp_path), clock=clock)
    try:
        async with aiohttp.ClientSession() as http:
            running = Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
            await running.register("web", "web-1", ttl="10s")
            await running.register("web", "web-2", ttl="10s")
            _, samples = await scrape(running)
            assert value(samples, "dnsreg_leases_lapsing") == 0
            clock.advance(6)  # more than half of each lease gone without a heartbeat
            _, samples = await scrape(running)
            assert value(samples, "dnsreg_leases_lapsing") == 2
            for instance in ("web-1", "web-2"):
                url = f"{running.base}/v1/services/web/instances/{instance}"
                async with http.delete(url) as resp:
                    assert resp.status == 200
            _, samples = await scrape(running)
            assert value(samples, "dnsreg_leases_lapsing") == 0
            assert value(samples, "dnsreg_instances") == 0
            assert value(samples, "dnsreg_services") == 0
    finally:
        await server.stop()


_PROMQL_NAME = re.compile(r"\b((?:dnsreg|process|python)_[a-zA-Z0-9_]+)")


async def test_grafana_dashboard_uses_only_metrics_a_server_exports(running: Running) -> None:
    dashboard = json.loads((ROOT / "contrib/grafana/dnsreg.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if "query" in v
              and isinstance(v["query"], dict)]  # fmt: skip
    referenced = {name for expr in exprs for name in _PROMQL_NAME.findall(expr)}
    assert len(referenced) >= 15
    await running.register("web", "web-1")
    await running.query("web.service.local", "A")
    _, samples = await scrape(running)
    exported = {s.name for s in samples}
    assert sorted(referenced - exported) == []


@needs_etcd
async def test_etcd_store_commits_are_timed_too(tmp_path: Path, etcd: EtcdCluster) -> None:
    server = await start_server(make_config(tmp_path, store=etcd.store_url("metrics")))
    try:
        async with aiohttp.ClientSession() as http:
            running = Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
            await running.register("web", "web-1")
            await running.register("web", "web-2")
            _, samples = await scrape(running)
    finally:
        await server.stop()
    assert value(samples, "dnsreg_store_commit_duration_seconds_count") >= 2
    assert value(samples, "dnsreg_store_commit_duration_seconds_sum") > 0
