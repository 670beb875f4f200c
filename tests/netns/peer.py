#!/usr/bin/env python3
"""Tiny TCP peers for the netns lab (``tests/netns/lab.py``).

Run inside a namespace: ``ip netns exec NS python -u peer.py MODE ...``
(``Lab.spawn_peer(ns, MODE, ...)`` does that).  Standard library only.

Wire format of stdout: one JSON object per line, always with

    "event"  what happened (see each mode)
    "t"      time.monotonic() when it happened.  CLOCK_MONOTONIC is one clock
             for every network namespace of a machine, so the test process
             subtracts it directly from its own time.monotonic().
    "wall"   time.time(), for humans only
    "pid"    this process

Failures of a socket call add "op" (recv/send/connect), "errno" (number) and
"error" (symbolic name, e.g. "ETIMEDOUT").

Modes:

    server  --bind IP --port N [--keepalive I,N,C] [--user-timeout MS]
            [--send [--chunk B] [--interval S]] [--tcp-info S]
            events: listening {host, port}; accepted {peer, options};
            sending (first byte out); tcp_info {state, retransmits, probes,
            backoff, rto_us, rtt_us, unacked, last_ack_recv_ms}; then
            error {op, errno, error, bytes} or eof {bytes}.
    client  --connect IP:PORT [--read] [--keepalive ...] [--user-timeout MS]
            events: connected {local, peer}; reading (first byte in);
            progress {bytes} every 0.25 s while reading; error / eof.
    probe   --connect IP:PORT [--until connected,refused] [--timeout S]
            [--deadline S]: connect repeatedly until a result in --until or
            the deadline; one line: probe {result, attempts}; exit 0 when
            satisfied, 1 otherwise.  Results: connected, refused, timeout,
            unreachable, or the lower-case errno name.
    sse     --url http://HOST:PORT/path [--user U --password P]
            [--last-event-id ID]: GET an event stream (Basic auth) and print
            http {status, reason, headers}, then sse {kind, id, data} per
            event (data parsed as JSON when it is JSON), sse_comment {text}
            per comment line, closed at EOF.  Non-200: body {text}, exit 1.
    orphan  [--seconds S]: fork a child that leaves our process group
            (setsid) and sleeps; prints orphan {child}.  Used to prove the lab
            also kills what escapes the process groups it tracks (a twistd
            that daemonizes, say).
"""

from __future__ import annotations

import argparse
import base64
import errno as errno_mod
import http.client
import json
import os
import socket
import struct
import sys
import threading
import time
from urllib.parse import urlsplit

_out_lock = threading.Lock()

# struct tcp_info, the stable head (linux/tcp.h): 8 bytes of u8, then u32s.
_TCP_INFO = struct.Struct("8B24I")
_TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
    5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
    9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
}


def emit(event: str, **fields: object) -> None:
    record = {"event": event, "t": time.monotonic(), "wall": time.time(),
              "pid": os.getpid()}
    record.update(fields)
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def emit_error(op: str, exc: OSError, **fields: object) -> None:
    num = exc.errno if exc.errno is not None else 0
    if isinstance(exc, socket.timeout) and not num:
        name = "timeout"
    else:
        name = errno_mod.errorcode.get(num, str(num))
    emit("error", op=op, errno=num, error=name, message=str(exc), **fields)


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def apply_options(sock: socket.socket, args: argparse.Namespace) -> dict:
    """Set keepalive / user timeout as asked; return what the kernel reports."""
    if args.keepalive:
        idle, intvl, cnt = (int(x) for x in args.keepalive.replace("/", ",").split(","))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, intvl)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cnt)
    if args.user_timeout is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, args.user_timeout)
    return {
        "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        "keepidle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        "keepintvl": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        "keepcnt": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
    }


