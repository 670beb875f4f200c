"""
Tests for boatwist.systemd against real AF_UNIX datagram sockets: one bound
to a path in a temporary directory, one in the abstract namespace, both
standing in for systemd's notify socket.

A datagram sent on a Unix socket is in the receiver's queue when sendto()
returns, so every receive below finds its datagram at once; the socket
timeout only bounds a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

from twisted.application.service import MultiService, Service
from twisted.logger import Logger, LogEvent, formatEvent
from twisted.trial.unittest import TestCase

from boatwist.systemd import Notifier, SystemdNotifyService


def fresh_path(case: TestCase) -> Path:
    """
    A path that does not exist yet, inside a temporary directory removed
    after the test.  (TestCase.mktemp would put it under the working
    directory, i.e. the source tree, when pytest runs the tests.)
    """
    directory = Path(tempfile.mkdtemp(prefix="boatwist-test-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory / "new"


class _FakeSystemd:
    """A bound SOCK_DGRAM socket that collects what the Notifier sends."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def receive(self) -> bytes:
        return self.sock.recv(4096)

    def pending(self) -> list[bytes]:
        """Every datagram already queued, without waiting for more."""
        received = []
        self.sock.setblocking(False)
        try:
            while True:
                received.append(self.sock.recv(4096))
        except BlockingIOError:
            return received
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


class _Case(TestCase):
    def path_socket(self) -> tuple[_FakeSystemd, dict[str, str]]:
        directory = fresh_path(self)
        directory.mkdir(parents=True)
        path = str((directory / "notify").absolute())
        fake = _FakeSystemd(path)
        self.addCleanup(fake.close)
        return fake, {"NOTIFY_SOCKET": path}

    def abstract_socket(self) -> tuple[_FakeSystemd, dict[str, str]]:
        name = f"boatwist-test-{uuid.uuid4().hex}"
        fake = _FakeSystemd("\0" + name)
        self.addCleanup(fake.close)
        return fake, {"NOTIFY_SOCKET": "@" + name}

    def notifier(self, environ: dict[str, str], pid: int | None = None) -> Notifier:
        notifier = Notifier(environ, pid=pid)
        self.addCleanup(notifier.close)
        return notifier


