"""
A tiny WebDriver BiDi client for Firefox ESR, on the standard library only
(the websocket is cdp.py's L{WebSocket}).

* L{BiDi}: one websocket to ``ws://127.0.0.1:P/session`` and a reader
  thread.  C{call} sends a command and waits (bounded) for its answer;
  C{on} registers a handler that runs on the reader thread for an event and
  may answer it with C{send} (fire and forget) -- that is how a request
  blocked at ``authRequired`` is answered while the test thread waits for
  something else; every event is also kept, for C{wait_event} and later
  inspection.
* L{Firefox}: starts ``firefox-esr --headless --no-remote --profile D
  --remote-debugging-port=0`` with a fresh profile (a ``user.js`` that
  keeps startup quiet: no updates, telemetry, studies, first-run pages or
  remote settings; no "you are about to log in as ..." question for
  ``http://user:pass@host/``), ``MOZ_HEADLESS=1`` and a private writable
  ``HOME``, under cdp.py's reaper (so the whole process group dies however
  the test ends), reads the port Firefox chose from
  ``WebDriverBiDiServer.json`` in the profile (bounded wait), and opens a
  BiDi session.
* L{Page}: a tab in its own user context (own cookies and HTTP auth
  cache), with the same interface as cdp.py's L{cdp.Page}: it answers HTTP
  authentication like an operator typing into the login dialog
  (``network.authRequired`` blocked by an intercept, answered with
  ``network.continueWithAuth``) and collects what the page logs.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cdp import _REAPER, WebSocket, end_browser
from pagebase import PageBase


class BiDiError(Exception):
    """A command answered with an error, or the connection failed."""


class BiDi:
    """One WebDriver BiDi session over a websocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, list[Any]] = {}
        self._handlers: dict[str, list[Callable[[dict], None]]] = {}
        self.events: list[tuple[str, dict]] = []  # (method, params)
        self.handler_errors: list[str] = []
        self._cond = threading.Condition()
        self.closed: str | None = None
        self._reader = threading.Thread(target=self._read_loop, name="bidi-reader", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        try:
            while True:
                msg = json.loads(self.ws.recv_text())
                if msg.get("type") in ("success", "error") and msg.get("id") is not None:
                    with self._cond:
                        slot = self._waiting.get(msg["id"])
                        if slot is not None:
                            slot.append(msg)
                            self._cond.notify_all()
                    continue
                method, params = msg.get("method", ""), msg.get("params", {})
                for handler in self._handlers.get(method, []):
                    try:
                        handler(params)
                    except Exception as e:  # recorded; a test checks handler_errors
                        self.handler_errors.append(f"{method}: {e!r}")
                with self._cond:
                    self.events.append((method, params))
                    self._cond.notify_all()
        except (EOFError, OSError, ValueError) as e:
            with self._cond:
                self.closed = repr(e)
                self._cond.notify_all()

    def send(self, method: str, params: dict | None = None) -> int:
        """Send a command; do not wait for its answer (safe from a handler)."""
        ident = next(self._ids)
        with self._cond:
            self._waiting[ident] = []
        self.ws.send_text(json.dumps({"id": ident, "method": method, "params": params or {}}))
        return ident

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        """Send a command and wait at most C{timeout} s for its result."""
        ident = self.send(method, params)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._waiting[ident]:
                left = deadline - time.monotonic()
                if self.closed is not None:
                    raise BiDiError(f"{method}: connection closed ({self.closed})")
                if left <= 0:
                    self._waiting.pop(ident, None)
                    raise BiDiError(f"{method}: no answer within {timeout} s")
                self._cond.wait(left)
            msg = self._waiting.pop(ident)[0]
        if msg["type"] == "error":
            raise BiDiError(f"{method}: {msg.get('error')}: {msg.get('message')}")
        return msg.get("result", {})

    def on(self, method: str, handler: Callable[[dict], None]) -> None:
        """Run C{handler(params)} on the reader thread for every C{method} event."""
        self._handlers[method] = [*self._handlers.get(method, []), handler]  # the reader iterates a snapshot

    def off(self, method: str, handler: Callable[[dict], None]) -> None:
        self._handlers[method] = [h for h in self._handlers.get(method, []) if h != handler]

    def wait_event(self, method: str, predicate: Callable[[dict], bool] = lambda p: True,
                   timeout: float = 10.0) -> dict:
        """The first C{method} event (already received or to come) matching C{predicate}."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for m, p in self.events[seen:]:
                    if m == method and predicate(p):
                        return p
                seen = len(self.events)
                left = deadline - time.monotonic()
                if left <= 0 or self.closed is not None:
                    raise BiDiError(f"no {method} event within {timeout} s ({self.closed or 'open'})")
                self._cond.wait(left)

    def close(self) -> None:
        self.ws.close()
        self._reader.join(5)


#: Preferences for a quiet, fast, offline start.  Firefox's remote agent
#: already applies its "recommended preferences" when started with
#: --remote-debugging-port; these make sure of the rest and are what the
#: tests rely on.
PREFS: dict[str, Any] = {
    # http://user:pass@host/ without "You are about to log in to the site ... with the username ...".
    "network.http.phishy-userpass-length": 255,
    # No updates, add-on checks, studies, experiments or remote settings.
    "app.update.disabledForTesting": True,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "app.shield.optoutstudies.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.systemAddon.update.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "browser.search.update": False,
    # No telemetry, crash or health reports.
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.crashReports.unsubmittedCheck.autoSubmit2": False,
    # No first-run, welcome, what's-new or default-browser pages and questions.
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "trailhead.firstrun.didSeeAboutWelcome": True,
    "browser.newtabpage.enabled": False,
    "browser.newtabpage.activity-stream.feeds.system.topstories": False,
    "browser.newtabpage.activity-stream.feeds.snippets": False,
    "browser.uitour.enabled": False,
    "browser.tabs.warnOnClose": False,
    "browser.sessionstore.resume_from_crash": False,
    "browser.warnOnQuit": False,
    "browser.translations.enable": False,
    # Nothing fetched behind the tests' back.
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.provider.mozilla.updateURL": "",
    "security.OCSP.enabled": 0,
    "signon.rememberSignons": False,
    "browser.ping-centre.telemetry": False,
    "network.trr.mode": 5,
}


def user_js(prefs: dict[str, Any]) -> str:
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


class Firefox:
    """A headless Firefox ESR with a fresh profile, driven over WebDriver BiDi."""

    def __init__(self, binary: str, profile: Path, start_timeout: float = 30.0,
                 prefs: dict[str, Any] | None = None) -> None:
        self.profile = profile
        profile.mkdir(parents=True, exist_ok=True)
        self.home = profile.parent / "firefox-home"
        self.home.mkdir(parents=True, exist_ok=True)
        (profile / "user.js").write_text(user_js({**PREFS, **(prefs or {})}))
        self.log_path = profile.parent / "firefox.log"
        self._log = open(self.log_path, "wb")
        argv = [binary, "--headless", "--no-remote", "--profile", str(profile), "--remote-debugging-port=0",
                "about:blank"]
        env = dict(os.environ, BOATWIST_REAPER_PARENT=str(os.getpid()), MOZ_HEADLESS="1", HOME=str(self.home),
                   MOZ_CRASHREPORTER_DISABLE="1", MOZ_CRASHREPORTER="0", XDG_CACHE_HOME=str(self.home / ".cache"),
                   XDG_CONFIG_HOME=str(self.home / ".config"))
        env.pop("DISPLAY", None)
        env.pop("WAYLAND_DISPLAY", None)
        self.proc = subprocess.Popen([sys.executable, "-c", _REAPER, *argv], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        self.bidi: BiDi | None = None
        self.version = ""
        try:
            port = self._port(start_timeout)
            self.bidi = BiDi(WebSocket("127.0.0.1", port, "/session"))
            caps = self.bidi.call("session.new", {"capabilities": {"alwaysMatch": {
                "acceptInsecureCerts": True, "unhandledPromptBehavior": {"default": "ignore"}}}}, timeout=20)
            self.version = caps["capabilities"].get("browserVersion", "")
        except BaseException:
            self.close()
            raise

    def _port(self, timeout: float) -> int:
        """The port Firefox wrote to WebDriverBiDiServer.json (it listens once the file exists)."""
        active = self.profile / "WebDriverBiDiServer.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BiDiError(f"firefox exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            try:
                return int(json.loads(active.read_text())["ws_port"])
            except (FileNotFoundError, ValueError, KeyError):
                pass
            time.sleep(0.05)  # bounded poll for a file Firefox writes once
        raise BiDiError(f"firefox wrote no WebDriverBiDiServer.json within {timeout} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def close(self) -> None:
        """
        Close the browser (browser.close), then end every process of it
        (cdp.end_browser); remove the profile and HOME.
        """
        if self.bidi is not None and self.bidi.closed is None:
            try:
                self.bidi.send("browser.close")
            except OSError:
                pass
        end_browser(self.proc)
        if self.bidi is not None:
            self.bidi.close()
        self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)


def deserialize(value: dict) -> Any:
    """A BiDi RemoteValue as plain Python (what CDP's returnByValue would give)."""
    kind = value.get("type")
    v = value.get("value")
    if kind in ("undefined", "null"):
        return None
    if kind in ("string", "boolean"):
        return v
    if kind == "number":
        return {"NaN": float("nan"), "-0": -0.0, "Infinity": float("inf"), "-Infinity": float("-inf")}.get(v, v) \
            if isinstance(v, str) else v
    if kind == "bigint":
        return int(v)
    if kind in ("array", "set", "nodelist", "htmlcollection"):
        return [deserialize(x) for x in v or []]
    if kind in ("object", "map"):
        out = {}
        for key, item in v or []:
            out[key if isinstance(key, str) else json.dumps(deserialize(key))] = deserialize(item)
        return out
    if kind in ("date", "regexp"):
        return v if kind == "date" else f"/{v['pattern']}/{v.get('flags', '')}"
    return {}  # node, window, function, error, promise...: a truthy placeholder, as returnByValue gives


def _string(header_value: dict) -> str:
    if header_value.get("type") == "base64":
        return base64.b64decode(header_value["value"]).decode("latin-1")
    return header_value.get("value", "")


#: The WebDriver key codes of the keys the tests press.
KEYS = {"Enter": "\ue007", "Tab": "\ue004", "Escape": "\ue00c", "Backspace": "\ue003", "Space": "\ue00d",
        "ArrowLeft": "\ue012", "ArrowUp": "\ue013", "ArrowRight": "\ue014", "ArrowDown": "\ue015",
        "Home": "\ue011", "End": "\ue010"}


class Page(PageBase):
    """
    One tab in its own user context (own cookies and HTTP auth cache) that
    answers HTTP authentication the way an operator does: an intercept at
    phase ``authRequired`` blocks each challenge (``network.authRequired``)
    and the reader thread answers it with C{network.continueWithAuth}
    (``provideCredentials`` with L{credentials}, or ``cancel`` when there
    are none or after C{max_auth} answers) -- Firefox then runs the real
    Digest (or Basic) handshake with the server, as if the user had typed
    into its login dialog.  A second intercept at ``beforeRequestSent``
    fails requests to hosts other than C{allowed_host}.

    Console messages, JavaScript errors and CSP violations (Firefox reports
    them as ``log.entryAdded`` of type ``javascript``) are collected from
    the start, before the first navigation.  Requests and dialogs of
    frames inside the page are not looked at (the console has none).
    """

    browser = "firefox"

    def __init__(self, bidi: BiDi, credentials: tuple[str, str] | None, allowed_host: str = "127.0.0.1",
                 width: int = 1280, height: int = 900, max_auth: int = 20) -> None:
        super().__init__(credentials, allowed_host, max_auth)
        self.bidi = bidi
        self._seen: set[tuple[str, int]] = set()
        self.user_context = bidi.call("browser.createUserContext")["userContext"]
        self.context = bidi.call("browsingContext.create", {"type": "tab", "userContext": self.user_context,
                                                             "background": False})["context"]
        # Subscribe before anything happens: events of this tab only.
        bidi.on("network.authRequired", self._auth)
        bidi.on("network.beforeRequestSent", self._before_request)
        self._subscription = bidi.call("session.subscribe", {
            "events": ["network.authRequired", "network.beforeRequestSent", "network.responseStarted",
                       "network.responseCompleted", "network.fetchError", "log.entryAdded", "browsingContext.load"],
            "contexts": [self.context]}).get("subscription")
        self._intercepts = [
            bidi.call("network.addIntercept", {"phases": [phase], "contexts": [self.context]})["intercept"]
            for phase in ("authRequired", "beforeRequestSent")]
        self.set_viewport(width, height)

    # -- the interception that authenticates

    def _mine(self, p: dict) -> bool:
        return p.get("context") == self.context or p.get("source", {}).get("context") == self.context

    def _before_request(self, p: dict) -> None:
        if p.get("context") != self.context:
            return
        request = p["request"]
        url = request["url"]
        key = (request["request"], p.get("redirectCount", 0))
        if key not in self._seen:  # an authentication retry is the same request again
            self._seen.add(key)
            self.requests.append(f"{request['method']} {url}")
        self.sent.append((url, {h["name"].lower(): _string(h["value"]) for h in request.get("headers", [])}))
        if not p.get("isBlocked"):
            return
        if self.foreign(url):
            self.blocked.append(url)
            self.bidi.send("network.failRequest", {"request": request["request"]})
        else:
            self.bidi.send("network.continueRequest", {"request": request["request"]})

    def _auth(self, p: dict) -> None:
        if p.get("context") != self.context:
            return
        challenges = p.get("response", {}).get("authChallenges") or [{}]
        self.auth_challenges.append({"scheme": challenges[0].get("scheme", ""), "realm": challenges[0].get("realm", ""),
                                     "all": challenges, "url": p["request"]["url"],
                                     "status": p.get("response", {}).get("status")})
        if not p.get("isBlocked"):
            return
        answer: dict[str, Any] = {"request": p["request"]["request"]}
        credentials = self.credentials
        if credentials is None or len(self.auth_challenges) > self.max_auth:
            answer["action"] = "cancel"  # a loop of refusals ends here, as a person pressing Cancel
        else:
            user, password = credentials
            answer.update(action="provideCredentials",
                          credentials={"type": "password", "username": user, "password": password})
        self.bidi.send("network.continueWithAuth", answer)

    # -- commands

    def call(self, method: str, params: dict | None = None, timeout: float = 10.0) -> dict:
        return self.bidi.call(method, params, timeout)

    def navigate(self, url: str, timeout: float = 15.0) -> None:
        """Go to C{url} and wait for its load event."""
        try:
            self.call("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}, timeout)
        except BiDiError as e:
            raise BiDiError(f"navigation to {url} failed: {e}") from None

    def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """The value of a JavaScript expression in the page (awaited if a promise)."""
        result = self.call("script.evaluate", {"expression": expression, "target": {"context": self.context},
                                               "awaitPromise": True, "resultOwnership": "none"}, timeout)
        if result.get("type") == "exception":
            details = result.get("exceptionDetails", {})
            raise BiDiError(f"{expression!r} threw: {details.get('text')} {details.get('exception')}")
        return deserialize(result["result"])

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("browsingContext.captureScreenshot", {"context": self.context}, 20)["data"])
        path.write_bytes(data)
        return data

    def set_viewport(self, width: int, height: int) -> None:
        self.call("browsingContext.setViewport", {"context": self.context,
                                                  "viewport": {"width": width, "height": height},
                                                  "devicePixelRatio": 1})

    def type_text(self, text: str) -> None:
        """Type C{text} into the focused element, one key per character."""
        keys = []
        for ch in text:
            keys += [{"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch}]
        self._keys(keys)

    def press(self, key: str) -> None:
        """Press and release a named key (``Enter``, ``Tab``, ``Escape``, ``Backspace``, ``Space``, arrows, ...)."""
        self._keys([{"type": "keyDown", "value": KEYS[key]}, {"type": "keyUp", "value": KEYS[key]}])

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 10) -> None:
        """Press the left mouse button at (x0, y0), move to (x1, y1) in C{steps} moves, release: a real drag."""
        moves = [{"type": "pointerMove", "x": round(x0 + (x1 - x0) * i / steps), "y": round(y0 + (y1 - y0) * i / steps),
                  "duration": 20} for i in range(1, steps + 1)]
        actions = [{"type": "pointerMove", "x": round(x0), "y": round(y0), "duration": 0},
                   {"type": "pointerDown", "button": 0}, *moves, {"type": "pointerUp", "button": 0}]
        self.call("input.performActions", {"context": self.context, "actions": [
            {"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": actions}]})
        self.call("input.releaseActions", {"context": self.context})

    def click_at(self, x: float, y: float) -> None:
        """A left click of the mouse at (x, y), viewport pixels."""
        self.drag(x, y, x, y, steps=0)

    def _keys(self, actions: list[dict]) -> None:
        self.call("input.performActions", {"context": self.context,
                                           "actions": [{"type": "key", "id": "keyboard", "actions": actions}]})
        self.call("input.releaseActions", {"context": self.context})

    def cookies(self) -> list[dict]:
        cookies = self.call("storage.getCookies", {"partition": {"type": "context", "context": self.context}})
        return [{"name": c["name"], "value": _string(c["value"]), "domain": c["domain"], "path": c["path"],
                 "httpOnly": c["httpOnly"], "secure": c["secure"], "sameSite": c["sameSite"]}
                for c in cookies["cookies"]]

    # -- what the page said

    def events(self, method: str) -> list[dict]:
        with self.bidi._cond:
            return [p for m, p in self.bidi.events if m == method and self._mine(p)]

    def authorization_headers(self) -> list[str]:
        return [h["authorization"] for _url, h in list(self.sent) if "authorization" in h]

    def document_headers(self) -> list[dict[str, str]]:
        out = []
        for p in self.events("network.responseCompleted"):
            response = p["response"]
            if p.get("navigation") and response.get("status") == 200:
                out.append({h["name"].lower(): _string(h["value"]) for h in response.get("headers", [])})
        return out

    def problems(self) -> list[str]:
        """Console errors and warnings, JavaScript errors, CSP violations: one line each."""
        out = []
        for p in self.events("log.entryAdded"):
            level, text = p.get("level"), p.get("text", "")
            if level not in ("error", "warn"):
                continue
            if p.get("type") == "console":
                out.append(f"console.{'warning' if level == 'warn' else level}: {text}")
            elif text.startswith("Content-Security-Policy"):  # Firefox reports violations as script errors
                out.append(f"CSP issue (Content Security Policy): {text}")
            elif level == "error":
                out.append(f"exception: {text}")
            else:
                out.append(f"log.warning (javascript): {text}")
        return out

    @property
    def handler_errors(self) -> list[str]:
        return self.bidi.handler_errors

    def close(self) -> None:
        self.bidi.off("network.authRequired", self._auth)
        self.bidi.off("network.beforeRequestSent", self._before_request)
        for command, params in [
            *[("network.removeIntercept", {"intercept": i}) for i in self._intercepts],
            *([("session.unsubscribe", {"subscriptions": [self._subscription]})] if self._subscription else []),
            ("browser.removeUserContext", {"userContext": self.user_context}),
        ]:
            try:
                self.bidi.call(command, params, timeout=5)
            except BiDiError:
                pass
