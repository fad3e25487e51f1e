"""How ``dnsreg serve`` logs: level, ``text`` or ``json`` lines, aiohttp's loggers tamed.

JSON lines carry ``ts``, ``level``, ``logger``, ``msg`` and every structured field a
call passed with ``extra=`` (``service``, ``id``, ``token``, ``client``, ``status`` …), so
a log pipeline needs no parsing of the message. The formatter is the standard library's
``logging.Formatter`` with msgspec (already a dependency) doing the encoding.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")

# What every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_encoder = msgspec.json.Encoder()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return _encoder.encode(out).decode()


class _ClientTrouble(logging.Filter):
    """aiohttp's server logger reports a client that hung up or sent a broken request
    at ERROR, with a traceback (and, for a bad request, what it sent). Those are the
    client's doing: they become one DEBUG line without traceback or request bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or record.levelno < logging.ERROR:
            return True
        from aiohttp.http_exceptions import HttpProcessingError

        if not isinstance(exc, ConnectionError | HttpProcessingError):
            return True  # a real server error keeps its traceback
        if not logging.getLogger("dnsreg").isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = "client error: %s", (type(exc).__name__,)
        record.exc_info = record.exc_text = None
        return True


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root handler on stderr at ``level``; aiohttp's own loggers only say what matters."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # dnsreg writes its own access log (dnsreg.access); aiohttp's stays silent, and its
    # per-connection chatter is not dnsreg's DEBUG.
    logging.getLogger("aiohttp.access").setLevel(logging.CRITICAL + 1)
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.internal"):
        logging.getLogger(name).setLevel(max(logging.INFO, root.level))
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientTrouble) for f in server.filters):
        server.addFilter(_ClientTrouble())