def tcp_info(sock: socket.socket) -> dict:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    raw = raw.ljust(_TCP_INFO.size, b"\0")
    v = _TCP_INFO.unpack(raw)
    u32 = v[8:]
    return {
        "state": _TCP_STATES.get(v[0], str(v[0])),
        "retransmits": v[2],
        "probes": v[3],
        "backoff": v[4],
        "rto_us": u32[0],
        "unacked": u32[4],
        "last_data_recv_ms": u32[11],
        "last_ack_recv_ms": u32[12],
        "rtt_us": u32[15],
        "total_retrans": u32[23],
    }


def start_tcp_info_thread(sock: socket.socket, every: float) -> threading.Event:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                info = tcp_info(sock)
            except OSError:
                return
            emit("tcp_info", **info)

    threading.Thread(target=loop, daemon=True).start()
    return stop


def recv_until_end(sock: socket.socket, progress: bool) -> int:
    """Read until EOF or an error; report which.  Returns the exit status."""
    total = 0
    next_progress = 0.0
    while True:
        try:
            data = sock.recv(65536)
        except OSError as exc:
            emit_error("recv", exc, bytes=total)
            return 0
        if not data:
            emit("eof", bytes=total)
            return 0
        if total == 0:
            emit("reading" if progress else "data", bytes=len(data))
        total += len(data)
        if progress and time.monotonic() >= next_progress:
            next_progress = time.monotonic() + 0.25
            emit("progress", bytes=total)


def send_until_error(sock: socket.socket, chunk: int, interval: float) -> int:
    payload = b"x" * chunk
    total = 0
    next_send = time.monotonic()
    while True:
        try:
            total += sock.send(payload)
        except OSError as exc:
            emit_error("send", exc, bytes=total)
            return 0
        if total and total <= chunk:
            emit("sending", bytes=total)
        if interval:
            next_send += interval
            delay = next_send - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_send = time.monotonic()


def cmd_server(args: argparse.Namespace) -> int:
    listener = socket.socket(family_of(args.bind), socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.bind, args.port))
    listener.listen(8)
    emit("listening", host=args.bind, port=listener.getsockname()[1])
    listener.settimeout(args.accept_timeout)
    try:
        conn, peer = listener.accept()
    except OSError as exc:
        emit_error("accept", exc)
        return 1
    conn.settimeout(None)
    options = apply_options(conn, args)
    emit("accepted", peer=f"{peer[0]}:{peer[1]}", options=options)
    if args.tcp_info:
        start_tcp_info_thread(conn, args.tcp_info)
    if args.send:
        return send_until_error(conn, args.chunk, args.interval)
    return recv_until_end(conn, progress=False)


def cmd_client(args: argparse.Namespace) -> int:
    host, port = hostport(args.connect)
    try:
        sock = socket.create_connection((host, port), timeout=args.connect_timeout)
    except OSError as exc:
        emit_error("connect", exc)
        return 1
    sock.settimeout(None)
    options = apply_options(sock, args)
    local = sock.getsockname()
    emit("connected", local=f"{local[0]}:{local[1]}", peer=args.connect, options=options)
    if args.tcp_info:
        start_tcp_info_thread(sock, args.tcp_info)
    return recv_until_end(sock, progress=args.read)


def classify(exc: OSError) -> str:
    if isinstance(exc, (socket.timeout, TimeoutError)) or exc.errno == errno_mod.ETIMEDOUT:
        return "timeout"
    if exc.errno == errno_mod.ECONNREFUSED:
        return "refused"
    if exc.errno in (errno_mod.EHOSTUNREACH, errno_mod.ENETUNREACH):
        return "unreachable"
    return errno_mod.errorcode.get(exc.errno or 0, "error").lower()


def cmd_probe(args: argparse.Namespace) -> int:
    host, port = hostport(args.connect)
    wanted = set(args.until.split(","))
    deadline = time.monotonic() + args.deadline
    attempts = 0
    while True:
        attempts += 1
        remaining = max(0.05, min(args.timeout, deadline - time.monotonic()))
        try:
            socket.create_connection((host, port), timeout=remaining).close()
            result = "connected"
        except OSError as exc:
            result = classify(exc)
        if result in wanted or time.monotonic() >= deadline:
            emit("probe", result=result, attempts=attempts, target=args.connect)
            return 0 if result in wanted else 1
        time.sleep(0.05)


