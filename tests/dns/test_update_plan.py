"""The pure UPDATE planner (dns/update), table-driven: an update as text → writes or an rcode.

Each case is the PREREQ and UPDATE sections of an RFC 2136 update in master-file
form (dnspython's message text: class ANY / NONE are the RFC's deletes and
prerequisites), judged against the registry below; the outcome is the rcode the
reply would carry and, on NOERROR, the writes in the order the store gets them.
"""

from __future__ import annotations

import ipaddress
import struct

import dns.edns
import dns.message
import pytest

from dnsreg.core.admission import AdmissionPolicy, parse_networks
from dnsreg.core.errors import DnsregError
from dnsreg.core.model import Deregistration, Registration, Write
from dnsreg.core.names import parse_name
from dnsreg.core.registry import ChangeKind, Registry
from dnsreg.dns import update
from dnsreg.dns.answers import Settings
from dnsreg.dns.wire import rcode_for_error
from dnsreg.dns.zones import StaticZones, zones_from_text
from tests.helpers import FakeClock

ORIGIN = parse_name("service.local")
Z = "service.local."
STATIC = """
$TTL 60
docs    IN A 192.0.2.80
"""


def registry(now: float = 0) -> Registry:
    r = Registry()
    r.register(
        Registration(
            "web", "web-1", ipaddress.ip_address("10.0.0.5"), 8080,
            tags=("eu",), meta=(("version", "1"),), dns_ttl=60,
        ),
        now,
    )  # fmt: skip
    r.register(Registration("db", "db-1", ipaddress.ip_address("10.0.2.1"), 5432), now)
    r.set_maintenance("db", "db-1", "deploy")  # registered, but DNS serves nothing of it
    return r


def view(reg: Registry | None = None, **kw: object) -> update.View:
    local = zones_from_text(STATIC, "service.local", ORIGIN)
    static = StaticZones({local.origin: local})
    return update.View(reg or registry(), static, Settings(origin=ORIGIN), **kw)  # type: ignore[arg-type]


def message(prereq: str = "", updates: str = "", zone: str = Z) -> dns.message.Message:
    lines = ["id 1", "opcode UPDATE", ";ZONE", f"{zone} IN SOA", ";PREREQ", prereq, ";UPDATE"]
    text = "\n".join([*lines, updates])
    # dnspython's reader stops at a blank line: drop them.
    return dns.message.from_text("\n".join(x for x in text.splitlines() if x.strip()))


def outcome(msg: dns.message.Message, v: update.View | None = None) -> str | list[str]:
    try:
        plan = update.plan(msg, v or view())
    except DnsregError as exc:
        return rcode_for_error(exc).name
    return [describe(w) for w in plan.writes]


def describe(w: Write) -> str:
    if isinstance(w, Deregistration):
        return f"deregister {w.service}/{w.id}"
    meta = ",".join(f"{k}={v}" for k, v in w.meta)
    tags = ",".join(w.tags)
    return (
        f"register {w.service}/{w.id} {w.address}:{w.port} {w.proto} p{w.priority} w{w.weight} "
        f"ttl={w.ttl:g} dns_ttl={w.dns_ttl} meta={meta} tags={tags}"
    )


ADD_WEB9 = f"""
web-9.web.{Z} 30 IN SRV 1 5 8081 web-9.web.{Z}
web-9.web.{Z} 30 IN A 10.0.0.9
"""

