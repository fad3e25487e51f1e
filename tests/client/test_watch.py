"""Blocking queries and /v1/events, end to end against a real server on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dnsreg.app import Server
from dnsreg.client.sse import SseParser
from tests.helpers import Running, async_wait_until, make_config, start_server


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Running]:
    server = await start_server(make_config(tmp_path, events_keepalive=0.2, events_buffer=50))
    async with aiohttp.ClientSession() as http:
        yield Running(server, http, f"http://127.0.0.1:{server.http_port}", server.dns_port)
    await server.stop()


def hub(server: Server) -> Any:
    assert server.api is not None
    return server.api.events


class Stream:
    """A raw SSE reader over aiohttp: what any EventSource client would see."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.parser = SseParser()
        self.comments: list[str] = []

    async def next(self, *, with_idle: bool = False) -> tuple[str, dict[str, Any] | None, str]:
        """The next dispatched message (id-only frames too when ``with_idle``)."""
        while True:
            raw = await asyncio.wait_for(self.resp.content.readline(), 5)
            if not raw:
                raise EOFError("stream ended")
            line = raw.decode()
            if line.startswith(":"):
                self.comments.append(line.strip())
            message = self.parser.feed_line(line)
            if message is None or (message.data is None and not with_idle):
                continue
            data = json.loads(message.data) if message.data is not None else None
            return message.event, data, message.last_id


