"""DNS: from query bytes to reply bytes, and the sockets that carry them.

Pure (no asyncio, no sockets): the answer builder (:mod:`answers`, one function
from a question and the registry to a reply with a result kind), resource records
(:mod:`records`), the wire codec (:mod:`wire`), static zone files (:mod:`zones`),
the reply cache (:mod:`answer_cache`) and :mod:`responder`, which ties them
together. I/O: the UDP/TCP listeners (:mod:`server`, with Linux batch I/O in
:mod:`udp_batch`) and the metrics collector (:mod:`metrics`).

May import: :mod:`dnsreg.core` only.
Never :mod:`dnsreg.http` or :mod:`dnsreg.health`.
"""
