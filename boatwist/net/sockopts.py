"""
Kernel keepalive and C{TCP_USER_TIMEOUT}, tuned on one socket, per platform.

A peer that lost power or had its cable pulled never sends a FIN, and by
default Linux notices only after hours.  L{apply_keepalive} makes it
seconds: C{SO_KEEPALIVE}, C{TCP_KEEPIDLE}/C{INTVL}/C{CNT} and
C{TCP_USER_TIMEOUT} on Linux, C{TCP_KEEPALIVE} on macOS, C{SIO_KEEPALIVE_VALS}
on Windows.  It reports what it could not set instead of raising: a device
web server must serve even where an option is missing.

Nothing here imports the reactor or keeps state at module level.
"""

from __future__ import annotations

import socket
import sys
from typing import Protocol

__all__ = ["KeepaliveOptions", "apply_keepalive"]


class KeepaliveOptions(Protocol):
    """
    What L{apply_keepalive} needs: L{boatwist.config.KeepaliveSettings} or any
    object with these attributes (read-only, so frozen dataclasses match).
    """

    @property
    def idle(self) -> int:
        """Seconds of silence before the first keepalive probe."""

    @property
    def interval(self) -> int:
        """Seconds between unanswered probes."""

    @property
    def count(self) -> int:
        """Unanswered probes after which the connection fails with ETIMEDOUT."""

    @property
    def user_timeout(self) -> float:
        """Seconds sent data may stay unacknowledged (TCP_USER_TIMEOUT); 0 = off."""



class OptionSocket(Protocol):
    """What options are set on: a C{socket.socket}, or a stand-in for one."""

    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


#: macOS's name for the keepalive idle time, from <netinet/tcp.h>; Python
#: exposes it as socket.TCP_KEEPALIVE only on some builds.
_DARWIN_TCP_KEEPALIVE = 0x10


def _constant(names: object, name: str, fallback: int | None = None) -> int | None:
    value = getattr(names, name, fallback)
    return value if isinstance(value, int) else fallback


def _set(sock: OptionSocket, names: object, failed: list[str], level_name: str, option_name: str,
         value: int, fallback: int | None = None) -> bool:
    """
    One setsockopt; a missing constant or a refusal is noted in C{failed}
    (by option name) instead of raised.
    """
    level = _constant(names, level_name)
    option = _constant(names, option_name, fallback)
    if level is None or option is None:
        failed.append(option_name)
        return False
    try:
        sock.setsockopt(level, option, value)
    except (OSError, OverflowError, ValueError, TypeError, AttributeError):
        failed.append(option_name)
        return False
    return True


def apply_keepalive(sock: OptionSocket, settings: KeepaliveOptions, platform: str | None = None,
                    *, names: object = socket) -> list[str]:
    """
    Turn on keepalive with C{settings}' timing, and C{TCP_USER_TIMEOUT}, on
    C{sock}.

    Defaults (2 h idle, then 9 probes 75 s apart) let a ghost hold a seat for
    over two hours; keepalive alone does not help while sent data is
    unacknowledged (probes are not sent then), which is what
    C{TCP_USER_TIMEOUT} bounds.

    Never raises: every option that could not be set -- its constant is
    missing on this platform or the kernel refused it -- is returned by name
    (C{"TCP_KEEPIDLE"}, C{"SIO_KEEPALIVE_VALS"}, ...), so the caller logs
    one line per listener and goes on serving.

    @param platform: a C{sys.platform} value; defaults to this one.
    @param names: where to look the option constants up; the C{socket}
        module, or a stand-in so that tests can exercise other platforms.
    """
    if platform is None:
        platform = sys.platform
    failed: list[str] = []
    _set(sock, names, failed, "SOL_SOCKET", "SO_KEEPALIVE", 1)
    if platform == "darwin":
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPALIVE", int(settings.idle),
             fallback=_DARWIN_TCP_KEEPALIVE)
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPINTVL", int(settings.interval))
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPCNT", int(settings.count))
    elif platform == "win32":
        _windows_timers(sock, settings, names, failed)
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPCNT", int(settings.count))
    else:
        # Linux, and the BSDs and others that share its option names.
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPIDLE", int(settings.idle))
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPINTVL", int(settings.interval))
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_KEEPCNT", int(settings.count))
    if settings.user_timeout > 0:
        # At least 1 ms: 0 would mean "system default", i.e. turn it off.
        milliseconds = max(1, int(settings.user_timeout * 1000))
        _set(sock, names, failed, "IPPROTO_TCP", "TCP_USER_TIMEOUT", milliseconds)
    return failed


def _windows_timers(sock: OptionSocket, settings: KeepaliveOptions, names: object, failed: list[str]) -> None:
    """
    Idle time and interval on Windows: the TCP_KEEPIDLE/TCP_KEEPINTVL options
    where this Python and Windows have them (Windows 10 1709+), otherwise
    the older SIO_KEEPALIVE_VALS ioctl, which takes milliseconds and turns
    keepalive on as well.
    """
    if _constant(names, "TCP_KEEPIDLE") is not None and _constant(names, "TCP_KEEPINTVL") is not None:
        attempt: list[str] = []
        if (_set(sock, names, attempt, "IPPROTO_TCP", "TCP_KEEPIDLE", int(settings.idle))
                and _set(sock, names, attempt, "IPPROTO_TCP", "TCP_KEEPINTVL", int(settings.interval))):
            return
    ioctl_code = _constant(names, "SIO_KEEPALIVE_VALS")
    if ioctl_code is None:
        failed.append("SIO_KEEPALIVE_VALS")
        return
    try:
        # Only Windows sockets have ioctl (typeshed too): elsewhere the AttributeError is caught below.
        sock.ioctl(ioctl_code, (1, int(settings.idle) * 1000, int(settings.interval) * 1000))  # type: ignore[attr-defined]
    except (OSError, OverflowError, ValueError, TypeError, AttributeError):
        failed.append("SIO_KEEPALIVE_VALS")