class NotifyTests(_Case):
    """Notifier: what goes on the wire, and when nothing does."""

    def test_path_socket_receives_messages(self) -> None:
        """READY=1, WATCHDOG=1 and STOPPING=1 arrive, one datagram each, on a path socket."""
        fake, environ = self.path_socket()
        notifier = self.notifier(environ)
        self.assertTrue(notifier.enabled)
        self.assertTrue(notifier.ready())
        self.assertTrue(notifier.watchdog())
        self.assertTrue(notifier.stopping())
        self.assertEqual([fake.receive() for _ in range(3)], [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"])

    def test_abstract_socket(self) -> None:
        """A NOTIFY_SOCKET starting with '@' names an abstract socket (leading NUL), as systemd uses."""
        fake, environ = self.abstract_socket()
        notifier = self.notifier(environ)
        self.assertTrue(notifier.ready())
        self.assertEqual(fake.receive(), b"READY=1")

    def test_status_is_one_line(self) -> None:
        """STATUS text with newlines is sent as one line, so it cannot inject other assignments."""
        fake, environ = self.path_socket()
        self.notifier(environ).status("serving\nREADY=1")
        self.assertEqual(fake.receive(), b"STATUS=serving READY=1")

    def test_status_utf8(self) -> None:
        """Non-ASCII status text is sent as UTF-8."""
        fake, environ = self.path_socket()
        self.notifier(environ).status("3 opérateurs")
        self.assertEqual(fake.receive(), "STATUS=3 opérateurs".encode())

    def test_no_notify_socket_does_nothing(self) -> None:
        """Without NOTIFY_SOCKET (not under systemd) nothing is sent, nothing is opened, False is returned."""
        notifier = self.notifier({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.watchdog())
        self.assertFalse(notifier.stopping())
        self.assertIsNone(notifier._socket)

    def test_unsupported_address_disabled(self) -> None:
        """A NOTIFY_SOCKET that is neither a path nor '@name' (e.g. vsock:) disables notification."""
        notifier = self.notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.ready())

    def test_failure_returns_false_and_logs_once(self) -> None:
        """
        A NOTIFY_SOCKET nobody listens on makes notify() return False without
        raising, and only the first failure is logged (the watchdog ping
        repeats every second).
        """
        directory = fresh_path(self)
        directory.mkdir()
        notifier = self.notifier({"NOTIFY_SOCKET": str(directory.absolute() / "gone")})
        events: list[LogEvent] = []
        notifier._log = Logger(observer=events.append)
        self.assertFalse(notifier.ready())
        self.assertFalse(notifier.watchdog())
        self.assertFalse(notifier.watchdog())
        self.assertEqual(len(events), 1)
        self.assertIn("gone", formatEvent(events[0]))

    def test_recovers_when_socket_appears(self) -> None:
        """A failure is not sticky: once the socket exists, the next message gets through."""
        directory = fresh_path(self)
        directory.mkdir()
        path = str(directory.absolute() / "notify")
        notifier = self.notifier({"NOTIFY_SOCKET": path})
        notifier._log = Logger(observer=lambda event: None)
        self.assertFalse(notifier.watchdog())
        fake = _FakeSystemd(path)
        self.addCleanup(fake.close)
        self.assertTrue(notifier.watchdog())
        self.assertEqual(fake.receive(), b"WATCHDOG=1")


class WatchdogIntervalTests(_Case):
    """watchdog_interval(): WATCHDOG_USEC and WATCHDOG_PID as sd_watchdog_enabled(3) reads them."""

    def test_usec_to_seconds(self) -> None:
        """WATCHDOG_USEC=10000000 (WatchdogSec=10) is 10.0 seconds."""
        self.assertEqual(Notifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval(), 10.0)

    def test_absent(self) -> None:
        """No WATCHDOG_USEC: no watchdog."""
        self.assertIsNone(Notifier({}).watchdog_interval())

    def test_pid_matches(self) -> None:
        """WATCHDOG_PID equal to our pid: the watchdog is ours."""
        environ = {"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "4242"}
        self.assertEqual(Notifier(environ, pid=4242).watchdog_interval(), 2.5)

    def test_pid_mismatch(self) -> None:
        """WATCHDOG_PID naming another process (we inherited its environment): not ours, None."""
        environ = {"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": "4242"}
        self.assertIsNone(Notifier(environ, pid=4243).watchdog_interval())

    def test_default_pid_is_ours(self) -> None:
        """Without an explicit pid the Notifier compares WATCHDOG_PID with os.getpid()."""
        environ = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        self.assertEqual(Notifier(environ).watchdog_interval(), 1.0)

    def test_malformed_or_zero(self) -> None:
        """Zero, negative and non-numeric values mean no watchdog, not a crash."""
        for environ in (
            {"WATCHDOG_USEC": "0"},
            {"WATCHDOG_USEC": "-5"},
            {"WATCHDOG_USEC": "ten"},
            {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "me"},
        ):
            notifier = Notifier(environ)
            notifier._log = Logger(observer=lambda event: None)
            self.assertIsNone(notifier.watchdog_interval(), environ)


class _Listener(Service):
    """Stands in for a StreamServerEndpointService: records what systemd had heard when it started/stopped."""

    def __init__(self, fake: _FakeSystemd, seen: list[tuple[str, list[bytes]]]) -> None:
        self._fake = fake
        self._seen = seen

    def startService(self) -> None:
        super().startService()
        self._seen.append(("listener started", self._fake.pending()))

    def stopService(self) -> None:
        self._seen.append(("listener stopped", self._fake.pending()))
        super().stopService()


class ServiceTests(_Case):
    """SystemdNotifyService: READY=1 after the listeners, STOPPING=1 before they close."""

    def test_ready_after_listeners_stopping_before(self) -> None:
        """
        Added as the last child, the service sends READY=1 only after the
        listener started, and STOPPING=1 before the listener stops.
        """
        fake, environ = self.path_socket()
        seen: list[tuple[str, list[bytes]]] = []
        parent = MultiService()
        _Listener(fake, seen).setServiceParent(parent)
        SystemdNotifyService(self.notifier(environ)).setServiceParent(parent)

        parent.startService()
        self.assertEqual(seen, [("listener started", [])])
        self.assertEqual(fake.pending(), [b"READY=1"])

        parent.stopService()
        self.assertEqual(seen[1:], [("listener stopped", [b"STOPPING=1"])])

    def test_ready_with_status(self) -> None:
        """A status given to the service goes out with READY=1 in the same datagram."""
        fake, environ = self.path_socket()
        service = SystemdNotifyService(self.notifier(environ), status="serving https on :8443")
        service.startService()
        self.assertEqual(fake.receive(), b"READY=1\nSTATUS=serving https on :8443")
        self.assertTrue(service.running)

    def test_not_under_systemd(self) -> None:
        """Without NOTIFY_SOCKET the service starts and stops quietly."""
        service = SystemdNotifyService(self.notifier({}))
        service.startService()
        service.stopService()
        self.assertFalse(service.running)