def cmd_sse(args: argparse.Namespace) -> int:
    url = urlsplit(args.url)
    if url.scheme == "https":
        import ssl
        ctx = ssl.create_default_context()
        if args.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            url.hostname, url.port or 443, timeout=args.connect_timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80,
                                          timeout=args.connect_timeout)
    headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
    if args.user is not None:
        token = base64.b64encode(f"{args.user}:{args.password or ''}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    if args.last_event_id:
        headers["Last-Event-ID"] = args.last_event_id
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
    except OSError as exc:
        emit_error("connect", exc)
        return 1
    emit("http", status=resp.status, reason=resp.reason,
         headers={k.lower(): v for k, v in resp.getheaders()})
    if resp.status != 200:
        emit("body", text=resp.read(8192).decode("utf-8", "replace"))
        return 1
    if conn.sock is not None:
        conn.sock.settimeout(None)
    kind, event_id, data = "", None, []
    try:
        while True:
            raw = resp.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:                      # blank line: dispatch
                if data:
                    text = "\n".join(data)
                    try:
                        value: object = json.loads(text)
                    except ValueError:
                        value = text
                    emit("sse", kind=kind or "message", id=event_id, data=value)
                kind, data = "", []
                continue
            if line.startswith(":"):
                emit("sse_comment", text=line[1:].strip())
                continue
            field, _, value_text = line.partition(":")
            if value_text.startswith(" "):
                value_text = value_text[1:]
            if field == "event":
                kind = value_text
            elif field == "data":
                data.append(value_text)
            elif field == "id":
                event_id = value_text
    except OSError as exc:
        emit_error("recv", exc)
        return 0
    emit("closed")
    return 0


def cmd_orphan(args: argparse.Namespace) -> int:
    child = os.fork()
    if child == 0:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        time.sleep(args.seconds)
        os._exit(0)
    emit("orphan", child=child)
    time.sleep(args.seconds)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = p.add_subparsers(dest="mode", required=True)

    def sockopts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--keepalive", help="IDLE,INTVL,CNT in seconds/probes, e.g. 1,1,2")
        sp.add_argument("--user-timeout", type=int, help="TCP_USER_TIMEOUT in ms")
        sp.add_argument("--tcp-info", type=float, default=0.0,
                        help="print TCP_INFO every S seconds (0 = never)")

    s = sub.add_parser("server")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--accept-timeout", type=float, default=60.0)
    s.add_argument("--send", action="store_true", help="send continuously instead of reading")
    s.add_argument("--chunk", type=int, default=16384)
    s.add_argument("--interval", type=float, default=0.01, help="pause between sends (0 = flat out)")
    sockopts(s)

    c = sub.add_parser("client")
    c.add_argument("--connect", required=True, metavar="IP:PORT")
    c.add_argument("--connect-timeout", type=float, default=5.0)
    c.add_argument("--read", action="store_true", help="report progress while reading")
    sockopts(c)

    pr = sub.add_parser("probe")
    pr.add_argument("--connect", required=True, metavar="IP:PORT")
    pr.add_argument("--until", default="connected")
    pr.add_argument("--timeout", type=float, default=1.0, help="per attempt")
    pr.add_argument("--deadline", type=float, default=0.0, help="keep trying this long")

    e = sub.add_parser("sse")
    e.add_argument("--url", required=True)
    e.add_argument("--user")
    e.add_argument("--password")
    e.add_argument("--last-event-id")
    e.add_argument("--insecure", action="store_true")
    e.add_argument("--connect-timeout", type=float, default=5.0)

    o = sub.add_parser("orphan")
    o.add_argument("--seconds", type=float, default=120.0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return {"server": cmd_server, "client": cmd_client, "probe": cmd_probe,
            "sse": cmd_sse, "orphan": cmd_orphan}[args.mode](args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
