"""The pure core: what the registry is and the rules it keeps.

The data model (:mod:`model`), DNS label rules and name arithmetic (:mod:`names`),
durations, the one exception family (:mod:`errors`), the registry with its leases
and one revision (:mod:`registry`), self-preservation (:mod:`preservation`), the
change log behind event streams and blocking queries (:mod:`changelog`), and
check targets (:mod:`targets`).

May import: the standard library's pure parts and msgspec, nothing else of
dnsreg. No asyncio, no sockets, no store, no clock: time comes in as ``now``, so
every lease and TTL rule is tested on a fake clock.
"""
