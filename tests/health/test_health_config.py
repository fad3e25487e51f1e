"""expiry_guard and check_concurrency, like every setting: flag > env > TOML file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsreg.cli import main
from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError


def test_defaults() -> None:
    config = load_config({}, env={})
    assert config.expiry_guard == 0.5
    assert config.check_concurrency == 256


def test_layers(tmp_path: Path) -> None:
    toml = tmp_path / "dnsreg.toml"
    toml.write_text("expiry-guard = 0.7\ncheck_concurrency = 64\n")
    assert load_config({"config": str(toml)}, env={}).expiry_guard == 0.7
    config = load_config(
        {"config": str(toml)}, env={"DNSREG_EXPIRY_GUARD": "off", "DNSREG_CHECK_CONCURRENCY": "8"}
    )
    assert (config.expiry_guard, config.check_concurrency) == (None, 8)
    config = load_config(
        {"config": str(toml), "expiry_guard": "0.25"}, env={"DNSREG_EXPIRY_GUARD": "off"}
    )
    assert config.expiry_guard == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [("expiry_guard", "1"), ("expiry_guard", "0"), ("expiry_guard", "half"),
     ("check_concurrency", "0"), ("check_concurrency", "many")],
)  # fmt: skip
def test_bad_values_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value}, env={})


def test_the_flags_exist(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    assert "--expiry-guard" in text
    assert "--check-concurrency" in text
