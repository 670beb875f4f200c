#!/usr/bin/env python3
"""Scripted boatwist clients for the presence cable-pull tests.

Run inside a lab namespace (``lab.spawn(ns, [PYTHON, "-u", OBSERVER, MODE,
...])``).  Standard library only.  Like ``peer.py``, every stdout line is one
JSON object with ``event``, ``t`` (``time.monotonic()``: CLOCK_MONOTONIC is
one clock for all network namespaces) and ``pid``.

Modes:

    stream  --host H --port P --user U --password W [--rcvbuf B]
            [--read all|none|slow] [--slow-bytes N --slow-every S]
            An event stream (GET /api/events, Basic auth) on a raw socket, so
            that its end can be chosen.  Prints ``http {status, head}``, then
            ``presence {data}`` per presence event read, ``eof`` / ``error``.
            Commands on stdin, one per line:
              close        close the socket (FIN)
              rst          SO_LINGER 0, then close (RST)
              shutdown-wr  shutdown(SHUT_WR), keep the socket (half-close)
              quit         exit (the socket closes as the process ends)
            each answered by ``did {cmd}`` with the time it was done.
    admit   --host H --port P --user U --password W [--path /api/events]
            [--every S] [--deadline S]
            GET PATH every S seconds until it answers 200 or the deadline;
            prints ``attempt {status, retry_after, body}`` per answer, then
            ``admitted`` (and exits; the connection closes) or ``gave-up``.
            Waits for ``go`` on stdin between the first answer and the rest
            when ``--hold`` is given.
    chatter --host H --port P --user U --password W [--every S] [--count N]
            POST /api/chat {"text": ...} every S seconds on one keep-alive
            connection (a new one if it breaks); prints ``posted {n}`` after
            the first answer and ``status {code}`` for each non-201 answer.
    chat    --host H --port P --user U --password W
            Logs in on the chat port and idles; prints ``line {text}`` for
            every line received, ``logged-in`` after the welcome line,
            ``eof`` / ``error`` at the end.
"""

from __future__ import annotations

import argparse
import base64
import errno as errno_mod
import json
import os
import select
import socket
import struct
import sys
import threading
import time

_lock = threading.Lock()


def emit(event: str, **fields: object) -> None:
    record = {"event": event, "t": time.monotonic(), "pid": os.getpid()}
    record.update(fields)
    with _lock:
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def emit_error(op: str, exc: OSError) -> None:
    num = exc.errno or 0
    emit("error", op=op, errno=num, error=errno_mod.errorcode.get(num, type(exc).__name__))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def read_head(sock: socket.socket) -> tuple[int, str, bytes]:
    """Read an HTTP response head; return (status, head text, bytes after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before the response head: {buf!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    text = head.decode("latin-1")
    return int(text.split(" ", 2)[1]), text, rest


class SSEParser:
    """Chunked transfer decoding + SSE event splitting, fed incrementally."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.raw = b""
        self.text = b""

    def feed(self, data: bytes) -> list[tuple[str, object]]:
        self.raw += data
        if self.chunked:
            while b"\r\n" in self.raw:
                size_line, rest = self.raw.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0] or b"0", 16)
                if len(rest) < size + 2:
                    break
                self.text += rest[:size]
                self.raw = rest[size + 2:]
        else:
            self.text += self.raw
            self.raw = b""
        events = []
        while b"\n\n" in self.text:
            block, self.text = self.text.split(b"\n\n", 1)
            kind, data = "message", None
            for line in block.decode("utf-8", "replace").split("\n"):
                if line.startswith(":"):
                    events.append(("comment", line[1:].strip()))
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    try:
                        data = json.loads(line[6:])
                    except ValueError:
                        data = line[6:]
            if data is not None:
                events.append((kind, data))
        return events


def cmd_stream(args: argparse.Namespace) -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if args.rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    sock.settimeout(5.0)
    try:
        sock.connect((args.host, args.port))
        sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
            f"Authorization: {basic(args.user, args.password)}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode())
        status, head, rest = read_head(sock)
    except OSError as exc:
        emit_error("connect", exc)
        return 1
    sock.settimeout(None)
    local = sock.getsockname()
    emit("http", status=status, head=head, local=f"{local[0]}:{local[1]}")
    parser = SSEParser("transfer-encoding: chunked" in head.lower())
    done = threading.Event()
    chat_seen: list[bool] = []

    def report(data: bytes) -> None:
        for kind, value in parser.feed(data):
            if kind == "presence":
                emit("presence", data=value)
            elif kind == "comment":
                emit("comment", text=value)
            elif kind == "chat" and not chat_seen:
                # Once only: a line per message could fill our stdout pipe,
                # block this reader and change what is being measured.
                chat_seen.append(True)
                emit("chat-flowing", data=value)

    report(rest)

    def reader() -> None:
        # select() with a timeout, never a recv() blocked across a close():
        # Linux keeps a socket open (no FIN, no RST) while another thread is
        # inside a system call on it.
        while not done.is_set():
            ready, _, _ = select.select([sock], [], [], 0.05)
            if not ready or done.is_set():
                continue
            if args.read == "none":
                # Never read: only learn of the end.  MSG_PEEK leaves the data
                # queued, so the receive window closes as the server writes.
                try:
                    peeked = sock.recv(1, socket.MSG_PEEK)
                except OSError as exc:
                    emit_error("recv", exc)
                    return
                if not peeked:
                    emit("eof")
                    return
                done.wait(0.2)
                continue
            size = args.slow_bytes if args.read == "slow" else 65536
            try:
                data = sock.recv(size)
            except OSError as exc:
                emit_error("recv", exc)
                return
            if not data:
                emit("eof")
                return
            report(data)
            if args.read == "slow":
                done.wait(args.slow_every)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()

    def stop_reading() -> None:
        done.set()
        thread.join(2.0)

    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "close":
            stop_reading()
            emit("did", cmd=cmd)
            sock.close()
        elif cmd == "rst":
            stop_reading()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            emit("did", cmd=cmd)
            sock.close()
        elif cmd == "shutdown-wr":
            emit("did", cmd=cmd)
            sock.shutdown(socket.SHUT_WR)
        elif cmd == "quit":
            emit("did", cmd=cmd)
            return 0
    # stdin closed: keep the connection as it is until killed.
    while True:
        time.sleep(60)


