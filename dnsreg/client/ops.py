"""Operator commands: ``status``, ``maintenance on|off``, ``heartbeat``, ``drain``, ``completion``.

``drain`` withdraws at once through ``PUT .../drain`` and does the waiting here, on a
monotonic clock (why the client waits and not the server: :mod:`dnsreg.http.drain`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from dnsreg.client.client import Client
from dnsreg.core.drain import parse_wait_override, start_timer
from dnsreg.core.errors import NotFound


def client_for(args: argparse.Namespace) -> Client:
    return Client(args.api, ca=args.ca, cert=args.cert, key=args.key, token=args.token)


def add_ops_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], api: argparse.ArgumentParser
) -> None:
    p = sub.add_parser("status", parents=[api], help="the server's state; exit 1 when degraded")
    p.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser(
        "maintenance", parents=[api], help="take an instance out of DNS (on) or back (off)"
    )
    p.add_argument("state", choices=["on", "off"], help="on: withdraw; off: serve again")
    p.add_argument("service", help="the service name")
    p.add_argument("id", help="the instance id")
    p.add_argument("--reason", default="", help="shown in show/explain (on: 'maintenance')")

    p = sub.add_parser("heartbeat", parents=[api], help="renew an instance's lease once")
    p.add_argument("service", help="the service name")
    p.add_argument("id", help="the instance id")

    p = sub.add_parser(
        "drain", parents=[api],
        help="withdraw from DNS, wait until resolvers forgot it, optionally deregister",
    )  # fmt: skip
    p.add_argument("service", help="the service name")
    p.add_argument("id", help="the instance id")
    p.add_argument(
        "--wait", metavar="DURATION",
        help="wait this long instead of the instance's dns_ttl (0: do not wait)",
    )  # fmt: skip
    p.add_argument("--deregister", action="store_true", help="deregister after the wait")
    p.add_argument("--reason", default=None, help="the maintenance reason ('draining')")

    p = sub.add_parser("completion", help="print the shell completion script (argcomplete)")
    p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete in")


async def _status(args: argparse.Namespace) -> int:
    async with client_for(args) as c:
        st = await c.status()
    if args.json:
        print(json.dumps(st, indent=2))
    else:
        state = st["status"] + (f" ({st['reason']})" if st.get("reason") else "")
        store = st.get("store")
        kind = store.get("kind", store) if isinstance(store, dict) else store
        print(
            f"{c.api}: dnsreg {st['version']}, {state}; {st.get('services', 0)} service(s), "
            f"{st.get('instances', 0)} instance(s), revision {st['revision']}, "
            f"up {_duration(float(st.get('uptime', 0)))}, store {kind}"
        )
    return 0 if st["status"] == "ok" else 1


async def _maintenance(args: argparse.Namespace) -> int:
    enable = args.state == "on"
    async with client_for(args) as c:
        reply = await c.maintenance(args.service, args.id, enable=enable, reason=args.reason)
    i = reply["instance"]
    if enable:
        reason = i["maintenance"].get("reason", "maintenance")
        print(f"{args.service}/{args.id}: in maintenance ({reason}); DNS no longer serves it")
    else:
        served = "DNS serves it" if i["served"] else f"not served yet: health {i['health']}"
        print(f"{args.service}/{args.id}: out of maintenance; {served}")
    return 0


async def _heartbeat(args: argparse.Namespace) -> int:
    async with client_for(args) as c:
        reply = await c.heartbeat(args.service, args.id)
    deadline = reply.get("lease_deadline")
    left = "no lease" if deadline is None else f"lease runs out in {deadline - time.time():.0f}s"
    print(f"{args.service}/{args.id}: renewed; {left}")
    return 0


async def _drain(args: argparse.Namespace) -> int:
    override = parse_wait_override(args.wait)  # a bad --wait fails before anything changes
    out = sys.stdout
    async with client_for(args) as c:
        reply = await c.drain(args.service, args.id, reason=args.reason)
        timer = start_timer(time.monotonic(), float(reply["wait"]), override)
        out.write(f"{args.service}/{args.id}: withdrawn from DNS")
        if timer.wait > 0:
            out.write(f"; waiting {timer.wait:g}s for resolver caches\N{HORIZONTAL ELLIPSIS}")
            out.flush()
            await asyncio.sleep(timer.remaining(time.monotonic()))
            out.write(" done")
        if args.deregister:
            try:
                await c.deregister(args.service, args.id)
            except NotFound:  # its lease ran out meanwhile: gone is what was asked
                out.write("; it had already left")
            else:
                out.write("; deregistered")
        out.write("\n")
    return 0


async def _completion(args: argparse.Namespace) -> int:
    from argcomplete.shell_integration import shellcode

    # The hook calls back into `dnsreg` with _ARGCOMPLETE set; cli.main() answers it.
    print(shellcode(["dnsreg"], shell=args.shell), end="")
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


OPS_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "status": _status,
    "maintenance": _maintenance,
    "heartbeat": _heartbeat,
    "drain": _drain,
    "completion": _completion,
}
