"""
The browser drivers themselves: Firefox ESR over WebDriver BiDi logs in to
the real daemon like Chromium over CDP does, two operators in two different
browsers see each other, and a browser leaves no process and no profile
behind.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import Browsers
from test_ui import png_size, wait_stream_open, wait_text

pytestmark = pytest.mark.browser


@pytest.mark.browsers("firefox")
def test_firefox_smoke(browser_name, daemon, open_page, tmp_path: Path) -> None:
    """
    Pins: headless Firefox ESR, answering the daemon's real 401 through
    network.authRequired / network.continueWithAuth (one dialog, SHA-256
    Digest), shows alice logged in and online with her live event stream,
    and takes a 1280x900 screenshot.
    """
    page = open_page(daemon, "alice")
    assert page.browser == "firefox"
    wait_text(page, "#whoami", "logged in as alice")
    wait_text(page, "#users li", "alice (you)")
    assert wait_text(page, "#status", "live") == "live"
    wait_stream_open(daemon, "alice")
    assert [(c["scheme"].lower(), c["realm"]) for c in page.auth_challenges] == [("digest", "boatwist")]
    sent = page.authorization_headers()
    assert sent and all(re.match(r'Digest username="alice".*algorithm=SHA-256', h) for h in sent), sent
    assert page.problems() == [] and page.handler_errors == [] and page.blocked == []
    assert png_size(page.screenshot(tmp_path / "firefox.png")) == (1280, 900)


@pytest.mark.browsers("mixed")
def test_two_operators_in_two_browsers(browser_name, daemon, open_page) -> None:
    """
    Pins: alice in Chromium and bob in Firefox, at the same time against one
    daemon, each see the other online; the daemon counts two seats.
    """
    alice = open_page(daemon, "alice", browser="chromium")
    bob = open_page(daemon, "bob", browser="firefox")
    assert (alice.browser, bob.browser) == ("chromium", "firefox")
    wait_text(alice, "#users li", "bob")
    wait_text(bob, "#users li", "alice")
    wait_text(bob, "#users li", "bob (you)")
    wait_text(alice, "#seats", "2 of 10 seats taken")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_browsers_leave_nothing_behind(browser_name, tmp_path: Path) -> None:
    """
    Pins: closing a browser ends every process of its group (content
    processes and helpers included) and removes its profile (and Firefox's
    private HOME).
    """
    pool = Browsers(tmp_path)
    try:
        browser = pool.get(browser_name)
        page = pool.new_page(browser_name, None)
        page.navigate("about:blank")
        pgid = browser.proc.pid
        assert _group_alive(pgid)
        children = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
        assert len(children) >= 2, children  # the reaper and the browser, at least
    finally:
        pool.close()
    assert not _group_alive(pgid), "a process of the browser's group survived close()"
    assert not browser.profile.exists()
    assert not getattr(browser, "home", Path("/nonexistent")).exists()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