def cmd_admit(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.deadline
    first = True
    while True:
        try:
            with socket.create_connection((args.host, args.port), timeout=2.0) as sock:
                sock.sendall(
                    f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
                    f"Authorization: {basic(args.user, args.password)}\r\n"
                    "Connection: close\r\n\r\n".encode())
                status, head, rest = read_head(sock)
                body = rest
                if status != 200:
                    sock.settimeout(1.0)
                    while True:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        body += chunk
            headers = {}
            for hline in head.split("\r\n")[1:]:
                name, _, value = hline.partition(":")
                headers[name.strip().lower()] = value.strip()
            emit("attempt", status=status, retry_after=headers.get("retry-after"),
                 body=body.decode("utf-8", "replace")[:2000])
            if status == 200:
                emit("admitted")
                return 0
        except OSError as exc:
            emit_error("attempt", exc)
        if first and args.hold:
            first = False
            if sys.stdin.readline().strip() != "go":
                return 1
            emit("going")
            deadline = time.monotonic() + args.deadline
            continue
        if time.monotonic() >= deadline:
            emit("gave-up")
            return 1
        time.sleep(args.every)


def cmd_chatter(args: argparse.Namespace) -> int:
    import http.client

    headers = {"Authorization": basic(args.user, args.password),
               "Content-Type": "application/json"}
    conn = None
    n = 0
    next_at = time.monotonic()
    while args.count <= 0 or n < args.count:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(args.host, args.port, timeout=5.0)
            body = json.dumps({"text": f"tick {n}"})
            conn.request("POST", "/api/chat", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                emit("status", code=resp.status)
        except (OSError, http.client.HTTPException) as exc:
            emit("error", op="post", error=type(exc).__name__, message=str(exc))
            if conn is not None:
                conn.close()
            conn = None
        n += 1
        if n == 1:
            emit("posted", n=n)
        next_at += args.every
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    emit("done", n=n)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    try:
        sock = socket.create_connection((args.host, args.port), timeout=5.0)
    except OSError as exc:
        emit_error("connect", exc)
        return 1
    sock.settimeout(None)
    emit("connected")
    buf = b""
    stage = "login"
    while True:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            emit_error("recv", exc)
            return 0
        if not data:
            emit("eof")
            return 0
        buf += data
        if stage == "login" and buf.endswith(b"login: "):
            sock.sendall(args.user.encode() + b"\n")
            buf, stage = b"", "password"
            continue
        if stage == "password" and buf.endswith(b"password: "):
            sock.sendall(args.password.encode() + b"\n")
            buf, stage = b"", "chat"
            continue
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace").rstrip("\r")
            emit("line", text=text)
            if stage == "chat" and text.startswith("welcome"):
                emit("logged-in")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("stream", "admit", "chatter", "chat"):
        sp = sub.add_parser(name)
        sp.add_argument("--host", required=True)
        sp.add_argument("--port", type=int, required=True)
        sp.add_argument("--user", required=True)
        sp.add_argument("--password", required=True)
        if name == "stream":
            sp.add_argument("--rcvbuf", type=int, default=0)
            sp.add_argument("--read", choices=("all", "none", "slow"), default="all")
            sp.add_argument("--slow-bytes", type=int, default=256)
            sp.add_argument("--slow-every", type=float, default=0.05)
        if name == "admit":
            sp.add_argument("--path", default="/api/events")
            sp.add_argument("--every", type=float, default=0.2)
            sp.add_argument("--deadline", type=float, default=15.0)
            sp.add_argument("--hold", action="store_true")
        if name == "chatter":
            sp.add_argument("--every", type=float, default=0.05)
            sp.add_argument("--count", type=int, default=2000)
    args = p.parse_args()
    modes = {"stream": cmd_stream, "admit": cmd_admit, "chatter": cmd_chatter, "chat": cmd_chat}
    return modes[args.mode](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