CASES: list[tuple[str, str, str, str | list[str]]] = [
    # (what, prerequisites, updates, outcome)
    (
        "add SRV + A registers",
        "",
        ADD_WEB9,
        ["register web/web-9 10.0.0.9:8081 tcp p1 w5 ttl=30 dns_ttl=30 meta= tags="],
    ),
    (
        "TXT key=value strings are the meta",
        "",
        ADD_WEB9 + f'web-9.web.{Z} 30 IN TXT "a=1" "b"',
        ["register web/web-9 10.0.0.9:8081 tcp p1 w5 ttl=30 dns_ttl=30 meta=a=1,b= tags="],
    ),
    (
        "the DNS-SD instance name gives the protocol",
        "",
        f"web-9._web._udp.{Z} 30 IN SRV 0 1 53 web-9.web.{Z}\nweb-9.web.{Z} 30 IN A 10.0.0.9",
        ["register web/web-9 10.0.0.9:53 udp p0 w1 ttl=30 dns_ttl=30 meta= tags="],
    ),
    (
        "an AAAA at an in-zone SRV target that is no instance name",
        "",
        f"web-9.web.{Z} 30 IN SRV 0 1 80 host9.{Z}\nhost9.{Z} 30 IN AAAA 2001:db8::9",
        ["register web/web-9 2001:db8::9:80 tcp p0 w1 ttl=30 dns_ttl=30 meta= tags="],
    ),
    (
        "re-adding an instance keeps its tags and meta (renewal)",
        "",
        f"web-1.web.{Z} 60 IN SRV 0 1 8080 web-1.web.{Z}\nweb-1.web.{Z} 60 IN A 10.0.0.5",
        ["register web/web-1 10.0.0.5:8080 tcp p0 w1 ttl=30 dns_ttl=60 meta=version=1 tags=eu"],
    ),
    (
        "changing only the address of an instance",
        "",
        f"web-1.web.{Z} 60 IN A 10.0.0.50",
        ["register web/web-1 10.0.0.50:8080 tcp p0 w1 ttl=30 dns_ttl=60 meta=version=1 tags=eu"],
    ),
    (
        "delete all RRsets from the name deregisters",
        "",
        f"web-1.web.{Z} 0 ANY ANY",
        ["deregister web/web-1"],
    ),
    (
        "deleting the SRV RRset deregisters",
        "",
        f"web-1.web.{Z} 0 ANY SRV",
        ["deregister web/web-1"],
    ),
    (
        "deleting the TXT RRset clears the meta only",
        "",
        f"web-1.web.{Z} 0 ANY TXT",
        ["register web/web-1 10.0.0.5:8080 tcp p0 w1 ttl=30 dns_ttl=60 meta= tags=eu"],
    ),
    (
        "deleting the very A record deregisters",
        "",
        f"web-1.web.{Z} 0 NONE A 10.0.0.5",
        ["deregister web/web-1"],
    ),
    (
        "deleting an A record it does not have changes nothing but renews",
        "",
        f"web-1.web.{Z} 0 NONE A 10.9.9.9",
        ["register web/web-1 10.0.0.5:8080 tcp p0 w1 ttl=30 dns_ttl=60 meta=version=1 tags=eu"],
    ),
    ("deleting a name that does not exist: nothing to do", "", f"web-7.web.{Z} 0 ANY ANY", []),
    (
        "delete then add in one update replaces",
        "",
        f"web-1.web.{Z} 0 ANY ANY\n" + ADD_WEB9.replace("web-9", "web-1"),
        ["register web/web-1 10.0.0.9:8081 tcp p1 w5 ttl=30 dns_ttl=30 meta= tags=eu"],
    ),
    (
        "two instances at once",
        "",
        ADD_WEB9 + f"web-1.web.{Z} 0 ANY ANY",
        [
            "register web/web-9 10.0.0.9:8081 tcp p1 w5 ttl=30 dns_ttl=30 meta= tags=",
            "deregister web/web-1",
        ],
    ),
    # RFC 2136 §2.4 prerequisites, judged by what DNS serves now.
    ("name is in use: holds", f"web-1.web.{Z} 0 ANY ANY", ADD_WEB9, "one write"),
    ("name is in use: fails with NXDOMAIN", f"web-7.web.{Z} 0 ANY ANY", ADD_WEB9, "NXDOMAIN"),
    ("name not in use: fails with YXDOMAIN", f"web-1.web.{Z} 0 NONE ANY", ADD_WEB9, "YXDOMAIN"),
    ("name not in use: holds", f"web-9.web.{Z} 0 NONE ANY", ADD_WEB9, "one write"),
    (
        "an instance in maintenance is served nothing: not in use",
        f"db-1.db.{Z} 0 NONE ANY",
        ADD_WEB9,
        "one write",
    ),
    ("RRset exists: fails with NXRRSET", f"web-1.web.{Z} 0 ANY AAAA", ADD_WEB9, "NXRRSET"),
    ("RRset exists: holds", f"web-1.web.{Z} 0 ANY SRV", ADD_WEB9, "one write"),
    ("RRset does not exist: fails with YXRRSET", f"web-1.web.{Z} 0 NONE A", ADD_WEB9, "YXRRSET"),
    ("value-dependent: equal", f"web-1.web.{Z} 0 IN A 10.0.0.5", ADD_WEB9, "one write"),
    ("value-dependent: different", f"web-1.web.{Z} 0 IN A 10.0.0.6", ADD_WEB9, "NXRRSET"),
    (
        "value-dependent SRV",
        f"web-1.web.{Z} 0 IN SRV 0 1 8080 web-1.web.{Z}",
        ADD_WEB9,
        "one write",
    ),
    ("a static zone name exists for prerequisites too", f"docs.{Z} 0 ANY A", ADD_WEB9, "one write"),
    (
        "a prerequisite with a TTL is malformed",
        f"web-1.web.{Z} 5 IN A 10.0.0.5",
        ADD_WEB9,
        "FORMERR",
    ),
    ("a prerequisite outside the zone", "web-1.example.org. 0 ANY ANY", ADD_WEB9, "NOTZONE"),
    # Names that are not instances, and incomplete or refused data.
    ("the zone apex", "", f"{Z} 30 IN A 10.0.0.1", "REFUSED"),
    ("the service name itself", "", f"web.{Z} 30 IN A 10.0.0.1", "REFUSED"),
    ("the server's own ns name", "", f"ns.{Z} 30 IN A 10.0.0.1", "REFUSED"),
    ("a static name", "", f"docs.{Z} 30 IN A 10.0.0.1", "REFUSED"),
    ("a deeper name", "", f"a.web-1.web.{Z} 30 IN A 10.0.0.1", "REFUSED"),
    ("an MX at an instance name", "", f"web-1.web.{Z} 30 IN MX 10 mx.{Z}", "REFUSED"),
    (
        "a new instance without an address",
        "",
        f"web-9.web.{Z} 30 IN SRV 0 1 80 web-9.web.{Z}",
        "REFUSED",
    ),
    ("a new instance without a port", "", f"web-9.web.{Z} 30 IN A 10.0.0.9", "REFUSED"),
    (
        "two addresses for one instance",
        "",
        ADD_WEB9 + f"web-9.web.{Z} 30 IN A 10.0.0.10",
        "REFUSED",
    ),
    (
        "the unspecified address is refused by admission",
        "",
        ADD_WEB9.replace("10.0.0.9", "0.0.0.0"),
        "REFUSED",
    ),
    (
        "a second part refused refuses the whole update",
        "",
        ADD_WEB9 + f"web.{Z} 30 IN A 10.0.0.1",
        "REFUSED",
    ),
    ("an update record outside the zone", "", "x.example.org. 30 IN A 10.0.0.1", "NOTZONE"),
    # (dnspython drops the TTL of an RR without data, so only these can be checked.)
    ("a delete with a TTL is malformed", "", f"web-1.web.{Z} 30 NONE A 10.0.0.5", "FORMERR"),
    ("an A and an AAAA: two addresses", "", ADD_WEB9 + f"web-9.web.{Z} 30 IN AAAA ::9", "REFUSED"),
    ("an orphan TXT", "", f'web-9.web.{Z} 30 IN TXT "a=1"', "REFUSED"),
]


