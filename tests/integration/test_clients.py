"""
Issue 8: every user in the password files logs in from the clients
operators use -- curl (``--digest``, ``--anyauth``, ``--basic``), wget,
httpx, requests and urllib -- with the shipped defaults, whatever tool made
their line: ``embweb-passwd`` (bcrypt, MD5, SHA-256), Apache's ``htdigest``
(an MD5 HA1 only) or Apache's ``htpasswd -B`` (bcrypt only).  The user
files are written by the Apache tools themselves; the daemon is the real
one (twistd).  The browsers are in tests/browser/test_logins.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import pytest

from apache_tools import run_htdigest, run_htpasswd
from client_tools import BASIC_CLIENTS, CLIENTS, DIGEST_ONLY_CLIENTS, fetch, require_program
from daemon import Daemon

pytestmark = pytest.mark.integration

#: alice by embweb-passwd, carol by htdigest (MD5 HA1 only), dave by htpasswd -B (bcrypt only).
PASSWORDS = {"alice": "alice-pw", "carol": "carol-pw", "dave": "dave-pw"}


def mixed_daemon(make_daemon: Callable[..., Daemon], config: str = "", apache: tuple[str, ...] = ("carol", "dave"),
                 ) -> Daemon:
    """The daemon with alice (embweb-passwd) and the users of C{apache} added by Apache's own tools."""
    require_program("htdigest", "apache2-utils")
    d = make_daemon(config=config, users={"alice": PASSWORDS["alice"]})
    if "carol" in apache:
        run_htdigest(d.state / "users.htdigest", "boatwist", "carol", PASSWORDS["carol"])
    if "dave" in apache:
        run_htpasswd(d.state / "users.htpasswd", "dave", PASSWORDS["dave"])
    d.users.update({u: PASSWORDS[u] for u in apache})
    return d.start()


