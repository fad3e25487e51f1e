"""``--log-format``, ``--access-log`` and the taming of aiohttp's loggers."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError
from dnsreg.log_setup import JsonFormatter, configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("aiohttp.server", "aiohttp.access", "aiohttp.web", "aiohttp.internal")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for n, (lvl, filters) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(lvl)
        logger.filters[:] = filters


def record(name: str, level: int, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_lines_carry_the_structured_fields() -> None:
    line = JsonFormatter().format(
        record("dnsreg.changes", logging.INFO, "registered %s", "web/1", service="web", revision=3)
    )
    out = json.loads(line)
    assert out["level"] == "info"
    assert out["logger"] == "dnsreg.changes"
    assert out["msg"] == "registered web/1"
    assert (out["service"], out["revision"]) == ("web", 3)
    assert out["ts"].endswith("Z")
    assert "\n" not in line


def test_log_format_and_access_log_settings() -> None:
    config = load_config({"log_format": "json", "access_log": True}, env={})
    assert (config.log_format, config.access_log) == ("json", True)
    env = {"DNSREG_LOG_FORMAT": "text", "DNSREG_ACCESS_LOG": "no"}
    config = load_config({}, env=env)
    assert (config.log_format, config.access_log) == ("text", False)
    with pytest.raises(ConfigError, match=r'log_format: .*"text" or "json"'):
        load_config({"log_format": "xml"}, env={})
    with pytest.raises(ConfigError, match="access_log"):
        load_config({}, env={"DNSREG_ACCESS_LOG": "maybe"})


def client_trouble(exc: BaseException) -> logging.LogRecord:
    rec = record("aiohttp.server", logging.ERROR, "Error handling request: %r", b"SECRET body")
    rec.exc_info = (type(exc), exc, None)
    return rec


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("level", ["info", "debug"])
def test_client_trouble_from_aiohttp_is_debug_without_traceback(level: str) -> None:
    configure_logging(level, "json")
    server = logging.getLogger("aiohttp.server")
    assert logging.getLogger("aiohttp.access").isEnabledFor(logging.CRITICAL) is False
    assert not server.isEnabledFor(logging.DEBUG)  # its own DEBUG chatter stays out
    for exc in (ConnectionResetError("reset"), BadHttpMessage("bad")):
        rec = client_trouble(exc)
        kept = all(f.filter(rec) for f in server.filters)
        if level == "info":
            assert not kept
        else:
            assert kept
            assert (rec.levelno, rec.exc_info) == (logging.DEBUG, None)
            assert "SECRET" not in rec.getMessage()
    real = client_trouble(RuntimeError("a bug"))
    assert all(f.filter(real) for f in server.filters)
    assert real.levelno == logging.ERROR
    assert real.exc_info is not None  # a real server error keeps its traceback
    assert logging.getLogger().handlers[0].stream is sys.stderr  # type: ignore[attr-defined]
