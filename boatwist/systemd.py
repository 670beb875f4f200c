"""
Tell systemd how the daemon is doing: sd_notify(3) without libsystemd.

The wire protocol (systemd's ``sd_notify(3)``, "Notes" section):

    NOTIFY_SOCKET   in the environment: an AF_UNIX path ("/run/systemd/notify")
                    or, when it starts with "@", an abstract socket name (the
                    "@" stands for a leading NUL byte).  Unset: not under
                    systemd, or the unit is not Type=notify; send nothing.
    message         one SOCK_DGRAM datagram of newline-separated VAR=VALUE
                    assignments, UTF-8, e.g. b"READY=1" or
                    b"READY=1\\nSTATUS=serving".
    READY=1         start-up is finished: listeners are up.  systemd holds
                    back units ordered After= this one until then, and starts
                    the watchdog only from then.
    STOPPING=1      shutdown has begun.
    WATCHDOG=1      still alive; must come at least every WATCHDOG_USEC
                    microseconds, else systemd kills (SIGABRT) and, with
                    Restart=on-failure, restarts the service.
    STATUS=text     one line shown by ``systemctl status``.
    WATCHDOG_USEC   in the environment: the watchdog period; WATCHDOG_PID, if
                    set, names the process it is meant for (a child that
                    inherited the environment must not ping for its parent).

Why not libsystemd: it is one more native dependency for a few lines of
socket code, and embedded images often lack it.  Why never raise: telling
systemd is a courtesy of a running server, never a reason to stop one.  The
socket is non-blocking, so a full receive queue costs a dropped datagram
(a ``False``), never a stalled reactor.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["Notifier", "SystemdNotifyService"]


class Notifier:
    """
    Sends sd_notify messages to the socket named by C{NOTIFY_SOCKET} in
    C{environ}; does nothing (and says so with C{False}) without one.

    The environment is passed in, not read from C{os.environ}, so tests (and
    a daemon that wants to scrub its environment before spawning anything)
    decide what it sees.
    """

    _log = Logger()

    def __init__(self, environ: Mapping[str, str], pid: int | None = None) -> None:
        """
        @param environ: usually C{os.environ}.
        @param pid: this process's id, for C{WATCHDOG_PID}; C{os.getpid()}
            by default.
        """
        self._pid = os.getpid() if pid is None else pid
        self._address = self._parse_address(environ.get("NOTIFY_SOCKET", ""))
        self._watchdog_interval = self._parse_watchdog(environ, self._pid)
        self._socket: socket.socket | None = None
        self._failure_logged = False

    def __repr__(self) -> str:
        return f"<Notifier {self._address!r}>" if self._address else "<Notifier disabled>"

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify, i.e. we run under systemd as Type=notify."""
        return self._address is not None

    def notify(self, state: str) -> bool:
        """
        Send C{state} (newline-separated C{VAR=VALUE} assignments) in one
        datagram.  True if it was handed to the kernel; False if disabled or
        it failed.  Never raises; the first failure is logged, later ones are
        not, because the heartbeat pings the watchdog every second and one
        broken socket must not fill the journal.
        """
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._socket.sendto(state.encode("utf-8"), self._address)
        except (OSError, ValueError) as e:
            if not self._failure_logged:
                self._failure_logged = True
                self._log.warn(
                    "Cannot notify systemd at {address!r}: {error} (not repeated)",
                    address=self._printable_address(),
                    error=e,
                )
            return False
        return True

    def ready(self) -> bool:
        """C{READY=1}: the listeners are up; see L{SystemdNotifyService}."""
        return self.notify("READY=1")

    def stopping(self) -> bool:
        """C{STOPPING=1}: shutdown has begun, so systemd does not report a crash."""
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        """C{WATCHDOG=1}: the reactor is still turning.  Send at least every L{watchdog_interval} / 2."""
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """C{STATUS=text}, made one line: a newline would start a new assignment."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog_interval(self) -> float | None:
        """
        Seconds within which systemd expects C{WATCHDOG=1}, or None when no
        watchdog applies to this process (no C{WATCHDOG_USEC}, a malformed
        one, or C{WATCHDOG_PID} naming another process).  As C{sd_watchdog_enabled(3)}
        advises, ping at half this interval.
        """
        return self._watchdog_interval

    def close(self) -> None:
        """Close the socket (it is reopened if needed)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # ------------------------------------------------------------ parsing

    def _parse_address(self, value: str) -> str | None:
        if not value:
            return None
        if value.startswith("@"):
            return "\0" + value[1:]
        if value.startswith("/"):
            return value
        # e.g. "vsock:2:1234" (systemd 254+, for VMs): not for a device web server.
        self._log.warn("Ignoring NOTIFY_SOCKET={value!r}: only paths and @abstract names are supported", value=value)
        return None

    def _printable_address(self) -> str:
        address = self._address or ""
        return "@" + address[1:] if address.startswith("\0") else address

    def _parse_watchdog(self, environ: Mapping[str, str], pid: int) -> float | None:
        raw_usec = environ.get("WATCHDOG_USEC", "")
        if not raw_usec:
            return None
        raw_pid = environ.get("WATCHDOG_PID", "")
        try:
            usec = int(raw_usec, 10)
            meant_for = int(raw_pid, 10) if raw_pid else pid
        except ValueError:
            self._log.warn(
                "Ignoring a malformed watchdog setting WATCHDOG_USEC={usec!r} WATCHDOG_PID={pid!r}",
                usec=raw_usec,
                pid=raw_pid,
            )
            return None
        if usec <= 0 or meant_for != pid:
            return None
        return usec / 1_000_000


class SystemdNotifyService(Service):
    """
    Sends C{READY=1} when started and C{STOPPING=1} when stopped.

    Add it to the daemon's C{MultiService} as its B{last} child.  A
    C{MultiService} starts its children in the order they were added, and a
    C{StreamServerEndpointService} is listening (the socket bound, or the
    systemd one adopted) when its C{startService} returns, so when this
    service starts every listener before it is up, and C{READY=1} tells the
    truth.  If a listener fails to start, C{startService} stops at it, this
    service never starts, no C{READY=1} is sent, and systemd fails the start
    after C{TimeoutStartSec}: a server that cannot listen is not ready.
    Children are stopped in reverse order, so C{STOPPING=1} goes out first,
    while the listeners are still closing.
    """

    def __init__(self, notifier: Notifier, status: str = "") -> None:
        """
        @param status: if given, sent as C{STATUS=} with C{READY=1}, in the
            same datagram, for ``systemctl status`` to show.
        """
        self.setName("systemd-notify")
        self._notifier = notifier
        self._status = " ".join(status.splitlines())

    def startService(self) -> None:
        super().startService()
        self._notifier.notify("READY=1" + (f"\nSTATUS={self._status}" if self._status else ""))

    def stopService(self) -> None:
        self._notifier.stopping()
        super().stopService()
