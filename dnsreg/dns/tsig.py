"""TSIG (RFC 8945): keys from the config, verifying signed requests, signing replies.

Off the hot path: only a message whose last additional record is a TSIG comes
here (the decoder flags it; such a message never matches the answer cache).
dnspython does the cryptography and the time-fudge check (``dns.tsig``,
``dns.message.from_wire(keyring=…)``).

A key's ``services`` and ``rights`` are those of an ACL token (SPEC §7):
``write`` for updates, ``transfer`` for zone transfers, ``operator`` for all.
:meth:`TsigKey.authorize` hands the decision to the one authorisation
function, ``dnsreg.core.acl.authorize``.
"""

from __future__ import annotations

import base64
import binascii
import struct
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.rrset
import dns.tsig

from dnsreg.core import acl
from dnsreg.core.acl import Principal, Right
from dnsreg.core.errors import ConfigError, DnsregError
from dnsreg.dns.wire import Malformed

ALGORITHMS = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha512": dns.tsig.HMAC_SHA512}
RIGHTS = frozenset(r.value for r in Right)
FUDGE = 300  # seconds of clock skew accepted (RFC 8945 §10 recommends 300)
_KEYS = ("name", "algorithm", "secret", "services", "rights")


@dataclass(frozen=True, slots=True)
class TsigKey:
    name: str  # a DNS name, folded, with the trailing dot
    algorithm: str
    secret: str = ""  # base64
    services: tuple[str, ...] = ("*",)
    rights: frozenset[str] = frozenset()

    def authorize(self, right: str, service: str | None) -> bool:
        """May this key do ``right`` (on ``service``; None: the whole zone)?

        The key acts as a token would: the decision is the one authorisation
        function's (``dnsreg.core.acl.authorize``, SPEC §7).
        """
        try:
            acl.authorize(self.principal(), Right(right), service)
        except DnsregError:
            return False
        return True

    def principal(self) -> Principal:
        """The key as a token: its name, rights and service globs (SPEC §7)."""
        return Principal(
            self.name.rstrip("."), frozenset(Right(r) for r in self.rights), self.services
        )

    def dns_key(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, ALGORITHMS[self.algorithm])


def parse_keys(tables: Any) -> tuple[TsigKey, ...]:
    """``[[tsig_keys]]`` tables → keys; every mistake is a ConfigError naming the key."""
    if not isinstance(tables, list):
        raise ConfigError("tsig_keys: must be a list of tables ([[tsig_keys]])")
    out: list[TsigKey] = []
    for n, table in enumerate(tables):
        where = f"tsig_keys[{n}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = sorted(set(table) - set(_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("name", "algorithm", "secret") if k not in table]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        try:
            name = dns.name.from_text(str(table["name"])).to_text().lower()
        except dns.exception.DNSException as exc:
            raise ConfigError(f"{where}: name {table['name']!r} is not a DNS name") from exc
        where = f"tsig key {name}"
        algorithm = str(table["algorithm"]).lower()
        if algorithm not in ALGORITHMS:
            raise ConfigError(f"{where}: algorithm must be one of {', '.join(ALGORITHMS)}")
        secret = str(table["secret"])
        try:
            raw = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{where}: secret is not base64") from exc
        if len(raw) < 16:
            raise ConfigError(f"{where}: secret must be at least 16 bytes (128 bits)")
        services = table.get("services", ["*"])
        rights = table.get("rights", [])
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise ConfigError(f"{where}: services must be a list of glob strings")
        if not isinstance(rights, list) or not set(rights) <= RIGHTS:
            raise ConfigError(f"{where}: rights must be a list of {', '.join(sorted(RIGHTS))}")
        if any(k.name == name for k in out):
            raise ConfigError(f"{where}: defined twice")
        out.append(TsigKey(name, algorithm, secret, tuple(services), frozenset(rights)))
    return tuple(out)


@dataclass(slots=True)
class Signed:
    """A request whose signature checked out, and the key that signed it."""

    message: dns.message.Message
    key: TsigKey


