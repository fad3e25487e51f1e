"""Health checks: decide, probe, schedule.

Pure: the rules that turn probe results into a check's state and decide when a
check runs (:mod:`rules`), and the HTTP/1.1 request and response reading of a
probe (:mod:`http_probe`). I/O: the checker that runs every check on its schedule
and records results through the store (:mod:`checker`), and its metrics.

May import: :mod:`dnsreg.core` and :mod:`dnsreg.store`. Never :mod:`dnsreg.dns`
or :mod:`dnsreg.http`.
"""