async def open_stream(
    run: Running, query: str = "", headers: dict[str, str] | None = None
) -> Stream:
    resp = await run.http.get(f"{run.base}/v1/events{query}", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    stream = Stream(resp)
    await stream.next(with_idle=True)  # the opening frame: retry hint (+ cursor)
    return stream


async def test_watcher_sees_registration_then_expiry_in_order(srv: Running) -> None:
    stream = await open_stream(srv)
    await srv.register("web", "web-1", ttl="1s")
    kind, data, last_id = await stream.next()
    assert (kind, last_id) == ("registered", "1")
    assert data is not None
    assert data["revision"] == 1
    assert (data["service"], data["id"]) == ("web", "web-1")
    assert data["instance"]["address"] == "10.0.0.5"
    assert data["instance"]["port"] == 8080
    kind, data, last_id = await stream.next()  # no further writes: the lease runs out
    assert (kind, last_id) == ("expired", "2")
    assert data == {
        "revision": 2,
        "kind": "expired",
        "service": "web",
        "id": "web-1",
        "instance": None,
    }
    stream.resp.close()


async def test_every_change_kind_and_no_event_for_heartbeats(srv: Running) -> None:
    stream = await open_stream(srv, "?prefix=web")
    await srv.register("web", "a")
    await srv.register("db", "a")  # outside the prefix
    async with srv.http.put(f"{srv.base}/v1/services/web/instances/a/heartbeat") as resp:
        assert resp.status == 200
    await srv.register("web", "a", port=9090)
    url = f"{srv.base}/v1/services/web/instances/a"
    async with srv.http.put(url + "/maintenance", json={"enable": True, "reason": "x"}) as resp:
        assert resp.status == 200
    async with srv.http.delete(url) as resp:
        assert resp.status == 200
    seen = [await stream.next() for _ in range(4)]
    assert [(k, i) for k, _, i in seen] == [
        ("registered", "1"),
        ("replaced", "3"),
        ("maintenance", "4"),
        ("deregistered", "5"),
    ]
    assert seen[1][1] is not None
    assert seen[1][1]["instance"]["port"] == 9090
    assert seen[2][1] is not None
    assert seen[2][1]["instance"]["maintenance"] == {"enabled": True, "reason": "x"}
    stream.resp.close()


async def test_blocking_query_wakes_on_the_change_well_under_100ms(srv: Running) -> None:
    await srv.register("web", "a")
    async with srv.http.get(f"{srv.base}/v1/services/web") as resp:
        index = int(resp.headers["X-Dnsreg-Index"])
        assert (await resp.json())["revision"] == index == 1

    async def blocked() -> tuple[float, dict[str, Any], int]:
        url = f"{srv.base}/v1/services/web?index={index}&wait=30s"
        async with srv.http.get(url) as resp:
            body = await resp.json()
            return time.monotonic(), body, int(resp.headers["X-Dnsreg-Index"])

    task = asyncio.create_task(blocked())
    await async_wait_until(lambda: hub(srv.server).blocked == 1)
    await asyncio.sleep(0.05)
    assert not task.done()  # still held: nothing changed yet
    started = time.monotonic()
    await srv.register("web", "b")
    woke, body, header = await task
    assert woke - started < 0.1
    assert header == body["revision"] == 2
    assert [i["id"] for i in body["instances"]] == ["a", "b"]


async def test_blocking_query_ignores_other_services_and_times_out(srv: Running) -> None:
    await srv.register("web", "a")
    started = time.monotonic()
    task = asyncio.create_task(srv.http.get(f"{srv.base}/v1/services/web?index=1&wait=400ms"))
    await async_wait_until(lambda: hub(srv.server).blocked == 1)
    await srv.register("db", "a")  # another service: must not wake a reader of web
    resp = await task
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.4 * 17 / 16 + 0.3
    body = await resp.json()
    assert body["revision"] == 2
    assert [i["id"] for i in body["instances"]] == ["a"]
    resp.close()
    assert hub(srv.server).waiters == 0  # a timed-out wait leaves nothing behind


async def test_blocking_list_with_prefix_and_stale_index(srv: Running) -> None:
    await srv.register("web", "a")
    # An index the server already passed answers at once.
    started = time.monotonic()
    async with srv.http.get(f"{srv.base}/v1/services?index=0&wait=10s") as resp:
        assert (await resp.json())["revision"] == 1
    assert time.monotonic() - started < 0.5
    task = asyncio.create_task(srv.http.get(f"{srv.base}/v1/services?prefix=we&index=1&wait=10s"))
    await async_wait_until(lambda: hub(srv.server).blocked == 1)
    await srv.register("webapi", "a")
    resp = await asyncio.wait_for(task, 2)
    assert sorted((await resp.json())["services"]) == ["web", "webapi"]
    resp.close()


async def test_every_get_carries_the_index_header(srv: Running) -> None:
    await srv.register("web", "a")
    for path in ("/v1/services", "/v1/services/web", "/v1/services/web/instances/a", "/metrics"):
        async with srv.http.get(srv.base + path) as resp:
            assert resp.status == 200
            assert resp.headers["X-Dnsreg-Index"] == "1", path


async def test_bad_index_or_wait_is_a_400_naming_the_field(srv: Running) -> None:
    for query, field in (("index=x", "index"), ("index=1&wait=soon", "wait")):
        async with srv.http.get(f"{srv.base}/v1/services?{query}") as resp:
            assert resp.status == 400
            assert (await resp.json())["detail"] == {"field": field}


async def test_disconnect_and_resume_with_since_loses_nothing(srv: Running) -> None:
    stream = await open_stream(srv)
    await srv.register("web", "a")
    await srv.register("web", "b")
    got = [await stream.next(), await stream.next()]
    last = got[-1][2]
    stream.resp.close()  # the watcher goes away...
    for n in range(5):  # ...while the registry keeps moving
        await srv.register("web", f"c{n}")
    async with srv.http.delete(f"{srv.base}/v1/services/web/instances/a"):
        pass
    resumed = await open_stream(srv, f"?since={last}")
    for _ in range(6):
        got.append(await resumed.next())
    assert [int(i) for _, _, i in got] == list(range(1, 9))
    assert [k for k, _, _ in got] == ["registered"] * 7 + ["deregistered"]
    resumed.resp.close()
    # The Last-Event-ID header (what a browser's EventSource sends) beats ?since.
    again = await open_stream(srv, "?since=0", headers={"Last-Event-ID": "7"})
    assert (await again.next())[2] == "8"
    again.resp.close()


async def test_since_older_than_the_ring_starts_with_reset(srv: Running) -> None:
    for n in range(60):  # the fixture remembers 50 changes
        await srv.register("web", f"i{n}")
    stream = await open_stream(srv, "?since=3")
    kind, data, last_id = await stream.next()
    assert kind == "reset"
    assert data == {"revision": 60, "since": 3, "oldest": 10}
    assert last_id == "60"
    await srv.register("web", "next")
    assert (await stream.next())[:1] == ("registered",)
    stream.resp.close()
    fine = await open_stream(srv, "?since=11")  # the 61st change evicted revision 11
    assert (await fine.next())[2] == "12"
    fine.resp.close()


async def test_idle_stream_gets_keepalive_comments_that_move_the_cursor(srv: Running) -> None:
    stream = await open_stream(srv, "?prefix=web")
    await srv.register("db", "a")  # not for this watcher
    kind, data, last_id = await stream.next(with_idle=True)
    assert (kind, data, last_id) == ("message", None, "1")
    assert ": keepalive" in stream.comments
    stream.resp.close()


async def test_stop_ends_open_streams_and_blocked_queries_promptly(tmp_path: Path) -> None:
    server = await start_server(make_config(tmp_path))
    base = f"http://127.0.0.1:{server.http_port}"
    async with aiohttp.ClientSession() as http:
        streams = [await http.get(f"{base}/v1/events") for _ in range(5)]
        blocked = asyncio.create_task(http.get(f"{base}/v1/services?index=0&wait=5m"))
        await async_wait_until(lambda: hub(server).streams == 5 and hub(server).blocked == 1)
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 1.0
        for resp in streams:
            body = await asyncio.wait_for(resp.content.read(), 2)  # ends, no hang
            assert body.startswith(b"retry: ")
            resp.close()
        resp = await asyncio.wait_for(blocked, 2)
        assert resp.status == 200
        resp.close()


async def test_waiters_woken_together_share_an_answer_but_never_a_stale_one(
    srv: Running,
) -> None:
    await srv.register("web", "a")
    url = f"{srv.base}/v1/services/web?index=1&wait=10s"
    herd = [asyncio.create_task(srv.http.get(url)) for _ in range(5)]
    await async_wait_until(lambda: hub(srv.server).blocked == 5)
    await srv.register("web", "b")
    bodies = []
    for task in herd:
        resp = await task
        bodies.append(await resp.read())
        resp.close()
    assert len(set(bodies)) == 1  # one rendering, five readers
    assert json.loads(bodies[0])["revision"] == 2
    await srv.register("web", "c")  # a newer change: the shared answer is now stale
    async with srv.http.get(url) as resp:
        body = await resp.json()
    assert body["revision"] == 3
    assert [i["id"] for i in body["instances"]] == ["a", "b", "c"]
