"""
boatwist.net.sockdiag without the kernel: the request it sends, how it
reads the answers, the port bytecode, and the TCP hash's size.

The netlink socket is a fake that records what is sent and answers what the
test wrote; the bytecode is run by a model of the kernel's own checker and
interpreter (net/ipv4/inet_diag.c: inet_diag_bc_audit, inet_diag_bc_run).
tests/integration/test_sockdiag_real.py asks the real kernel.
"""

from __future__ import annotations

import errno
import socket
import struct
from pathlib import Path

import pytest

from boatwist.net import sockdiag
from boatwist.net.sockdiag import ENDING_STATES, SockDiag, port_filter

HEADER = struct.Struct("=IHHII")
OP = struct.Struct("=BBH")
GE, LE, JMP = 2, 3, 1


def audit(bc: bytes) -> bool:
    """The kernel's inet_diag_bc_audit, for the ops port_filter uses: False where it says EINVAL."""

    def valid_cc(cc: int) -> bool:
        at, left = 0, len(bc)
        while left >= 0:
            if cc > left:
                return False
            if cc == left:
                return True
            _, yes, _ = OP.unpack_from(bc, at)
            if yes < 4 or yes & 3:
                return False
            left -= yes
            at += yes
        return False

    at, left = 0, len(bc)
    while left > 0:
        code, yes, no = OP.unpack_from(bc, at)
        min_len = OP.size
        if code in (GE, LE):
            min_len += OP.size  # the port is in a second op
            if left < min_len:
                return False
        elif code != JMP:
            return False
        if no < min_len or no > left + 4 or no & 3:
            return False
        if no < left and not valid_cc(left - no):
            return False
        if yes < min_len or yes > left + 4 or yes & 3:
            return False
        at += yes
        left -= yes
    return left == 0


def keeps(bc: bytes, port: int) -> bool:
    """The kernel's inet_diag_bc_run on a socket whose local port is C{port}."""
    at, left = 0, len(bc)
    while left > 0:
        code, yes, no = OP.unpack_from(bc, at)
        if code == JMP:
            matched = False
        else:
            _, _, bound = OP.unpack_from(bc, at + OP.size)
            matched = port >= bound if code == GE else port <= bound
        step = yes if matched else no
        left -= step
        at += step
    return left == 0


@pytest.mark.parametrize("ports", [[8080], [8023, 8080], [1, 443, 8023, 8080, 65535]])
def test_port_filter_keeps_exactly_our_ports_and_passes_the_kernels_audit(ports: list[int]) -> None:
    """The bytecode keeps a socket whose local port is one of ours, and no other; the kernel accepts it."""
    bc = port_filter(ports)
    assert audit(bc)
    for port in sorted({*ports, *(p + 1 for p in ports), *(p - 1 for p in ports), 0, 22, 40000}):
        assert keeps(bc, port) == (port in ports), port


def test_no_ports_is_no_filter() -> None:
    """Without ports there is no bytecode: every socket of the states asked."""
    assert port_filter([]) == b""


class FakeNetlink:
    """A netlink socket: records the requests, answers each from a script of messages."""

    def __init__(self, answers: list[list[tuple[int, bytes]]]) -> None:
        self.sent: list[bytes] = []
        self.answers = answers
        self._pending: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = HEADER.unpack_from(data)[3]
        messages = self.answers.pop(0) if self.answers else [(3, b"")]
        self._pending.append(b"".join(HEADER.pack(HEADER.size + len(body), kind, 2, seq, 0) + body
                                      for kind, body in messages))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self._pending.pop(0)

    def close(self) -> None:
        pass


def diag_msg(inode: int, state: int) -> bytes:
    return struct.pack("=BBBB48xIIIII", socket.AF_INET, state, 0, 0, 0, 0, 0, 0, inode)


def test_one_request_per_family_asked_with_the_states_and_our_ports() -> None:
    """
    A dump is one SOCK_DIAG_BY_FAMILY request per family asked for (the
    kernel walks its table once per request), with the states' mask and the
    ports' bytecode as an INET_DIAG_REQ_BYTECODE attribute.
    """
    nl = FakeNetlink([])
    diag = SockDiag(nl)  # type: ignore[arg-type]
    assert list(diag.inodes_in(ENDING_STATES, [socket.AF_INET], [8080, 8023])) == []
    [request] = nl.sent
    length, kind, flags, _seq, _pid = HEADER.unpack_from(request)
    assert (length, kind, flags) == (len(request), 20, 0x301)
    family, protocol, ext, _pad, states = struct.unpack_from("=BBBBI", request, HEADER.size)
    assert (family, protocol, ext) == (socket.AF_INET, socket.IPPROTO_TCP, 0)
    assert states == sum(1 << s for s in ENDING_STATES)
    attr_len, attr_type = struct.unpack_from("=HH", request, HEADER.size + 56)
    assert attr_type == 1 and request[HEADER.size + 60:] == port_filter([8023, 8080])
    assert attr_len == 4 + len(port_filter([8023, 8080]))
    nl.sent.clear()
    list(diag.inodes_in(ENDING_STATES))
    assert [r[HEADER.size] for r in nl.sent] == [socket.AF_INET, socket.AF_INET6]
    assert all(len(r) == HEADER.size + 56 for r in nl.sent)  # no ports: no bytecode


def test_answers_are_read_until_done_and_errors_raise() -> None:
    """Each answer names a socket by inode and state; NLMSG_DONE ends the dump; NLMSG_ERROR raises."""
    nl = FakeNetlink([[(20, diag_msg(303, 8)), (20, diag_msg(404, 4)), (3, b"")],
                      [(2, struct.pack("=i", -errno.EPERM))]])
    diag = SockDiag(nl)  # type: ignore[arg-type]
    assert list(diag.inodes_in(ENDING_STATES, [socket.AF_INET])) == [(303, 8), (404, 4)]
    with pytest.raises(OSError) as failed:
        list(diag.inodes_in(ENDING_STATES, [socket.AF_INET]))
    assert failed.value.errno == errno.EPERM


@pytest.mark.parametrize("text, buckets", [("262144\n", 262144), ("-65536\n", 65536), ("0\n", None),
                                           ("many\n", None)])
def test_the_tcp_hash_size_is_read_from_the_kernel(tmp_path: Path, text: str, buckets: int | None) -> None:
    """The size of the TCP hash a dump walks: negative means the first namespace's, shared; unknown is None."""
    path = tmp_path / "tcp_ehash_entries"
    path.write_text(text)
    assert sockdiag._ehash_buckets(str(path)) == buckets
    assert sockdiag._ehash_buckets(str(tmp_path / "absent")) is None


def test_too_many_ports_are_not_filtered() -> None:
    """Past MAX_FILTERED_PORTS the kernel is asked for every port (the bytecode's jumps are 16-bit)."""
    nl = FakeNetlink([])
    diag = SockDiag(nl)  # type: ignore[arg-type]
    list(diag.inodes_in(ENDING_STATES, [socket.AF_INET], range(1000, 1000 + sockdiag.MAX_FILTERED_PORTS)))
    list(diag.inodes_in(ENDING_STATES, [socket.AF_INET], range(1000, 1001 + sockdiag.MAX_FILTERED_PORTS)))
    assert len(nl.sent[0]) == HEADER.size + 56 + 4 + 20 * sockdiag.MAX_FILTERED_PORTS - 4
    assert len(nl.sent[1]) == HEADER.size + 56
