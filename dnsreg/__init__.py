"""dnsreg: DNS-based service discovery.

Pure core (no sockets, no asyncio, time passed in as ``now``):
``names``, ``durations``, ``model``, ``registry``, ``zones``, ``answers``, ``wire``.
I/O shell: ``store``, ``dnsserver``, ``api``, ``app`` (the composition root), ``cli``.
"""

__version__ = "0.1.0"
