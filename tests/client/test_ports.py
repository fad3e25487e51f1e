"""Who holds a port, from /proc: the check ``dnsreg run`` makes before registering."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dnsreg.client.ports import PortOwner, descendants, parse_proc_net_tcp, port_state

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp"
)

# Two lines of a real /proc/net/tcp and one of /proc/net/tcp6: 127.0.0.1:8080 listening,
# an established connection, and [::]:8443 listening.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 77 1 0
"""  # noqa: E501


def test_parses_listening_sockets_only() -> None:
    (v4,) = parse_proc_net_tcp(TCP)
    assert (v4.address, v4.port, v4.inode) == (ipaddress.ip_address("127.0.0.1"), 8080, 4242)
    (v6,) = parse_proc_net_tcp(TCP6)
    assert (v6.address, v6.port, v6.inode) == (ipaddress.ip_address("::"), 8443, 77)


def listener() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port: int = s.getsockname()[1]
    return s, port


def test_a_port_we_listen_on_is_ours_and_a_free_one_is_nobodys() -> None:
    s, port = listener()
    try:
        assert port_state(port, os.getpid()).owner is PortOwner.CHILD
        other = ipaddress.ip_address("10.9.9.9")  # bound to 127.0.0.1: not reachable there
        assert port_state(port, os.getpid(), address=other).owner is PortOwner.NOBODY
    finally:
        s.close()
    assert port_state(port, os.getpid()).owner is PortOwner.NOBODY


def test_a_port_held_by_another_process_names_it() -> None:
    s, port = listener()
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        state = port_state(port, bystander.pid)
        assert state.owner is PortOwner.OTHER
        assert state.detail.startswith(f"pid {os.getpid()} (")
    finally:
        bystander.kill()
        bystander.wait()
        s.close()


def test_descendants_include_grandchildren() -> None:
    shell = subprocess.Popen(
        ["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(30)' & echo $!; wait"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert shell.stdout is not None
    try:
        grandchild = int(shell.stdout.readline())
        assert {shell.pid, grandchild} <= descendants(shell.pid)
        assert os.getpid() not in descendants(shell.pid)
    finally:
        os.kill(grandchild, 9)
        shell.wait()
        shell.stdout.close()
