"""Fixtures that start the real daemon; every process started is stopped, even on failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from daemon import Daemon  # noqa: E402


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator:
    started: list[Daemon] = []

    def make(config: str = "", **kw) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", config=config, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon().start()
