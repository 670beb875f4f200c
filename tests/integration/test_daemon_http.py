"""
The HTTP front door of the real daemon (``twistd -n embweb``), seen by real
clients: http.client and raw sockets, urllib's auth handlers, curl, and
password files written by Apache's own ``htpasswd`` and ``htdigest``.

What is pinned here is what an operator, an integrator and an attacker see
on the wire and in the log: which schemes are offered, which credentials
open the door, what a replayed Digest header, a foreign site's POST, an
oversized body, a password guesser and one operator too many get, what the
first start of a fresh device does, and what the access log records (and
never records).

Most read-only checks share one daemon (started once per module, with a
throttle that cannot trip); anything that needs its own configuration or
state starts its own.  Waits are bounded waits on real events.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import secrets
import shutil
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

import boatwist
from daemon import Daemon
from apache_tools import run_htdigest

pytestmark = pytest.mark.integration

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
needs_htpasswd = pytest.mark.skipif(shutil.which("htpasswd") is None, reason="htpasswd (apache2-utils) not installed")
needs_htdigest = pytest.mark.skipif(shutil.which("htdigest") is None, reason="htdigest (apache2-utils) not installed")

REALM = "boatwist"
#: Distinctive passwords, so that grepping the log for them means something.
USERS = {"alice": "alice-Pw-q7Zr2", "bob": "bob-Pw-k4Tn8"}


# ------------------------------------------------------------------ clients


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def all(self, name: str) -> list[str]:
        return self.headers.get_all(name) or []

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {dict(self.headers)!r} {self.body[:300]!r}>"


def request(daemon: Daemon, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None, port: int | None = None) -> Response:
    """One request on a fresh connection, exactly as given (no automatic auth, no redirects)."""
    conn = http.client.HTTPConnection("127.0.0.1", port or daemon.http_port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, r.msg, r.read())
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


_PARAM = re.compile(r'([A-Za-z0-9_-]+)=(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


def challenges(response: Response) -> list[tuple[str, dict[str, str]]]:
    """The WWW-Authenticate challenges of a 401, in order: (scheme lower-cased, params)."""
    found = []
    for value in response.all("WWW-Authenticate"):
        scheme, _, rest = value.strip().partition(" ")
        params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
                  for m in _PARAM.finditer(rest)}
        found.append((scheme.lower(), params))
    return found


def digest_challenge(response: Response, algorithm: str) -> dict[str, str]:
    for scheme, params in challenges(response):
        if scheme == "digest" and params.get("algorithm", "MD5").upper() == algorithm:
            return params
    raise AssertionError(f"no Digest {algorithm} challenge in {response!r}")


def digest_authorization(challenge: dict[str, str], user: str, password: str, method: str, uri: str,
                         nc: int = 1, cnonce: str | None = None) -> str:
    """An RFC 7616 Authorization header (qop=auth) answering C{challenge}: an independent client."""
    algorithm = challenge.get("algorithm", "MD5").upper()
    h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]

    def H(text: str) -> str:
        return h(text.encode("utf-8")).hexdigest()

    cnonce = cnonce or secrets.token_hex(8)
    ha1 = H(f"{user}:{challenge['realm']}:{password}")
    ha2 = H(f"{method}:{uri}")
    response = H(f"{ha1}:{challenge['nonce']}:{nc:08x}:{cnonce}:auth:{ha2}")
    return (
        f'Digest username="{user}", realm="{challenge["realm"]}", nonce="{challenge["nonce"]}", '
        f'uri="{uri}", algorithm={algorithm}, qop=auth, nc={nc:08x}, cnonce="{cnonce}", '
        f'response="{response}", opaque="{challenge["opaque"]}"'
    )


def digest_get(daemon: Daemon, path: str, user: str, password: str, algorithm: str = "SHA-256") -> Response:
    """Challenge, then answer it with C{algorithm}: two requests, as a browser does."""
    first = request(daemon, "GET", path)
    assert first.status == 401, first
    header = digest_authorization(digest_challenge(first, algorithm), user, password, "GET", path)
    return request(daemon, "GET", path, {"Authorization": header})


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll C{predicate} (a real socket or the log) until it returns something true; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(interval)


ACCESS = re.compile(
    r"(?:^|\[boatwist\.access#info\] )"
    r'(?P<host>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<time>[^\]]+)\] '
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<proto>HTTP/1\.[01])" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)"$'
)


def access_text(daemon: Daemon, where: str = "file") -> list[str]:
    """The access log's lines: C{file} -- the default, state_dir/access.log; C{log} -- twistd's log."""
    if where == "log":
        return [line for line in daemon.log_text().splitlines() if "[boatwist.access#" in line]
    path = daemon.state / "access.log"
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def access_lines(daemon: Daemon, marker: str, where: str = "file") -> list[re.Match[str]]:
    """Access-log lines whose User-Agent contains C{marker}, parsed as combined log format."""
    found = []
    for line in access_text(daemon, where):
        if marker in line:
            match = ACCESS.search(line)
            assert match is not None, f"not combined log format: {line!r}"
            found.append(match)
    return found


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """
    One daemon for the checks that change no state that matters: its
    throttle cannot trip (failures here are deliberate and few) and a small
    max_body makes 413 cheap to provoke.
    """
    d = Daemon(
        tmp_path_factory.mktemp("shared"),
        users=USERS,
        config="[auth]\nmax_failures = 1000\nfailure_delay = 0\n[http]\nmax_body = 1024\n",
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


# ------------------------------------------------------- health, challenges


def test_healthz_needs_no_authentication(shared: Daemon) -> None:
    """/healthz answers 200 'ok <version>' without any credentials (for load balancers and systemd checks)."""
    r = request(shared, "GET", "/healthz")
    assert r.status == 200, r
    assert r.body == f"ok {boatwist.__version__}\n".encode()
    assert r.header("Content-Type").startswith("text/plain")
    assert r.all("WWW-Authenticate") == []


def test_api_without_credentials_offers_digest_and_basic(shared: Daemon) -> None:
    """
    /api/whoami without credentials is 401 with the Digest challenges for
    MD5 and SHA-256, in the order of [auth] digest_algorithms (by default
    MD5 first: urllib before Python 3.14 answers only the first one), each
    qop=auth with its own nonce and an opaque, then Basic; all for the realm.
    """
    from boatwist.config import AuthSettings

    r = request(shared, "GET", "/api/whoami")
    assert r.status == 401, r
    found = challenges(r)
    expected = [("digest", a) for a in AuthSettings().digest_algorithms] + [("basic", None)]
    assert [(scheme, params.get("algorithm")) for scheme, params in found] == expected, found
    assert {a for _, a in expected if a} == {"MD5", "SHA-256"}
    for scheme, params in found:
        assert params["realm"] == REALM
        if scheme == "digest":
            assert params["qop"] == "auth"
            assert params["nonce"] and params["opaque"]
            assert "stale" not in params
    assert found[0][1]["nonce"] != found[1][1]["nonce"]


def test_digest_algorithms_setting_chooses_the_challenges(make_daemon: Any) -> None:
    """[auth] digest_algorithms = SHA-256 offers only the SHA-256 challenge (then Basic), and it works."""
    d = make_daemon(config="[auth]\ndigest_algorithms = SHA-256\n")
    d.start()
    r = request(d, "GET", "/api/whoami")
    assert [(s, p.get("algorithm")) for s, p in challenges(r)] == [("digest", "SHA-256"), ("basic", None)]
    assert digest_get(d, "/api/whoami", "alice", d.users["alice"], "SHA-256").status == 200


def test_digest_algorithm_not_offered_is_refused(make_daemon: Any) -> None:
    """
    With digest_algorithms = SHA-256 (an integrator turning MD5 off), a
    client answering with algorithm=MD5 anyway, on a genuine nonce and with
    the right password, is refused: what is not offered is not accepted.
    """
    d = make_daemon(config="[auth]\ndigest_algorithms = SHA-256\n")
    d.start()
    r = request(d, "GET", "/api/whoami")
    md5 = dict(digest_challenge(r, "SHA-256"), algorithm="MD5")
    header = digest_authorization(md5, "alice", d.users["alice"], "GET", "/api/whoami")
    assert request(d, "GET", "/api/whoami", {"Authorization": header}).status == 401


# -------------------------------------------------------------------- Basic


def test_basic_with_good_credentials(shared: Daemon) -> None:
    """Basic with alice's password: 200 and whoami says alice."""
    r = request(shared, "GET", "/api/whoami", basic("alice", USERS["alice"]))
    assert r.status == 200, r
    assert r.json()["user"] == "alice"
    assert r.header("Content-Type") == "application/json"


