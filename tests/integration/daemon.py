"""
Start the real daemon with ``twistd -n embweb`` in a temporary directory.

Used by the integration tests (and, inside a network namespace, by the
cable-pull tests).  Waits are bounded and wait for real events (a port that
answers, a line in the log), never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import bcrypt

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL (Linux prctl)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_users(directory: Path, users: dict[str, str], realm: str = "boatwist", rounds: int = 4) -> None:
    """htpasswd (bcrypt) and htdigest files for C{users}, as embweb-passwd would write them."""
    from boatwist.auth.passwords import set_password

    for user, password in users.items():
        set_password(directory / "users.htpasswd", directory / "users.htdigest", realm, user, password, rounds=rounds)


class Daemon:
    """One twistd process serving boatwist."""

    def __init__(self, workdir: Path, config: str = "", users: dict[str, str] | None = None,
                 host: str = "127.0.0.1", netns: str | None = None, env: dict[str, str] | None = None,
                 with_https: bool = False, with_chat: bool = True) -> None:
        self.workdir = workdir
        self.host = host
        self.netns = netns
        self.http_port = free_port(host) if netns is None else 8080
        self.chat_port = free_port(host) if netns is None else 8023
        self.https_port = (free_port(host) if netns is None else 8443) if with_https else None
        self.users = users if users is not None else {"alice": "alice-pw", "bob": "bob-pw"}
        self.state = workdir / "var"
        self.state.mkdir(parents=True, exist_ok=True)
        if self.users:
            write_users(self.state, self.users)
        iface = host
        chat = f"tcp:{self.chat_port}:interface={iface}" if with_chat else ""
        https = f"tcp:{self.https_port}:interface={iface}" if with_https else ""
        base = (
            "[server]\n"
            f"http = tcp:{self.http_port}:interface={iface}\n"
            f"https = {https}\n"
            f"chat = {chat}\n"
            f"state_dir = {self.state}\n"
            "[auth]\n"
            f"users = {self.state / 'users.htpasswd'}\n"
            f"digest_users = {self.state / 'users.htdigest'}\n"
        )
        self.config_path = workdir / "embweb.ini"
        self.config_path.write_text(_merge(base, config))
        self.log_path = workdir / "twistd.log"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_lines: list[str] = []
        self._log_cond = threading.Condition()

    # ----------------------------------------------------------- process

    def argv(self) -> list[str]:
        argv = [TWISTD, "-n", "--pidfile=", "embweb", "--config", str(self.config_path)]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns] + argv
        return argv

    def spawn(self, argv: list[str] | None = None, pass_fds: tuple[int, ...] = ()) -> "Daemon":
        """
        Start twistd (or C{argv}, e.g. a wrapper that execs it) without
        waiting for anything; the caller waits on the event it cares about.
        L{stop} ends it like a started one.
        """
        self.proc = subprocess.Popen(argv or self.argv(), cwd=self.workdir, env=self.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds,
                                     preexec_fn=_die_with_parent)
        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def start(self, timeout: float = 20.0) -> "Daemon":
        self.spawn()
        if self.netns is None:
            self.wait_ready(timeout)
        else:
            self.wait_for_log(f"starting on {self.http_port}", timeout)
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for raw in self.proc.stdout:
                log.write(raw)
                log.flush()
                with self._log_cond:
                    self._log_lines.append(raw.decode("utf-8", "replace"))
                    self._log_cond.notify_all()

    def log_text(self) -> str:
        with self._log_cond:
            return "".join(self._log_lines)

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while True:
                for line in self._log_lines:
                    if needle in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{needle!r} not logged within {timeout}s; log:\n" + "".join(self._log_lines))
                if self.proc is not None and self.proc.poll() is not None:
                    raise AssertionError(f"twistd exited ({self.proc.returncode}); log:\n" + "".join(self._log_lines))
                self._log_cond.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = 20.0) -> None:
        import urllib.error

        # Redirects are not followed: with [server] redirect_http the plain
        # port answers 301 to https, and that answer means it is up.
        opener = urllib.request.build_opener(_NoRedirect)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"twistd exited ({self.proc.returncode}); log:\n{self.log_text()}")
            try:
                with opener.open(f"{self.url}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except urllib.error.HTTPError as e:
                e.close()
                if e.code in (301, 308):
                    return
                time.sleep(0.05)
            except OSError:
                time.sleep(0.05)  # integration: a bounded poll of a real port
        raise AssertionError(f"daemon not ready within {timeout}s; log:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    # ------------------------------------------------------------ clients

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}"

    def opener(self, user: str | None = None, password: str | None = None, scheme: str = "basic") -> Any:
        handlers: list[Any] = []
        if user is not None:
            mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
            mgr.add_password(None, self.url, user, password if password is not None else self.users[user])
            handler = (urllib.request.HTTPDigestAuthHandler if scheme == "digest"
                       else urllib.request.HTTPBasicAuthHandler)(mgr)
            handlers.append(handler)
        return urllib.request.build_opener(*handlers)

    def get(self, path: str, user: str | None = None, scheme: str = "basic", **kw: Any) -> tuple[int, dict, bytes]:
        import urllib.error

        try:
            with self.opener(user, scheme=scheme).open(f"{self.url}{path}", timeout=kw.get("timeout", 10)) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def get_json(self, path: str, user: str) -> Any:
        status, _, body = self.get(path, user)
        assert status == 200, (status, body)
        return json.loads(body)

    def post_json(self, path: str, user: str, value: Any) -> tuple[int, Any]:
        import base64
        import urllib.error

        token = base64.b64encode(f"{user}:{self.users[user]}".encode()).decode()
        req = urllib.request.Request(f"{self.url}{path}", data=json.dumps(value).encode(), method="POST",
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand a 3xx back to the caller (as HTTPError) instead of following it."""

    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def _merge(base: str, extra: str) -> str:
    """Overlay C{extra} INI text on C{base} (same section/key wins from extra)."""
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(base)
    if extra:
        parser.read_string(extra)
    out = []
    for section in parser.sections():
        out.append(f"[{section}]")
        out.extend(f"{k} = {v}" for k, v in parser.items(section, raw=True))
    return "\n".join(out) + "\n"


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


