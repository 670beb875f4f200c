"""Fixtures shared by every kind of test that runs the real daemon; every daemon started is stopped, even on failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent / "integration"))

from daemon import Daemon  # noqa: E402


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(config: str = "", **kw) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", config=config, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon().start()