def offered(d: Daemon) -> list[str]:
    """The challenges of a 401, as 'Digest ALG' / 'Basic'."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=10)
    conn.request("GET", "/api/whoami")
    response = conn.getresponse()
    response.read()
    conn.close()
    out = []
    for value in response.headers.get_all("WWW-Authenticate") or []:
        scheme = value.split(" ", 1)[0].lower()
        algorithm = re.search(r'algorithm="?([\w-]+)', value)
        out.append(f"Digest {algorithm.group(1)}" if scheme == "digest" and algorithm else scheme.capitalize())
    return out


def test_every_user_logs_in_from_every_client(make_daemon: Callable[..., Daemon]) -> None:
    """
    With an htdigest user in the files, the daemon offers Digest MD5 (the
    algorithm every Digest user has) and Basic -- and says so at start,
    naming carol and the fix.  Then every client logs in as alice and as
    carol (Basic checks carol's password against her HA1); dave, who has no
    HA1, logs in with every Basic client and with curl --anyauth (refused
    for Digest, it is offered Basic alone and switches), and only the
    clients told to speak nothing but Digest cannot.
    """
    d = mixed_daemon(make_daemon)
    assert offered(d) == ["Digest MD5", "Basic"]
    line = d.wait_for_log("HTTP authentication offers Digest MD5, Basic")
    assert "'carol'" in line and "embweb-passwd passwd" in line and "'dave'" in line, line
    url = f"{d.url}/api/whoami"
    results: dict[tuple[str, str], int] = {}
    for user in ("alice", "carol", "dave"):
        for client in CLIENTS:
            results[(user, client)] = fetch(client, url, user, PASSWORDS[user])
    expected = {(user, client): 200 for user in ("alice", "carol") for client in CLIENTS}
    expected.update({("dave", client): 200 for client in BASIC_CLIENTS + ("curl --anyauth",)})
    expected.update({("dave", client): 401 for client in DIGEST_ONLY_CLIENTS})
    assert results == expected


def test_the_full_offer_when_every_digest_user_has_sha256(make_daemon: Callable[..., Daemon]) -> None:
    """
    A bcrypt-only user does not limit the Digest offer (the others keep
    SHA-256): the 401 to a Digest answer naming dave offers Basic alone, so
    curl --anyauth logs in as dave; every client logs in as alice.
    """
    d = mixed_daemon(make_daemon, apache=("dave",))
    assert offered(d) == ["Digest SHA-256", "Digest MD5", "Basic"]
    url = f"{d.url}/api/whoami"
    assert {c: fetch(c, url, "alice", PASSWORDS["alice"]) for c in CLIENTS} == {c: 200 for c in CLIENTS}
    assert fetch("curl --anyauth", url, "dave", PASSWORDS["dave"]) == 200
    assert fetch("curl --basic", url, "dave", PASSWORDS["dave"]) == 200


def test_no_hash_for_the_chosen_scheme_is_not_a_guess(make_daemon: Callable[..., Daemon]) -> None:
    """
    A Digest answer for a user with no HA1 is logged as that -- not as a
    failed login -- and not counted: with max_failures = 2, five of them
    from one address leave the address open, for dave's own Basic login and
    for alice's; a wrong password is still counted.
    """
    d = mixed_daemon(make_daemon, config="[auth]\nmax_failures = 2\nfailure_window = 60\nfailure_delay = 0\n",
                     apache=("dave",))
    url = f"{d.url}/api/whoami"
    for _ in range(5):
        assert fetch("curl --digest", url, "dave", PASSWORDS["dave"]) == 401
    line = d.wait_for_log("login 'dave' from 127.0.0.1: the client chose Digest SHA-256")
    assert "not a wrong password" in line and "embweb-passwd passwd dave" in line, line
    assert "failed login 'dave'" not in d.log_text()
    assert fetch("curl --basic", url, "dave", PASSWORDS["dave"]) == 200
    assert fetch("curl --digest", url, "alice", PASSWORDS["alice"]) == 200
    for _ in range(2):
        assert fetch("curl --digest", url, "alice", "wrong") == 401
    # Written one by one, or folded into the address's summary line when it logged a lot this second.
    line = d.wait_for_log("failed login")
    assert "failed login 'alice'" in line or "failed login x2" in line, line


def test_the_chat_port_takes_an_htdigest_user(make_daemon: Callable[..., Daemon]) -> None:
    """carol (htdigest only, no bcrypt line) logs in on the chat port too: her password is checked against her HA1."""
    import socket

    d = mixed_daemon(make_daemon, apache=("carol",))
    with socket.create_connection(("127.0.0.1", d.chat_port), timeout=10) as s:
        buffer = b""

        def until(needle: bytes) -> None:
            nonlocal buffer
            while needle not in buffer:
                chunk = s.recv(4096)
                assert chunk, buffer
                buffer += chunk
            buffer = buffer.split(needle, 1)[1]

        until(b"login: ")
        s.sendall(b"carol\n")
        until(b"password: ")
        s.sendall(PASSWORDS["carol"].encode() + b"\n")
        until(b"welcome")


def test_embweb_passwd_list_says_what_each_user_lacks(make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """``embweb-passwd list`` names what a user made by an Apache tool lacks, what that costs, and the fix."""
    import subprocess
    import sys

    d = mixed_daemon(make_daemon)
    tool = str(Path(sys.executable).parent / "embweb-passwd")
    done = subprocess.run([tool, "--config", str(d.config_path), "list"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    # name, what they can log in with, their role (from the config), advice when something is missing
    lines = {line.split("\t")[0]: [f for f in line.split("\t")[1:] if not f.startswith("role ")]
             for line in done.stdout.splitlines()}
    assert all("\trole operator" in line for line in done.stdout.splitlines())
    assert lines["alice"] == ["basic,digest-md5,digest-sha-256"]
    kinds, advice = lines["carol"]
    assert kinds == "digest-md5" and "no SHA-256 HA1" in advice and "embweb-passwd passwd carol" in advice
    kinds, advice = lines["dave"]
    assert kinds == "basic" and "no Digest HA1" in advice and "embweb-passwd passwd dave" in advice
    # Set again with embweb-passwd, carol has every kind, and the daemon offers SHA-256 again.
    subprocess.run([tool, "--config", str(d.config_path), "--password-stdin", "--rounds", "4", "passwd", "carol"],
                   input="carol-pw\n", text=True, check=True, timeout=30)
    subprocess.run([tool, "--config", str(d.config_path), "--password-stdin", "--rounds", "4", "passwd", "dave"],
                   input="dave-pw\n", text=True, check=True, timeout=30)
    wait: Any = None
    import time

    deadline = time.monotonic() + 10
    while (wait := offered(d)) != ["Digest SHA-256", "Digest MD5", "Basic"]:
        assert time.monotonic() < deadline, wait
        time.sleep(0.1)  # bounded poll: the daemon looks at the files once a second
    d.wait_for_log("HTTP authentication offers Digest SHA-256, Digest MD5, Basic")
