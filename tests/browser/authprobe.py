"""
A small HTTP server that shows what a browser sends for HTTP authentication.

Used to measure (and pin in tests) what real browsers do -- which Digest
challenge they take, how they encode a non-ASCII user name, whether they
retry on ``stale=true``, what makes them forget cached credentials -- with
full control of the challenges, which the real daemon does not give.  It is
*not* boatwist's authentication: it checks just enough (Basic, Digest MD5 and
SHA-256 with ``qop=auth``, ``username*``) to tell a browser's answer right
from wrong, and records every request with its raw Authorization bytes.

    probe = AuthProbe(accounts={"jürgen": "pw"}, challenges=["digest-sha256", "digest-md5", "basic"])
    probe.start(); ...; probe.stop()
    probe.log  # [Seen(path, authorization bytes, verdict, user, detail), ...]

Paths: every path needs authentication, except ``/open/...`` (a page that
loads without it).  Authenticated, ``/api/...`` answers JSON
``{"user": NAME}``, ``/events...`` one server-sent event (``data: NAME``,
``retry: 200``) after which the response ends, so an EventSource
reconnects every 200 ms, and anything else a small HTML page naming the
user.

``/logout`` is the logout endpoint the tests propose for the daemon: 401
with the challenges to a request without credentials or with any
credentials -- except a request whose Authorization *claims* the user
named by ``?accept=NAME`` (password not checked): 200.  ``?challenge=none``
leaves the challenges out of its 401, ``?realm=R`` challenges for another
realm (both measured, neither works in both browsers).

C{rotate(stale)} forgets every nonce issued so far -- as a restart of the
real daemon does -- and answers their next (otherwise right) use with
``stale=true`` when C{stale}, with a plain 401 when not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_PARAM = re.compile(r'\s*([A-Za-z0-9_\-*]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))\s*,?')
_HASH = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    authorization: bytes | None  # raw bytes of the header, None when absent
    verdict: str  # "none", "ok", "wrong", "stale", "logout", "open"
    user: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.authorization.split(b" ", 1)[0].decode("latin-1").lower() if self.authorization else ""


def parse_digest(value: str) -> dict[str, str]:
    params = {}
    for m in _PARAM.finditer(value):
        params[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", m.group(2)) if m.group(2) is not None else m.group(3)
    return params


class AuthProbe:
    def __init__(self, accounts: dict[str, str], challenges: list[str] | None = None, realm: str = "probe",
                 host: str = "127.0.0.1", charset: bool = False,
                 accepts: dict[str, set[str]] | None = None, tailor: str | None = None) -> None:
        """
        C{challenges}: the WWW-Authenticate headers of a 401, in order, from
        ``digest-sha256``, ``digest-md5``, ``basic``, ``digest`` (MD5 with no
        algorithm parameter); C{charset} adds ``charset=UTF-8`` to each (RFC
        7616 / RFC 7617).  C{accepts} limits what a user may log in with
        (``basic``, ``MD5``, ``SHA-256``): a user with only an MD5 HA1 is
        C{{"carol": {"MD5"}}} -- a right answer by other means is "wrong".
        C{tailor}: when a known user answers with a scheme or algorithm they
        cannot use, the 401 offers only what they can use (``"plain"``), and
        says ``stale=true`` on its Digest challenges (``"stale"``).
        """
        self.tailor = tailor
        self.accounts = accounts
        self.accepts = accepts or {}
        self.challenges = challenges or ["digest-sha256", "digest-md5", "basic"]
        self.realm = realm
        self.charset = charset
        self.log: list[Seen] = []
        self._lock = threading.Condition()
        self._generation = 0
        self._nonces: dict[str, int] = {}  # nonce -> generation
        self._stale_next = False
        probe = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                probe._handle(self)

            do_POST = do_GET

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a browser closing a connection mid-answer is not news

        self.server = Server((host, 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------ control

    def start(self) -> "AuthProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def rotate(self, stale: bool) -> None:
        """Forget every nonce issued so far; their next use gets stale=true if C{stale}, a plain 401 if not."""
        with self._lock:
            self._generation += 1
            self._stale_next = stale

    def seen(self, path_prefix: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.log if s.path.startswith(path_prefix)]

    # ----------------------------------------------------------- protocol

    def _challenge_headers(self, stale: bool = False, only: set[str] | None = None,
                           realm: str | None = None) -> list[str]:
        realm = realm or self.realm
        out = []
        cs = ", charset=UTF-8" if self.charset else ""
        names = {"digest-sha256": "SHA-256", "digest-md5": "MD5", "digest": "MD5", "basic": "basic"}
        for kind in self.challenges:
            if only is not None and names[kind] not in only:
                continue
            if kind == "basic":
                out.append(f'Basic realm="{realm}"{cs}')
                continue
            nonce = secrets.token_hex(16)
            with self._lock:
                self._nonces[nonce] = self._generation
            algorithm = {"digest-sha256": ', algorithm=SHA-256', "digest-md5": ', algorithm=MD5', "digest": ""}[kind]
            st = ", stale=true" if stale else ""
            out.append(f'Digest realm="{realm}", qop="auth"{algorithm}, nonce="{nonce}", '
                       f'opaque="{secrets.token_hex(8)}"{st}{cs}')
        return out

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        length = int(h.headers.get("content-length") or 0)
        if length:
            h.rfile.read(length)
        raw = h.headers.get("authorization")
        raw_bytes = raw.encode("latin-1") if raw is not None else None  # http.server decodes headers as latin-1
        if path.startswith("/open/"):
            self._record(Seen(h.command, path, raw_bytes, "open"))
            return self._send(h, 200, "text/html", "<!doctype html><title>open</title><p>open")
        verdict, user, detail = self._check(h.command, path, raw_bytes)
        if path.startswith("/logout"):
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            claimed = self._claimed_user(raw_bytes)
            if claimed is not None and claimed == query.get("accept", [None])[0]:
                self._record(Seen(h.command, path, raw_bytes, "logout-accepted", claimed, detail))
                return self._send(h, 200, "text/plain", "logged out")
            self._record(Seen(h.command, path, raw_bytes, "logout", user, detail))
            return self._send(h, 401, "text/plain", "logged out",
                              [] if query.get("challenge") == ["none"] else
                              self._challenge_headers(realm=query.get("realm", [None])[0]))
        self._record(Seen(h.command, path, raw_bytes, verdict, user, detail))
        if verdict != "ok":
            only = None
            unusable = user is not None and "usable" in detail
            if self.tailor and unusable:
                only = self.accepts.get(user)
            return self._send(h, 401, "text/plain", "unauthorized", self._challenge_headers(
                stale=verdict == "stale" or (unusable and self.tailor == "stale"), only=only))
        if path.startswith("/events"):  # one event, then the connection ends: EventSource reconnects
            data = f"retry: 200\ndata: {user}\n\n".encode("utf-8")
            h.send_response(200)
            h.send_header("Content-Type", "text/event-stream")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Cache-Control", "no-store")
            h.end_headers()
            h.wfile.write(data)
            return
        if path.startswith("/api/"):
            return self._send(h, 200, "application/json", json.dumps({"user": user}))
        return self._send(h, 200, "text/html", f"<!doctype html><meta charset=utf-8><title>ok</title><p id=user>"
                                               f"{user}</p>")

    @staticmethod
    def _claimed_user(raw: bytes | None) -> str | None:
        """The user name an Authorization header claims, unchecked."""
        if raw is None:
            return None
        scheme, _, rest = raw.partition(b" ")
        if scheme.lower() == b"basic":
            try:
                return base64.b64decode(rest.strip()).partition(b":")[0].decode("utf-8", "replace")
            except ValueError:
                return None
        return parse_digest(rest.decode("latin-1")).get("username")

    def _record(self, seen: Seen) -> None:
        with self._lock:
            self.log.append(seen)
            self._lock.notify_all()

    def _send(self, h: BaseHTTPRequestHandler, status: int, ctype: str, body: str,
              challenges: list[str] = ()) -> None:
        data = body.encode("utf-8")
        h.send_response(status)
        for c in challenges:
            h.send_header("WWW-Authenticate", c)
        h.send_header("Content-Type", f"{ctype}; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        h.wfile.write(data)

    def _check(self, method: str, path: str, raw: bytes | None) -> tuple[str, str | None, dict]:
        if raw is None:
            return "none", None, {}
        scheme, _, rest = raw.partition(b" ")
        if scheme.lower() == b"basic":
            try:
                decoded = base64.b64decode(rest.strip(), validate=True)
            except ValueError:
                return "wrong", None, {"error": "bad base64"}
            user_b, _, password_b = decoded.partition(b":")
            detail = {"user_bytes": user_b.hex(), "password_bytes": password_b.hex()}
            for encoding in ("utf-8", "latin-1"):
                try:
                    user, password = user_b.decode(encoding), password_b.decode(encoding)
                except UnicodeDecodeError:
                    continue
                if self.accounts.get(user) == password:
                    if "basic" not in self.accepts.get(user, {"basic"}):
                        return "wrong", user, dict(detail, encoding=encoding, usable=False)
                    return "ok", user, dict(detail, encoding=encoding)
            return "wrong", user_b.decode("utf-8", "replace"), detail
        if scheme.lower() != b"digest":
            return "wrong", None, {"error": "unknown scheme"}
        text = rest.decode("latin-1")
        p = parse_digest(text)
        algorithm = p.get("algorithm", "MD5").upper()
        detail: dict[str, Any] = {"algorithm": algorithm, "params": sorted(p)}
        if "username*" in p:
            enc, _, value = p["username*"].partition("''")
            user_bytes = urllib.parse.unquote_to_bytes(value)
            candidates = [(user_bytes.decode(enc or "utf-8", "replace"), user_bytes, f"username* {enc}")]
        else:
            user_bytes = p.get("username", "").encode("latin-1")
            candidates = []
            for encoding in ("utf-8", "latin-1"):
                try:
                    candidates.append((user_bytes.decode(encoding), user_bytes, f"username {encoding}"))
                except UnicodeDecodeError:
                    pass
        detail["user_bytes"] = user_bytes.hex()
        if algorithm not in _HASH:
            return "wrong", None, dict(detail, error="algorithm")
        for user, _ubytes, _how in candidates:  # the server cannot check an algorithm it has no hash for
            if user in self.accounts and algorithm not in self.accepts.get(user, {algorithm}):
                return "wrong", user, dict(detail, usable=False)
        hash_ = _HASH[algorithm]
        nonce = p.get("nonce", "")
        with self._lock:
            generation = self._nonces.get(nonce)
            current = self._generation
            stale_next = self._stale_next
        for user, ubytes, how in candidates:
            password = self.accounts.get(user)
            if password is None:
                continue
            for pw_encoding in ("utf-8", "latin-1"):
                try:
                    pw = password.encode(pw_encoding)
                except UnicodeEncodeError:
                    continue
                ha1 = hash_(ubytes + b":" + self.realm.encode() + b":" + pw).hexdigest()
                ha2 = hash_(f"{method}:{p.get('uri', '')}".encode("latin-1")).hexdigest()
                expected = hash_(":".join([ha1, nonce, p.get("nc", ""), p.get("cnonce", ""), p.get("qop", ""),
                                           ha2]).encode("latin-1")).hexdigest()
                if secrets.compare_digest(expected, p.get("response", "")):
                    detail.update(encoding=how, password_encoding=pw_encoding)
                    if generation is None or generation != current:
                        return ("stale" if stale_next else "wrong"), user, dict(detail, nonce="old")
                    return "ok", user, detail
        return "wrong", (candidates[0][0] if candidates else None), detail
