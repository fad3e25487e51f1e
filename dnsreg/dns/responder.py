"""From query bytes to reply bytes: decode, build the answer, encode. No sockets.

The UDP and TCP servers hand every packet to :meth:`Responder.respond` and
send back whatever it returns. ``None``: nothing to send now; the listener
asks ``dns/deferred`` whether the message is answered later (a DNS UPDATE, a
query waiting for a large service's answer material, :attr:`pending`, or a
zone transfer waiting for the journal to catch up).
Replies to plain queries are cached as wire bytes (``answer_cache``); a miss
goes through the pure answer builder and fills the cache.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import dns.rdatatype

from dnsreg.core.names import to_text
from dnsreg.core.registry import Registry
from dnsreg.dns.answer_cache import AnswerCache, Entry, cache_key, scope_stamp, variants_for
from dnsreg.dns.answers import Question, Reply, Scope, Settings, answer
from dnsreg.dns.material_cache import Build, MaterialCache, MaterialPending
from dnsreg.dns.records import AXFR, IXFR
from dnsreg.dns.tsig import Signer
from dnsreg.dns.wire import (
    Malformed,
    Query,
    Rcode,
    decode_query,
    encode_reply,
    is_update,
    size_limit,
)
from dnsreg.dns.zones import StaticZones

if TYPE_CHECKING:
    from dnsreg.dns.xfr_out import Transfers, TransferStream

EDE_STALE_ANSWER = 3  # RFC 8914 §4.4
TSIG_ROOM = 160  # a TSIG RR with an HMAC-SHA512 MAC and a long key name
NO_QTYPE = -1  # a packet that did not parse far enough to have a question type

log = logging.getLogger("dnsreg.dns")


class Responder:
    def __init__(
        self,
        registry: Registry,
        static: StaticZones,
        settings: Settings,
        rng: random.Random | None = None,
        *,
        cache_entries: int | None = None,
    ) -> None:
        self.registry = registry
        self._static = static
        self.static_generation = 0
        self.settings = settings
        self.rng = rng or random.Random()
        self.cache = AnswerCache(cache_entries) if cache_entries else AnswerCache()
        # Per-service answer material, rebuilt only when its service changes.
        self.materials = MaterialCache()
        # Set by a store that lost contact with its backend: replies then say
        # they may be stale (RFC 8914 "Stale Answer"). Part of every cache entry.
        self.stale = False
        # Plain counters: a prometheus Counter per query would cost more than the answer.
        # Responses built here, by (qtype, rcode); cache hits are counted on their entry.
        self.built: Counter[tuple[int, int]] = Counter()
        self.dropped = 0
        self.malformed = 0
        # Set by the server when zone transfers are configured (dns/xfr_out).
        self.transfers: Transfers | None = None
        # TSIG keys (config [[tsig_keys]]); none: every signed query gets BADKEY.
        self.signer = Signer(())
        # Set when the listeners hand UPDATE messages to dns/updater: such a message
        # is then answered with nothing here (the updater replies), not NOTIMP.
        self.defer_updates = False
        # The build a query answered with None waits for (dns/deferred takes it at once).
        self.pending: Build | None = None
        # Zone transfers: whether the journal is catching up, and whether the last
        # message answered with None is a transfer waiting for it.
        self.journal_busy: Callable[[], bool] | None = None
        self.transfer_waits = False

    def take_pending(self) -> Build | None:
        """The build the last query answered with None is waiting for, if any."""
        build, self.pending = self.pending, None
        return build

    def take_transfer_wait(self) -> bool:
        """Whether the last TCP message answered with None is a transfer that waits."""
        waits, self.transfer_waits = self.transfer_waits, False
        return waits

    def transfer_now(self, data: bytes, peer: str) -> bytes | list[bytes] | TransferStream | None:
        """A transfer answered at once, the journal catching up first if need be."""
        if self.transfers is not None:
            messages = self.transfers.tcp(data, peer)
            if messages is not None:
                return messages
        return self.respond(data, tcp=True)

    @property
    def static(self) -> StaticZones:
        return self._static

    @static.setter
    def static(self, zones: StaticZones) -> None:
        """New zone files: every cached reply may be affected."""
        self._static = zones
        self.static_generation += 1
        self.cache.clear()

    def respond_tcp(self, data: bytes, peer: str) -> bytes | list[bytes] | TransferStream | None:
        """One TCP message: a zone transfer streams several replies (dns/xfr_out)."""
        if self.transfers is not None and _maybe_transfer(data):
            if self.journal_busy is not None and self.journal_busy():
                # The journal is catching up a slice per loop turn: the transfer waits
                # for it (dns/deferred) rather than making it catch up here at once.
                self.transfer_waits = True
                return None
            return self.transfer_now(data, peer)
        return self.respond(data, tcp=True)

    def respond(self, data: bytes, *, tcp: bool) -> bytes | None:
        found = cache_key(data, tcp)
        entry: Entry | None = None
        if found is not None:
            entry = self.cache.entries.get(found[0])
            if entry is not None:
                scope = entry.scope
                registry = self.registry
                if scope == Scope.GLOBAL:
                    current = registry.revision
                elif scope == Scope.STATIC:
                    current = self.static_generation
                else:
                    current = registry.service_revision(scope)
                if entry.stamp != current or (
                    entry.stale_marked is not self.stale and scope != Scope.STATIC
                ):
                    entry = None
                elif len(entry.variants) >= entry.want:
                    # Hot path: the client's id and question spliced into a stored reply.
                    entry.hits += 1
                    head, tail = entry.variants[entry.turn % len(entry.variants)]
                    entry.turn += 1
                    return data[:2] + head + data[12 : found[1]] + tail
            self.cache.misses += 1
        try:
            query = decode_query(data)
        except Malformed as bad:
            if self.defer_updates and is_update(data):
                return None  # the listener hands it to the updater (RFC 2136)
            self.malformed += 1
            if bad.reply is None:
                self.dropped += 1
                return None
            self.built[(NO_QTYPE, bad.reply[3] & 0xF)] += 1
            return bad.reply
        if query.signed:
            return self._signed(data, query, tcp)
        if found is not None and log.isEnabledFor(logging.DEBUG):  # the miss path only
            log.debug(
                "answer cache miss: %s %s", to_text(query.qname),
                dns.rdatatype.to_text(dns.rdatatype.RdataType.make(query.qtype)),
            )  # fmt: skip
        reply = self._answer(query, tcp)
        if reply is None:
            return None
        if self.stale and reply.scope != Scope.STATIC:
            # Zone-file answers do not come from the registry: they cannot be stale.
            reply = _mark_stale(reply)
        wire = encode_reply(query, reply, size_limit(query, tcp))
        rcode = wire[3] & 0xF
        self.built[(query.qtype, rcode)] += 1
        if found is not None and found[1] == 12 + len(query.question):
            template = (wire[2:12], wire[found[1] :])
            if entry is not None:
                self.cache.add_variant(entry, template)  # one more shuffled order
            else:
                shuffled = reply.scope not in (Scope.GLOBAL, Scope.STATIC) and len(reply.answer) > 1
                self.cache.store(
                    found[0],
                    Entry(
                        scope=reply.scope,
                        stamp=self._stamp(reply.scope),
                        stale_marked=self.stale and reply.scope != Scope.STATIC,
                        rcode=rcode,
                        qtype=query.qtype,
                        variants=[template],
                        shuffled=shuffled,
                        want=variants_for(len(wire)) if shuffled else 1,
                    ),
                )
        return wire

    def _signed(self, data: bytes, query: Query, tcp: bool) -> bytes | None:
        """A TSIG-signed query (RFC 8945): verified, answered uncached, the reply signed."""
        try:
            signed = self.signer.verify(data)
        except Malformed as bad:
            self.built[(query.qtype, Rcode.NOTAUTH)] += 1
            return bad.reply
        reply = self._answer(query, tcp)
        if reply is None:
            return None
        # Leave room for the TSIG record the signature adds (name, algorithm, MAC).
        wire = encode_reply(query, reply, size_limit(query, tcp) - TSIG_ROOM)
        self.built[(query.qtype, wire[3] & 0xF)] += 1
        return self.signer.sign(signed, [wire])[0]

    def _answer(self, query: Query, tcp: bool) -> Reply | None:
        """The builder's reply; None: it waits for a large service's material, which is
        being built in slices (:attr:`pending` says which; dns/deferred answers later)."""
        try:
            return answer(
                Question(query.qname, query.qtype, query.qclass, tcp),
                self.registry,
                self._static,
                self.settings,
                self.rng,
                self.materials,
            )
        except MaterialPending as wait:
            self.pending = wait.build
            return None

    def _stamp(self, scope: str) -> int:
        registry = self.registry
        return scope_stamp(
            scope, registry.revision, registry.service_revision(scope), self.static_generation
        )

    def counts_by_type(self) -> dict[tuple[int, int], int]:
        """Responses sent by (qtype, rcode), cache hits included (for metrics)."""
        return dict(self.built + self.cache.hits_by_type())

    def counts(self) -> dict[int, int]:
        """Responses sent by rcode, cache hits included."""
        out: Counter[int] = Counter()
        for (_, rcode), count in self.counts_by_type().items():
            out[rcode] += count
        return dict(out)


def _maybe_transfer(data: bytes) -> bool:
    """A cheap look at QTYPE: AXFR or IXFR (the transfer code decodes fully)."""
    zero = data.find(0, 12)
    return (
        zero > 0
        and len(data) >= zero + 3
        and data[zero + 1] == 0
        and data[zero + 2]
        in (
            AXFR,
            IXFR,
        )
    )


def _mark_stale(reply: Reply) -> Reply:
    from dataclasses import replace

    return replace(reply, ede=(*reply.ede, (EDE_STALE_ANSWER, "registry backend unreachable")))
