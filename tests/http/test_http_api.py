"""SPEC §5 over real sockets: validation, conflicts, read shapes, and leases seen from DNS."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import dns.rcode
import pytest

from tests.helpers import Running, async_wait_until

INSTANCE = "/v1/services/{svc}/instances/{id}"


def url(running: Running, svc: str = "web", id: str = "web-1", suffix: str = "") -> str:
    return running.base + INSTANCE.format(svc=svc, id=id) + suffix


async def put(running: Running, target: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with running.http.put(target, **kw) as resp:
        assert resp.content_type == "application/json"
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def get(running: Running, path: str) -> tuple[int, Any]:
    async with running.http.get(running.base + path) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()


async def a_records(running: Running, name: str) -> list[str] | None:
    """The A records DNS gives for ``name``; None for NXDOMAIN."""
    msg = await running.query(name, "A")
    if msg.rcode() == dns.rcode.NXDOMAIN:
        return None
    assert msg.rcode() == dns.rcode.NOERROR
    return sorted(r.to_text() for rr in msg.answer for r in rr)


async def snapshot(running: Running) -> tuple[Any, ...]:
    """Everything a refused request must leave alone."""
    _, services = await get(running, "/v1/services")
    _, web = await get(running, "/v1/services/web")
    for instance in web["instances"]:
        instance.pop("lease_deadline")  # moves only with heartbeats, which we do not send
    return (
        services,
        web,
        await a_records(running, "web.service.local"),
        await a_records(running, "primary.web.service.local"),
    )


@pytest.fixture
async def registered(running: Running) -> Running:
    await running.register("web", "web-1", address="10.0.0.5", port=8080, tags=["primary"])
    await running.register("web", "web-2", address="10.0.0.6", port=8080)
    return running


# ---------------------------------------------------------------- refused requests

BAD_BODIES: list[tuple[str, bytes, str | None]] = [
    ("malformed JSON", b'{"port": 80', None),
    ("not an object", b"[1, 2]", None),
    ("empty body", b"", None),
    ("port as string", b'{"port": "80"}', "port"),
    ("tags not a list", b'{"port": 80, "tags": "primary"}', "tags"),
    ("meta value not a string", b'{"port": 80, "meta": {"v": 2}}', "meta"),
    ("unknown field", b'{"port": 80, "colour": "red"}', "colour"),
    (
        "unknown nested field",
        b'{"port": 80, "checks": [{"tcp": "a:1", "bogus": 1}]}',
        "checks[0].bogus",
    ),
    ("missing port", b'{"address": "10.0.0.9"}', "port"),
    ("port out of range", b'{"port": 70000}', "port"),
    ("bad address", b'{"port": 80, "address": "10.0.0.300"}', "address"),
    ("bad ttl", b'{"port": 80, "ttl": "soon"}', "ttl"),
    ("ttl too short", b'{"port": 80, "ttl": "500ms"}', "ttl"),
    ("weight zero", b'{"port": 80, "weight": 0}', "weight"),
    ("empty tag", b'{"port": 80, "tags": [""]}', "tags[0]"),
    ("underscore tag", b'{"port": 80, "tags": ["_x"]}', "tags[0]"),
    ("64-char tag", b'{"port": 80, "tags": ["' + b"t" * 64 + b'"]}', "tags[0]"),
    ("bad proto", b'{"port": 80, "proto": "sctp"}', "proto"),
]


@pytest.mark.parametrize(("what", "body", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_bad_bodies_are_400_and_change_nothing(
    registered: Running, what: str, body: bytes, field: str | None
) -> None:
    before = await snapshot(registered)
    # Aimed at an existing instance: a bug that half-applies would show.
    for target in (url(registered, id="web-1"), url(registered, id="web-9")):
        status, reply = await put(
            registered, target, data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (what, reply)
        assert isinstance(reply["error"], str)
        assert reply["error"]
        if field is not None:
            # SPEC §5: a 400 names the field, in the detail and in the message.
            assert reply["detail"] == {"field": field}, reply
            assert field.rsplit(".", 1)[-1].split("[")[0] in reply["error"], reply
    assert await snapshot(registered) == before


@pytest.mark.parametrize(
    ("svc", "id", "field"),
    [
        ("_web", "web-1", "service"),
        ("web", "_web-1", "id"),
        ("web", "a" * 64, "id"),
        ("s" * 64, "web-1", "service"),
        ("web", "-x", "id"),
        ("web", "x-", "id"),
        ("we_b", "web-1", "service"),
        ("web", "web.1", "id"),
        ("", "web-1", "service"),
        ("web", "", "id"),
    ],
)
async def test_bad_names_in_the_path_are_400(
    registered: Running, svc: str, id: str, field: str
) -> None:
    before = await snapshot(registered)
    status, reply = await put(registered, url(registered, svc, id), json={"port": 80})
    assert status == 400, reply
    assert reply["detail"] == {"field": field}
    assert await snapshot(registered) == before


async def test_63_char_labels_are_accepted(running: Running) -> None:
    label = "a" * 63
    await running.register(label, label[:-1] + "b")
    assert await a_records(running, f"{label}.service.local") == ["10.0.0.5"]


async def test_uppercase_names_are_folded_to_lower_case(running: Running) -> None:
    status, body = await put(
        running,
        url(running, "WeB", "WEB-1"),
        json={"address": "10.0.0.7", "port": 80, "tags": ["Primary", "PRIMARY"]},
    )
    assert status == 201, body
    assert body["instance"]["service"] == "web"
    assert body["instance"]["id"] == "web-1"
    assert body["instance"]["tags"] == ["primary"]
    assert await a_records(running, "WEB.service.local") == ["10.0.0.7"]
    assert await a_records(running, "primary.web.service.local") == ["10.0.0.7"]
    # The same instance under any spelling: a replace, not a second instance.
    status, body = await put(running, url(running, "web", "Web-1"), json={"port": 81})
    assert status == 200
    assert body["created"] is False
    _, web = await get(running, "/v1/services/WEB")
    assert [i["id"] for i in web["instances"]] == ["web-1"]


async def test_id_equal_to_a_tag_is_409_both_ways(registered: Running) -> None:
    before = await snapshot(registered)
    # Its own tag.
    status, reply = await put(
        registered, url(registered, id="web-3"), json={"port": 80, "tags": ["web-3"]}
    )
    assert status == 409, reply
    # A new id equal to another instance's tag.
    status, reply = await put(registered, url(registered, id="primary"), json={"port": 80})
    assert status == 409, reply
    assert "primary" in reply["error"]
    # A new tag equal to another instance's id (also on replace of an existing one).
    for target in ("web-3", "web-2"):
        status, reply = await put(
            registered, url(registered, id=target), json={"port": 80, "tags": ["web-1"]}
        )
        assert status == 409, reply
        assert "web-1" in reply["error"]
    assert await snapshot(registered) == before
    # In another service the same names do not collide.
    status, _ = await put(registered, url(registered, "api", "primary"), json={"port": 80})
    assert status == 201


async def test_non_json_content_type_is_415(registered: Running) -> None:
    before = await snapshot(registered)
    for ctype, data in [
        ("application/xml", b"<port>80</port>"),
        ("multipart/form-data; boundary=x", b"--x--"),
        ("image/png", b'{"port": 80}'),
    ]:
        status, reply = await put(
            registered, url(registered), data=data, headers={"Content-Type": ctype}
        )
        assert status == 415, (ctype, reply)
        assert "json" in reply["error"].lower()
    assert await snapshot(registered) == before


async def test_too_large_body_is_413(registered: Running) -> None:
    before = await snapshot(registered)
    meta = {f"k{n}": "v" * 200 for n in range(400)}  # ~90 KiB, above the 64 KiB cap
    status, reply = await put(registered, url(registered), json={"port": 80, "meta": meta})
    assert status == 413, reply
    assert reply["error"]
    assert await snapshot(registered) == before


async def test_heartbeat_unknown_is_404(registered: Running) -> None:
    for svc, id in [("web", "web-9"), ("nope", "web-1")]:
        status, reply = await put(registered, url(registered, svc, id, "/heartbeat"))
        assert status == 404, reply
        assert reply["error"]
    status, _ = await put(
        registered, url(registered, "web", "web-9", "/maintenance"), json={"enable": True}
    )
    assert status == 404
    async with registered.http.delete(url(registered, "web", "web-9")) as resp:
        assert resp.status == 404


async def test_maintenance_body_is_validated(registered: Running) -> None:
    before = await snapshot(registered)
    for body in ({"enable": "yes"}, {"enable": True, "why": "x"}, {}):
        status, reply = await put(registered, url(registered, suffix="/maintenance"), json=body)
        assert status == 400, (body, reply)
    assert await snapshot(registered) == before


# -------------------------------------------------------------- writes seen by DNS


async def test_delete_removes_from_dns_at_once(registered: Running) -> None:
    # Warm every form in the answer cache first.
    assert await a_records(registered, "web.service.local") == ["10.0.0.5", "10.0.0.6"]
    assert await a_records(registered, "web-1.web.service.local") == ["10.0.0.5"]
    assert await a_records(registered, "primary.web.service.local") == ["10.0.0.5"]
    async with registered.http.delete(url(registered)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["revision"] == 3
    assert await a_records(registered, "web.service.local") == ["10.0.0.6"]
    assert await a_records(registered, "web-1.web.service.local") is None
    assert await a_records(registered, "primary.web.service.local") is None
    async with registered.http.delete(url(registered, id="web-2")) as resp:
        assert resp.status == 200
    assert await a_records(registered, "web.service.local") is None


async def test_lease_expires_within_a_second_of_its_deadline(running: Running) -> None:
    reply = await running.register("web", "web-1", ttl="1s")
    deadline = reply["lease_deadline"]
    assert deadline == pytest.approx(time.time() + 1, abs=0.5)
    seen_before_deadline = False
    while True:
        now = time.time()
        present = await a_records(running, "web.service.local") is not None
        if not present:
            gone_at = time.time()
            break
        seen_before_deadline = seen_before_deadline or now < deadline - 0.1
        assert now < deadline + 1.5, "still served long after its lease ended"
        await asyncio.sleep(0.02)
    assert seen_before_deadline
    assert gone_at >= deadline - 0.05, "removed before its lease ended"
    assert gone_at <= deadline + 1.0, "SPEC §3: within 1 s of the deadline"
    _, web = await get(running, "/v1/services/web")
    assert web["instances"] == []
    status, _ = await put(running, url(running, suffix="/heartbeat"))
    assert status == 404, "an expired instance must re-register"


async def test_heartbeats_keep_a_lease(running: Running) -> None:
    reply = await running.register("web", "web-1", ttl="1s")
    deadline = reply["lease_deadline"]
    stop = time.monotonic() + 1.8
    while time.monotonic() < stop:
        status, body = await put(running, url(running, suffix="/heartbeat"))
        assert status == 200, body
        assert body["lease_deadline"] >= deadline
        deadline = body["lease_deadline"]
        assert await a_records(running, "web.service.local") == ["10.0.0.5"]
        await asyncio.sleep(0.3)
    # Heartbeats stop: it goes once the last renewed deadline has passed.
    await async_wait_until(
        lambda: _absent(running), within=deadline - time.time() + 1.0, interval=0.02
    )
    assert time.time() >= deadline - 0.05


async def _absent(running: Running) -> bool:
    return await a_records(running, "web.service.local") is None


# -------------------------------------------------------------------- read shapes


async def test_read_shapes(registered: Running) -> None:
    url_m = url(registered, id="web-2", suffix="/maintenance")
    status, _ = await put(registered, url_m, json={"enable": True, "reason": "disk"})
    assert status == 200
    status, services = await get(registered, "/v1/services")
    assert status == 200
    assert services["revision"] == 3
    assert services["services"] == {
        "web": {
            "instances": 2,
            "passing": 2,
            "warning": 0,
            "critical": 0,
            "maintenance": 1,
            "served": 1,
            "panic": False,
        }
    }
    status, filtered = await get(registered, "/v1/services?prefix=ap")
    assert filtered["services"] == {}

    status, web = await get(registered, "/v1/services/web")
    assert status == 200
    assert web["service"] == "web"
    assert web["revision"] == 3
    ids = [i["id"] for i in web["instances"]]
    assert ids == ["web-1", "web-2"]
    first, second = web["instances"]
    assert first["address"] == "10.0.0.5"
    assert first["port"] == 8080
    assert first["tags"] == ["primary"]
    assert first["health"] == "passing"
    assert first["served"] is True
    assert first["lease_deadline"] > time.time()
    assert first["check_status"] == []
    assert second["maintenance"] == {"enabled": True, "reason": "disk"}
    assert second["served"] is False

    _, tagged = await get(registered, "/v1/services/web?tag=primary")
    assert [i["id"] for i in tagged["instances"]] == ["web-1"]
    _, passing = await get(registered, "/v1/services/web?passing")
    assert [i["id"] for i in passing["instances"]] == ["web-1"]

    status, status_body = await get(registered, "/v1/status")
    assert status == 200
    assert status_body["status"] == "ok"
    assert status_body["revision"] == 3
    assert status_body["instances"] == 2
    assert status_body["store"]["kind"] == "sqlite"
    assert isinstance(status_body["version"], str)

    async with registered.http.get(registered.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    lines = text.splitlines()
    assert "dnsreg_revision 3.0" in lines
    assert "dnsreg_instances 2.0" in lines
    assert any(line.startswith("dnsreg_registrations_total ") for line in lines)


async def test_revision_header_on_reads_and_writes(running: Running) -> None:
    async with running.http.put(url(running), json={"port": 80, "address": "10.0.0.1"}) as resp:
        assert resp.headers["X-Dnsreg-Index"] == "1"
    async with running.http.get(running.base + "/v1/services/web") as resp:
        assert resp.headers["X-Dnsreg-Index"] == "1"
