"""Reply bytes cached per question, reused until the data behind them changes. Pure.

A cache hit costs a header check, a walk over the question's labels, one dict
lookup and a splice: the client's id and its own question bytes (letter case
included, so 0x20-checking resolvers are satisfied) go into a stored reply.

Invalidation is exact and lazy: every entry remembers the revision of what it
depends on (:class:`~dnsreg.dns.answers.Scope`): one service's revision, the
global revision (negative answers carry the SOA serial) or the static zones.
A lookup compares it with the registry's current value, so the first query
after an acknowledged change is already a miss, and churn on one service
leaves every other service's entries valid.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dnsreg.dns.answers import Scope
from dnsreg.dns.wire import EDNS_UDP_LIMIT, PLAIN_UDP_LIMIT, TCP_LIMIT

# How many shuffled variants of a multi-record answer are served in turn.
VARIANTS = 8
# ...fewer for big replies: a truncated 64 KiB TCP answer keeps 4, not 8 (memory stays bounded).
VARIANT_BYTES = 256 * 1024
DEFAULT_MAX_ENTRIES = 20_000
# Reply bytes held by the whole cache; past it the oldest quarter of the entries goes.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# Header bytes 4..11 (QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT) of the two cacheable shapes.
_PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"
_EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"

CacheKey = tuple[bytes, int, int]  # (folded question, RD bit | DO bit << 1, size limit)


def cache_key(data: bytes, tcp: bool) -> tuple[CacheKey, int] | None:
    """Key of a plain query, and where its question ends; None: take the slow path.

    Accepts only the shapes resolvers send: QR=0, opcode QUERY, one question,
    and either nothing else or a single EDNS(0) OPT whose options are
    well-formed (their contents do not change the reply). The question's end
    is taken as its first zero octet without walking the labels; that is
    sound because an entry is stored only when the full decoder agreed on
    where the question ends, and a packet whose question folds to the same
    bytes as a validated one has the same label structure (length octets are
    below 0x41, which case folding never touches). Type and class stay
    unfolded. Anything else goes through the full decoder, which knows every
    error reply.
    """
    if len(data) < 17 or data[2] & 0xF8:  # QR or opcode set
        return None
    zero = data.find(0, 12)
    if zero < 0:
        return None
    qend = zero + 5
    counts = data[4:12]
    flags = data[2] & 1  # RD
    if counts == _PLAIN_COUNTS:
        if len(data) != qend:
            return None
        limit = TCP_LIMIT if tcp else PLAIN_UDP_LIMIT
    elif counts == _EDNS_COUNTS:
        # OPT: root owner, TYPE 41, CLASS = UDP size, TTL = ext-rcode, version, DO|Z, RDLEN.
        opt = data[qend : qend + 11]
        if len(opt) != 11 or opt[0] != 0 or opt[1:3] != b"\x00\x29" or opt[6] != 0:
            return None  # not an OPT, or an EDNS version we must answer BADVERS
        rdlen = (opt[9] << 8) | opt[10]
        end = qend + 11 + rdlen
        if len(data) != end:
            return None
        at = qend + 11
        while at < end:  # each option: code, length, data
            if at + 4 > end:
                return None
            at += 4 + ((data[at + 2] << 8) | data[at + 3])
        if at != end:
            return None
        if tcp:
            limit = TCP_LIMIT
        else:
            size = (opt[3] << 8) | opt[4]
            limit = max(PLAIN_UDP_LIMIT, min(size, EDNS_UDP_LIMIT))
        flags |= 2 | ((opt[7] & 0x80) >> 5)  # EDNS present, DO bit
    else:
        return None
    return (data[12:zero].lower() + data[zero:qend], flags, limit), qend


@dataclass(slots=True)
class Entry:
    scope: str
    stamp: int
    stale_marked: bool
    rcode: int
    qtype: int = 0  # for the responses-by-qtype metric, summed at scrape time
    # Each variant: reply header after the id, and everything after the question.
    variants: list[tuple[bytes, bytes]] = field(default_factory=list)
    shuffled: bool = False
    want: int = 1  # variants to build before serving from the cache
    turn: int = 0
    hits: int = 0

    @property
    def size(self) -> int:
        return sum(len(head) + len(tail) for head, tail in self.variants)


def variants_for(reply_size: int) -> int:
    """Shuffled variants worth keeping of a reply this big."""
    return max(1, min(VARIANTS, VARIANT_BYTES // max(1, reply_size)))


class AnswerCache:
    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: dict[CacheKey, Entry] = {}
        self.misses = 0
        # Hits of entries no longer held, by (qtype, rcode), so metric totals never go down.
        self.retired: Counter[tuple[int, int]] = Counter()

    def _retire(self, entry: Entry) -> None:
        if entry.hits:
            self.retired[(entry.qtype, entry.rcode)] += entry.hits

    def clear(self) -> None:
        for entry in self.entries.values():
            self._retire(entry)
        self.entries.clear()
        self.bytes = 0

    def add_variant(self, entry: Entry, template: tuple[bytes, bytes]) -> None:
        entry.variants.append(template)
        self.bytes += len(template[0]) + len(template[1])

    def hits_by_type(self) -> Counter[tuple[int, int]]:
        """Hits by (qtype, rcode), held entries and retired ones: read at scrape time,
        so the hot path pays one integer increment per hit and nothing more."""
        out = Counter(self.retired)
        for entry in self.entries.values():
            if entry.hits:
                out[(entry.qtype, entry.rcode)] += entry.hits
        return out

    def hits_by_rcode(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for (_, rcode), count in self.hits_by_type().items():
            out[rcode] += count
        return out

    def store(self, key: CacheKey, entry: Entry) -> None:
        entries = self.entries
        if (len(entries) >= self.max_entries and key not in entries) or (
            self.bytes > self.max_bytes
        ):
            # Bounded memory: drop the oldest quarter (dicts keep insertion order).
            for old in list(entries)[: max(1, len(entries) // 4)]:
                gone = entries.pop(old)
                self._retire(gone)
                self.bytes -= gone.size
        previous = entries.get(key)
        if previous is not None:
            self._retire(previous)
            self.bytes -= previous.size
        entries[key] = entry
        self.bytes += entry.size


def scope_stamp(scope: str, revision: int, service_revision: int, static_generation: int) -> int:
    """The number an entry of ``scope`` must still match to be valid."""
    if scope == Scope.GLOBAL:
        return revision
    if scope == Scope.STATIC:
        return static_generation
    return service_revision
