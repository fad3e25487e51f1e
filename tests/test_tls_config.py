"""The TLS and etcd-credential settings: layers, combinations refused, secrets kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError
from dnsreg.core.registry import Registry
from dnsreg.store import EtcdOptions, open_store
from dnsreg.store.etcd import parse_url


def test_tls_keys_come_from_file_env_and_flags(tmp_path: Path) -> None:
    toml = tmp_path / "dnsreg.toml"
    toml.write_text(
        'tls_cert = "/etc/dnsreg/cert.pem"\ntls_key = "/etc/dnsreg/key.pem"\n'
        'etcd_user = "dnsreg"\netcd_password = "from-file"\n'
    )
    c = load_config({"config": str(toml)}, env={"DNSREG_TLS_CLIENT_CA": "/etc/dnsreg/ca.pem"})
    assert (c.tls_cert, c.tls_key) == (Path("/etc/dnsreg/cert.pem"), Path("/etc/dnsreg/key.pem"))
    assert c.tls_client_ca == Path("/etc/dnsreg/ca.pem")
    assert (c.etcd_user, c.etcd_password) == ("dnsreg", "from-file")
    c = load_config(
        {"config": str(toml), "tls_cert": "/flag.pem", "etcd_ca": "/ca.pem"},
        env={"DNSREG_TLS_CERT": "/env.pem", "DNSREG_ETCD_PASSWORD": "from-env"},
    )
    assert c.tls_cert == Path("/flag.pem")
    assert c.etcd_ca == Path("/ca.pem")
    assert c.etcd_password == "from-env"
    assert load_config({}, env={}).tls_cert is None


def test_the_etcd_password_is_not_in_the_config_repr() -> None:
    c = load_config({}, env={"DNSREG_ETCD_USER": "u", "DNSREG_ETCD_PASSWORD": "hunter2-x"})
    assert "hunter2-x" not in repr(c)
    assert "hunter2-x" not in repr(EtcdOptions(user="u", password="hunter2-x"))


def test_etcds_urls_give_https_endpoints() -> None:
    assert parse_url("etcds://10.0.0.1:2379,[::1]:2379/reg") == (
        ["https://10.0.0.1:2379", "https://[::1]:2379"],
        "/reg/",
    )
    assert parse_url("etcd://10.0.0.1:2379/reg")[0] == ["http://10.0.0.1:2379"]


def test_credentials_in_the_url_are_refused_without_repeating_them() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url("etcd://dnsreg:topsecret@10.0.0.1:2379/reg")
    assert "etcd_user and etcd_password" in caught.value.message
    assert "topsecret" not in caught.value.message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (EtcdOptions(ca=Path("/ca.pem")), "need TLS: use an etcds://"),
        (EtcdOptions(tls=True, cert=Path("/c.pem")), "etcd_key is not set"),
        (EtcdOptions(tls=True, key=Path("/k.pem")), "etcd_cert is not set"),
        (EtcdOptions(user="u"), "etcd_password is not set"),
        (EtcdOptions(password="p"), "etcd_user is not set"),
        (EtcdOptions(tls=True, ca=Path("/nonexistent/ca.pem")), "etcd_ca: /nonexistent/ca.pem"),
    ],
)
def test_etcd_option_combinations_that_cannot_work(options: EtcdOptions, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        options.ssl_context()


def test_etcd_options_with_the_sqlite_store_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need an etcd store"):
        open_store(
            "sqlite",
            data_dir=tmp_path,
            registry=Registry(),
            clock=lambda: 0.0,
            etcd=EtcdOptions(user="u", password="p"),
        )
