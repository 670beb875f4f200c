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
              [nlattr(len u16, type u16 = INET_DIAG_REQ_BYTECODE 1)
               bytecode: our local ports, see L{port_filter}]
    answers   nlmsghdr(type 20) inet_diag_msg(family u8, state u8, timer u8,
                       retrans u8, sockid 48, expires u32, rqueue u32,
                       wqueue u32, uid u32, inode u32) [attributes]
              ... until nlmsghdr(type NLMSG_DONE 3); NLMSG_ERROR 2 carries -errno

The kernel walks its whole TCP hash table for each dump, one family at a
time, whatever it returns: that walk is the cost of a dump (a few hundred
microseconds to a few milliseconds on a large machine, where the table has
hundreds of thousands of buckets; a small device's table is far smaller).
So a dump is asked only for the families we track, filtered in the kernel
to the states that matter and to our own local ports (the other sockets of
the namespace are none of ours), and L{SockDiag.buckets} says how big the
table is, so that the heartbeat can read a few sockets one by one instead.

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
from typing import Iterable, Iterator

__all__ = ["ENDING_STATES", "SockDiag", "port_filter", "socket_inode"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300

_NLMSGHDR = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI48x")
_NLATTR = struct.Struct("=HH")
_INET_DIAG_REQ_BYTECODE = 1
#: Bytecode: struct inet_diag_bc_op (code u8, yes u8, no u16), jumps in bytes from the op.
_BC_OP = struct.Struct("=BBH")
_BC_JMP = 1
_BC_S_GE = 2
_BC_S_LE = 3
#: family, state, timer, retrans, then (after the 48-byte sockid) expires, rqueue, wqueue, uid, inode.
_DIAG_MSG = struct.Struct("=BBBB48xIIIII")
_ERRNO = struct.Struct("=i")

#: TCP states (include/net/tcp_states.h) in which a connection is ending:
#: everything but ESTABLISHED and the states no accepted, tracked socket is in
#: (SYN_SENT, SYN_RECV, TIME_WAIT -- no inode --, LISTEN, NEW_SYN_RECV).
ENDING_STATES = frozenset({4, 5, 7, 8, 9, 11})  # FIN_WAIT1, FIN_WAIT2, CLOSE, CLOSE_WAIT, LAST_ACK, CLOSING

#: Largest answer read at once; the kernel fills up to this per recv.
_RECV_SIZE = 65536

#: Most ports the kernel is asked to filter on (20 bytes of bytecode each; its
#: jumps are 16-bit): the listeners' ports, a handful.  Past it, every port.
MAX_FILTERED_PORTS = 256

#: Where Linux (6.1 and later) says how many buckets its TCP hash has in this namespace.
_EHASH_ENTRIES = "/proc/sys/net/ipv4/tcp_ehash_entries"


def port_filter(ports: list[int]) -> bytes:
    """
    inet_diag bytecode keeping the sockets whose local port is one of
    C{ports} (and dropping every other), as C{ss} compiles
    ``sport = :A or sport = :B``: per port ``sport >= P and sport <= P``
    (the comparisons every kernel since 2.6 has), a match jumping to the
    end (kept), a miss to the next port; past the last, beyond the end
    (dropped).  The kernel checks that every jump lands on an op reached by
    following the "yes" jumps from the start: hence the JMP after each port
    but the last, whose own "yes" leads on to the next port.

        [GE p1 | p1][LE p1 | p1][JMP -> end][GE p2 | p2][LE p2 | p2]

    An empty list gives no bytecode: every socket.
    """
    if not ports:
        return b""
    out = []
    for i, port in enumerate(ports):
        # This port's block: GE (8 bytes: the op and the port), LE (8), then a JMP (4) but after the last.
        # A miss jumps from GE or LE to the next block -- from the last, 4 bytes beyond the end.
        out.append(_BC_OP.pack(_BC_S_GE, 8, 20) + _BC_OP.pack(0, 0, port))
        out.append(_BC_OP.pack(_BC_S_LE, 8, 12) + _BC_OP.pack(0, 0, port))
        if i < len(ports) - 1:
            after = 20 * (len(ports) - i - 2) + 16  # the blocks after this JMP (the last has none)
            out.append(_BC_OP.pack(_BC_JMP, 4, 4 + after))  # a JMP always takes "no": to the end, kept
    return b"".join(out)


def _ehash_buckets(path: str = _EHASH_ENTRIES) -> int | None:
    """
    Buckets of this namespace's TCP hash (negative: it shares the first
    namespace's, of that size); None where the kernel does not say.
    """
    try:
        with open(path) as f:
            return abs(int(f.read().strip())) or None
    except (OSError, ValueError):
        return None


def socket_inode(sock: socket.socket) -> int | None:
    """The socket's inode (what sock_diag names it by), or None where it cannot be had."""
    try:
        return os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError, AttributeError):
        return None


class SockDiag:
    """A netlink socket asking the kernel which TCP sockets are in given states."""

    def __init__(self, sock: socket.socket, buckets: int | None = None) -> None:
        self._sock = sock
        self._seq = 0
        #: Buckets of the kernel's TCP hash, which every dump walks; None: unknown.
        self.buckets = buckets

    @classmethod
    def open(cls) -> "SockDiag | str":
        """A ready L{SockDiag}, or why there is none here (one line, for the log)."""
        if not sys.platform.startswith("linux"):
            return "netlink sock_diag is Linux's"
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_SOCK_DIAG)
        except (OSError, AttributeError) as e:
            return f"netlink sock_diag is not available ({e})"
        diag = cls(sock, _ehash_buckets())
        try:
            list(diag.inodes_in(ENDING_STATES))
        except OSError as e:
            sock.close()
            return f"netlink sock_diag does not answer ({e})"
        return diag

    def close(self) -> None:
        self._sock.close()

    def inodes_in(self, states: frozenset[int], families: Iterable[int] = (socket.AF_INET, socket.AF_INET6),
                  ports: Iterable[int] = ()) -> Iterator[tuple[int, int]]:
        """
        (inode, state) of every TCP socket of this network namespace in one
        of C{states}, of the address C{families} asked for (one dump, one
        walk of the kernel's table, each), and -- if C{ports} are given --
        whose local port is one of them (past L{MAX_FILTERED_PORTS}, any port).
        """
        mask = 0
        for state in states:
            mask |= 1 << state
        wanted = sorted(set(ports))
        bytecode = port_filter(wanted) if len(wanted) <= MAX_FILTERED_PORTS else b""
        for family in families:
            yield from self._dump(family, mask, bytecode)

    def _dump(self, family: int, mask: int, bytecode: bytes = b"") -> Iterator[tuple[int, int]]:
        self._seq += 1
        seq = self._seq
        body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, mask)
        if bytecode:
            body += _NLATTR.pack(_NLATTR.size + len(bytecode), _INET_DIAG_REQ_BYTECODE) + bytecode
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
