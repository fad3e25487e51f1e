"""Who holds a TCP port: from ``/proc/net/tcp{,6}`` and ``/proc/<pid>/fd`` (Linux).

``dnsreg run`` registers only once the port is held by its child or one of the
child's descendants. A TCP connect cannot tell: it also succeeds when another
process (an old instance, another service) already listens there, and DNS would
then point at the wrong program. A listening socket's line in ``/proc/net/tcp``
names its inode; a process holds it when one of its ``/proc/<pid>/fd`` links reads
``socket:[inode]`` (proc(5)).

Parsing is pure; the functions that read ``/proc`` take its root, so tests can
point them at a real process of their own.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from dnsreg.core.model import IPAddress

PROC = Path("/proc")
TCP_LISTEN = "0A"  # st column: TCP_LISTEN in include/net/tcp_states.h


@dataclass(frozen=True, slots=True)
class Listener:
    address: IPAddress
    port: int
    inode: int


def _address(hex_addr: str) -> IPAddress:
    # The kernel prints the address as 32-bit words in host byte order (little-endian
    # on every platform Python's Linux builds use): reverse the bytes of each word.
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[n : n + 4][::-1] for n in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def parse_proc_net_tcp(text: str) -> list[Listener]:
    """The listening sockets of one ``/proc/net/tcp`` or ``/proc/net/tcp6`` text."""
    out: list[Listener] = []
    for line in text.splitlines()[1:]:  # the first line is the header
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        hex_addr, _, hex_port = fields[1].partition(":")
        out.append(Listener(_address(hex_addr), int(hex_port, 16), int(fields[9])))
    return out


def listeners(port: int, *, proc: Path = PROC) -> list[Listener] | None:
    """Sockets listening on ``port``; None when this system has no ``/proc/net/tcp``."""
    found: list[Listener] = []
    seen = False
    for name in ("tcp", "tcp6"):
        try:
            text = (proc / "net" / name).read_text()
        except OSError:
            continue
        seen = True
        found.extend(s for s in parse_proc_net_tcp(text) if s.port == port)
    return found if seen else None


def _pids(proc: Path) -> list[int]:
    try:
        return [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []


def _parent(pid: int, proc: Path) -> int | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat.rpartition(")")[2].split()[1])


def descendants(pid: int, *, proc: Path = PROC) -> set[int]:
    """``pid`` and every process below it (a child that forks workers, a shell)."""
    children: dict[int, list[int]] = {}
    for p in _pids(proc):
        parent = _parent(p, proc)
        if parent is not None:
            children.setdefault(parent, []).append(p)
    out = {pid}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def socket_inodes(pids: Iterable[int], *, proc: Path = PROC) -> set[int]:
    inodes: set[int] = set()
    for pid in pids:
        fd_dir = proc / str(pid) / "fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to read
        for fd in names:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def holder(inodes: set[int], *, proc: Path = PROC) -> tuple[int, str] | None:
    """The (pid, command name) of a process holding one of ``inodes``, if we may see it."""
    for pid in _pids(proc):
        if socket_inodes([pid], proc=proc) & inodes:
            try:
                comm = (proc / str(pid) / "comm").read_text().strip()
            except OSError:
                comm = "?"
            return pid, comm
    return None


class PortOwner(StrEnum):
    NOBODY = "nobody"
    CHILD = "child"
    OTHER = "other"
    UNKNOWN = "unknown"  # no /proc/net/tcp here: the caller falls back to connecting


@dataclass(frozen=True, slots=True)
class PortState:
    owner: PortOwner
    detail: str = ""


def _covers(listener: Listener, address: IPAddress | None) -> bool:
    """Does a socket bound to ``listener.address`` receive connections to ``address``?"""
    if address is None or listener.address.is_unspecified:
        return True
    mapped = getattr(listener.address, "ipv4_mapped", None)
    return listener.address == address or mapped == address


def port_state(
    port: int, child: int, *, address: IPAddress | None = None, proc: Path = PROC
) -> PortState:
    """Who listens on ``port`` (on ``address``, or on any address when None)."""
    found = listeners(port, proc=proc)
    if found is None:
        return PortState(PortOwner.UNKNOWN)
    relevant = {s.inode for s in found if _covers(s, address)}
    if not relevant:
        return PortState(PortOwner.NOBODY)
    foreign = relevant - socket_inodes(descendants(child, proc=proc), proc=proc)
    if not foreign:
        return PortState(PortOwner.CHILD)
    who = holder(foreign, proc=proc)
    detail = (
        f"pid {who[0]} ({who[1]})"
        if who is not None
        else "a process of another user (not visible to us)"
    )
    return PortState(PortOwner.OTHER, detail)