@pytest.mark.parametrize(
    ("prereq", "updates", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_plan(prereq: str, updates: str, expected: str | list[str]) -> None:
    got = outcome(message(prereq, updates))
    if expected == "one write":
        assert isinstance(got, list), got
        assert len(got) == 1, got
    else:
        assert got == expected


def test_an_update_of_another_zone_is_notauth() -> None:
    assert outcome(message("", ADD_WEB9, zone="example.org.")) == "NOTAUTH"


def test_admission_networks_apply_as_over_http() -> None:
    policy = AdmissionPolicy(allowed_networks=parse_networks(["192.168.0.0/16"]))
    assert outcome(message("", ADD_WEB9), view(policy=policy)) == "REFUSED"
    inside = ADD_WEB9.replace("10.0.0.9", "192.168.1.9")
    assert outcome(message("", inside), view(policy=policy)) != "REFUSED"


def lease_message(data: bytes) -> dns.message.Message:
    msg = message("", ADD_WEB9)
    msg.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.make(2), data)])
    return msg


@pytest.mark.parametrize(
    ("data", "ttl", "granted"),
    [
        (struct.pack("!I", 2), 2.0, update.Lease(2)),
        (struct.pack("!I", 0), 1.0, update.Lease(1)),  # below 1 s: the shortest lease
        (struct.pack("!I", 10**6), 86400.0, update.Lease(86400)),  # above 24 h: a day
        (struct.pack("!II", 600, 7200), 600.0, update.Lease(600, 7200)),  # LEASE + KEY-LEASE
    ],
)
def test_the_update_lease_option_is_the_lease(
    data: bytes, ttl: float, granted: update.Lease
) -> None:
    plan = update.plan(lease_message(data), view())
    (write,) = plan.writes
    assert isinstance(write, Registration)
    assert write.ttl == ttl
    assert plan.granted == granted


