"""
pytest glue for the browser tests: headless Chromium (Chrome DevTools
Protocol, ``cdp.py``) and headless Firefox ESR (WebDriver BiDi,
``bidi.py``) against the real daemon (``twistd``).  Both answer the
server's 401 like a person typing into the login dialog.

* Every test in this directory is marked ``browser`` (registered in
  pyproject.toml).
* ``browser_name``: a test that uses it -- directly, or through
  ``browser`` or ``open_page`` -- runs once per browser: ``[chromium]`` and
  ``[firefox]``.  ``@pytest.mark.browsers("firefox")`` limits that list;
  ``@pytest.mark.browsers("mixed")`` runs the test once, and then every
  ``open_page`` call names its browser (two operators in two browsers).
* A browser that is not installed skips the tests that need it -- unless
  the environment variable ``CI`` is set (to anything but "", "0",
  "false", "no"): then they fail, because CI installs both (``.ci/run``).
  ``BOATWIST_CHROMIUM`` / ``BOATWIST_FIREFOX`` name a binary explicitly.
* ``make_daemon`` / ``daemon``: the real daemon on 127.0.0.1 free ports with
  users alice and bob, stopped however the test ends (tests/conftest.py).
* ``browsers``: each browser started at most once per test, on first use
  (``browsers.get("firefox")``), with a fresh profile; its whole process
  group killed and its profile removed however the test ends.
  ``browser``: the one ``browser_name`` names.  ``chromium``: Chromium.
* ``open_page(daemon, user="alice", path="/", browser=None,
  credentials=DEFAULT, width=1280, height=900, color_scheme=None)``: a tab in a fresh browser
  context (own cookies and HTTP auth cache) that answers the server's 401
  with C{user}'s password (C{credentials} overrides; None = Cancel) and has
  loaded C{path} (None: loads nothing); C{color_scheme} "dark" or "light"
  makes its pages prefer that scheme (Chromium: emulated per page;
  Firefox: a second Firefox with the preference).  When the test fails, each page's
  screenshot is saved as ``failure-N-BROWSER.png`` in the test's tmp dir and
  what it logged, its requests and challenges, the daemon's log and the
  browser's log are printed for the report.
* ``auth_probe(accounts, challenges, ...)``: a started L{authprobe.AuthProbe}
  (a small server that records exactly what the browser sends for HTTP
  authentication), stopped at the end.  Its C{url} serves C{open_page}
  like a daemon does: C{open_page(probe, "alice")} works when C{accounts}
  has alice.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "integration"))
sys.path.insert(0, str(_HERE))

import bidi  # noqa: E402
import cdp  # noqa: E402
from authprobe import AuthProbe  # noqa: E402
from cdp import Chromium  # noqa: E402
from pagebase import PageBase  # noqa: E402

BROWSERS = ("chromium", "firefox")
_CANDIDATES = {
    "chromium": ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"),
    "firefox": ("firefox-esr", "firefox"),
}
_ENV = {"chromium": "BOATWIST_CHROMIUM", "firefox": "BOATWIST_FIREFOX"}
_PACKAGE = {"chromium": "chromium", "firefox": "firefox-esr"}
_DEFAULT: Any = object()


def ci_requires_browser() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def browser_binary(name: str) -> str | None:
    explicit = os.environ.get(_ENV[name])
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for candidate in _CANDIDATES[name]:
        found = shutil.which(candidate)
        if found:
            return found
    return None


def chromium_binary() -> str | None:
    return browser_binary("chromium")


def _require(name: str) -> str:
    """The binary of browser C{name}, or skip (fail under CI) the test."""
    binary = browser_binary(name)
    if binary is not None:
        return binary
    where = os.environ.get(_ENV[name]) or " / ".join(_CANDIDATES[name])
    if ci_requires_browser():
        pytest.fail(f"browser test cannot run: no {name} ({where}). CI is set, and CI must run the browser "
                    f"tests: install the Debian package {_PACKAGE[name]} (.ci/run does).", pytrace=False)
    pytest.skip(f"browser: no {name} ({where})")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "browser_name" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("browsers")
    names = tuple(marker.args) if marker is not None else BROWSERS
    unknown = [n for n in names if n not in BROWSERS + ("mixed",)]
    if unknown or not names:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: browsers{names}: expected some of {BROWSERS} or 'mixed'")
    metafunc.parametrize("browser_name", names, ids=list(names), scope="function")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is None:
        return
    callspec = getattr(item, "callspec", None)
    name = callspec.params.get("browser_name") if callspec is not None else None
    needed = BROWSERS if name == "mixed" else (name,) if name else ("chromium",)
    for browser in needed:
        _require(browser)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    setattr(item, f"_browser_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"_browser_rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


#: Firefox preferences that set the page's colour scheme (prefers-color-scheme) whatever the system's:
#: 0 dark, 1 light.  WebDriver BiDi has no command for it; Chromium has Emulation.setEmulatedMedia.
FIREFOX_COLOR_SCHEME = {"dark": 0, "light": 1}


class Browsers:
    """The browsers of one test: each started on first use, all closed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: dict[str, Any] = {}

    def get(self, name: str, color_scheme: str | None = None) -> Any:
        """
        The running browser C{name}.  A Firefox whose pages must prefer
        C{color_scheme} is a second Firefox, started with the preference
        that says so (its own profile and HOME); Chromium sets it per page.
        """
        if name not in BROWSERS:
            raise ValueError(f"unknown browser {name!r} (expected one of {BROWSERS})")
        key = name if name == "chromium" or color_scheme is None else f"{name}-{color_scheme}"
        if key not in self.running:
            binary = _require(name)
            if name == "chromium":
                self.running[key] = Chromium(binary, self.tmp_path / "chromium-profile")
            elif color_scheme is None:
                self.running[key] = bidi.Firefox(binary, self.tmp_path / "firefox-profile")
            else:
                prefs = {"layout.css.prefers-color-scheme.content-override": FIREFOX_COLOR_SCHEME[color_scheme]}
                self.running[key] = bidi.Firefox(binary, self.tmp_path / key / "firefox-profile", prefs=prefs)
        return self.running[key]

    def new_page(self, name: str, credentials: tuple[str, str] | None, color_scheme: str | None = None,
                 **kw: Any) -> PageBase:
        browser = self.get(name, color_scheme)
        if name == "chromium":
            assert browser.cdp is not None
            page = cdp.Page(browser.cdp, credentials, **kw)
            if color_scheme is not None:
                page.call("Emulation.setEmulatedMedia",
                          {"features": [{"name": "prefers-color-scheme", "value": color_scheme}]})
            return page
        assert browser.bidi is not None
        return bidi.Page(browser.bidi, credentials, **kw)

    def close(self) -> None:
        errors = []
        for browser in self.running.values():
            try:
                browser.close()
            except Exception as e:  # close the others anyway
                errors.append(e)
        self.running.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[Browsers]:
    pool = Browsers(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def browser(browsers: Browsers, browser_name: str) -> Any:
    if browser_name == "mixed":
        raise pytest.UsageError("a 'mixed' browser test names the browser of each page; there is no one browser")
    return browsers.get(browser_name)


@pytest.fixture
def chromium(browsers: Browsers) -> Chromium:
    return browsers.get("chromium")


@pytest.fixture
def open_page(browsers: Browsers, browser_name: str, request: pytest.FixtureRequest,
              tmp_path: Path) -> Iterator[Callable[..., Any]]:
    opened: list[tuple[PageBase, Any]] = []

    def open_(daemon: Any, user: str = "alice", path: str | None = "/", browser: str | None = None,
              credentials: Any = _DEFAULT, **kw: Any) -> Any:
        name = browser or browser_name
        if name == "mixed":
            raise pytest.UsageError("in a 'mixed' browser test, open_page(..., browser=NAME)")
        if credentials is _DEFAULT:
            users = getattr(daemon, "users", None) or getattr(daemon, "accounts")
            credentials = (user, users[user])
        page = browsers.new_page(name, credentials, **kw)
        opened.append((page, daemon))
        if path is not None:
            page.navigate(daemon.url + path)
        return page

    yield open_
    failed = _failed(request)
    for i, (page, daemon) in enumerate(opened):
        if failed:
            shot = tmp_path / f"failure-{i}-{page.browser}.png"
            try:
                page.screenshot(shot)
                print(f"failure screenshot: {shot}")
            except Exception as e:  # diagnostics only
                print(f"no failure screenshot: {e!r}")
            print(f"--- page {i} ({page.browser}): problems\n" + "\n".join(page.problems()))
            print(f"--- page {i}: requests\n" + "\n".join(page.requests))
            print(f"--- page {i}: auth challenges {page.auth_challenges}; blocked {page.blocked}")
        try:
            page.close()
        except Exception as e:  # the browser may be gone; it is killed anyway
            print(f"page {i} close: {e!r}")
    if failed:
        for daemon in {id(d): d for _p, d in opened}.values():
            if hasattr(daemon, "log_text"):
                print(f"--- daemon log (tail)\n{daemon.log_text()[-4000:]}")
            else:
                print("--- server saw\n" + "\n".join(map(repr, daemon.seen())))
        for name, running in browsers.running.items():
            print(f"--- {name} log (tail)\n{running.log_text()[-2000:]}")


@pytest.fixture
def auth_probe() -> Iterator[Callable[..., AuthProbe]]:
    started: list[AuthProbe] = []

    def make(accounts: dict[str, str], challenges: list[str] | None = None, **kw: Any) -> AuthProbe:
        probe = AuthProbe(accounts, challenges, **kw).start()
        started.append(probe)
        return probe

    yield make
    for probe in started:
        probe.stop()
