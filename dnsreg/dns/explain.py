"""Why DNS answers what it answers: the reply to a question, then one verdict per instance.

Pure, next to the answer builder and built on it: the reply shown is the one
:func:`dnsreg.dns.answers.answer` gives now, and which instances are eligible
comes from :meth:`Registry.served` (health, maintenance, panic mode) — the
same rules the DNS server applies, not a copy of them. What is added here is
only the reading of that reply against each instance: in it, or why not.

``now`` is a parameter (lease times are compared with it); ``departed`` are
recent changes that removed instances (expired or deregistered), which the
registry itself no longer holds, handed in by the composition root.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dns.rdatatype

from dnsreg.core.errors import InvalidInput
from dnsreg.core.model import Health, Instance
from dnsreg.core.names import Name, is_subdomain, parse_name, relative, to_text
from dnsreg.core.registry import Change, ChangeKind, Registry
from dnsreg.dns.answers import Kind, Question, Reply, Settings, answer
from dnsreg.dns.records import AAAA, ANY, AXFR, IN, IXFR, SRV, TXT, A, Address, SRVData, Writer
from dnsreg.dns.wire import EDNS_UDP_LIMIT, RCODE_FOR_KIND
from dnsreg.dns.zones import StaticZones

OPT_RR_SIZE = 11  # an OPT record without options (RFC 6891 §6.1.2)


@dataclass(frozen=True, slots=True)
class Reason:
    """One finding about an instance: a stable ``code`` and a sentence for people."""

    code: str
    text: str


@dataclass(frozen=True, slots=True)
class Verdict:
    service: str
    id: str
    address: str
    port: int
    in_answer: bool
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "in_answer": self.in_answer,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
        }


@dataclass(frozen=True, slots=True)
class Explanation:
    name: str
    type: str
    rcode: str
    authoritative: bool
    answer: tuple[str, ...]
    authority: tuple[str, ...]
    additional: tuple[str, ...]
    ede: tuple[str, ...]
    why: tuple[str, ...]  # why the reply has this rcode / shape
    service: str | None
    instances: tuple[Verdict, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "rcode": self.rcode,
            "authoritative": self.authoritative,
            "answer": list(self.answer),
            "authority": list(self.authority),
            "additional": list(self.additional),
            "ede": list(self.ede),
            "why": list(self.why),
            "service": self.service,
            "instances": [v.to_json() for v in self.instances],
        }


@dataclass(frozen=True, slots=True)
class _Subject:
    """What a name in the dynamic zone asks for: a service, narrowed how."""

    service: str
    tags: tuple[str, ...] = ()
    instance: str | None = None  # <id>.<service>
    proto: str | None = None  # _<service>._<proto>


def parse_question(name: str, qtype: str) -> Question:
    """The question of ``GET /v1/explain?name=&type=``; bad input is :class:`InvalidInput`."""
    if not name:
        raise InvalidInput("name: give the DNS name to explain", field="name")
    try:
        rdtype = dns.rdatatype.from_text((qtype or "A").upper())
    except (dns.rdatatype.UnknownRdatatype, ValueError) as exc:
        raise InvalidInput(f"type: {qtype!r} is not a DNS record type", field="type") from exc
    try:
        qname = parse_name(name)
    except InvalidInput as exc:
        raise InvalidInput(f"name: {exc.message}", field="name") from exc
    # What dig sends: over UDP (so ANY gets the minimal RFC 8482 reply).
    return Question(qname, int(rdtype))


def explain(
    q: Question,
    registry: Registry,
    static: StaticZones,
    settings: Settings,
    rng: random.Random,
    *,
    now: float,
    departed: Iterable[Change] = (),
) -> Explanation:
    reply = answer(q, registry, static, settings, rng)
    departed = [c for c in departed if c.after is None]
    why: list[str] = []
    origin = settings.origin
    qtext = to_text(q.name)
    type_text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(q.qtype))
    gone = {c.service for c in departed}
    subject = _subject(q.name, registry, settings, gone)
    shadow = _shadowing_zone(q.name, static, settings)
    if reply.kind is Kind.REFUSED:
        why.append(_refused_why(q, static, settings, registry))
    elif shadow is not None:
        why.append(
            f"{qtext} lies in the static zone {to_text(shadow[0])} ({shadow[1]}), "
            f"which is answered from its zone file, not from the registry"
        )
    elif reply.kind is Kind.NXDOMAIN:
        why.append(_nxdomain_why(q.name, registry, settings))
        if subject is not None and not registry.has_service(subject.service):
            why.append(f"the last instances of {subject.service!r} left recently (see below)")
    elif reply.kind is Kind.NODATA:
        if subject is not None:
            why.append(f"no {type_text} records for {qtext}: no instance is served under it now")
        else:
            why.append(f"{qtext} exists, but has no {type_text} records")
    elif reply.kind is Kind.REFERRAL:
        why.append(f"{qtext} is delegated to other name servers (see AUTHORITY)")
    elif subject is None and is_subdomain(q.name, origin):
        why.append(f"{qtext} is a static record or the zone's own data")
    if _truncated_over_udp(q, reply):
        why.append(
            f"the reply is larger than {EDNS_UDP_LIMIT} bytes: over UDP it is truncated "
            "(TC set) and resolvers retry over TCP (RFC 7766 §5)"
        )
    verdicts: tuple[Verdict, ...] = ()
    if subject is not None:
        verdicts = _verdicts(q, reply, registry, settings, subject, shadow, now, departed)
    return Explanation(
        name=qtext,
        type=type_text,
        rcode=RCODE_FOR_KIND[reply.kind].name,
        authoritative=reply.authoritative,
        answer=tuple(r.text() for r in reply.answer),
        authority=tuple(r.text() for r in reply.authority),
        additional=tuple(r.text() for r in reply.additional),
        ede=tuple(f"{code}: {text}" for code, text in reply.ede),
        why=tuple(why),
        service=subject.service if subject is not None else None,
        instances=verdicts,
    )


# ------------------------------------------------------------------ routing
def _subject(
    qname: Name, registry: Registry, settings: Settings, gone: set[str]
) -> _Subject | None:
    """Which service a name in the dynamic zone is about (the answer builder's own names).

    A service whose last instances left recently (``gone``) is still the subject, so
    "why is it gone" has an answer.
    """
    if not is_subdomain(qname, settings.origin):
        return None
    rel = relative(qname, settings.origin)
    if not rel:
        return None
    service = rel[-1]
    left = rel[:-1]
    if not registry.has_service(service) and service in gone:
        return _Subject(service, tags=left)
    if registry.has_service(service):
        if len(left) == 1 and registry.get(service, left[0]) is not None:
            return _Subject(service, instance=left[0])
        return _Subject(service, tags=left)
    if len(rel) == 2 and rel[1] in ("_tcp", "_udp") and rel[0].startswith("_"):
        service = rel[0][1:]
        if registry.has_service(service):
            return _Subject(service, proto=rel[1][1:])
    return None


def _shadowing_zone(
    qname: Name, static: StaticZones, settings: Settings
) -> tuple[Name, str] | None:
    """A static zone below the dynamic zone that holds ``qname``: it wins (longest origin)."""
    zone = static.find(qname)
    if zone is None or not is_subdomain(qname, settings.origin):
        return None
    if len(zone.origin) <= len(settings.origin):
        return None
    return zone.origin, zone.source


def _refused_why(q: Question, static: StaticZones, settings: Settings, registry: Registry) -> str:
    if q.qclass not in (IN, ANY):
        return "only class IN is served"
    if q.qtype in (AXFR, IXFR):
        return "zone transfers are not offered (RFC 5936 §2.2.1 allows REFUSED)"
    zones = sorted({to_text(settings.origin), *(to_text(z) for z in static.zones)})
    text = f"{to_text(q.name)} is in no zone this server is authoritative for ({', '.join(zones)})"
    if q.name and registry.has_service(q.name[0]):
        text += f"; did you mean {to_text((q.name[0], *settings.origin))}?"
    return text


def _nxdomain_why(qname: Name, registry: Registry, settings: Settings) -> str:
    rel = relative(qname, settings.origin)
    service = rel[-1]
    if registry.has_service(service):
        left = rel[:-1]
        if len(left) == 1:
            return (
                f"service {service!r} has no instance with id {left[0]!r} "
                f"and no instance tagged {left[0]!r}"
            )
        return f"no instance of {service!r} carries every tag of {'.'.join(left)}"
    return f"no service {service!r} is registered in {to_text(settings.origin)}"


def _truncated_over_udp(q: Question, reply: Reply) -> bool:
    """Would the answer and authority sections overflow a 1232-byte EDNS reply?"""
    w = Writer(bytes(12))
    w.name(q.name)
    w.buf += bytes(4)
    for record in (*reply.answer, *reply.authority):
        w.record(record)
    return len(w.buf) > EDNS_UDP_LIMIT - OPT_RR_SIZE


# ------------------------------------------------------------------ verdicts
def _verdicts(
    q: Question,
    reply: Reply,
    registry: Registry,
    settings: Settings,
    subject: _Subject,
    shadow: tuple[Name, str] | None,
    now: float,
    departed: Iterable[Change],
) -> tuple[Verdict, ...]:
    service = subject.service
    everything = sorted(registry.instances(service).values(), key=lambda i: i.reg.id)
    pool = _pool(registry, subject, everything)
    pool_ids = {i.reg.id for i in pool}
    served = registry.served(service, pool)
    served_ids = {i.reg.id for i in served.instances}
    panic_reason = _panic_reason(registry, service) if served.panic else None
    addresses = {
        r.rdata.address
        for r in reply.answer
        if r.rtype in (A, AAAA) and r.owner == q.name and isinstance(r.rdata, Address)
    }
    targets = {r.rdata.target for r in reply.answer if isinstance(r.rdata, SRVData)}
    type_text = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(q.qtype))
    out = []
    for instance in everything:
        reg = instance.reg
        reasons: list[Reason] = []
        target = (reg.id, reg.service, *settings.origin)
        hit = reg.address in addresses or target in targets
        if q.qtype == TXT and subject.instance == reg.id:
            hit = any(r.rtype == TXT for r in reply.answer)
        in_answer = hit and shadow is None
        if shadow is not None:
            reasons.append(
                Reason(
                    "static_clash",
                    f"name clash: {to_text(q.name)} is answered from the static zone "
                    f"{to_text(shadow[0])} ({shadow[1]}), never from the registry",
                )
            )
        elif reg.id not in pool_ids:
            reasons.append(_not_in_pool(subject, instance))
        elif reg.id in served_ids:
            if panic_reason is not None and not instance.served:
                reasons.append(panic_reason)
            if not in_answer:
                reasons.append(_served_but_absent(q, reply, instance, settings, type_text))
        else:
            reasons.extend(_unhealthy(instance, now))
            if served.panic:
                reasons.append(
                    Reason(
                        "panic",
                        "panic mode serves every live instance, but not one in maintenance "
                        "or whose checks have not run yet",
                    )
                )
        lease = _lease_note(instance, now)
        if lease is not None:
            reasons.append(lease)
        out.append(Verdict(service, reg.id, str(reg.address), reg.port, in_answer, tuple(reasons)))
    present = {i.reg.id for i in everything}
    gone: dict[str, Change] = {}
    for change in departed:
        if change.service == service and change.after is None and change.id not in present:
            gone[change.id] = change  # the latest removal of each id wins
    for instance_id, change in sorted(gone.items()):
        before = change.before
        if before is None:
            continue
        if change.kind is ChangeKind.EXPIRED:
            expired_at = before.deadline if before.deadline is not None else now
            reason = Reason(
                "lease_expired",
                f"lease expired at {_when(expired_at, now)} without a heartbeat; "
                f"removed at revision {change.revision}",
            )
        else:
            reason = Reason("deregistered", f"deregistered at revision {change.revision}")
        out.append(
            Verdict(
                service, instance_id, str(before.reg.address), before.reg.port, False, (reason,)
            )
        )
    return tuple(out)


def _pool(registry: Registry, subject: _Subject, everything: Sequence[Instance]) -> list[Instance]:
    """The instances the name selects, the way the answer builder selects them."""
    if subject.instance is not None:
        instance = registry.get(subject.service, subject.instance)
        return [instance] if instance is not None else []
    if subject.proto is not None:
        return [i for i in everything if i.reg.proto == subject.proto]
    if subject.tags:
        return registry.tagged(subject.service, subject.tags)
    return list(everything)


def _not_in_pool(subject: _Subject, instance: Instance) -> Reason:
    reg = instance.reg
    if subject.instance is not None:
        return Reason(
            "other_name",
            f"not asked for: the name is that of instance {subject.instance!r} alone",
        )
    if subject.proto is not None:
        return Reason(
            "proto_mismatch", f"its protocol is {reg.proto}, the name asks for {subject.proto}"
        )
    missing = [t for t in subject.tags if t not in reg.tags]
    have = ", ".join(reg.tags) or "none"
    return Reason(
        "tag_mismatch",
        f"tag mismatch: lacks tag(s) {', '.join(missing)} (has: {have})",
    )


def _unhealthy(instance: Instance, now: float) -> list[Reason]:
    reasons = []
    if instance.maintenance is not None:
        reasons.append(Reason("maintenance", f'in maintenance ("{instance.maintenance}")'))
    for n, (check, status) in enumerate(zip(instance.reg.checks, instance.checks, strict=False)):
        label = f"check c{n} ({check.kind} {check.target})"
        if status.pending:
            reasons.append(
                Reason("check_pending", f"{label} has not run yet: served once it passes")
            )
        elif status.state is Health.CRITICAL:
            since = status.critical_since if status.critical_since is not None else status.last_run
            when = _when(since, now) if since is not None else "an unknown time"
            reasons.append(
                Reason("check_critical", f"{label} critical since {when}: {status.output}")
            )
    if not reasons:
        reasons.append(Reason("not_served", "not served"))
    return reasons


def _panic_reason(registry: Registry, service: str) -> Reason:
    judged = [i for i in registry.instances(service).values() if i.judged]
    healthy = sum(i.served for i in judged)
    threshold = registry.panic_threshold or 0.0
    return Reason(
        "panic",
        f"panic mode: served although {_worst(judged)}, because only {healthy} of "
        f"{len(judged)} checked instances are healthy (below the panic threshold "
        f"{threshold:g})",
    )


def _worst(instances: Sequence[Instance]) -> str:
    return "critical" if any(not i.health.served for i in instances) else "unhealthy"


def _served_but_absent(
    q: Question, reply: Reply, instance: Instance, settings: Settings, type_text: str
) -> Reason:
    version = instance.reg.address.version
    if q.qtype in (A, AAAA) and (4 if q.qtype == A else 6) != version:
        other = "AAAA" if version == 6 else "A"
        return Reason(
            "address_family",
            f"served, but its address is IPv{version}: it is in {other} answers, not {type_text}",
        )
    cap = settings.max_answers
    if q.qtype in (A, AAAA, ANY) and cap is not None and reply.kind is Kind.ANSWER:
        return Reason(
            "not_chosen",
            f"served, but not chosen this time: A/AAAA answers are capped at {cap} "
            f"(max_answers), and each query draws its own subset by weight",
        )
    if q.qtype not in (A, AAAA, SRV, ANY):
        return Reason("no_such_type", f"served, but service names have no {type_text} records")
    return Reason("not_in_reply", "served, but not in this reply")


def _lease_note(instance: Instance, now: float) -> Reason | None:
    deadline = instance.deadline
    if deadline is None:
        return None
    if deadline <= now:
        return Reason(
            "lease_expired",
            f"lease expired at {_when(deadline, now)} and it is still registered: "
            "lease expiry is paused (self-preservation) or about to remove it",
        )
    return Reason("lease", f"lease ends in {deadline - now:.1f}s unless renewed")


def _when(t: float, now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")
    ago = now - t
    return f"{stamp.replace('+00:00', 'Z')} ({ago:.0f}s ago)" if ago >= 0 else stamp
