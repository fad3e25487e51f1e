"""The one-minute tour from the README, over real sockets."""

from __future__ import annotations

import dns.rcode
import dns.rdatatype

from tests.helpers import Running


async def test_register_then_resolve_srv_with_glue(running: Running) -> None:
    reply = await running.register(
        "web", "web-1", address="10.0.0.5", port=8080, tags=["primary"], meta={"version": "2"}
    )
    assert reply["revision"] == 1
    assert reply["lease_deadline"] > 0

    msg = await running.query("web.service.local", "SRV")
    assert msg.rcode() == dns.rcode.NOERROR
    (srv,) = msg.answer
    assert [r.to_text() for r in srv] == ["0 1 8080 web-1.web.service.local."]
    glue = {(rr.name.to_text(), r.to_text()) for rr in msg.additional for r in rr}
    assert ("web-1.web.service.local.", "10.0.0.5") in glue
