"""The HTTP side: the aiohttp API and what it serves.

Route handlers (:mod:`api`), request bodies validated by msgspec (:mod:`schema`),
blocking queries and the ``/v1/events`` stream (:mod:`events`, framed by
:mod:`sse`), and the Prometheus registry (:mod:`metrics`).

May import: :mod:`dnsreg.core` and :mod:`dnsreg.store`. Never :mod:`dnsreg.dns`
or :mod:`dnsreg.health`: what it needs of them the composition root hands in.
"""
