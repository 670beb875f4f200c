"""
Hostile chat-port clients for tests and benchmarks: bounded, stopping by themselves.

Run as a separate process (``python flood.py MODE HOST PORT SECONDS
CONNECTIONS``) so that its CPU is not the test's and its end is certain:
it stops after SECONDS, whatever the server does, and prints one JSON line
of what it did.  Connection i is bound to 127.0.0.(2 + i % SOURCES), so
the flood comes from several addresses, as issue 9's rows did.

Modes:

  nop     half the connections send IAC WILL SGA (a telnet client) and then
          IAC NOP as fast as the socket takes it; the other half send raw
          junk with IAC NOPs in it (never a negotiation); each reconnects at
          once when closed.
  squat   connect and say nothing; reconnect at once when closed (evicted,
          timed out, refused).
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import time

SOURCES = 8
NOP_BLOCK = bytes((255, 241)) * 8192
JUNK_BLOCK = (b"GET / HTTP/1.0 \xff\xf1" + os.urandom(64).replace(b"\xff", b"\x00") + b"\xff\xf1") * 200
HELLO = bytes((255, 251, 3))


def _connect(host: str, port: int, index: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((f"127.0.0.{2 + index % SOURCES}", 0))
    sock.setblocking(False)
    try:
        sock.connect((host, port))
    except BlockingIOError:
        pass
    return sock


def run(mode: str, host: str, port: int, seconds: float, connections: int) -> dict[str, int]:
    sel = selectors.DefaultSelector()
    stats = {"connects": 0, "closed_by_server": 0, "bytes_sent": 0, "connect_errors": 0}
    deadline = time.monotonic() + seconds

    def open_one(index: int) -> None:
        try:
            sock = _connect(host, port, index)
        except OSError:
            stats["connect_errors"] += 1
            return
        stats["connects"] += 1
        first = HELLO if mode == "nop" and index % 2 == 0 else b""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if mode == "nop" else 0)
        sel.register(sock, events, [index, first])

    for i in range(connections):
        open_one(i)
    while time.monotonic() < deadline:
        for key, mask in sel.select(timeout=0.05):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            index, pending = key.data
            closed = False
            if mask & selectors.EVENT_READ:
                try:
                    closed = sock.recv(65536) == b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if not closed and mask & selectors.EVENT_WRITE:
                block = pending or (NOP_BLOCK if index % 2 == 0 else JUNK_BLOCK)
                try:
                    stats["bytes_sent"] += sock.send(block)
                    key.data[1] = b""
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
            if closed:
                stats["closed_by_server"] += 1
                sel.unregister(sock)
                sock.close()
                open_one(index)
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return stats


def main(argv: list[str]) -> None:
    mode, host, port, seconds, connections = argv[1], argv[2], int(argv[3]), float(argv[4]), int(argv[5])
    print(json.dumps(run(mode, host, port, seconds, connections)), flush=True)


if __name__ == "__main__":
    main(sys.argv)
