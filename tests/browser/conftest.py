"""
pytest glue for the browser tests: headless Chromium, driven over the Chrome
DevTools Protocol (``cdp.py``), against the real daemon (``twistd``).

* Every test in this directory is marked ``browser`` (registered in
  pyproject.toml).  It needs Chromium (``chromium``, ``chromium-browser`` or
  ``google-chrome`` on PATH, or the path in ``BOATWIST_CHROMIUM``).  Without
  it the test is skipped, unless the environment variable ``CI`` is set (to
  anything but "", "0", "false", "no"): then it fails, because CI installs
  Chromium (``.ci/run``) and must run these.
* ``make_daemon`` / ``daemon``: the real daemon on 127.0.0.1 free ports with
  users alice and bob, stopped however the test ends (as in
  tests/integration).
* ``chromium``: a fresh headless Chromium per test, killed (its whole
  process group) however the test ends.
* ``open_page(daemon, user)``: a tab in a fresh browser context that answers
  the server's 401 with C{user}'s password and has loaded the UI.  When the
  test fails, what the page logged, its requests, a screenshot and the
  daemon's log are printed / saved for the report.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "integration"))
sys.path.insert(0, str(_HERE))

from cdp import Chromium, Page  # noqa: E402
from daemon import Daemon  # noqa: E402

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def ci_requires_browser() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def chromium_binary() -> str | None:
    explicit = os.environ.get("BOATWIST_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.browser)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("browser") is None:
        return
    if chromium_binary() is not None:
        return
    where = os.environ.get("BOATWIST_CHROMIUM") or " / ".join(_CANDIDATES)
    if ci_requires_browser():
        pytest.fail(f"browser test cannot run: no Chromium ({where}). CI is set, and CI must run the "
                    f"browser tests: install the Debian package chromium (.ci/run does).", pytrace=False)
    pytest.skip(f"browser: no Chromium ({where})")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    setattr(item, f"_browser_rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(getattr(getattr(request.node, f"_browser_rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    binary = chromium_binary()
    assert binary is not None  # pytest_runtest_setup skipped or failed otherwise
    browser = Chromium(binary, tmp_path / "chromium-profile")
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def open_page(chromium: Chromium, request: pytest.FixtureRequest,
              tmp_path: Path) -> Iterator[Callable[..., Page]]:
    opened: list[tuple[Page, Daemon]] = []

    def open_(daemon: Daemon, user: str = "alice", path: str = "/") -> Page:
        assert chromium.cdp is not None
        page = Page(chromium.cdp, (user, daemon.users[user]))
        opened.append((page, daemon))
        page.navigate(daemon.url + path)
        return page

    yield open_
    for i, (page, daemon) in enumerate(opened):
        if _failed(request):
            try:
                page.screenshot(tmp_path / f"failure-{i}.png")
            except Exception as e:  # diagnostics only
                print(f"no failure screenshot: {e!r}")
            print(f"--- page {i}: problems\n" + "\n".join(page.problems()))
            print(f"--- page {i}: requests\n" + "\n".join(page.requests))
            print(f"--- page {i}: auth challenges {page.auth_challenges}; blocked {page.blocked}")
            print(f"--- daemon log (tail)\n{daemon.log_text()[-4000:]}")
            print(f"--- chromium log (tail)\n{chromium.log_text()[-2000:]}")
        page.close()