def test_basic_with_bad_password_or_unknown_user(shared: Daemon) -> None:
    """A wrong password, or a user who does not exist, is 401 with the challenges again."""
    for user, password in (("alice", "not-her-password"), ("mallory", "whatever")):
        r = request(shared, "GET", "/api/whoami", basic(user, password))
        assert r.status == 401, r
        assert len(challenges(r)) == 3


def test_urllib_basic_handler(shared: Daemon) -> None:
    """The standard library's Basic handler (challenge, then credentials) gets in."""
    status, _, body = shared.get("/api/whoami", user="alice", scheme="basic")
    assert (status, json.loads(body)["user"]) == (200, "alice")


# ------------------------------------------------------------------- Digest


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_digest_with_either_algorithm(shared: Daemon, algorithm: str) -> None:
    """An RFC 7616 client answering the SHA-256 or the MD5 challenge is let in as that user."""
    r = digest_get(shared, "/api/whoami", "bob", USERS["bob"], algorithm)
    assert r.status == 200, r
    assert r.json()["user"] == "bob"


def test_digest_with_wrong_password(shared: Daemon) -> None:
    """A Digest response computed from the wrong password is 401 (and not stale: the nonce was fine)."""
    r = digest_get(shared, "/api/whoami", "bob", "wrong", "SHA-256")
    assert r.status == 401, r
    assert all(params.get("stale") != "true" for _, params in challenges(r))


