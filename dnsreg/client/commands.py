"""The client side of the ``dnsreg`` command: register, deregister, ls, show, watch,
status, maintenance, heartbeat, drain, run and registrar. Everything goes through the
HTTP API (``--api``, env ``DNSREG_API``; a bare ``host:port`` means ``http://``, or
``https://`` with ``--ca``/``--cert``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from dnsreg.client.ops import OPS_COMMANDS, add_ops_commands, client_for
from dnsreg.client.registration import InstanceSpec, check_flags, parse_meta
from dnsreg.core.drain import parse_wait_override
from dnsreg.core.errors import DnsregError

DEFAULT_API = "http://127.0.0.1:8500"
COMMANDS = (
    "register",
    "deregister",
    "ls",
    "show",
    "watch",
    "run",
    "registrar",
    "explain",
    "backup",
    "status",
    "maintenance",
    "heartbeat",
    "drain",
    "completion",
)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--api",
        default=os.environ.get("DNSREG_API", DEFAULT_API),
        metavar="URL",
        help=f"the server's HTTP API, a URL or host:port (http://, https:// with --ca or "
        f"--cert; env DNSREG_API, default {DEFAULT_API})",
    )
    # HTTPS and tokens (docs/security.md, "TLS"): each flag also from the environment.
    api.add_argument(
        "--ca",
        default=os.environ.get("DNSREG_CA"),
        metavar="FILE",
        help="trust this CA (PEM) for an https:// API (env DNSREG_CA)",
    )
    api.add_argument(
        "--cert",
        default=os.environ.get("DNSREG_CERT"),
        metavar="FILE",
        help="client certificate (PEM) for a server with tls_client_ca (env DNSREG_CERT)",
    )
    api.add_argument(
        "--key",
        default=os.environ.get("DNSREG_KEY"),
        metavar="FILE",
        help="the private key of --cert, if not in the same file (env DNSREG_KEY)",
    )
    api.add_argument(
        "--token",
        default=None,
        metavar="SECRET",
        help="sent as Authorization: Bearer (default: env DNSREG_TOKEN, which ps cannot show)",
    )
    fields = _fields("server default 30s")
    run_fields = _fields("default 10s")
    p = sub.add_parser("register", parents=[api, fields], help="register an instance")
    p.add_argument("service", help="the service name")
    p.add_argument(
        "--keepalive",
        action="store_true",
        help="stay in the foreground, heartbeat, deregister on Ctrl-C/SIGTERM "
        "(lease then defaults to 10s)",
    )

    p = sub.add_parser("deregister", parents=[api], help="remove an instance")
    p.add_argument("service", help="the service name")
    p.add_argument("id", help="the instance id")

    p = sub.add_parser("ls", parents=[api], help="list services")
    p.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser(
        "show", parents=[api], help="the instances of a service, with check output; exit 1 if none"
    )
    p.add_argument("service", help="the service name")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser(
        "watch", parents=[api], help="print changes as they happen (connection news on stderr)"
    )
    p.add_argument("prefix", nargs="?", default="", help="only services starting with this")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", type=int, help="start after this revision (default: now)")

    p = sub.add_parser(
        "run",
        parents=[api, run_fields],
        help="register while a command runs",
        usage="dnsreg run --name SERVICE --port PORT [flags] -- CMD [ARGS...]",
    )
    p.add_argument("--name", required=True, help="the service name")
    p.add_argument(
        "--no-wait",
        dest="no_wait",
        action="store_true",
        help="register at once instead of when the command holds --port",
    )
    p.add_argument(
        "--drain-wait", dest="drain_wait", metavar="DURATION",
        help="on SIGTERM/SIGINT: withdraw from DNS, wait this long, then forward the signal "
        "(default: the instance's dns_ttl; 0 forwards at once)",
    )  # fmt: skip
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="CMD", help="-- CMD [ARGS...]")

    p = sub.add_parser(
        "explain", parents=[api], help="what DNS answers a name now, and why per instance"
    )
    p.add_argument("name", help="a DNS name, e.g. web.service.local")
    p.add_argument("type", nargs="?", default="A", help="record type (A)")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser("registrar", parents=[api], help="register what TOML files describe")
    p.add_argument("--dir", required=True, type=Path, help="folder of *.toml service files")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between scans (1)")
    p.add_argument(
        "--deregister-on-exit",
        dest="deregister_on_exit",
        action="store_true",
        help="deregister everything on Ctrl-C/SIGTERM (default: let the leases run out)",
    )

    p = sub.add_parser(
        "backup", parents=[api], help="copy a server's SQLite store into FILE (docs/operations.md)"
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the new file to write")
    p.add_argument(
        "--data-dir", dest="data_dir", type=Path, metavar="DIR",
        help="copy straight from this data directory instead of asking --api",
    )  # fmt: skip
    add_ops_commands(sub, api)


def _fields(lease_default: str) -> argparse.ArgumentParser:
    """The instance flags of register and run; only the lease default differs."""
    fields = argparse.ArgumentParser(add_help=False)
    fields.add_argument("--port", type=int, required=True, help="the port the service listens on")
    fields.add_argument("--id", help="instance id (default: <host name>-<port>)")
    fields.add_argument("--address", help="IPv4/IPv6 address (default: as the server sees us)")
    fields.add_argument("--proto", choices=["tcp", "udp"], help="SRV protocol (tcp)")
    fields.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    fields.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)"
    )
    fields.add_argument("--weight", type=int, help="SRV weight, 1-65535 (1)")
    fields.add_argument("--priority", type=int, help="SRV priority, 0-65535 (0)")
    fields.add_argument(
        "--ttl", metavar="DURATION", help=f"lease, e.g. 10s; 0 for none ({lease_default})"
    )
    fields.add_argument(
        "--dns-ttl", dest="dns_ttl", metavar="DURATION", help="TTL of its DNS records (5s)"
    )
    fields.add_argument(
        "--check-http", dest="check_http", action="append", default=[], metavar="URL",
        help="health check: GET URL, 2xx passes, 429 warns (repeatable)",
    )  # fmt: skip
    fields.add_argument(
        "--check-tcp", dest="check_tcp", action="append", default=[], metavar="HOST:PORT",
        help="health check: a TCP connection must open (repeatable)",
    )  # fmt: skip
    fields.add_argument(
        "--check-interval", dest="check_interval", metavar="DURATION",
        help="time between check runs (10s)",
    )  # fmt: skip
    fields.add_argument(
        "--check-timeout", dest="check_timeout", metavar="DURATION",
        help="a check run's time limit (2s, or the interval when shorter)",
    )  # fmt: skip
    return fields


def run_command(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; errors print as ``dnsreg: ...`` with exit status 1."""
    long_running = args.command in ("run", "registrar") or getattr(args, "keepalive", False)
    logging.basicConfig(
        level=logging.INFO if long_running else logging.WARNING,
        format="%(asctime)s dnsreg %(levelname)s: %(message)s"
        if long_running
        else "dnsreg: %(message)s",
        stream=sys.stderr,
    )
    command: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = {
        "register": _register,
        "deregister": _deregister,
        "ls": _ls,
        "show": _show,
        "watch": _watch,
        "run": _run,
        "registrar": _registrar,
        "explain": _explain,
        "backup": _backup,
        **OPS_COMMANDS,
    }[args.command]
    try:
        return asyncio.run(command(args))
    except DnsregError as exc:
        print(f"dnsreg: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `dnsreg watch | head -2`: the reader has gone, which ends the command
        # quietly as it ends `cat` (exit 141 = 128 + SIGPIPE). Python would print a
        # second error flushing stdout at exit, so stdout points at /dev/null now.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


_client = client_for


def _spec(
    args: argparse.Namespace, service: str, *, default_ttl: str | None = None
) -> InstanceSpec:
    extra = {
        "address": args.address,
        "proto": args.proto,
        "weight": args.weight,
        "priority": args.priority,
        "ttl": args.ttl if args.ttl is not None else default_ttl,
        "dns_ttl": args.dns_ttl,
    }
    return InstanceSpec.build(
        service,
        args.id,
        port=args.port,
        hostname=socket.gethostname(),
        tags=args.tag,
        meta=parse_meta(args.meta),
        checks=check_flags(
            args.check_http,
            args.check_tcp,
            interval=args.check_interval,
            timeout=args.check_timeout,
        ),
        **{k: v for k, v in extra.items() if v is not None},
    )


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ------------------------------------------------------------------ commands
async def _register(args: argparse.Namespace) -> int:
    spec = _spec(args, args.service, default_ttl="10s" if args.keepalive else None)
    async with _client(args) as c:
        if not args.keepalive:
            reply = await c.register_spec(spec)
            print(_registered_line(reply))
            return 0
        stop = _stop_on_signals()
        async with c.registration(spec) as lease:
            print(_registered_line({"instance": lease.instance, "revision": lease.revision}))
            print("keeping it alive; Ctrl-C deregisters", flush=True)
            await stop.wait()
        print(f"deregistered {spec.service}/{spec.id}", flush=True)
    return 0


def _registered_line(reply: dict[str, Any]) -> str:
    i = reply["instance"]
    lease = f"lease {i['ttl']:g}s" if i["ttl"] else "no lease"
    return (
        f"registered {i['service']}/{i['id']} at {_hostport(i)} "
        f"(revision {reply['revision']}, {lease})"
    )


async def _deregister(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        reply = await c.deregister(args.service, args.id)
    print(f"deregistered {args.service}/{args.id} (revision {reply['revision']})")
    return 0


async def _ls(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        services = await c.services(prefix=args.prefix)
    if args.json:
        print(json.dumps({"revision": services.revision, "services": services}, indent=2))
        return 0
    rows = [["SERVICE", "INSTANCES", "SERVED", "PASSING", "WARNING", "CRITICAL", "MAINT"]]
    for name, counts in services.items():
        served = f"{counts['served']}" + (" (panic)" if counts.get("panic") else "")
        rows.append(
            [
                name,
                str(counts["instances"]),
                served,
                str(counts["passing"]),
                str(counts["warning"]),
                str(counts["critical"]),
                str(counts["maintenance"]),
            ]
        )
    _table(rows, sys.stdout)
    return 0


async def _show(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        instances = await c.instances(args.service)
    if args.json:
        body = {"revision": instances.revision, "service": args.service, "instances": instances}
        print(json.dumps(body, indent=2))
        return 0
    if not instances:
        # A service exists while it has instances (SPEC §3): none means unknown here.
        print(f"dnsreg: no instances of {args.service}", file=sys.stderr)
        return 1
    now = time.time()
    rows = [["ID", "ADDRESS", "HEALTH", "SERVED", "LEASE", "TAGS", "META"]]
    for i in instances:
        deadline = i.get("lease_deadline")
        lease = "none" if deadline is None else f"{max(0.0, deadline - now):.0f}s"
        health = i["health"] + (" (maint)" if i["maintenance"]["enabled"] else "")
        meta = ",".join(f"{k}={v}" for k, v in sorted(i["meta"].items()))
        rows.append(
            [
                i["id"],
                _hostport(i),
                health,
                "yes" if i["served"] else "no",
                lease,
                ",".join(i["tags"]),
                meta,
            ]
        )
    _table(rows, sys.stdout)
    checks = [(i["id"], c) for i in instances for c in i.get("check_status", [])]
    if checks:
        print()
        _table(
            [["ID", "CHECK", "STATE", "OUTPUT"]]
            + [
                [iid, f"{c['kind']} {c['target']}", c["state"], " ".join(c["output"].split())]
                for iid, c in checks
            ],
            sys.stdout,
        )
    return 0


async def _watch(args: argparse.Namespace) -> int:
    stop = _stop_on_signals()
    async with _client(args) as c:

        async def follow() -> None:
            def news(line: str) -> None:
                print(f"dnsreg: {line}", file=sys.stderr, flush=True)

            async for event in c.watch(prefix=args.prefix, since=args.since, on_state=news):
                if args.json:
                    line = json.dumps(
                        {
                            "kind": event.kind,
                            "revision": event.revision,
                            "service": event.service,
                            "id": event.id,
                            "instance": event.instance,
                        }
                    )
                elif event.kind == "reset":
                    line = f"{event.revision} reset (changes were missed: re-list with dnsreg ls)"
                elif event.instance is None:
                    line = f"{event.revision} {event.kind} {event.service}/{event.id}"
                else:
                    i = event.instance
                    state = i["health"] + ("" if i["served"] else " (not served)")
                    line = (
                        f"{event.revision} {event.kind} {event.service}/{event.id} "
                        f"{_hostport(i)} {state}"
                    )
                print(line, flush=True)

        task = asyncio.create_task(follow())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
        for t in (task, stopped):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # re-raises an error from the stream, if that ended it
    return 0


async def _run(args: argparse.Namespace) -> int:
    from dnsreg.client.run import run

    command: Sequence[str] = args.argv
    if command and command[0] == "--":
        command = command[1:]
    spec = _spec(args, args.name, default_ttl="10s")
    drain_wait = parse_wait_override(args.drain_wait)
    async with _client(args) as c:
        return await run(c, spec, command, wait_ready=not args.no_wait, drain_wait=drain_wait)


async def _registrar(args: argparse.Namespace) -> int:
    from dnsreg.client.registrar import Registrar

    if not args.dir.is_dir():
        raise DnsregError(f"{args.dir}: not a directory")
    stop = _stop_on_signals()
    async with _client(args) as c:
        registrar = Registrar(
            c, args.dir, interval=args.interval, deregister_on_exit=args.deregister_on_exit
        )
        await registrar.run(stop)
    return 0


async def _explain(args: argparse.Namespace) -> int:
    async with _client(args) as c:
        e = await c.explain(args.name, args.type)
    if args.json:
        print(json.dumps(e, indent=2))
        return 0
    print(explain_text(e), end="")
    return 0


def explain_text(e: dict[str, Any]) -> str:
    """The explanation as a person reads it: dig's sections, then one line per instance."""
    flags = "aa" if e["authoritative"] else "-"
    lines = [f";; {e['name']} {e['type']}: status {e['rcode']}, flags {flags}"]
    lines += [f";; {why}" for why in e["why"]]
    lines += [f";; EDE {ede}" for ede in e["ede"]]
    for section in ("answer", "authority", "additional"):
        if e[section]:
            lines.append(f";; {section.upper()} SECTION:")
            lines += e[section]
    if e["service"] is not None:
        lines.append(f";; instances of {e['service']}:")
        width = max((len(i["id"]) for i in e["instances"]), default=0)
        for i in e["instances"]:
            verdict = "in the answer" if i["in_answer"] else "NOT in the answer"
            reasons = "; ".join(r["text"] for r in i["reasons"])
            where = _hostport(i)
            lines.append(
                f"{i['id'].ljust(width)}  {where}  {verdict}" + (f": {reasons}" if reasons else "")
            )
    return "\n".join(lines) + "\n"


async def _backup(args: argparse.Namespace) -> int:
    from dnsreg.client.backup import backup_from_api, backup_from_data_dir

    if args.data_dir is not None:
        snapshot = await asyncio.to_thread(backup_from_data_dir, args.data_dir, args.file)
        source = str(args.data_dir)
    else:
        async with _client(args) as client:
            snapshot = await backup_from_api(client, args.file)
        source = args.api
    print(
        f"backup of {source}: {snapshot.path} ({snapshot.size} bytes, "
        f"{snapshot.instances} instance(s), revision {snapshot.revision}, integrity ok)"
    )
    return 0


def _hostport(instance: dict[str, Any]) -> str:
    address = instance["address"]
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{instance['port']}"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[n]) for row in rows) for n in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")
