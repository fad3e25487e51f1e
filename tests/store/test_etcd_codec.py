"""The etcd store's pure half: keys, values, events → Changes, resync diffs, placement."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest

from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError
from dnsreg.core.model import Check, CheckStatus, Health, Instance, Registration
from dnsreg.core.registry import ChangeKind
from dnsreg.store.etcd import parse_url
from dnsreg.store.etcd_codec import (
    CodecError,
    Event,
    KeyValue,
    Layout,
    ParsedKey,
    Snapshot,
    Stored,
    b64,
    changes_for_revision,
    encode_cause,
    group_by_revision,
    prefix_end,
    rendezvous_owner,
    resync_changes,
    snapshot,
)

L = Layout("/dnsreg/")
NOW = 1000.0


def reg(service: str = "web", id: str = "web-1", **kw: object) -> Registration:
    values: dict[str, object] = {"address": ipaddress.ip_address("10.0.0.5"), "port": 80}
    values.update(kw)
    return Registration(service=service, id=id, **values)  # type: ignore[arg-type]


def stored(r: Registration, op: str = "register", **kw: object) -> Stored:
    return Stored(reg=r, registered_at=NOW, op=op, token="t", lease_ttl=30, **kw)  # type: ignore[arg-type]


def put(
    r: Registration, revision: int, op: str = "register", lease: int = 7, **kw: object
) -> Event:
    key = L.instance_key(r.service, r.id)
    value = stored(r, op, **kw).encode()
    return Event("put", KeyValue(key, value, mod_revision=revision, lease=lease))


def delete(service: str, id: str, revision: int) -> Event:
    return Event("delete", KeyValue(L.instance_key(service, id), mod_revision=revision))


def cause(service: str, id: str, revision: int) -> Event:
    return Event(
        "put", KeyValue(L.cause_key, encode_cause(service, id, "t"), mod_revision=revision)
    )


# ------------------------------------------------------------------------- keys
@pytest.mark.parametrize(
    ("prefix", "end"),
    [(b"/a/", b"/a0"), (b"a\xff", b"b"), (b"a\xff\xff", b"b"), (b"\xff", b"\0"), (b"", b"\0")],
)
def test_prefix_end_increments_the_last_byte_with_carry(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_layout_keys_round_trip_and_foreign_keys_are_ignored() -> None:
    assert Layout.from_path("/team/dnsreg").prefix == "/team/dnsreg/"
    assert Layout.from_path("").prefix == "/dnsreg/"
    assert L.parse(L.instance_key("web", "a")) == ParsedKey("instance", "web", "a")
    assert L.parse(L.node_key("n1")) == ParsedKey("node", id="n1")
    assert L.parse(L.cause_key) == ParsedKey("cause")
    for foreign in (b"/other/instances/web/a", b"/dnsreg/instances/web", b"/dnsreg/x", b"\xff"):
        assert L.parse(foreign) is None
    start, end = L.everything
    assert start <= L.instance_key("zzz", "zzz") < end
    assert start <= L.cause_key < end


def test_url_gives_http_endpoints_and_a_prefix() -> None:
    endpoints, prefix = parse_url("etcd://127.0.0.1:2379,10.0.0.2:22379/dnsreg")
    assert endpoints == ["http://127.0.0.1:2379", "http://10.0.0.2:22379"]
    assert prefix == "/dnsreg/"
    for bad in ("etcd:///x", "etcd://host/x", "etcd://host:99999/x", "sqlite:///x"):
        with pytest.raises(ConfigError):
            parse_url(bad)


# ----------------------------------------------------------------------- values
def test_stored_value_round_trips_everything_the_registry_serves() -> None:
    r = reg(
        tags=("primary",),
        meta=(("v", "2"),),
        ttl=10.0,
        checks=(Check(kind="http", target="http://10.0.0.5/h", interval=5.0),),
    )
    value = Stored(
        reg=r,
        registered_at=NOW,
        op="health",
        token="abc",
        lease_ttl=10,
        maintenance="deploy",
        checks=(CheckStatus(state=Health.PASSING, output="200 OK", consecutive=3),),
    )
    assert Stored.decode(value.encode()) == value


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"{}", b'{"v": 99}', b'{"v": 1, "op": "dance"}', b"[1]"]
)
def test_values_dnsreg_did_not_write_are_refused_by_name(raw: bytes) -> None:
    with pytest.raises(CodecError):
        Stored.decode(raw)


def test_gateway_json_omits_defaults_and_sends_numbers_as_strings() -> None:
    kv = KeyValue.from_json({"key": b64(b"k"), "mod_revision": "42"})
    assert kv == KeyValue(b"k", b"", 0, 42, 0, 0)
    assert Event.from_json({"kv": {"key": b64(b"k")}}).type == "put"
    assert Event.from_json({"type": "DELETE", "kv": {"key": b64(b"k")}}).type == "delete"


def test_a_watch_response_may_hold_several_revisions() -> None:
    events = [put(reg(id="a"), 5), put(reg(id="b"), 6), delete("web", "b", 7), cause("web", "b", 7)]
    assert [(rev, len(group)) for rev, group in group_by_revision(events)] == [
        (5, 1), (6, 1), (7, 2),
    ]  # fmt: skip


# --------------------------------------------------------------- events → Changes
def mirror(*instances: Instance) -> dict[tuple[str, str], Instance]:
    return {(i.reg.service, i.reg.id): i for i in instances}


def lookup_in(m: dict[tuple[str, str], Instance]):  # type: ignore[no-untyped-def]
    return lambda service, id: m.get((service, id))


def test_put_of_a_new_key_registers_and_a_second_register_replaces() -> None:
    r = reg()
    delta = changes_for_revision(L, 5, [put(r, 5)], lookup_in({}), NOW)
    (change,) = delta.changes
    assert change.kind is ChangeKind.REGISTERED
    assert change.revision == 5
    assert change.after is not None
    assert change.after.revision == 5
    assert change.after.deadline == NOW + 30  # the granted TTL, as this node estimates it
    assert delta.leases == {("web", "web-1"): (7, 30)}
    m = mirror(change.after)
    (again,) = changes_for_revision(L, 6, [put(r, 6)], lookup_in(m), NOW).changes
    assert again.kind is ChangeKind.REPLACED
    assert again.before == change.after


@pytest.mark.parametrize(
    ("op", "kind"), [("maintenance", ChangeKind.MAINTENANCE), ("health", ChangeKind.HEALTH)]
)
def test_the_op_in_the_value_names_the_change(op: str, kind: ChangeKind) -> None:
    r = reg()
    before = stored(r).to_instance(5, NOW)
    (change,) = changes_for_revision(L, 6, [put(r, 6, op)], lookup_in(mirror(before)), NOW).changes
    assert change.kind is kind


def test_a_delete_with_the_cause_key_is_a_deregistration_without_it_an_expiry() -> None:
    a, b = stored(reg(id="a")).to_instance(5, NOW), stored(reg(id="b")).to_instance(5, NOW)
    m = mirror(a, b)
    (dereg,) = changes_for_revision(
        L, 8, [delete("web", "a", 8), cause("web", "a", 8)], lookup_in(m), NOW
    ).changes
    assert dereg.kind is ChangeKind.DEREGISTERED
    assert dereg.before == a
    assert dereg.after is None
    (expired,) = changes_for_revision(L, 9, [delete("web", "b", 9)], lookup_in(m), NOW).changes
    assert expired.kind is ChangeKind.EXPIRED
    # A cause naming another instance does not turn an expiry into a deregistration.
    (other,) = changes_for_revision(
        L, 9, [delete("web", "b", 9), cause("web", "a", 9)], lookup_in(m), NOW
    ).changes
    assert other.kind is ChangeKind.EXPIRED


def test_unknown_deletes_are_ignored_and_bad_values_reported_not_applied() -> None:
    delta = changes_for_revision(L, 5, [delete("web", "ghost", 5)], lookup_in({}), NOW)
    assert delta.changes == []
    assert delta.leases == {("web", "ghost"): None}
    bad = Event("put", KeyValue(L.instance_key("web", "x"), b"garbage", mod_revision=6))
    wrong_name = put(reg(id="y"), 6)
    wrong_name = Event(
        "put", KeyValue(L.instance_key("web", "z"), wrong_name.kv.value, mod_revision=6)
    )
    delta = changes_for_revision(L, 6, [bad, wrong_name], lookup_in({}), NOW)
    assert delta.changes == []
    assert sorted(delta.undecodable) == [L.instance_key("web", "x"), L.instance_key("web", "z")]


def test_node_keys_come_and_go() -> None:
    events = [
        Event("put", KeyValue(L.node_key("n1"), b"{}", mod_revision=3)),
        Event("delete", KeyValue(L.node_key("n0"), mod_revision=3)),
    ]
    delta = changes_for_revision(L, 3, events, lookup_in({}), NOW)
    assert delta.nodes_up == {"n1": b"{}"}
    assert delta.nodes_down == {"n0"}
    assert not delta.changes


# ------------------------------------------------------------------------ resync
def test_resync_turns_the_mirror_into_the_snapshot_with_the_snapshot_revision() -> None:
    kept = stored(reg(id="kept")).to_instance(5, NOW)
    gone = stored(reg(id="gone")).to_instance(5, NOW)
    dereg = stored(reg(id="dereg")).to_instance(5, NOW)
    moved = stored(reg(id="moved")).to_instance(5, NOW)
    sick = stored(reg(id="sick", checks=(Check("tcp", "h:1"),)), checks=(CheckStatus(),))
    sick_before = sick.to_instance(5, NOW)
    kvs = [
        KeyValue(L.instance_key("web", "kept"), stored(reg(id="kept")).encode(), mod_revision=5),
        KeyValue(
            L.instance_key("web", "moved"),
            stored(reg(id="moved", port=81)).encode(),
            mod_revision=9,
        ),
        KeyValue(
            L.instance_key("web", "sick"),
            stored(
                reg(id="sick", checks=(Check("tcp", "h:1"),)),
                checks=(CheckStatus(state=Health.PASSING),),
            ).encode(),
            mod_revision=11,
        ),
        KeyValue(L.instance_key("web", "new"), stored(reg(id="new")).encode(), mod_revision=10),
        KeyValue(L.cause_key, encode_cause("web", "dereg", "t"), mod_revision=12),
        KeyValue(L.node_key("n1"), b"{}", mod_revision=2),
    ]
    snap = snapshot(L, 20, kvs, NOW)
    assert snap.nodes == {"n1": b"{}"}
    assert snap.last_deregistered == ("web", "dereg")
    changes = resync_changes([kept, gone, dereg, moved, sick_before], snap)
    assert [(c.id, c.kind) for c in changes] == [
        ("dereg", ChangeKind.DEREGISTERED),
        ("gone", ChangeKind.EXPIRED),
        ("moved", ChangeKind.REPLACED),
        ("new", ChangeKind.REGISTERED),
        ("sick", ChangeKind.HEALTH),
    ]
    assert {c.revision for c in changes} == {20}


def test_resync_of_an_identical_mirror_changes_nothing() -> None:
    a = stored(reg(id="a")).to_instance(5, NOW)
    snap = Snapshot(9, instances={("web", "a"): a})
    assert resync_changes([a], snap) == []


# --------------------------------------------------------------------- placement
def test_rendezvous_is_stable_balanced_and_moves_only_the_dead_nodes_share() -> None:
    nodes = ["n1", "n2", "n3"]
    items = [("web", f"i{n}") for n in range(3000)]
    owners = {item: rendezvous_owner(nodes, *item) for item in items}
    assert owners == {item: rendezvous_owner(reversed(nodes), *item) for item in items}
    counts = Counter(owners.values())
    assert all(800 < counts[n] < 1200 for n in nodes), counts
    after = {item: rendezvous_owner(["n1", "n3"], *item) for item in items}
    moved = [item for item in items if after[item] != owners[item]]
    assert moved
    assert all(owners[item] == "n2" for item in moved)
    assert rendezvous_owner([], "web", "a") is None


def test_stale_after_is_a_duration_from_flags_env_or_file(tmp_path: Path) -> None:
    assert load_config({}, env={}).stale_after == 10.0
    assert load_config({}, env={"DNSREG_STALE_AFTER": "500ms"}).stale_after == 0.5
    toml = tmp_path / "dnsreg.toml"
    toml.write_text('stale_after = "30s"\n')
    assert load_config({"config": str(toml)}, env={}).stale_after == 30.0
    assert load_config({"stale_after": "2s", "config": str(toml)}, env={}).stale_after == 2.0
    with pytest.raises(ConfigError):
        load_config({"stale_after": "soon"}, env={})


def test_registry_apply_replaces_indexes_and_keeps_mirrored_leases_out_of_expiry() -> None:
    """A mirror applies whatever the stream says, whatever it believed before."""
    from dnsreg.core.registry import Change, Registry

    mirror_registry = Registry()
    first = stored(reg(id="a", tags=("blue",))).to_instance(5, NOW)
    mirror_registry.apply(Change(ChangeKind.REGISTERED, 5, "web", "a", None, first))
    assert [i.reg.id for i in mirror_registry.tagged("web", ["blue"])] == ["a"]
    # The stream's "before" may be older than the mirror's copy: the copy is replaced anyway.
    second = stored(reg(id="a", tags=("green",))).to_instance(7, NOW)
    mirror_registry.apply(Change(ChangeKind.REPLACED, 7, "web", "a", None, second))
    assert mirror_registry.tagged("web", ["blue"]) == []
    assert [i.reg.id for i in mirror_registry.tagged("web", ["green"])] == ["a"]
    assert (mirror_registry.revision, mirror_registry.service_revision("web")) == (7, 7)
    # Leases are etcd's: nothing for this registry to expire, however late it gets.
    assert mirror_registry.next_deadline() is None
    assert mirror_registry.expire_due(NOW + 10_000) == []
    # An older change arriving late never moves revisions backwards.
    mirror_registry.apply(Change(ChangeKind.EXPIRED, 6, "web", "a", second, None))
    assert mirror_registry.get("web", "a") is None
    assert not mirror_registry.has_service("web")
    assert (mirror_registry.revision, mirror_registry.service_revision("web")) == (7, 7)
