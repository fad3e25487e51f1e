"""Settings: defaults < TOML file < DNSREG_* environment < flags (SPEC §6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsreg.config import HostPort, load_config
from dnsreg.core.errors import ConfigError

README_EXAMPLE = """
dns = "0.0.0.0:53"
http = "127.0.0.1:8500"
domain = "service.internal"
advertise = ["192.0.2.10"]
panic_threshold = 0.5
"""


def test_defaults_are_the_documented_ones() -> None:
    c = load_config({}, env={})
    assert c.dns == HostPort("127.0.0.1", 8600)
    assert c.http == HostPort("127.0.0.1", 8500)
    assert c.domain == "service.local"
    assert c.zones == Path("zones")
    assert c.data_dir == Path(".dnsreg")
    assert c.store == "sqlite"


def test_the_readme_example_file_loads(tmp_path: Path) -> None:
    f = tmp_path / "dnsreg.toml"
    f.write_text(README_EXAMPLE)
    c = load_config({"config": str(f)}, env={})
    assert c.dns == HostPort("0.0.0.0", 53)
    assert c.domain == "service.internal"
    assert [str(a) for a in c.advertised_addresses()] == ["192.0.2.10"]
    assert c.panic_threshold == 0.5


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    f = tmp_path / "dnsreg.toml"
    f.write_text('domain = "from.file"\nhttp = "127.0.0.1:1"\ndns = "127.0.0.1:2"\n')
    env = {"DNSREG_CONFIG": str(f), "DNSREG_DOMAIN": "from.env", "DNSREG_HTTP": "127.0.0.1:3"}
    c = load_config({"domain": "from.flag"}, env=env)
    assert c.domain == "from.flag"
    assert c.http == HostPort("127.0.0.1", 3)
    assert c.dns == HostPort("127.0.0.1", 2)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("bogus = 1\n", "unknown key"),
        ('dns = "nope"\n', "HOST:PORT"),
        ('domain = "bad_label.local"\n', "domain"),
        ("panic_threshold = 2\n", "panic_threshold"),
        ("dns = \n", "config file"),
    ],
)
def test_a_bad_file_is_refused_with_the_reason(tmp_path: Path, text: str, words: str) -> None:
    f = tmp_path / "dnsreg.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_config({"config": str(f)}, env={})


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config({"config": str(tmp_path / "nope.toml")}, env={})


def test_transfer_keys_parse_and_bad_ones_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dnsreg.toml"
    path.write_text(
        'allow_transfer = ["127.0.0.1/32", "10.0.0.0/8"]\nnotify = ["127.0.0.1:5353"]\n'
        "ixfr_journal = 50\n"
    )
    config = load_config({"config": str(path)}, env={})
    assert config.allow_transfer == ("127.0.0.1/32", "10.0.0.0/8")
    assert config.notify == (HostPort("127.0.0.1", 5353),)
    assert config.ixfr_journal == 50
    env = {"DNSREG_ALLOW_TRANSFER": "192.0.2.0/24, ::1/128", "DNSREG_NOTIFY": "[::1]:53"}
    config = load_config({}, env=env)
    assert config.allow_transfer == ("192.0.2.0/24", "::1/128")
    assert config.notify == (HostPort("::1", 53),)
    for key, value in (
        ("DNSREG_ALLOW_TRANSFER", "not-a-network"),
        ("DNSREG_NOTIFY", "127.0.0.1"),
        ("DNSREG_IXFR_JOURNAL", "0"),
    ):
        with pytest.raises(ConfigError, match=key.removeprefix("DNSREG_").lower()):
            load_config({}, env={key: value})
