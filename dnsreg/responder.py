"""From query bytes to reply bytes: decode, build the answer, encode. No sockets.

The UDP and TCP servers hand every packet to :meth:`Responder.respond` and
send back whatever it returns (``None``: send nothing).
"""

from __future__ import annotations

import random
from collections import Counter

from dnsreg.answers import Question, Settings, answer
from dnsreg.registry import Registry
from dnsreg.wire import Malformed, decode_query, encode_reply, size_limit
from dnsreg.zones import StaticZones


class Responder:
    def __init__(
        self,
        registry: Registry,
        static: StaticZones,
        settings: Settings,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.static = static
        self.settings = settings
        self.rng = rng or random.Random()
        # Plain counters: a prometheus Counter per query would cost more than the answer.
        self.rcodes: Counter[int] = Counter()
        self.dropped = 0
        self.malformed = 0

    def respond(self, data: bytes, *, tcp: bool) -> bytes | None:
        try:
            query = decode_query(data)
        except Malformed as bad:
            self.malformed += 1
            if bad.reply is None:
                self.dropped += 1
                return None
            self.rcodes[bad.reply[3] & 0xF] += 1
            return bad.reply
        reply = answer(
            Question(query.qname, query.qtype, query.qclass, tcp),
            self.registry,
            self.static,
            self.settings,
            self.rng,
        )
        wire = encode_reply(query, reply, size_limit(query, tcp))
        self.rcodes[wire[3] & 0xF] += 1
        return wire
