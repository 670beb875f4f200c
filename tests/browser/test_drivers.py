"""
The browser drivers themselves: Firefox ESR over WebDriver BiDi logs in to
the real daemon like Chromium over CDP does, two operators in two different
browsers see each other, and a browser leaves no process and no profile
behind.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cdp import process_tree, still_running
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


def test_browsers_leave_nothing_behind(browser_name, tmp_path: Path) -> None:
    """
    Pins: closing a browser ends every process it started -- its process
    group (content processes, GPU, network service) and the helpers that
    run in sessions of their own (Chromium's crashpad handlers, Firefox's
    crashhelper) -- and removes its profile (and Firefox's private HOME).
    """
    pool = Browsers(tmp_path)
    try:
        browser = pool.get(browser_name)
        page = pool.new_page(browser_name, None)
        page.navigate("about:blank")
        tree = process_tree(browser.proc.pid)
        assert len(tree) >= 2, tree  # the browser and its helpers, under the reaper
    finally:
        pool.close()
    assert browser.proc.poll() is not None, "the reaper still runs"
    assert still_running(tree) == [], "processes of the browser survived close()"
    assert not browser.profile.exists()
    assert not getattr(browser, "home", Path("/nonexistent")).exists()


_ORPHAN = """
import json, sys
sys.path[:0] = {paths!r}
from conftest import Browsers
from cdp import process_tree
from pathlib import Path
pool = Browsers(Path({tmp!r}))
browser = pool.get({name!r})
print(json.dumps(process_tree(browser.proc.pid, include_root=True)), flush=True)
sys.stdin.read()  # until killed
"""


def test_a_killed_test_process_takes_its_browser_along(browser_name, tmp_path: Path) -> None:
    """
    Pins: when the process that started a browser dies without closing it
    (SIGKILL: no finally, no atexit), every process of that browser ends
    within seconds -- the reaper hears of it (PR_SET_PDEATHSIG) and ends
    its group, and exits; the helpers in sessions of their own follow the
    browser.
    """
    here = Path(__file__).resolve().parent
    code = _ORPHAN.format(paths=[str(here), str(here.parent / "integration"), str(here.parent)],
                          tmp=str(tmp_path), name=browser_name)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        tree = {int(k): v for k, v in json.loads(child.stdout.readline()).items()}
        assert len(tree) >= 3, tree  # the reaper, the browser, its helpers
    finally:
        child.kill()
        child.wait(10)
    deadline = time.monotonic() + 15
    while still_running(tree):
        assert time.monotonic() < deadline, f"still running 15 s after the test process died: {still_running(tree)}"
        time.sleep(0.1)  # bounded wait for the processes to end


def test_the_page_interface_is_the_same_in_both(browser_name, daemon, open_page) -> None:
    """
    Pins: C{evaluate} gives the same plain Python values in both drivers
    (numbers, strings, booleans, null/undefined, nested arrays and objects,
    awaited promises, a DOM node as a truthy placeholder), a thrown error
    raises, and C{cookies()} sees a cookie the page set.
    """
    page = open_page(daemon, "alice", path="/healthz")
    cases = {
        "1 + 1": 2, "1.5": 1.5, "'ü ✓'": "ü ✓", "true": True, "null": None, "undefined": None,
        "[1, 'a', null, [false]]": [1, "a", None, [False]],
        "({a: {b: [true, 2]}, c: 'd'})": {"a": {"b": [True, 2]}, "c": "d"},
        "Promise.resolve(5)": 5, "new Promise(r => setTimeout(() => r('later'), 10))": "later",
        "document.body": {},
    }
    for expression, expected in cases.items():
        assert page.evaluate(expression) == expected, expression
    with pytest.raises(Exception, match="nope"):
        page.evaluate("(() => { throw new Error('nope'); })()")
    page.evaluate("document.cookie = 'flavour=plain; path=/', true")
    assert [(c["name"], c["value"]) for c in page.cookies() if c["name"] == "flavour"] == [("flavour", "plain")]
