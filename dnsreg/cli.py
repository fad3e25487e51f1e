"""The ``dnsreg`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import argcomplete

from dnsreg import __version__
from dnsreg.acl_cli import add_acl_command, run_acl_command
from dnsreg.client.commands import COMMANDS, add_commands, run_command
from dnsreg.config import load_config
from dnsreg.core.errors import ConfigError, DnsregError, StoreCorrupt
from dnsreg.log_setup import configure_logging


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the DNS and HTTP server")
    p.add_argument("--dns", metavar="HOST:PORT", help="DNS address, UDP and TCP (127.0.0.1:8600)")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP API address (127.0.0.1:8500)")
    p.add_argument("--domain", help="the dynamic zone (service.local)")
    p.add_argument(
        "--alt-domain", dest="alt_domain", metavar="DOMAIN",
        help="also answer Consul's names, <svc>.service.DOMAIN (off; 'consul')",
    )  # fmt: skip
    p.add_argument("--zones", metavar="DIR", help="folder of *.zone files (./zones)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="state folder (./.dnsreg)")
    p.add_argument("--store", metavar="URL", help="sqlite (default) or etcd://host:port,.../prefix")
    p.add_argument("--config", metavar="FILE", help="TOML file with any of these settings")
    p.add_argument("--advertise", metavar="IP[,IP]", help="addresses of ns.<domain>")
    p.add_argument(
        "--panic-threshold",
        dest="panic_threshold",
        metavar="FRACTION",
        help="serve every live instance when the healthy share falls below this (off)",
    )
    p.add_argument(
        "--expiry-guard", dest="expiry_guard", metavar="FRACTION|off",
        help="pause lease expiry when more than this share of leases lapse at once (0.5)",
    )  # fmt: skip
    p.add_argument(
        "--check-concurrency", dest="check_concurrency", type=int, metavar="N",
        help="health checks in flight at once (256)",
    )  # fmt: skip
    p.add_argument(
        "--max-answers", dest="max_answers", type=int, metavar="N", help="cap A/AAAA/SRV answers"
    )
    p.add_argument(
        "--stale-after", dest="stale_after", metavar="DURATION",
        help="etcd store: mark DNS answers stale after this long without etcd (10s)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", dest="log_level", choices=["debug", "info", "warning", "error"],
        help="debug adds answer-cache misses per name and every health check attempt (info)",
    )  # fmt: skip
    p.add_argument(
        "--log-format", dest="log_format", choices=["text", "json"],
        help="json: one object per line with ts, level, logger, msg and fields (text)",
    )  # fmt: skip
    p.add_argument(
        "--access-log", dest="access_log", action="store_true", default=None,
        help="log every HTTP request: client, method, path, status, bytes, duration (off)",
    )  # fmt: skip
    _tls_flags(p)


def _tls_flags(p: argparse.ArgumentParser) -> None:
    """TLS for the API and towards etcd (docs/security.md, "TLS").

    Each flag is also DNSREG_<NAME> or a key."""
    for flag, metavar, help_text in (
        ("--tls-cert", "FILE", "serve the API over HTTPS with this certificate (PEM)"),
        ("--tls-key", "FILE", "the private key of --tls-cert (PEM)"),
        ("--tls-client-ca", "FILE", "require client certificates signed by this CA (PEM)"),
        ("--etcd-ca", "FILE", "etcds://: trust this CA for etcd's certificate"),
        ("--etcd-cert", "FILE", "etcds://: client certificate for etcd --client-cert-auth"),
        ("--etcd-key", "FILE", "etcds://: the private key of --etcd-cert"),
        ("--etcd-user", "USER", "etcd user (etcd with auth enabled)"),
        ("--etcd-password", "PASSWORD", "prefer DNSREG_ETCD_PASSWORD: flags show in ps"),
    ):
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), metavar=metavar, help=help_text)
    p.add_argument(
        "--acl-file", dest="acl_file", metavar="FILE",
        help="tokens (TOML [[tokens]]; make them with `dnsreg acl add`); SIGHUP reloads it",
    )  # fmt: skip
    p.add_argument(
        "--acl-reads", dest="acl_reads", choices=["open", "token"],
        help="'token': GETs need a token with read, write or operator (open)",
    )  # fmt: skip
    p.add_argument(
        "--insecure-open-api", dest="insecure_open_api", action="store_true", default=None,
        help="without an ACL file, accept writes on a non-loopback HTTP address anyway",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dnsreg", description="DNS-based service discovery")
    parser.add_argument("--version", action="version", version=f"dnsreg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    add_commands(sub)
    add_acl_command(sub)
    # Tab completion (`dnsreg completion bash`): answers and exits only when the shell
    # hook set _ARGCOMPLETE; otherwise it returns at once.
    argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(vars(args))
    if args.command == "acl":
        return run_acl_command(args)
    if args.command in COMMANDS:
        return run_command(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _serve(flags: dict[str, object]) -> int:
    from dnsreg.app import Server

    flags.pop("command", None)
    try:
        config = load_config(flags)
    except DnsregError as exc:
        print(f"dnsreg: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    try:
        if uvloop is not None:
            uvloop.run(Server(config).serve_forever())
        else:
            asyncio.run(Server(config).serve_forever())
    except ConfigError as exc:  # e.g. a broken ACL file, or no tokens off loopback
        print(f"dnsreg: {exc.message}", file=sys.stderr)
        return 2
    except StoreCorrupt as exc:  # exit 2: the data needs an operator, a retry will not do
        logging.getLogger("dnsreg").error("%s", exc.message)
        return 2
    except DnsregError as exc:
        logging.getLogger("dnsreg").error("%s", exc.message)
        return 1
    except OSError as exc:
        logging.getLogger("dnsreg").error("cannot start: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
