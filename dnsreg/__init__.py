"""dnsreg: DNS-based service discovery.

Feature folders, a pure core and an I/O shell (docs/architecture.md):
``core`` (model, names, registry, leases, revision; pure), ``dns`` (answers,
wire codec, zones, cache; the UDP/TCP server), ``http`` (the API, events,
metrics), ``health`` (rules, probe, checker), ``store`` (SQLite, etcd),
``client`` (the Python client, CLI client commands, ``run``, registrar).
At the top: ``app`` (the composition root), ``cli``, ``config``.
"""

__version__ = "0.1.0"