class Signer:
    def __init__(self, keys: Iterable[TsigKey], clock: Callable[[], float] = time.time) -> None:
        self.keys: Mapping[dns.name.Name, TsigKey] = {dns.name.from_text(k.name): k for k in keys}
        self._keyring = {name: key.dns_key() for name, key in self.keys.items()}
        self.clock = clock
        self.failures = 0

    def verify(self, data: bytes) -> Signed:
        """Check the request's TSIG; on failure raise Malformed with the NOTAUTH reply.

        RFC 8945 §5.2: an unknown key or algorithm → BADKEY, a wrong MAC →
        BADSIG (both replies unsigned); a time outside the fudge → BADTIME,
        signed, with our time in Other Data (§5.2.3).
        """
        try:
            msg = dns.message.from_wire(data, keyring=self._keyring)
        except dns.message.UnknownTSIGKey:
            raise self._error(data, dns.rcode.BADKEY, "unknown TSIG key") from None
        except dns.tsig.BadAlgorithm:
            raise self._error(data, dns.rcode.BADKEY, "unknown TSIG algorithm") from None
        except dns.tsig.BadSignature:
            raise self._error(data, dns.rcode.BADSIG, "bad TSIG signature") from None
        except dns.tsig.BadTime:
            raise self._error(data, dns.rcode.BADTIME, "TSIG time outside the fudge") from None
        except dns.exception.DNSException as exc:
            raise Malformed(None, f"unparsable signed message: {exc}") from exc
        assert msg.keyname is not None
        return Signed(msg, self.keys[msg.keyname])

    def sign(self, signed: Signed, replies: Sequence[bytes]) -> list[bytes]:
        """Sign our reply messages for the request (RFC 8945 §5.3; §5.3.1 for a stream)."""
        stream = self.stream(signed, multi=len(replies) > 1)
        return [stream.sign(wire) for wire in replies]

    def stream(self, signed: Signed, *, multi: bool = True) -> StreamSigner:
        """A signer for the replies to ``signed``, one message at a time, in order."""
        return StreamSigner(signed, int(self.clock()), multi)

    def _error(self, data: bytes, error: int, reason: str) -> Malformed:
        self.failures += 1
        try:
            query = dns.message.from_wire(data, keyring=False)
        except dns.exception.DNSException:
            return Malformed(None, reason)
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NOTAUTH)
        assert query.tsig is not None
        trd = query.tsig[0]
        keyname = query.keyname
        key = self._keyring.get(keyname) if keyname is not None else None
        if error == dns.rcode.BADTIME and key is not None:
            now = int(self.clock())
            response.use_tsig(
                key,
                fudge=FUDGE,
                original_id=query.id,
                tsig_error=error,
                other_data=now.to_bytes(6, "big"),
            )
            if query.mac is not None:
                response.request_mac = query.mac
        else:
            # Unsigned: the MAC is empty (RFC 8945 §5.3.2); the rest echoes the request.
            response.keyring = dns.tsig.Key(keyname or "unknown.", b"", trd.algorithm)
            rdata = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
                dns.rdataclass.ANY, dns.rdatatype.TSIG, trd.algorithm, trd.time_signed,
                trd.fudge, b"", query.id, error, b"",
            )  # fmt: skip
            response.tsig = dns.rrset.from_rdata(keyname or "unknown.", 0, rdata)
            response.want_tsig_sign = False
        return Malformed(response.to_wire(), reason)


def _append_tsig(wire: bytes, owner: bytes, rdata: bytes) -> bytes:
    """The message with a TSIG record (class ANY, TTL 0) after the rest; ARCOUNT + 1."""
    arcount = int.from_bytes(wire[10:12], "big") + 1
    record = owner + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata))
    return wire[:10] + arcount.to_bytes(2, "big") + wire[12:] + record + rdata


class StreamSigner:
    """Signs the messages answering one request in order: each MAC covers the previous
    one (RFC 8945 §5.3.1), so a zone transfer can be signed as it streams.

    The bytes are signed as they are and the TSIG record appended, rather than
    re-rendered by dnspython: that would merge a transfer's two SOA records.
    """

    def __init__(self, signed: Signed, now: int, multi: bool) -> None:
        key = signed.message.keyring
        assert isinstance(key, dns.tsig.Key)
        owner = key.name.to_wire()
        assert owner is not None
        self.key, self.owner, self.now, self.multi = key, owner, now, multi
        self.request_mac: bytes | None = signed.message.mac
        self.ctx: Any = None

    def sign(self, wire: bytes) -> bytes:
        key = self.key
        template = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
            dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm, self.now, FUDGE, b"",
            int.from_bytes(wire[:2], "big"), 0, b"",
        )  # fmt: skip
        rdata, self.ctx = dns.tsig.sign(  # type: ignore[no-untyped-call]
            wire, key, template, self.now, self.request_mac, self.ctx, self.multi
        )
        return _append_tsig(wire, self.owner, rdata.to_wire())
