"""Consul writes go through dnsreg's one authorize(): X-Consul-Token, ?token=, refusals."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import consul
import pytest

from tests.helpers import Running
from tests.http.test_auth import SECRETS, serve

REGISTER = "/v1/agent/service/register"
WEB = {"Name": "web", "ID": "web-1", "Address": "10.0.0.5", "Port": 80, "Check": {"TTL": "30s"}}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Running]:
    async for running in serve(tmp_path):
        yield running


async def put(
    running: Running, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, str]:  # fmt: skip
    async with running.http.put(
        running.base + path, json=body, headers=headers or {}, params=params or {}
    ) as resp:
        return resp.status, await resp.text()


async def test_consul_writes_need_a_token_with_the_right(
    secured: Running, caplog: pytest.LogCaptureFixture
) -> None:
    revision = secured.server.registry.revision
    # No token: 401 before the body is read (a bad body gets 401 too, not 400).
    assert (await put(secured, REGISTER, WEB))[0] == 401
    assert (await put(secured, REGISTER, {"Bogus": 1}))[0] == 401
    status, text = await put(secured, REGISTER, WEB, headers={"X-Consul-Token": "nope"})
    assert (status, "unknown token" in text) == (401, True)
    # A token for other services: 403 naming what is missing, never the secret.
    status, text = await put(
        secured, REGISTER, WEB, headers={"X-Consul-Token": SECRETS["api-writer"]}
    )
    assert status == 403
    assert "lacks the write right for service 'web'" in text
    assert SECRETS["api-writer"] not in text
    assert secured.server.registry.revision == revision

    # X-Consul-Token and ?token= both carry it; the write is logged with the token's name.
    with caplog.at_level(logging.INFO, logger="dnsreg.audit"):
        status, text = await put(
            secured, REGISTER, WEB, headers={"X-Consul-Token": SECRETS["web-writer"]}
        )
        assert status == 200, text
        token = {"token": SECRETS["web-writer"]}
        assert (await put(secured, "/v1/agent/check/pass/service:web-1", params=token))[0] == 200
    assert "consul register web/web-1 by token web-writer" in caplog.text
    assert "consul check passing web/web-1 service:web-1 by token web-writer" in caplog.text
    assert SECRETS["web-writer"] not in caplog.text

    # Every other write route asks too, and a refusal leaves the instance alone.
    before = secured.server.registry.get("web", "web-1")
    for path, params in [
        ("/v1/agent/check/fail/service:web-1", {}),
        ("/v1/agent/check/update/service:web-1", {}),
        ("/v1/agent/service/maintenance/web-1", {"enable": "true"}),
        ("/v1/agent/service/deregister/web-1", {}),
    ]:
        body = {"Status": "critical"} if "update" in path else None
        assert (await put(secured, path, body, params=params))[0] == 401, path
        api = {"X-Consul-Token": SECRETS["api-writer"]}
        assert (await put(secured, path, body, params=params, headers=api))[0] == 403, path
    assert secured.server.registry.get("web", "web-1") == before


async def test_py_consul_with_a_token(secured: Running) -> None:
    client = consul.Consul(
        host="127.0.0.1", port=secured.server.http_port, token=SECRETS["web-writer"]
    )
    assert await asyncio.to_thread(
        client.agent.service.register, "web", service_id="web-9", address="10.0.0.9", port=80
    )
    anonymous = consul.Consul(host="127.0.0.1", port=secured.server.http_port)
    with pytest.raises(consul.ACLDisabled):  # py-consul's name for a 401
        await asyncio.to_thread(anonymous.agent.service.deregister, "web-9")
    assert await asyncio.to_thread(client.agent.service.deregister, "web-9")
