"""pytest glue for the netns lab (``lab.py``).

* Every test in this directory is marked ``netns`` (registered in
  pyproject.toml).  A ``netns`` test needs root and ``ip``.  Without them it
  is skipped, unless the environment variable ``CI`` is set (to anything but
  "", "0", "false", "no"): then it fails, because CI must run these.
* ``lab``: a started ``Lab`` per test, torn down (processes killed,
  namespaces deleted) however the test ends.
* Once per session, before the first netns test: namespaces left by runs
  that died (owner pid gone) are swept; SIGTERM/SIGHUP are turned into
  KeyboardInterrupt so an interrupted run still tears its labs down; at the
  end any lab still open is closed (``lab.py`` also registers ``atexit``).
* ``netns_report(text)``: a figure worth seeing (a measured latency) is
  printed in a "netns lab measurements" section of the terminal summary.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from .lab import Lab, close_all, requirements_missing, sweep_stale

_HERE = Path(__file__).resolve().parent
_REPORT_KEY = pytest.StashKey[list]()


def ci_requires_netns() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.netns)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") is None:
        return
    reason = requirements_missing()
    if reason is None:
        return
    if ci_requires_netns():
        pytest.fail(f"netns test cannot run: {reason}. CI is set, and CI must run the "
                    f"netns tests: run them as root with iproute2 installed.", pytrace=False)
    pytest.skip(f"netns: {reason}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}: tearing netns labs down")


@pytest.fixture(scope="session", autouse=True)
def _netns_session() -> Iterator[None]:
    if requirements_missing() is not None:
        yield
        return
    sweep_stale()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is signal.SIG_DFL:
                previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        problems = close_all()
        if problems:
            raise RuntimeError("netns labs left open at session end: " + "; ".join(problems))


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A started three-namespace lab (server, client, switch); see lab.py."""
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def netns_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``netns_report(text)``: print and keep a figure for the terminal summary."""
    store = request.config.stash.setdefault(_REPORT_KEY, [])

    def report(text: str) -> None:
        print(text)
        store.append((request.node.nodeid, text))

    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_REPORT_KEY, [])
    if lines:
        terminalreporter.section("netns lab measurements")
        for nodeid, text in lines:
            terminalreporter.write_line(f"{nodeid}: {text}")
