"""
boatwist.net.sockdiag against the real kernel: one netlink dump names the
sockets that are ending, matched to their connections by inode.
"""

from __future__ import annotations

import socket
import sys
import time

import pytest

from boatwist.net.sockdiag import ENDING_STATES, SockDiag, socket_inode

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink sock_diag is Linux's")

CLOSE_WAIT = 8


def wait_for(predicate, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_half_closed_peer_is_reported_in_close_wait_by_inode() -> None:
    """The server side of a connection whose client closed is CLOSE_WAIT, under its socket's inode."""
    diag = SockDiag.open()
    assert isinstance(diag, SockDiag), diag
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        inode = socket_inode(accepted)
        assert inode
        assert inode not in dict(diag.inodes_in(ENDING_STATES))  # established: not reported
        client.close()
        assert wait_for(lambda: dict(diag.inodes_in(ENDING_STATES)).get(inode) == CLOSE_WAIT)
        accepted.close()
    diag.close()


def test_ipv6_sockets_are_reported_too() -> None:
    """The dump covers AF_INET6 as well as AF_INET."""
    diag = SockDiag.open()
    assert isinstance(diag, SockDiag), diag
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        server.listen()
        client = socket.create_connection(server.getsockname()[:2])
        accepted, _ = server.accept()
        inode = socket_inode(accepted)
        client.close()
        assert wait_for(lambda: dict(diag.inodes_in(ENDING_STATES)).get(inode) == CLOSE_WAIT)
        accepted.close()
    diag.close()


def test_only_our_ports_and_families_are_reported() -> None:
    """
    The kernel keeps to the local ports asked for (our listeners'), through
    the bytecode of port_filter, and to the families asked for: a half-closed
    connection of another listener, or of another family, is not ours.
    """
    diag = SockDiag.open()
    assert isinstance(diag, SockDiag), diag
    ours, theirs, again = socket.socket(), socket.socket(), socket.socket()
    with ours, theirs, again:
        ends = []
        for server in (ours, theirs, again):
            server.bind(("127.0.0.1", 0))
            server.listen()
            client = socket.create_connection(server.getsockname())
            accepted, _ = server.accept()
            ends.append((client, accepted, socket_inode(accepted)))
        for client, _, _ in ends:
            client.close()
        asked = [ours.getsockname()[1], again.getsockname()[1]]
        want = {ends[0][2]: CLOSE_WAIT, ends[2][2]: CLOSE_WAIT}
        assert wait_for(lambda: dict(diag.inodes_in(ENDING_STATES, [socket.AF_INET], asked)) == want)
        assert dict(diag.inodes_in(ENDING_STATES, [socket.AF_INET6], asked)) == {}
        for _, accepted, _ in ends:
            accepted.close()
    diag.close()
