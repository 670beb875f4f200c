"""
A tiny Chrome DevTools Protocol client on the standard library only.

* L{WebSocket}: the client half of RFC 6455 that CDP needs -- the opening
  handshake (checked ``Sec-WebSocket-Accept``), masked text frames out,
  text / continuation / ping / close frames in, 7-, 16- and 64-bit lengths.
  No extensions, no TLS: Chromium's debugging endpoint is plain ws:// on
  127.0.0.1.
* L{CDP}: one websocket to the browser endpoint (``DevToolsActivePort``
  names it), a reader thread, and flat sessions (``Target.attachToTarget``
  with ``flatten``): C{call} sends a command and waits (bounded) for its
  answer; C{on} registers a handler that runs on the reader thread for an
  event, and may answer it with C{send} (fire and forget) -- that is how a
  paused request is continued while the test thread waits for something
  else; every event is also kept, for C{wait_event} and later inspection.
* L{Chromium}: starts ``chromium --headless`` with a fresh profile and
  ``--remote-debugging-port=0`` under a small reaper process (a child
  subreaper, so no helper of the browser is left a zombie), reads the port
  Chromium chose from ``DevToolsActivePort`` (bounded wait), and on
  C{close} ends its whole process group, whatever happened.
* L{Page}: a tab in its own browser context that answers HTTP
  authentication and collects what the page logs.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from pagebase import PageBase

_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class CDPError(Exception):
    """A command answered with an error, or the connection failed."""


class WebSocket:
    """A blocking RFC 6455 client over a plain TCP socket (enough for CDP)."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise CDPError(f"websocket handshake: connection closed after {head!r}")
            head += chunk
        head, self._buf = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise CDPError(f"websocket handshake refused: {lines[0]}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        expected = base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise CDPError("websocket handshake: wrong Sec-WebSocket-Accept")
        self.sock.settimeout(None)  # the reader thread blocks; close() unblocks it
        self._send_lock = threading.Lock()

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buf)))
            if not chunk:
                raise EOFError("websocket closed by the peer")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def _frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        with self._send_lock:
            self.sock.sendall(header + mask + _mask(payload, mask))

    def send_text(self, text: str) -> None:
        self._frame(0x1, text.encode("utf-8"))

    def recv_text(self) -> str:
        """The next whole text message; answers pings; EOFError on close."""
        message = b""
        while True:
            b0, b1 = self._read(2)
            fin, opcode, n = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else None  # servers do not mask, but allow it
            payload = self._read(n)
            if mask:
                payload = _mask(payload, mask)
            if opcode == 0x8:
                raise EOFError("websocket close frame")
            if opcode == 0x9:
                self._frame(0xA, payload)
                continue
            if opcode in (0x1, 0x2, 0x0):
                message += payload
                if fin:
                    return message.decode("utf-8")

    def close(self) -> None:
        try:
            self._frame(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _mask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


class CDP:
    """A CDP connection to the browser target, with flat sessions."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, list[Any]] = {}
        self._handlers: dict[tuple[str | None, str], list[Callable[[dict], None]]] = {}
        self.events: list[tuple[str | None, str, dict]] = []  # (session, method, params)
        self.handler_errors: list[str] = []
        self._cond = threading.Condition()
        self.closed: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        try:
            while True:
                msg = json.loads(self.ws.recv_text())
                if "id" in msg:
                    with self._cond:
                        slot = self._waiting.get(msg["id"])
                        if slot is not None:
                            slot.append(msg)
                            self._cond.notify_all()
                    continue
                session, method, params = msg.get("sessionId"), msg.get("method", ""), msg.get("params", {})
                for handler in self._handlers.get((session, method), []):
                    try:
                        handler(params)
                    except Exception as e:  # recorded; a test checks handler_errors
                        self.handler_errors.append(f"{method}: {e!r}")
                with self._cond:
                    self.events.append((session, method, params))
                    self._cond.notify_all()
        except (EOFError, OSError, ValueError) as e:
            with self._cond:
                self.closed = repr(e)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        """Send a command; do not wait for its answer (safe from a handler)."""
        ident = next(self._ids)
        msg: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        with self._cond:
            self._waiting[ident] = []
        self.ws.send_text(json.dumps(msg))
        return ident

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 10.0) -> dict:
        """Send a command and wait at most C{timeout} s for its result."""
        ident = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._waiting[ident]:
                left = deadline - time.monotonic()
                if self.closed is not None:
                    raise CDPError(f"{method}: connection closed ({self.closed})")
                if left <= 0:
                    raise CDPError(f"{method}: no answer within {timeout} s")
                self._cond.wait(left)
            msg = self._waiting.pop(ident)[0]
        if "error" in msg:
            raise CDPError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def on(self, method: str, handler: Callable[[dict], None], session: str | None = None) -> None:
        """Run C{handler(params)} on the reader thread for every C{method} event of C{session}."""
        self._handlers.setdefault((session, method), []).append(handler)

    def wait_event(self, method: str, predicate: Callable[[dict], bool] = lambda p: True,
                   session: str | None = None, timeout: float = 10.0) -> dict:
        """The first C{method} event (already received or to come) matching C{predicate}."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for s, m, p in self.events[seen:]:
                    if m == method and s == session and predicate(p):
                        return p
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed is not None:
                    raise CDPError(f"no {method} event within {timeout} s ({self.closed or 'open'})")
                self._cond.wait(left)

    def close(self) -> None:
        self.ws.close()
        self._reader.join(5)


#: Chromium's parent: a child subreaper (Linux) that reaps every process of
#: the browser, so none is left a zombie under a PID 1 that does not reap;
#: it ignores SIGTERM (the browser's process group gets it) and exits with
#: the browser's status once the last of them is gone.  Should the test
#: process die without closing the browser, PR_SET_PDEATHSIG tells the
#: reaper, which ends the group (SIGTERM, SIGKILL 5 s later).
_REAPER = """
import ctypes, os, signal, subprocess, sys
prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", lambda *a: -1)  # Linux only
prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

def parent_gone(*_):  # the test process died (even by SIGKILL): take the browser down
    os.killpg(0, signal.SIGTERM)
    signal.alarm(5)

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGALRM, lambda *_: os.killpg(0, signal.SIGKILL))
signal.signal(signal.SIGUSR1, parent_gone)
prctl(1, signal.SIGUSR1, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(os.environ["BOATWIST_REAPER_PARENT"]):
    parent_gone()
browser = subprocess.Popen(sys.argv[1:], preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
status = 1
while True:
    try:
        pid, code = os.wait()
    except ChildProcessError:
        break
    if pid == browser.pid:
        status = os.waitstatus_to_exitcode(code)
sys.exit(status if status >= 0 else 128 - status)
"""


def process_tree(root: int, include_root: bool = False) -> dict[int, str]:
    """
    Every live descendant of C{root} (and C{root} itself if
    C{include_root}): pid -> start time (Linux /proc), so a
    pid reused later is not mistaken for it.  Browsers start helpers in
    sessions of their own (Chromium's crashpad handlers, Firefox's
    crashhelper), which a signal to the browser's process group misses.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append((int(entry), fields[19]))
    found: dict[int, str] = {}
    if include_root:
        found.update((pid, start) for ppid, kids in children.items() for pid, start in kids if pid == root)
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            found[pid] = start
            todo.append(pid)
    return found


def still_running(snapshot: dict[int, str]) -> list[int]:
    """The processes of a L{process_tree} snapshot that still run (zombies count as gone)."""
    alive = []
    for pid, start in snapshot.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[19] == start and fields[0] != "Z":
            alive.append(pid)
    return alive


def end_browser(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """
    After the browser was asked to close: SIGTERM and at last SIGKILL the
    reaper's process group until the reaper reports every process of it
    gone, then SIGKILL whatever descendant lives on in another session.
    """
    tree = process_tree(proc.pid) if proc.poll() is None else {}
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            try:
                os.killpg(proc.pid, sig)  # the reaper ignores SIGTERM; the browser's processes do not
            except ProcessLookupError:
                break
        try:
            proc.wait(timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in still_running(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.wait(timeout)


class Chromium:
    """A headless Chromium with a fresh profile, driven over CDP."""

    FLAGS = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
        "--disable-features=Translate,MediaRouter,OptimizationHints", "--mute-audio",
        "--password-store=basic", "--use-mock-keychain", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", "--window-size=1280,900",
    ]

    def __init__(self, binary: str, profile: Path, start_timeout: float = 20.0) -> None:
        self.profile = profile
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile.parent / "chromium.log"
        self._log = open(self.log_path, "wb")
        argv = [binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", _REAPER, *argv],
                                     env=dict(os.environ, BOATWIST_REAPER_PARENT=str(os.getpid())),
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.cdp: CDP | None = None
        try:
            port, path = self._endpoint(start_timeout)
            self.cdp = CDP(WebSocket("127.0.0.1", port, path))
        except BaseException:
            self.close()
            raise

    def _endpoint(self, timeout: float) -> tuple[int, str]:
        """The debugging port and browser path Chromium wrote to DevToolsActivePort."""
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            try:
                lines = active.read_text().split("\n")
                if len(lines) >= 2 and lines[0].strip() and lines[1].strip():
                    return int(lines[0]), lines[1].strip()
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)  # bounded poll for a file Chromium writes once
        raise CDPError(f"chromium wrote no DevToolsActivePort within {timeout} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        """
        Close the browser (Browser.close), then end every process of it
        (L{end_browser}) and remove the profile.
        """
        if self.cdp is not None and self.cdp.closed is None:
            try:
                self.cdp.send("Browser.close")
            except OSError:
                pass
        end_browser(self.proc)
        if self.cdp is not None:
            self.cdp.close()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


#: Key name -> (virtual key code, text typed).
_KEYS = {"Enter": (13, "\r"), "Tab": (9, "\t"), "Escape": (27, ""), "Backspace": (8, ""), "Space": (32, " "),
         "ArrowLeft": (37, ""), "ArrowUp": (38, ""), "ArrowRight": (39, ""), "ArrowDown": (40, ""),
         "Home": (36, ""), "End": (35, "")}


class Page(PageBase):
    """
    One tab in its own browser context (own cookies and HTTP auth cache),
    attached as a flat session, that answers HTTP authentication the way an
    operator's browser does: C{Fetch.enable(handleAuthRequests)} pauses
    every request (continued at once, or failed when its host is not
    C{allowed_host}: the tests talk to 127.0.0.1 only) and answers each
    C{Fetch.authRequired} with C{ProvideCredentials} -- Chromium then runs
    the real Digest (or Basic) handshake with the server.

    Console messages, log entries, uncaught exceptions and CSP issues are
    collected from the start, before the first navigation.
    """

    browser = "chromium"

    def __init__(self, cdp: CDP, credentials: tuple[str, str] | None, allowed_host: str = "127.0.0.1",
                 width: int = 1280, height: int = 900, max_auth: int = 20) -> None:
        super().__init__(credentials, allowed_host, max_auth)
        self.cdp = cdp
        self.context = cdp.call("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"]
        self.target = cdp.call("Target.createTarget", {"url": "about:blank", "browserContextId": self.context})["targetId"]
        self.session = cdp.call("Target.attachToTarget", {"targetId": self.target, "flatten": True})["sessionId"]
        s = self.session
        cdp.on("Fetch.requestPaused", self._paused, s)
        cdp.on("Fetch.authRequired", self._auth, s)
        for domain in ("Runtime", "Log", "Page", "Audits", "Network"):
            self.call(f"{domain}.enable")
        self.call("Fetch.enable", {"handleAuthRequests": True, "patterns": [{"urlPattern": "*"}]})
        cdp.on("Network.requestWillBeSentExtraInfo", self._sent, s)
        self.set_viewport(width, height)

    def set_viewport(self, width: int, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def _sent(self, p: dict) -> None:
        url = next((q["request"]["url"] for q in reversed(self.events("Network.requestWillBeSent"))
                    if q["requestId"] == p["requestId"]), "")
        self.sent.append((url, {k.lower(): v for k, v in p["headers"].items()}))

    # -- the request interception that authenticates

    def _paused(self, p: dict) -> None:
        url = p["request"]["url"]
        self.requests.append(f"{p['request']['method']} {url}")
        if self.foreign(url):
            self.blocked.append(url)
            self.cdp.send("Fetch.failRequest", {"requestId": p["requestId"], "errorReason": "BlockedByClient"},
                          self.session)
        else:
            self.cdp.send("Fetch.continueRequest", {"requestId": p["requestId"]}, self.session)

    def _auth(self, p: dict) -> None:
        self.auth_challenges.append(dict(p["authChallenge"], url=p["request"]["url"]))
        credentials = self.credentials
        if credentials is None or len(self.auth_challenges) > self.max_auth:
            answer: dict[str, Any] = {"response": "CancelAuth"}  # a loop of refusals ends here
        else:
            user, password = credentials
            answer = {"response": "ProvideCredentials", "username": user, "password": password}
        self.cdp.send("Fetch.continueWithAuth", {"requestId": p["requestId"], "authChallengeResponse": answer},
                      self.session)

    # -- commands

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        return self.cdp.call(method, params, self.session, timeout)

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Go to C{url} and wait for its load event."""
        loads = len(self.events("Page.loadEventFired"))
        result = self.call("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise CDPError(f"navigation to {url} failed: {result['errorText']}")
        deadline = time.monotonic() + timeout
        self.cdp.wait_event("Page.loadEventFired", session=self.session,
                            predicate=lambda p: len(self.events("Page.loadEventFired")) > loads,
                            timeout=max(0.1, deadline - time.monotonic()))

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, timeout)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"}, 20)["data"])
        path.write_bytes(data)
        return data

    def type_text(self, text: str) -> None:
        """Type C{text} into the focused element (as an input method commits it)."""
        self.call("Input.insertText", {"text": text})

    def press(self, key: str) -> None:
        """Press and release a named key (``Enter``, ``Tab``, ``Escape``, ``Backspace``, ``Space``, arrows, ...)."""
        code, text = _KEYS[key]
        spec = {"key": " " if key == "Space" else key, "code": key, "windowsVirtualKeyCode": code,
                "nativeVirtualKeyCode": code}
        self.call("Input.dispatchKeyEvent", {"type": "keyDown", **({"text": text} if text else {}), **spec})
        self.call("Input.dispatchKeyEvent", {"type": "keyUp", **spec})

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> None:
        """Press the left mouse button at (x0, y0), move to (x1, y1) in C{steps} moves, release: a real drag."""
        def mouse(kind: str, x: float, y: float, **extra: Any) -> None:
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", **extra})

        mouse("mouseMoved", x0, y0, buttons=0)
        mouse("mousePressed", x0, y0, buttons=1, clickCount=1)
        for i in range(1, steps + 1):
            mouse("mouseMoved", x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps, buttons=1)
        mouse("mouseReleased", x1, y1, buttons=0, clickCount=1)

    def click_at(self, x: float, y: float) -> None:
        """A left click of the mouse at (x, y), viewport pixels."""
        self.drag(x, y, x, y, steps=0)

    def cookies(self) -> list[dict]:
        return self.cdp.call("Storage.getCookies", {"browserContextId": self.context})["cookies"]

    # -- what the page said

    def events(self, method: str) -> list[dict]:
        with self.cdp._cond:
            return [p for s, m, p in self.cdp.events if s == self.session and m == method]

    def authorization_headers(self) -> list[str]:
        """The Authorization headers Chromium actually sent (Network.requestWillBeSentExtraInfo)."""
        return [h["authorization"] for _url, h in list(self.sent) if "authorization" in h]

    def document_headers(self) -> list[dict[str, str]]:
        return [{k.lower(): v for k, v in p["response"]["headers"].items()}
                for p in self.events("Network.responseReceived")
                if p["type"] == "Document" and p["response"]["status"] == 200]

    @property
    def handler_errors(self) -> list[str]:
        return self.cdp.handler_errors

    def problems(self) -> list[str]:
        """Console errors and warnings, log errors and warnings, exceptions, CSP issues: one line each."""
        out = []
        for p in self.events("Runtime.consoleAPICalled"):
            if p["type"] in ("error", "warning", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                out.append(f"console.{p['type']}: {args}")
        for p in self.events("Runtime.exceptionThrown"):
            d = p["exceptionDetails"]
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        for p in self.events("Log.entryAdded"):
            e = p["entry"]
            if e["level"] in ("error", "warning"):
                out.append(f"log.{e['level']} ({e['source']}): {e['text']} {e.get('url', '')}".rstrip())
        for p in self.events("Audits.issueAdded"):
            issue = p["issue"]
            if issue["code"] == "ContentSecurityPolicyIssue":
                out.append(f"CSP issue: {json.dumps(issue['details'])}")
        return out

    def close(self) -> None:
        try:
            self.cdp.call("Target.disposeBrowserContext", {"browserContextId": self.context}, timeout=5)
        except CDPError:
            pass
