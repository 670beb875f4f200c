"""
One netlink C{sock_diag} dump instead of one C{getsockopt} per connection.

The heartbeat must notice, every second, a connection the kernel no longer
calls ESTABLISHED (the peer half-closed and went silent: CLOSE_WAIT).  With
10,000 connections open -- a flood, or a busy device -- reading C{TCP_INFO}
of each costs a few percent of a core.  Linux answers the same question for
every socket at once through C{NETLINK_SOCK_DIAG} (what C{ss} uses), and
filters by TCP state in the kernel: asking for every state but ESTABLISHED
returns nothing at all on a healthy device, whatever the number of
connections.

Wire format (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h), host
byte order except ports:

    request   nlmsghdr(len u32, type u16 = SOCK_DIAG_BY_FAMILY 20,
                       flags u16 = REQUEST|DUMP, seq u32, pid u32)
              inet_diag_req_v2(family u8, protocol u8 = IPPROTO_TCP,
                               ext u8 = 0, pad u8, states u32 (1 << state),
                               sockid 48 bytes of zeros: every socket)
    answers   nlmsghdr(type 20) inet_diag_msg(family u8, state u8, timer u8,
                       retrans u8, sockid 48, expires u32, rqueue u32,
                       wqueue u32, uid u32, inode u32) [attributes]
              ... until nlmsghdr(type NLMSG_DONE 3); NLMSG_ERROR 2 carries -errno

A socket is matched to its connection by inode (C{fstat(fd).st_ino} of the
socket is C{idiag_inode}).  Where netlink is not there (not Linux, no
inet_diag module, a seccomp profile), L{SockDiag.open} says so and the
heartbeat reads each connection's C{TCP_INFO} as before.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
from typing import Iterator

__all__ = ["ENDING_STATES", "SockDiag", "socket_inode"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300

_NLMSGHDR = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI48x")
#: family, state, timer, retrans, then (after the 48-byte sockid) expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBB48xIIIII")
_ERRNO = struct.Struct("=i")

#: TCP states (include/net/tcp_states.h) in which a connection is ending:
#: everything but ESTABLISHED and the states no accepted, tracked socket is in
#: (SYN_SENT, SYN_RECV, TIME_WAIT -- no inode --, LISTEN, NEW_SYN_RECV).
ENDING_STATES = frozenset({4, 5, 7, 8, 9, 11})  # FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING

#: Largest answer read at once; the kernel fills up to this per recv.
_RECV_SIZE = 65536


def socket_inode(sock: socket.socket) -> int | None:
    """The socket's inode (what sock_diag names it by), or None where it cannot be had."""
    try:
        return os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError, AttributeError):
        return None


class SockDiag:
    """A netlink socket asking the kernel which TCP sockets are in given states."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls) -> "SockDiag | str":
        """A ready L{SockDiag}, or why there is none here (one line, for the log)."""
        if not sys.platform.startswith("linux"):
            return "netlink sock_diag is Linux's"
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
        except (OSError, AttributeError) as e:
            return f"netlink sock_diag is not available ({e})"
        diag = cls(sock)
        try:
            list(diag.inodes_in(ENDING_STATES))
        except OSError as e:
            sock.close()
            return f"netlink sock_diag does not answer ({e})"
        return diag

    def close(self) -> None:
        self._sock.close()

    def inodes_in(self, states: frozenset[int]) -> Iterator[tuple[int, int]]:
        """(inode, state) of every TCP socket of this network namespace in one of C{states}."""
        mask = 0
        for state in states:
            mask |= 1 << state
        for family in (socket.AF_INET, socket.AF_INET6):
            yield from self._dump(family, mask)

    def _dump(self, family: int, mask: int) -> Iterator[tuple[int, int]]:
        self._seq += 1
        seq = self._seq
        body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, mask)
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST | _NLM_F_DUMP,
                                seq, 0)
        self._sock.send(header + body)
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    raise OSError(errno.EPROTO, "malformed netlink answer")
                if got_seq == seq:
                    if kind == _NLMSG_DONE:
                        return
                    if kind == _NLMSG_ERROR:
                        (code,) = _ERRNO.unpack_from(data, offset + _NLMSGHDR.size)
                        if code:
                            raise OSError(-code, os.strerror(-code))
                        return
                    if kind == _SOCK_DIAG_BY_FAMILY:
                        _fam, state, _timer, _retrans, _exp, _rq, _wq, _uid, inode = _DIAG_MSG.unpack_from(
                            data, offset + _NLMSGHDR.size)
                        yield inode, state
                offset += (length + 3) & ~3
