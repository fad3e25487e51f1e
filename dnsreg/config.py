"""Server settings: defaults < TOML file < ``DNSREG_*`` environment < command-line flags."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dnsreg.core.admission import (
    MIN_CHECK_INTERVAL,
    AdmissionPolicy,
    IPNetwork,
    parse_networks,
)
from dnsreg.core.durations import parse_duration
from dnsreg.core.errors import ConfigError, InvalidInput
from dnsreg.core.names import check_label, parse_name
from dnsreg.dns.tsig import TsigKey, parse_keys


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, *, field: str) -> HostPort:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"{field}: {text!r} is not HOST:PORT")
        host = host.strip("[]") or "127.0.0.1"
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    dns: HostPort = HostPort("127.0.0.1", 8600)
    http: HostPort = HostPort("127.0.0.1", 8500)
    domain: str = "service.local"
    alt_domain: str | None = None  # e.g. "consul": also answer <svc>.service.consul
    zones: Path = Path("zones")
    data_dir: Path = Path(".dnsreg")
    store: str = "sqlite"
    advertise: tuple[str, ...] = ()  # addresses of ns.<domain>; default: the DNS host
    negative_ttl: int = 5
    max_answers: int | None = None
    panic_threshold: float | None = None
    expiry_guard: float | None = 0.5  # self-preservation (SPEC §3); None: off
    check_concurrency: int = 256  # health checks in flight at once
    max_body_bytes: int = 64 * 1024
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 512
    tcp_max_per_client: int = 16  # DNS TCP connections one client address may hold
    rate_limit: float | None = None  # DNS responses/s per /24 or /56 (RRL); None: off
    rate_limit_slip: int = 2  # every Nth limited response goes out empty with TC; 0: drop all
    stale_after: float = 10.0  # etcd store: mark answers stale after this long without contact
    events_buffer: int = 10_000  # changes remembered for /v1/events?since= resumption
    events_keepalive: float = 15.0  # seconds between comment lines on an idle event stream
    # HTTP limits (docs/operations.md, "Limits"): seconds for the request headers, for the body,
    # and between requests on a kept-alive connection; open connections at most
    # (also capped by the open-files limit less fd_reserve and tcp_max_connections).
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_keepalive_timeout: float = 60.0
    http_max_connections: int = 10_000
    fd_reserve: int | None = None  # descriptors kept for health checks and the store
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one object per line)
    access_log: bool = False  # one line per HTTP request on the dnsreg.access logger
    # TLS (SPEC §7): HTTPS for the API, and TLS / user+password towards etcd.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # set: clients must present a certificate it signed
    etcd_ca: Path | None = None
    etcd_cert: Path | None = None
    etcd_key: Path | None = None
    etcd_user: str | None = None
    etcd_password: str | None = field(default=None, repr=False)  # a secret: never printed
    acl_file: Path | None = None  # tokens (SPEC §7); without it writes are loopback-only
    acl_reads: str = "open"  # "open" or "token": GETs need a token with read
    insecure_open_api: bool = False  # allow ACL-less writes on a non-loopback address
    # Zone transfers and NOTIFY (SPEC §2, dns/xfr_out, dns/notify).
    allow_transfer: tuple[str, ...] = ()  # CIDR strings of the secondaries
    notify: tuple[HostPort, ...] = ()  # secondaries to NOTIFY after a change
    ixfr_journal: int = 1000  # revisions of differences kept for IXFR
    tsig_keys: tuple[TsigKey, ...] = ()  # [[tsig_keys]] tables (RFC 8945, dns/tsig)
    notify_key: str = ""  # the tsig key NOTIFYs are signed with ("": unsigned)

    @property
    def descriptor_reserve(self) -> int:
        """Descriptors kept back from HTTP: one per health check in flight, plus the
        store's files, logs and listeners."""
        return self.fd_reserve if self.fd_reserve is not None else self.check_concurrency + 64

    # SPEC §7: what registrations may say. Empty allowed_networks: any usable address.
    allowed_networks: tuple[IPNetwork, ...] = ()
    checks_any_host: bool = False  # checks may target hosts other than their instance
    check_min_interval: float = MIN_CHECK_INTERVAL
    checks_per_address: int = 1  # probes in flight at once per target address

    @property
    def admission(self) -> AdmissionPolicy:
        return AdmissionPolicy(
            allowed_networks=self.allowed_networks,
            checks_any_host=self.checks_any_host,
            min_check_interval=self.check_min_interval,
        )

    @property
    def origin(self) -> tuple[str, ...]:
        return parse_name(self.domain)

    def advertised_addresses(
        self,
    ) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
        raw = self.advertise or (self.dns.host,)
        out = []
        for text in raw:
            try:
                address = ipaddress.ip_address(text)
            except ValueError as exc:
                raise ConfigError(f"advertise: {text!r} is not an IP address") from exc
            if address.is_unspecified:
                address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
            out.append(address)
        return tuple(out)


_ENV_PREFIX = "DNSREG_"
_FIELDS = {f.name for f in fields(Config)}
_OPTIONAL_PATHS = ("tls_cert", "tls_key", "tls_client_ca", "etcd_ca", "etcd_cert", "etcd_key")


