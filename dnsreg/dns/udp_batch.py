"""Batched UDP receive and send with Linux's recvmmsg(2) and sendmmsg(2), through ctypes.

One system call receives up to ``batch`` datagrams and one sends all their
replies, instead of two calls (and two Python address tuples) per query. The
server uses this where libc provides both calls and falls back to plain
``recvfrom``/``sendto`` elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import socket
import struct
from collections.abc import Callable

from dnsreg.dns.rrl import RateLimiter, Verdict, network_of_sockaddr, slip_reply

MSG_DONTWAIT = 0x40
SLOT = 4096  # bytes per received datagram; a longer query arrives truncated (MSG_TRUNC)
SOCKADDR = 128  # sockaddr_storage

log = logging.getLogger("dnsreg.dns")


class _IOVec(ctypes.Structure):
    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class _MsgHdr(ctypes.Structure):
    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_IOVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class _MMsgHdr(ctypes.Structure):
    _fields_ = (("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint))


def _libc() -> ctypes.CDLL | None:
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        libc.recvmmsg.argtypes = (
            ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p
        )  # fmt: skip
        libc.sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def available() -> bool:
    return _LIBC is not None


class BatchIO:
    """Receive a batch, answer each datagram with ``handler``, send the replies in one call.

    All buffers and headers are allocated once; per datagram the loop only
    reads the length the kernel wrote, hands the bytes to ``handler`` and
    writes the reply and its address into the send headers.
    """

    def __init__(self, sock: socket.socket, batch: int = 64) -> None:
        assert _LIBC is not None
        self.libc = _LIBC
        self.fd = sock.fileno()
        self.batch = batch
        self.rbuf = ctypes.create_string_buffer(SLOT * batch)
        self.sbuf = ctypes.create_string_buffer(65535 * batch)
        self.names = ctypes.create_string_buffer(SOCKADDR * batch)
        self.riov = (_IOVec * batch)()
        self.siov = (_IOVec * batch)()
        self.rmsgs = (_MMsgHdr * batch)()
        self.smsgs = (_MMsgHdr * batch)()
        rbase = ctypes.addressof(self.rbuf)
        sbase = ctypes.addressof(self.sbuf)
        self.nbase = ctypes.addressof(self.names)
        for i in range(batch):
            self.riov[i].iov_base = rbase + i * SLOT
            self.riov[i].iov_len = SLOT
            self.siov[i].iov_base = sbase + i * 65535
            rhdr = self.rmsgs[i].msg_hdr
            rhdr.msg_name = self.nbase + i * SOCKADDR
            rhdr.msg_namelen = SOCKADDR
            rhdr.msg_iov = ctypes.pointer(self.riov[i])
            rhdr.msg_iovlen = 1
            shdr = self.smsgs[i].msg_hdr
            shdr.msg_iov = ctypes.pointer(self.siov[i])
            shdr.msg_iovlen = 1
        self.rview = memoryview(self.rbuf).cast("B")
        self.nview = memoryview(self.names).cast("B")
        self.sview = memoryview(self.sbuf).cast("B")
        self.rmeta = memoryview(self.rmsgs).cast("B")
        self.smeta = memoryview(self.smsgs).cast("B")
        self.siov_meta = memoryview(self.siov).cast("B")
        stride = ctypes.sizeof(_MMsgHdr)
        hdr = _MMsgHdr.msg_hdr.offset
        # Per-slot byte offsets of the fields the loop touches.
        self.len_at = [i * stride + _MMsgHdr.msg_len.offset for i in range(batch)]
        self.namelen_at = [i * stride + hdr + _MsgHdr.msg_namelen.offset for i in range(batch)]
        self.name_at = [i * stride + hdr + _MsgHdr.msg_name.offset for i in range(batch)]
        self.iov_len_at = [i * ctypes.sizeof(_IOVec) + _IOVec.iov_len.offset for i in range(batch)]

    def pump(
        self,
        handler: Callable[..., bytes | None],
        limiter: RateLimiter | None = None,
        now: float = 0.0,
        deferred: Callable[[bytes, bytes], None] | None = None,
    ) -> int:
        """One receive call and one send call; returns how many datagrams came in.

        ``limiter``: response rate limiting (``rrl``) at time ``now``; None costs one test.
        ``deferred``: called with (datagram, sockaddr bytes) for each the handler
        answered with None (a DNS UPDATE is answered later, from a task).
        """
        count: int = self.libc.recvmmsg(self.fd, self.rmsgs, self.batch, MSG_DONTWAIT, None)
        if count <= 0:
            # EAGAIN: drained. Anything else (an ICMP error surfacing, EINTR): the
            # next wake-up simply tries again; UDP promises no more.
            return 0
        unpack, pack = struct.unpack_from, struct.pack_into
        rview, rmeta, smeta, sview, siov = (
            self.rview, self.rmeta, self.smeta, self.sview, self.siov_meta
        )  # fmt: skip
        len_at, namelen_at, name_at, iov_len_at = (
            self.len_at, self.namelen_at, self.name_at, self.iov_len_at
        )  # fmt: skip
        nbase = self.nbase
        nview = self.nview
        out = 0
        for i in range(count):
            (size,) = unpack("I", rmeta, len_at[i])
            (namelen,) = unpack("I", rmeta, namelen_at[i])
            pack("I", rmeta, namelen_at[i], SOCKADDR)  # the kernel shrank it; restore
            start = i * SLOT
            # A datagram longer than a slot arrives cut short and decodes as malformed.
            data = rview[start : start + min(size, SLOT)].tobytes()
            try:
                reply = handler(data, tcp=False)
            except Exception:
                log.exception("unexpected error answering a UDP query; dropped it")
                continue
            if reply is None:
                if deferred is not None:
                    base = i * SOCKADDR
                    deferred(data, nview[base : base + namelen].tobytes())
                continue
            if limiter is not None:
                base = i * SOCKADDR
                verdict = limiter.check(network_of_sockaddr(nview[base : base + 24]), now)
                if verdict is not Verdict.SEND:
                    if verdict is Verdict.DROP:
                        continue
                    reply = slip_reply(reply)
            length = len(reply)
            at = out * 65535
            sview[at : at + length] = reply
            pack("N", siov, iov_len_at[out], length)
            pack("P", smeta, name_at[out], nbase + i * SOCKADDR)
            pack("I", smeta, namelen_at[out], namelen)
            out += 1
        if out:
            # A full send buffer drops the rest, as sendto would: UDP may lose datagrams.
            self.libc.sendmmsg(self.fd, self.smsgs, out, MSG_DONTWAIT)
        return count
