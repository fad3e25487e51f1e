"""Where registrations are kept. The backend is chosen here, and only here.

Backends are imported lazily (as dnspython's ``asyncbackend`` does), so the
etcd client code is loaded only when an ``etcd://`` URL asks for it.

Holds the interface (:mod:`base`), the embedded SQLite store (:mod:`sqlite`) and
the etcd store (:mod:`etcd`, with its pure codec in :mod:`etcd_codec` and its
client of etcd's JSON gateway in :mod:`etcd_client`). May import
:mod:`dnsreg.core` only: the DNS, HTTP and health packages sit above it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from dnsreg.core.errors import ConfigError
from dnsreg.core.registry import Registry
from dnsreg.store.base import Store
from dnsreg.store.etcd_options import EtcdOptions

_BACKENDS = {
    "sqlite": "dnsreg.store.sqlite",
    "etcd": "dnsreg.store.etcd",
    "etcds": "dnsreg.store.etcd",  # etcd over TLS
}


def open_store(
    url: str,
    *,
    data_dir: Path,
    registry: Registry,
    clock: Callable[[], float],
    etcd: EtcdOptions | None = None,
) -> Store:
    """Build the store named by ``url`` (``sqlite``, ``sqlite:///path``, ``etcd://...``)."""
    scheme = urlsplit(url).scheme or url
    module_name = _BACKENDS.get(scheme)
    if module_name is None:
        raise ConfigError(
            f"unknown store {url!r}: use 'sqlite', 'sqlite:///path/to/file' "
            "or 'etcd://host:port[,host:port...]/prefix'"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"store {scheme!r} is not available in this build: {exc}") from exc
    factory: Callable[..., Store] = module.create
    if module_name == "dnsreg.store.etcd":
        return factory(url, data_dir=data_dir, registry=registry, clock=clock, options=etcd)
    if etcd is not None and etcd != EtcdOptions():
        raise ConfigError(
            "etcd_ca, etcd_cert, etcd_key, etcd_user and etcd_password need an etcd store"
        )
    return factory(url, data_dir=data_dir, registry=registry, clock=clock)


__all__ = ["EtcdOptions", "Store", "open_store"]