def _coerce(name: str, value: Any) -> Any:
    """Turn a file, env or flag value into the field's type."""
    try:
        if name in ("dns", "http"):
            return value if isinstance(value, HostPort) else HostPort.parse(str(value), field=name)
        if name in ("zones", "data_dir"):
            return Path(str(value))
        if name in _OPTIONAL_PATHS:
            return Path(str(value)) if str(value) else None
        if name in ("etcd_user", "etcd_password"):
            return str(value) or None
        if name == "acl_file":
            return None if value in (None, "") else Path(str(value))
        if name == "acl_reads":
            if str(value) not in ("open", "token"):
                raise ConfigError(f'acl_reads: {value!r} is not "open" or "token"')
            return str(value)
        if name in ("insecure_open_api", "access_log"):
            return _boolean(name, value)
        if name == "log_format":
            if str(value) not in ("text", "json"):
                raise ConfigError(f'log_format: {value!r} is not "text" or "json"')
            return str(value)
        if name == "advertise":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
        if name in ("allow_transfer", "notify"):
            items = value.split(",") if isinstance(value, str) else list(value)
            texts = [str(v).strip() for v in items if str(v).strip()]
            if name == "notify":
                return tuple(HostPort.parse(t, field="notify") for t in texts)
            for text in texts:
                ipaddress.ip_network(text, strict=False)  # ValueError: reported below
            return tuple(texts)
        if name == "tsig_keys":
            if isinstance(value, str):
                raise ConfigError("tsig_keys: only in the config file, as [[tsig_keys]] tables")
            return value if isinstance(value, tuple) else parse_keys(value)
        if name == "notify_key":
            text = str(value).strip()
            return text and (text.rstrip(".") + ".").lower()
        if name == "ixfr_journal":
            journal = int(value)
            if journal < 1:
                raise ConfigError("ixfr_journal: must be at least 1")
            return journal
        if name in ("events_buffer", "events_keepalive"):
            number = int(value) if name == "events_buffer" else float(value)
            if not number > 0:
                raise ConfigError(f"{name}: must be above 0")
            return number
        if name in ("negative_ttl", "max_body_bytes", "tcp_max_connections"):
            return int(value)
        if name in ("tcp_max_per_client", "rate_limit_slip"):
            number = int(value)
            if number < (1 if name == "tcp_max_per_client" else 0):
                raise ConfigError(f"{name}: must be at least {1 if name[0] == 't' else 0}")
            return number
        if name == "rate_limit":
            if value in (None, "", 0, "0", "off"):
                return None
            rate = float(value)
            if not rate > 0:
                raise ConfigError("rate_limit: responses per second must be above 0 (or 'off')")
            return rate
        if name == "max_answers":
            return None if value in (None, "", 0, "0") else int(value)
        if name == "panic_threshold":
            if value in (None, "", "off"):
                return None
            threshold = float(value)
            if not 0.0 < threshold <= 1.0:
                raise ConfigError("panic_threshold: must be a fraction in (0, 1]")
            return threshold
        if name == "expiry_guard":
            if value in (None, "", "off", False):
                return None
            guard = float(value)
            if not 0.0 < guard < 1.0:
                raise ConfigError("expiry_guard: must be a fraction in (0, 1), or 'off'")
            return guard
        if name in ("check_concurrency", "checks_per_address"):
            concurrency = int(value)
            if concurrency < 1:
                raise ConfigError(f"{name}: must be at least 1")
            return concurrency
        if name == "stale_after":
            return parse_duration(value, field="stale_after")
        if name == "allowed_networks":
            if isinstance(value, str):  # env/flag: comma-separated
                value = [v for v in value.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"allowed_networks: a list of CIDR strings, not {value!r}")
            return parse_networks(value)
        if name == "checks_any_host":
            return _boolean(name, value)
        if name == "check_min_interval":
            floor = parse_duration(value, field=name)
            if not 0.1 <= floor <= 3600:
                raise ConfigError(f"{name}: must be between 100ms and 1h")
            return floor
        if name == "tcp_idle_timeout":
            return float(value)
        if name in ("http_header_timeout", "http_body_timeout", "http_keepalive_timeout"):
            seconds = parse_duration(value, field=name)
            if not seconds > 0:
                raise ConfigError(f"{name}: must be above 0")
            return seconds
        if name in ("http_max_connections", "fd_reserve"):
            if name == "fd_reserve" and value in (None, "", "auto"):
                return None
            count = int(value)
            if count < 1:
                raise ConfigError(f"{name}: must be at least 1")
            return count
        if name == "alt_domain" and value in (None, "", "off", False):
            return None
        if name in ("domain", "alt_domain"):
            text = str(value).strip().rstrip(".").lower()
            for label in text.split("."):
                check_label(label, field=name)
            return text
        return str(value)
    except (ValueError, TypeError, InvalidInput) as exc:
        raise ConfigError(f"{name}: {value!r} is not valid: {exc}") from exc


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {value!r} is not true or false")


def load_config(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Merge the layers. ``flags`` holds only the flags the user gave."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    env_values = {
        name: env[_ENV_PREFIX + name.upper()]
        for name in _FIELDS | {"config"}
        if _ENV_PREFIX + name.upper() in env
    }
    config_file = flags.get("config") or env_values.get("config")
    file_values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            file_values = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
        unknown = sorted(set(file_values) - _FIELDS)
        if unknown:
            raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    merged: dict[str, Any] = {}
    for layer in (file_values, env_values, flags):
        for name, value in layer.items():
            if name in _FIELDS:
                merged[name] = _coerce(name, value)
    config = replace(Config(), **merged)
    if config.notify_key and not any(k.name == config.notify_key for k in config.tsig_keys):
        raise ConfigError(f"notify_key: no [[tsig_keys]] entry is named {config.notify_key!r}")
    return config
