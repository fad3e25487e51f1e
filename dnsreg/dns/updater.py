"""DNS UPDATE (RFC 2136) off the hot path: verify, plan, authorise, write, reply.

The listeners hand an UPDATE message here (the responder answers it with
nothing, so it leaves the cached path like a signed query does) and send what
:meth:`Updater.handle` returns when it is done:

1. unsigned → REFUSED (SPEC §2: updates must be signed); a bad signature,
   an unknown key or a time outside the fudge → NOTAUTH with the TSIG error
   (RFC 8945 §5.2, by :class:`~dnsreg.dns.tsig.Signer`);
2. the key must hold ``write`` (SPEC §7, through ``dnsreg.core.acl.authorize``)
   before any prerequisite is evaluated, so a key without it learns nothing;
3. the plan (:mod:`dnsreg.dns.update`, pure): prerequisites, then the writes;
4. ``write`` on every service the plan touches, then one all-or-nothing store
   write (``Store.apply``), durable before the reply;
5. the reply, signed with the request's key, carries the granted lease
   (RFC 9664 §4) and, on failure, the reason as an EDE (RFC 8914) when the
   request had EDNS.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import dns.edns
import dns.exception
import dns.message
import dns.rcode

from dnsreg.core import acl
from dnsreg.core.acl import Right
from dnsreg.core.admission import AdmissionPolicy
from dnsreg.core.errors import DnsregError, Unauthorized
from dnsreg.core.model import DEFAULT_LEASE_TTL, Write
from dnsreg.core.registry import Change
from dnsreg.dns import update
from dnsreg.dns.responder import Responder
from dnsreg.dns.tsig import Signed
from dnsreg.dns.wire import EDNS_UDP_LIMIT, Malformed, Rcode, error_reply, rcode_for_error

log = logging.getLogger("dnsreg.dns.update")
audit = logging.getLogger("dnsreg.audit")

Apply = Callable[[Sequence[Write]], Awaitable[list[Change]]]
# (instance key, principal name, client address) -> a context naming who writes it
Acting = Callable[[tuple[str, str], str, str], contextlib.AbstractContextManager[None]]


class Updater:
    def __init__(
        self,
        responder: Responder,
        apply: Apply,
        *,
        policy: AdmissionPolicy | None = None,
        acting: Acting | None = None,
        default_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self.responder = responder  # the registry, zone files, settings and TSIG keys
        self.apply = apply
        self.policy = policy or AdmissionPolicy()
        self.acting = acting
        self.default_ttl = default_ttl

    async def handle(self, data: bytes, client: str) -> bytes | None:
        """The reply to the UPDATE ``data`` from ``client`` (None: not even a header)."""
        try:
            # keyring=False: parsed, not verified: first learn whether it is signed at all.
            raw = dns.message.from_wire(data, keyring=False)
        except dns.exception.DNSException as exc:
            log.info("dns update from %s: malformed (%s): FORMERR", client, exc)
            return error_reply(data, Rcode.FORMERR)
        if not raw.had_tsig:
            reason = "updates must be signed with a TSIG key (RFC 8945)"
            audit.warning("dns update from %s refused: unsigned", client)
            return self._reply(raw, Rcode.REFUSED, text=reason)
        try:
            signed = self.responder.signer.verify(data)
        except Malformed as bad:
            audit.warning("dns update from %s refused: %s (NOTAUTH)", client, bad.reason)
            return bad.reply
        key = signed.key
        principal = key.principal()
        view = update.View(
            self.responder.registry,
            self.responder.static,
            self.responder.settings,
            self.policy,
            self.default_ttl,
        )
        try:
            acl.authorize(principal, Right.WRITE, None)
            plan = update.plan(signed.message, view)
            for service in sorted(plan.services):
                acl.authorize(principal, Right.WRITE, service)
            changes = await self._write(plan.writes, principal.name, client)
        except DnsregError as exc:
            rcode = rcode_for_error(exc)
            logger = audit if isinstance(exc, Unauthorized) or rcode == Rcode.REFUSED else log
            logger.warning(
                "dns update by key %s from %s: %s: %s",
                key.name, client, Rcode(rcode).name, exc.message,
            )  # fmt: skip
            return self._reply(signed.message, rcode, text=exc.message, signed=signed)
        audit.info(
            "dns update by key %s from %s: %d change(s)%s",
            key.name, client, len(changes),
            f", lease {plan.granted.lease}s" if plan.granted is not None else "",
        )  # fmt: skip
        return self._reply(signed.message, Rcode.NOERROR, lease=plan.granted, signed=signed)

    async def _write(self, writes: Sequence[Write], principal: str, client: str) -> list[Change]:
        if not writes:
            return []  # prerequisites only, or deletes of what is not there: no revision
        with contextlib.ExitStack() as stack:
            if self.acting is not None:
                for w in writes:
                    stack.enter_context(self.acting((w.service, w.id), principal, client))
            return await self.apply(writes)

    def _reply(
        self,
        query: dns.message.Message,
        rcode: Rcode,
        *,
        text: str | None = None,
        lease: update.Lease | None = None,
        signed: Signed | None = None,
    ) -> bytes:
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.Rcode.make(int(rcode)))
        if query.edns >= 0:
            options: list[dns.edns.Option] = []
            if lease is not None:
                options.append(lease.option())  # RFC 9664 §4: the lease granted
            if text:
                options.append(dns.edns.EDEOption(dns.edns.EDECode.OTHER, text[:300]))
            response.use_edns(0, 0, EDNS_UDP_LIMIT, options=options)
        response.tsig = None  # rendered unsigned, then signed by the one signer
        wire = response.to_wire()
        if signed is None:
            return wire
        return self.responder.signer.sign(signed, [wire])[0]
