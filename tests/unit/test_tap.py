"""Assembly details of boatwist.tap that need no running reactor."""

from __future__ import annotations

from typing import Any

import pytest

from boatwist.config import AdmissionSettings
from boatwist.tap import FD_RESERVE, fit_connection_cap


class FakeLimits:
    """A stand-in for the resource module with a settable RLIMIT_NOFILE."""

    RLIMIT_NOFILE = 7
    RLIM_INFINITY = -1

    def __init__(self, soft: int, hard: int, settable: bool = True) -> None:
        self.soft, self.hard, self.settable = soft, hard, settable

    def getrlimit(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def setrlimit(self, which: int, value: tuple[int, int]) -> None:
        if not self.settable or value[0] > self.hard:
            raise ValueError("not allowed")
        self.soft = value[0]


def test_soft_limit_is_raised_to_fit_the_cap() -> None:
    """With room under the hard limit, the soft limit is raised and the cap kept."""
    limits = FakeLimits(soft=256, hard=4096)
    admission = fit_connection_cap(AdmissionSettings(max_connections=512), limits)
    assert admission.max_connections == 512
    assert limits.soft == 512 + FD_RESERVE


def test_cap_is_lowered_below_a_hard_limit() -> None:
    """When the hard limit is too low the cap is lowered, so accept() never runs out of descriptors."""
    limits = FakeLimits(soft=200, hard=300)
    admission = fit_connection_cap(AdmissionSettings(max_connections=512, max_connections_per_address=400), limits)
    assert admission.max_connections == 300 - FD_RESERVE
    assert admission.max_connections_per_address <= admission.max_connections


def test_generous_limit_changes_nothing() -> None:
    """An unlimited or large enough limit leaves the settings as they are."""
    settings = AdmissionSettings(max_connections=512)
    assert fit_connection_cap(settings, FakeLimits(soft=-1, hard=-1)) is settings
    assert fit_connection_cap(settings, FakeLimits(soft=100000, hard=100000)) is settings


def test_systemd_endpoint_adopts_the_passed_socket() -> None:
    """systemd:domain=INET:index=N adopts fd 3+N when LISTEN_PID is ours (LISTEN_FDNAMES optional)."""
    import os
    import socket

    from twisted.internet.testing import MemoryReactor

    from boatwist.tap import systemd_endpoint

    endpoint = systemd_endpoint(MemoryReactor(), "x.ini: [server] http", "systemd:domain=INET:index=1",
                                {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid())})
    assert endpoint.fileno == 4
    assert endpoint.addressFamily == socket.AF_INET


def test_systemd_endpoint_without_a_socket_is_one_line(capsys) -> None:
    """No socket passed (the socket unit is not active): one line naming the key, exit 2."""
    import os

    import pytest
    from twisted.internet.testing import MemoryReactor

    from boatwist.tap import systemd_endpoint

    for env in ({}, {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}, {"LISTEN_FDS": "3", "LISTEN_PID": "1"}):
        with pytest.raises(SystemExit) as info:
            systemd_endpoint(MemoryReactor(), "x.ini: [server] chat", "systemd:domain=INET:index=1", env)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "x.ini: [server] chat" in err and "index 1" in err


def test_a_listener_that_fails_when_it_starts_ends_twistd_with_one_line(monkeypatch: Any) -> None:
    """
    A port taken between the start-up check and the listen (another process
    was quicker): the listener's failure is one line on the real stderr and
    exit status 2, not a traceback.
    """
    import io
    import sys

    from twisted.internet import defer
    from twisted.internet.error import CannotListenError

    from boatwist.startup import OneLineListener

    from twisted.internet.interfaces import IStreamServerEndpoint
    from twisted.internet.protocol import Factory
    from zope.interface import implementer

    @implementer(IStreamServerEndpoint)
    class Taken:
        def listen(self, factory: object) -> "defer.Deferred[object]":
            return defer.fail(CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use")))

    err = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", err)
    listener = OneLineListener(Taken(), Factory(), "etc/embweb.ini: [server] http = 'tcp:8080'")
    with pytest.raises(SystemExit) as exited:
        listener.privilegedStartService()
    assert exited.value.code == 2
    assert err.getvalue() == ("embweb: etc/embweb.ini: [server] http = 'tcp:8080': cannot listen: address already "
                              "in use (another program, or another boatwist, listens there)\n")


def test_with_backlog_only_adds_one_where_none_is_given() -> None:
    """Listeners get a backlog the flood tests need; an explicit one, and systemd or unix endpoints, are kept."""
    from boatwist.tap import with_backlog

    assert with_backlog("tcp:8080:interface=127.0.0.1", 512) == "tcp:8080:interface=127.0.0.1:backlog=512"
    assert with_backlog("tcp:8080:backlog=10", 512) == "tcp:8080:backlog=10"
    assert with_backlog("systemd:domain=INET:index=0", 512) == "systemd:domain=INET:index=0"
    assert with_backlog("unix:/run/x.sock", 512) == "unix:/run/x.sock"