def test_a_lease_option_of_the_wrong_length_is_formerr() -> None:
    assert outcome(lease_message(b"\0\0\0")) == "FORMERR"


def test_without_the_option_the_default_ttl() -> None:
    plan = update.plan(message("", ADD_WEB9), view(default_ttl=45.0))
    assert [w.ttl for w in plan.writes if isinstance(w, Registration)] == [45.0]
    assert plan.granted is None


def test_a_granted_lease_expires_on_the_fake_clock_and_a_repeat_renews_it() -> None:
    clock = FakeClock()
    reg = registry(clock())
    msg = lease_message(struct.pack("!I", 2))
    reg.apply_all(update.plan(msg, view(reg)).writes, clock())
    clock.advance(1.5)
    # The same update again: a re-registration, which renews (SPEC §3).
    (change,) = reg.apply_all(update.plan(msg, view(reg)).writes, clock())
    assert change.kind is ChangeKind.REPLACED
    clock.advance(1.5)
    assert reg.expire_due(clock()) == []
    clock.advance(0.5)
    (gone,) = reg.expire_due(clock())
    assert (gone.kind, gone.id) == (ChangeKind.EXPIRED, "web-9")
    assert outcome(message(f"web-9.web.{Z} 0 ANY ANY", ""), view(reg)) == "NXDOMAIN"


def test_apply_all_takes_everything_back_when_one_write_is_refused() -> None:
    reg = registry()
    revision, web_revision = reg.revision, reg.service_revision("web")
    plan = update.plan(message("", ADD_WEB9), view(reg))
    gone = Deregistration("web", "never-registered")
    with pytest.raises(DnsregError):
        reg.apply_all([*plan.writes, Deregistration("web", "web-1"), gone], 10)
    assert (reg.revision, reg.service_revision("web")) == (revision, web_revision)
    assert reg.get("web", "web-9") is None
    assert reg.get("web", "web-1") is not None
    assert reg.tagged("web", ("eu",))[0].reg.id == "web-1"
