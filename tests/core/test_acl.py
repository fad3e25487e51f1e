"""The ACL file's strict parsing, token lookup, authorize(), and the refusal-log budget."""

from __future__ import annotations

import hashlib

import pytest

from dnsreg.core.acl import Principal, Right, authorize, format_entry, parse_acl
from dnsreg.core.errors import ConfigError, Forbidden, Unauthorized
from dnsreg.core.rate_limit import LogBudget
from tests.helpers import FakeClock

HASH = hashlib.sha256(b"secret-1").hexdigest()
GOOD = f"""
[[tokens]]
name = "web-deployer"
sha256 = "{HASH}"
services = ["web", "web-*"]
rights = ["write"]
"""


def entry(**fields: object) -> str:
    values = {"name": '"t"', "sha256": f'"{HASH}"', "services": '["web"]', "rights": '["write"]'}
    values.update({k: str(v) for k, v in fields.items()})
    return "[[tokens]]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v != "DROP")


def test_a_good_file_parses_and_looks_up_by_the_secrets_hash() -> None:
    acl = parse_acl(GOOD, "acl.toml")
    principal = acl.lookup("secret-1")
    assert principal is not None
    assert (principal.name, principal.services) == ("web-deployer", ("web", "web-*"))
    assert principal.rights == {Right.WRITE}
    assert not principal.is_operator
    assert acl.lookup("secret-2") is None
    assert acl.lookup(HASH) is None  # the hash itself is not a secret


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (GOOD + "extra = 1\n", "unknown key(s) extra"),
        ("tokens = 3\n", "array of tables"),
        ("nope = 1\n" + GOOD, "unknown key(s) nope"),
        (entry(comment='"x"'), "tokens[0] ('t'): unknown key(s) comment"),
        (entry(sha256='"abc"'), "tokens[0] ('t'): sha256 must be 64 hex digits"),
        (entry(sha256=f'"{"g" * 64}"'), "sha256 must be 64 hex digits"),
        (entry(rights='["write", "admin"]'), "unknown right 'admin'"),
        (entry(rights="[]"), "rights must be a non-empty list"),
        (entry(rights='"write"'), "rights must be a non-empty list"),
        (entry(services="[]"), "services must be a non-empty list"),
        (entry(services='["Web Site"]'), "service glob 'Web Site'"),
        (entry(name='"bad name"'), "name must be"),
        (entry(name="DROP"), "tokens[0]: missing name"),
        (entry() + entry(sha256=f'"{"0" * 64}"'), "tokens[1]: duplicate name 't'"),
        (entry() + entry(name='"u"'), "tokens[1] ('u'): same sha256 as an earlier token"),
        ("[[tokens]\n", "acl file acl.toml:"),
    ],
)
def test_every_mistake_is_one_clear_error_naming_file_and_entry(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_acl(text, "acl.toml")
    assert err.value.message.startswith("acl file acl.toml")
    assert says in err.value.message


def test_format_entry_round_trips() -> None:
    text = format_entry("ops", HASH, ["*"], [Right.OPERATOR, Right.TRANSFER])
    principal = parse_acl(text, "x").lookup("secret-1")
    assert principal == Principal("ops", frozenset({Right.OPERATOR, Right.TRANSFER}), ("*",))
    assert principal.is_operator


def test_authorize_rights_and_globs() -> None:
    writer = Principal("w", frozenset({Right.WRITE}), ("web", "web-*", "db[12]"))
    reader = Principal("r", frozenset({Right.READ}), ("*",))
    ops = Principal("o", frozenset({Right.OPERATOR}), ("none",))
    for service in ("web", "web-canary", "db1", "db2"):
        assert authorize(writer, Right.WRITE, service) is writer
        assert authorize(writer, Right.READ, service) is writer  # a writer reads what it writes
    for service in ("webshop", "db3", "api"):
        with pytest.raises(Forbidden) as err:
            authorize(writer, Right.WRITE, service)
        assert err.value.detail == {"missing": "write", "service": service, "token": "w"}
    with pytest.raises(Forbidden):
        authorize(writer, Right.TRANSFER, "web")
    with pytest.raises(Forbidden) as err:
        authorize(reader, Right.WRITE, "web")
    assert err.value.detail["missing"] == "write"
    assert authorize(reader, Right.READ, None) is reader
    for right in Right:
        assert authorize(ops, right, "anything") is ops
    with pytest.raises(Unauthorized) as unauth:
        authorize(None, Right.READ, None)
    assert unauth.value.detail == {"missing": "token"}


def test_log_budget_allows_a_burst_then_refills_on_the_clock(clock: FakeClock) -> None:
    budget = LogBudget(burst=3, per=30.0)  # one line per 10 s once the burst is spent
    assert [budget.allow(clock())[0] for _ in range(5)] == [True, True, True, False, False]
    clock.advance(9.9)
    assert budget.allow(clock()) == (False, 0)
    clock.advance(0.1)
    assert budget.allow(clock()) == (True, 3)  # and says how many were held back
    assert budget.allow(clock()) == (False, 0)
    clock.advance(3600)
    assert [budget.allow(clock())[0] for _ in range(4)] == [True, True, True, False]
    clock.advance(-100)  # a clock stepping back grants nothing
    assert budget.allow(clock()) == (False, 0)


def test_new_secrets_never_start_like_a_flag() -> None:
    # `dnsreg register --token SECRET` must accept whatever `dnsreg acl add` printed.
    from dnsreg.acl_cli import new_secret

    secrets_made = [new_secret() for _ in range(2000)]
    assert not [s for s in secrets_made if s.startswith("-")]
    assert len(set(secrets_made)) == 2000
    assert all(len(s) >= 43 for s in secrets_made)  # 256 bits in urlsafe base64