def test_stdlib_digest_client(shared: Daemon) -> None:
    """
    urllib.request.HTTPDigestAuthHandler, the Digest client every Python
    has, logs in.  (It reads only the first WWW-Authenticate header and, in
    Python < 3.14, knows MD5 and SHA-1 only.)
    """
    manager = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    manager.add_password(None, shared.url, "alice", USERS["alice"])
    opener = urllib.request.build_opener(urllib.request.HTTPDigestAuthHandler(manager))
    try:
        with opener.open(f"{shared.url}/api/whoami", timeout=10) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except ValueError as e:  # raised by urllib itself, before it sends any credentials
        pytest.fail(f"urllib's Digest client cannot answer boatwist's first challenge: {e}")
    assert (status, json.loads(body)["user"]) == (200, "alice")


@needs_curl
def test_curl_digest(shared: Daemon) -> None:
    """curl --digest (which answers the first Digest challenge it understands) logs in."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--digest", "-u", f"alice:{USERS['alice']}",
         "-w", "\n%{http_code}", f"{shared.url}/api/whoami"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode == 0, out.stderr
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", out.stdout
    assert json.loads(body)["user"] == "alice"


@needs_curl
def test_curl_digest_wrong_password(shared: Daemon) -> None:
    """curl --digest with a wrong password ends with 401."""
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--digest", "-u", "alice:wrong", "-o", "/dev/null",
         "-w", "%{http_code}", f"{shared.url}/api/whoami"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.stdout == "401", (out.stdout, out.stderr)


def test_replayed_digest_header_is_refused(shared: Daemon) -> None:
    """
    A captured Digest Authorization header sent again (same nonce, same nc)
    on a new connection is 401 with stale=true; the legitimate client's
    next count (nc=2) on the same nonce still works.
    """
    path = "/api/whoami"
    challenge = digest_challenge(request(shared, "GET", path), "SHA-256")
    header = digest_authorization(challenge, "alice", USERS["alice"], "GET", path, nc=1, cnonce="c0ffee")
    first = request(shared, "GET", path, {"Authorization": header})
    assert first.status == 200, first
    replay = request(shared, "GET", path, {"Authorization": header})
    assert replay.status == 401, replay
    assert any(params.get("stale") == "true" for scheme, params in challenges(replay) if scheme == "digest"), replay
    # Same nonce, next count: the real client is unaffected.
    following = digest_authorization(challenge, "alice", USERS["alice"], "GET", path, nc=2, cnonce="c0ffee")
    assert request(shared, "GET", path, {"Authorization": following}).status == 200


def test_replayed_digest_header_on_raw_socket_keepalive(shared: Daemon) -> None:
    """The same replay on one keep-alive connection (raw bytes, two requests) is refused the second time too."""
    path = "/api/whoami"
    challenge = digest_challenge(request(shared, "GET", path), "MD5")
    header = digest_authorization(challenge, "bob", USERS["bob"], "GET", path)
    raw = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {header}\r\n\r\n".encode()
    statuses = []
    with socket.create_connection(("127.0.0.1", shared.http_port), timeout=10) as s:
        buffer = b""
        for _ in range(2):
            s.sendall(raw)
            while b"\r\n\r\n" not in buffer:
                chunk = s.recv(65536)
                assert chunk, f"closed before a response: {buffer!r}"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
            while len(buffer) < length:
                chunk = s.recv(65536)
                assert chunk, "closed in the body"
                buffer += chunk
            buffer = buffer[length:]
            statuses.append(int(head.split(b" ", 2)[1]))
    assert statuses == [200, 401]


# ------------------------------------------------------- real Apache files


@needs_htpasswd
@needs_htdigest
def test_files_written_by_real_htpasswd_and_htdigest(make_daemon: Any) -> None:
    """
    A users file made by the real `htpasswd -B -b` serves Basic, and one made
    by the real `htdigest` (MD5 HA1 only) serves Digest answering the MD5
    challenge; neither file is rewritten by the daemon.
    """
    d = make_daemon(users={})
    users, digest = d.state / "users.htpasswd", d.state / "users.htdigest"
    subprocess.run(["htpasswd", "-c", "-B", "-C", "4", "-b", str(users), "carol", "carol-Pw-1"],
                   check=True, capture_output=True, timeout=30)
    run_htdigest(digest, REALM, "dave", "dave-Pw-2", create=True)
    before = (users.read_bytes(), digest.read_bytes())
    d.start()
    r = request(d, "GET", "/api/whoami", basic("carol", "carol-Pw-1"))
    assert (r.status, r.json()["user"]) == (200, "carol")
    assert request(d, "GET", "/api/whoami", basic("carol", "wrong")).status == 401
    r = digest_get(d, "/api/whoami", "dave", "dave-Pw-2", "MD5")
    assert (r.status, r.json()["user"]) == (200, "dave")
    assert digest_get(d, "/api/whoami", "dave", "wrong", "MD5").status == 401
    assert (users.read_bytes(), digest.read_bytes()) == before
    assert not (d.state / "initial-admin-password").exists()


# ---------------------------------------------------------- response headers


def test_security_headers_on_every_kind_of_response(shared: Daemon) -> None:
    """
    Every response (health, 401, authenticated API, UI page, 404) carries a
    CSP without 'unsafe-inline' and with frame-ancestors 'none', nosniff and
    a Referrer-Policy; everything under /api/ (and every 401) is no-store.
    """
    auth = basic("alice", USERS["alice"])
    cases = {
        "/healthz": request(shared, "GET", "/healthz"),
        "/api/whoami (401)": request(shared, "GET", "/api/whoami"),
        "/api/whoami": request(shared, "GET", "/api/whoami", auth),
        "/api/presence": request(shared, "GET", "/api/presence", auth),
        "/": request(shared, "GET", "/", auth),
        "/no-such-page": request(shared, "GET", "/no-such-page", auth),
    }
    assert cases["/"].status == 200 and cases["/no-such-page"].status == 404, cases
    for name, r in cases.items():
        csp = r.header("Content-Security-Policy")
        assert csp, (name, r)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, (name, csp)
        assert "frame-ancestors 'none'" in csp, (name, csp)
        assert "script-src 'self'" in csp, (name, csp)
        assert r.header("X-Content-Type-Options") == "nosniff", name
        assert r.header("Referrer-Policy") == "no-referrer", name
        if name.startswith("/api/") or r.status == 401:
            assert r.header("Cache-Control") == "no-store", (name, r)


# ---------------------------------------------------------- CSRF, body size


def test_cross_site_post_is_refused_before_authentication(shared: Daemon) -> None:
    """
    A POST carrying Origin: http://evil.example (or Sec-Fetch-Site:
    cross-site) is 403 even with good credentials; the same POST without
    those headers, as curl sends it, passes: 401 without credentials, 201
    with them.  A POST from the server's own origin passes too.
    """
    body = json.dumps({"text": "csrf check"}).encode()
    json_type = {"Content-Type": "application/json"}
    auth = basic("alice", USERS["alice"])
    evil = request(shared, "POST", "/api/chat", {**json_type, **auth, "Origin": "http://evil.example"}, body)
    assert evil.status == 403, evil
    assert evil.json() == {"error": "cross-site request refused"}
    fetch = request(shared, "POST", "/api/chat", {**json_type, **auth, "Sec-Fetch-Site": "cross-site"}, body)
    assert fetch.status == 403, fetch
    assert request(shared, "POST", "/api/chat", json_type, body).status == 401
    plain = request(shared, "POST", "/api/chat", {**json_type, **auth}, body)
    assert plain.status == 201, plain
    assert plain.json()["user"] == "alice"
    own = request(shared, "POST", "/api/chat",
                  {**json_type, **auth, "Origin": f"http://127.0.0.1:{shared.http_port}"}, body)
    assert own.status == 201, own


def test_body_over_max_body_is_413(shared: Daemon) -> None:
    """A body larger than [http] max_body (1024 here) is refused with 413, JSON under /api, and the connection closed."""
    auth = basic("alice", USERS["alice"])
    r = request(shared, "POST", "/api/chat", {**auth, "Content-Type": "application/json"},
                b'{"text": "' + b"x" * 2048 + b'"}')
    assert r.status == 413, r
    assert "1024" in r.json()["error"]
    assert r.header("Connection") == "close"
    # Unauthenticated: the size is judged before the credentials.
    assert request(shared, "POST", "/api/chat", {"Content-Type": "application/json"}, b"x" * 2048).status == 413


# --------------------------------------------------------- the first start


def test_first_start_creates_admin_with_random_password(make_daemon: Any) -> None:
    """
    With no users file, the first start creates `admin` with a random
    password in state_dir/initial-admin-password (mode 0600, one line); that
    password works for Basic and Digest; another fresh install gets another
    password; a restart does not change it.
    """
    passwords = []
    for _ in range(2):
        d = make_daemon(users={})
        assert not (d.state / "users.htpasswd").exists()
        d.start()
        secret = d.state / "initial-admin-password"
        mode = stat.S_IMODE(secret.stat().st_mode)
        assert mode == 0o600, oct(mode)
        text = secret.read_text()
        assert text.endswith("\n") and text.count("\n") == 1, repr(text)
        password = text.strip()
        assert len(password) >= 12
        r = request(d, "GET", "/api/whoami", basic("admin", password))
        assert (r.status, r.json()["user"]) == (200, "admin")
        assert digest_get(d, "/api/whoami", "admin", password, "SHA-256").status == 200
        assert request(d, "GET", "/api/whoami", basic("admin", password + "x")).status == 401
        passwords.append(password)
    assert passwords[0] != passwords[1]
    # A restart of the second install keeps its users and makes no new password.
    d.stop()
    d.start()
    assert (d.state / "initial-admin-password").read_text().strip() == passwords[1]
    assert request(d, "GET", "/api/whoami", basic("admin", passwords[1])).status == 200


def test_first_start_logs_where_the_password_is_never_the_password(make_daemon: Any) -> None:
    """
    Issue 8 item 9: twistd's --logfile is created world-readable (0644), so
    the first start's log names the file the admin password is in (mode
    0600) and what to do, and never contains the password -- not in the
    text, not in any field of the event.
    """
    d = make_daemon(users={})
    logfile = d.workdir / "embweb.log"
    d.spawn(d.argv()[:2] + [f"--logfile={logfile}"] + d.argv()[2:])
    d.wait_ready()
    secret = d.state / "initial-admin-password"
    password = secret.read_text().strip()
    deadline = time.monotonic() + 10
    while "created user 'admin'" not in (logfile.read_text() if logfile.exists() else ""):
        assert time.monotonic() < deadline, "no first-start line in the log file"
        time.sleep(0.05)  # bounded wait for twistd's log file
    text = logfile.read_text()
    assert str(secret) in text and "embweb-passwd passwd admin" in text
    assert password not in text and password not in d.log_text()
    assert request(d, "GET", "/api/whoami", basic("admin", password)).status == 200


@needs_htpasswd
def test_md5_apr1_users_file_stops_the_start_with_one_line(make_daemon: Any) -> None:
    """
    A users file with an Apache MD5 ($apr1$) hash (htpasswd -m) stops twistd
    with a non-zero status and exactly one line on stderr naming the file,
    the line and the user, and no traceback anywhere.
    """
    d = make_daemon()
    users = d.state / "users.htpasswd"
    line = subprocess.run(["htpasswd", "-nbm", "carol", "carol-pw"], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()
    assert line.startswith("carol:$apr1$"), line
    with users.open("a") as f:
        f.write(line + "\n")
    number = users.read_text().splitlines().index(line) + 1
    out = subprocess.run(d.argv(), cwd=d.workdir, env=d.env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0, out
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, out.stderr
    assert f"{users}:{number}:" in lines[0] and "'carol'" in lines[0], lines[0]
    assert "bcrypt" in lines[0]
    assert "Traceback" not in out.stderr + out.stdout


# ---------------------------------------------------------------- the log


@pytest.mark.parametrize("where", ["file", "log"])
def test_access_log_one_combined_line_per_request_and_no_secrets(make_daemon: Any, where: str) -> None:
    """
    Each request (200, 401, bad password, Digest, 404, health) gives exactly
    one access-log line in combined log format with the peer address, the
    authenticated user (or -) and the status; the password, the base64
    Basic token, the wrong password tried and query values never appear in
    the log.  A failed login is logged with the user and source address.
    By default the lines go to state_dir/access.log (written once a
    second); with C{access_log = log}, to twistd's log.
    """
    password, wrong = "Sekr1t-Pw-unique-84d2", "Wr0ng-Guess-unique-19c7"
    # Every line is wanted here: the per-source summaries of floods are tests/integration/test_log_flood.py.
    target = "[http]\naccess_log = log\n" if where == "log" else ""
    d = make_daemon(users={"alice": password},
                    config="[auth]\nfailure_delay = 0\n[log]\nper_source = 1000\nmax_lines = 1000\n" + target)
    d.start()
    marker = f"probe-{secrets.token_hex(4)}"
    good = basic("alice", password)
    sent = [
        ("GET", "/api/whoami", good, 200, "alice"),
        ("GET", "/api/whoami?token=QuerySecret77", good, 200, "alice"),
        ("GET", "/api/whoami", {}, 401, "-"),
        ("GET", "/api/whoami", basic("alice", wrong), 401, "-"),
        ("GET", "/healthz", {}, 200, "-"),
        ("GET", "/nothing-here", good, 404, "alice"),
    ]
    for number, (method, path, headers, status, _) in enumerate(sent):
        r = request(d, method, path, {**headers, "User-Agent": f"{marker}-{number}", "Referer": "http://ref.example/"})
        assert r.status == status, (path, r)
    r = digest_get(d, "/api/presence", "alice", password, "SHA-256")  # two requests: 401, then 200
    assert r.status == 200, r

    wait_until(lambda: len(access_lines(d, marker, where)) >= len(sent), 5, "access-log lines")
    lines = access_lines(d, marker, where)
    assert len(lines) == len(sent), [m.group(0) for m in lines]
    for number, (method, path, _, status, user) in enumerate(sent):
        match = next(m for m in lines if m.group("agent") == f"{marker}-{number}")
        assert match.group("host") == "127.0.0.1"
        assert match.group("ident") == "-"
        assert match.group("user") == user, match.group(0)
        assert match.group("method") == method
        assert match.group("status") == str(status)
        assert match.group("referer") == "http://ref.example/"
        assert re.fullmatch(r"\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}", match.group("time"))
    query = next(m for m in lines if m.group("agent") == f"{marker}-1")
    assert query.group("uri") == "/api/whoami?token=*"
    def presence_lines() -> list[re.Match[str]]:
        return [m for m in map(ACCESS.search, access_text(d, where)) if m and m.group("uri") == "/api/presence"]

    # The log reaches us through twistd's stdout: wait for the line, not a fixed time.
    wait_until(lambda: len(presence_lines()) >= 2, 5, "the /api/presence access-log lines")
    presence = presence_lines()
    assert [(m.group("status"), m.group("user")) for m in presence] == [("401", "-"), ("200", "alice")], presence

    d.stop()
    assert len(access_lines(d, marker, where)) == len(sent)  # and no late duplicates once everything is flushed
    if where == "file":
        assert not access_text(d, "log"), "access lines in twistd's log too"
    log = d.log_text() + d.log_path.read_text(errors="replace") + "\n".join(access_text(d, "file"))
    token = good["Authorization"].split()[1]
    for secret in (password, wrong, token, base64.b64encode(f"alice:{wrong}".encode()).decode(), "QuerySecret77"):
        assert secret not in log, f"{secret!r} is in the log"
    assert re.search(r"failed login 'alice' from 127\.0\.0\.1", log), log


# ------------------------------------------------------- brute force, seats


def test_one_mistyped_password_in_a_script_locks_nobody_out(make_daemon: Any) -> None:
    """
    Issue 8 item 3, with urllib's own Digest handler (which resends a wrong
    password by itself) and a Basic script repeating its mistyped password:
    afterwards bob and a third user with the right passwords get in at once
    from the same address, the repeated Basic password is logged as one
    failure, and nothing answers with a lockout.
    """
    users = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
    d = make_daemon(users=users, config="[auth]\nfailure_delay = 0\n")
    d.start()
    for scheme in ("digest", "basic"):
        opener = d.opener("bob", "typo-pw", scheme=scheme)
        with pytest.raises(urllib.error.HTTPError) as raised:
            opener.open(f"{d.url}/api/whoami", timeout=10)
        assert raised.value.code == 401
        raised.value.close()
    for _ in range(5):
        assert request(d, "GET", "/api/whoami", basic("bob", "typo-pw")).status == 401
    for user in ("bob", "carol", "alice"):
        started = time.monotonic()
        assert d.get("/api/whoami", user, scheme="digest")[0] == 200, user
        assert request(d, "GET", "/api/whoami", basic(user, users[user])).status == 200, user
        assert time.monotonic() - started < 1.0
    d.wait_for_log("failed login 'bob'")
    basic_failures = [line for line in d.log_text().splitlines() if "failed login 'bob'" in line]
    # urllib's Digest handler resent the wrong password up to six times; the Basic repeats were one failure.
    assert len(basic_failures) <= 8, basic_failures


def test_a_refused_attempt_gets_429_with_retry_after(make_daemon: Any) -> None:
    """
    With max_guesses = 6 (one turn at once) and no waiting (max_wait = 0),
    a burst of wrong passwords on one name from several addresses: the
    attempts beyond the name's turns get 429 with Retry-After, unchecked,
    for a real name and an invented one alike (JSON under /api); another
    name is not affected.
    """
    d = make_daemon(config="[auth]\nmax_guesses = 6\nmax_wait = 0\nfailure_delay = 0\n")
    d.start()
    for name in ("alice", "nobody-here"):
        answers = [request(d, "GET", "/api/whoami", basic(name, f"guess-{n}")) for n in range(4)]
        statuses = [r.status for r in answers]
        assert statuses[0] == 401 and 429 in statuses, statuses
        refused = next(r for r in answers if r.status == 429)
        assert refused.header("Retry-After") and int(refused.header("Retry-After")) >= 1
        assert refused.json()["retry_after"] == int(refused.header("Retry-After"))
    assert request(d, "GET", "/api/whoami", basic("bob", d.users["bob"])).status == 200


def test_replays_are_not_counted_as_failed_logins(make_daemon: Any) -> None:
    """
    A Digest response that is right but reuses a nonce count (a replay, or a
    browser's parallel requests arriving out of order: StaleNonce) is not a
    wrong password: however many there are, they do not shut the address
    out (max_failures = 2 here), and the user logs in with a fresh nonce.
    """
    d = make_daemon(config="[auth]\nmax_failures = 2\nfailure_window = 60\nfailure_delay = 0\n")
    d.start()
    path = "/api/whoami"
    challenge = digest_challenge(request(d, "GET", path), "SHA-256")
    header = digest_authorization(challenge, "alice", d.users["alice"], "GET", path)
    assert request(d, "GET", path, {"Authorization": header}).status == 200
    for _ in range(3):
        assert request(d, "GET", path, {"Authorization": header}).status == 401
    r = digest_get(d, path, "alice", d.users["alice"], "SHA-256")
    assert r.status == 200, (r, d.log_text()[-3000:])


def test_second_operator_over_max_users_gets_503(make_daemon: Any) -> None:
    """
    With max_users = 1 and alice online, bob's login is answered 503 with
    Retry-After and "1 of 1" in the body: JSON under /api/, an HTML page
    elsewhere.  Alice, already online, is still served.
    """
    d = make_daemon(config="[admission]\nmax_users = 1\n")
    d.start()
    alice, bob = basic("alice", d.users["alice"]), basic("bob", d.users["bob"])
    assert request(d, "GET", "/api/whoami", alice).status == 200
    api = request(d, "GET", "/api/whoami", bob)
    assert api.status == 503, api
    assert api.header("Retry-After") and api.header("Retry-After").isdigit() and int(api.header("Retry-After")) >= 1
    assert api.header("Content-Type") == "application/json"
    data = api.json()
    assert "1 of 1" in data["error"], data
    assert (data["used"], data["limit"]) == (1, 1)
    page = request(d, "GET", "/", bob)
    assert page.status == 503, page
    assert page.header("Retry-After")
    assert page.header("Content-Type").startswith("text/html")
    assert b"1 of 1" in page.body
    # Digest is admitted the same way.
    assert digest_get(d, "/api/whoami", "bob", d.users["bob"], "SHA-256").status == 503
    assert request(d, "GET", "/api/whoami", alice).status == 200
    d.wait_for_log("refused bob")
