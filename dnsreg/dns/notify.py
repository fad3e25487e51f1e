"""NOTIFY (RFC 1996) to the secondaries after a change. I/O.

One task per secondary (``notify`` = ``HOST:PORT`` list). A change only marks
every secondary dirty; each task then sends at most one NOTIFY per
:data:`MIN_INTERVAL` (coalescing a burst of changes into one message that
carries the newest serial), and retries with a growing timeout until the
secondary acknowledges (RFC 1996 §3.6: the primary retransmits until it gets
a response). A NOTIFY is signed when a TSIG key is configured for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig

from dnsreg.core.names import Name, to_text

log = logging.getLogger("dnsreg.dns.notify")

MIN_INTERVAL = 1.0  # at most one NOTIFY per second per secondary (SPEC §2)
FIRST_TIMEOUT = 1.0  # then doubled per retry, up to MAX_TIMEOUT (RFC 1996 §3.6)
MAX_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Secondary:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Notifier:
    def __init__(
        self,
        origin: Name,
        secondaries: Sequence[Secondary],
        soa_text: Callable[[], str],
        *,
        key: dns.tsig.Key | None = None,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self.origin = dns.name.from_text(to_text(origin))
        self.secondaries = tuple(secondaries)
        self.soa_text = soa_text  # the current SOA RDATA in presentation form
        self.key = key
        self.min_interval = min_interval
        self._dirty = {s: asyncio.Event() for s in self.secondaries}
        self._tasks: list[asyncio.Task[None]] = []
        self.sent: dict[Secondary, int] = dict.fromkeys(self.secondaries, 0)
        self.acknowledged: dict[Secondary, int] = dict.fromkeys(self.secondaries, 0)

    def start(self) -> None:
        for secondary in self.secondaries:
            self._tasks.append(asyncio.create_task(self._run(secondary)))
        self.changed()  # tell every secondary where we are now (RFC 1996 §3.10: on start)

    def changed(self) -> None:
        for event in self._dirty.values():
            event.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def message(self) -> dns.message.Message:
        """NOTIFY for our zone with the current SOA in the answer section (RFC 1996 §3.7)."""
        msg = dns.message.make_query(self.origin, dns.rdatatype.SOA)
        msg.flags = dns.flags.AA  # RFC 1996 §3.3: AA set; no RD (flags hold the opcode too)
        msg.set_opcode(dns.opcode.NOTIFY)
        msg.answer.append(dns.rrset.from_text(self.origin, 0, "IN", "SOA", self.soa_text()))
        if self.key is not None:
            msg.use_tsig(self.key)
        return msg

    async def _run(self, secondary: Secondary) -> None:
        loop = asyncio.get_running_loop()
        dirty = self._dirty[secondary]
        last_sent = -self.min_interval
        await dirty.wait()
        backoff = FIRST_TIMEOUT
        while True:
            wait = last_sent + self.min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # coalesce: changes meanwhile ride along
            dirty.clear()
            last_sent = loop.time()
            self.sent[secondary] += 1
            if await self._send(secondary):
                self.acknowledged[secondary] += 1
                await dirty.wait()  # acknowledged: quiet until the next change
                backoff = FIRST_TIMEOUT
                continue
            # Not acknowledged: retry after a growing pause (RFC 1996 §3.6), or as soon
            # as the interval allows when a newer change comes in meanwhile.
            try:
                await asyncio.wait_for(dirty.wait(), backoff)
                backoff = FIRST_TIMEOUT
            except TimeoutError:
                backoff = min(backoff * 2, MAX_TIMEOUT)

    async def _send(self, secondary: Secondary) -> bool:
        """One NOTIFY; True when the secondary answered it."""
        try:
            reply = await dns.asyncquery.udp(
                self.message(), secondary.host, port=secondary.port, timeout=FIRST_TIMEOUT
            )
        except (OSError, dns.exception.DNSException) as exc:
            log.debug("NOTIFY to %s unanswered (%s); will retry", secondary, exc)
            return False
        if reply.rcode() != dns.rcode.NOERROR:
            # An answer all the same: retrying would get the same one (RFC 1996 §3.6).
            log.warning("NOTIFY to %s answered %s", secondary, dns.rcode.to_text(reply.rcode()))
        return True