class SSEReader:
    """A raw-socket event stream client: yields (event, data dict) with the time it arrived."""

    def __init__(self, host: str, port: int, user: str, password: str, last_event_id: str | None = None) -> None:
        import base64

        self.sock = socket.create_connection((host, port), timeout=10)
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
        self.sock.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Basic {token}\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n".encode()
        )
        self.buffer = b""
        self.status = None
        self._read_headers()

    def _read_headers(self) -> None:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed before headers: {self.buffer!r}")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        self.status = int(self.head.split(" ", 2)[1])
        self.chunked = "transfer-encoding: chunked" in self.head.lower()
        self._raw = self.buffer
        self.buffer = b""
        self._text = ""

    def _dechunk(self) -> None:
        if not self.chunked:
            self._text += self._raw.decode("utf-8")
            self._raw = b""
            return
        while True:
            if b"\r\n" not in self._raw:
                return
            size_line, rest = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                return
            self._text += rest[:size].decode("utf-8")
            self._raw = rest[size + 2:]

    def events(self, timeout: float) -> Iterator[tuple[str, dict, float]]:
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk()
            while "\n\n" in self._text:
                block, self._text = self._text.split("\n\n", 1)
                kind, data, ident = "message", None, None
                for line in block.split("\n"):
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                    elif line.startswith("id: "):
                        ident = line[4:]
                if data is not None:
                    if ident is not None:
                        data.setdefault("_id", int(ident))
                    yield kind, data, time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return
            if not chunk:
                return
            self._raw += chunk

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> tuple[str, dict, float]:
        for kind, data, at in self.events(timeout):
            if predicate(kind, data):
                return kind, data, at
        raise AssertionError("expected event did not arrive in time")

    def close(self) -> None:
        self.sock.close()
