"""
Start-up checks that end twistd with one line naming the file and the key.

What the INI parser cannot know -- whether a port is free, whether an
interface address is this machine's, whether the state directory can be
written -- is found out here, while L{boatwist.tap.makeService} assembles
(before twistd redirects stderr into its log), and said in one line:

    embweb: etc/embweb.ini: [server] http = 'tcp:8080': cannot listen on port 8080: address already in use

Before, each of these was a 21-35 line traceback.  A C{tcp:} listener's
socket is not only checked but kept listening (L{listen_early}): the daemon
listens before it imports and assembles the rest, and its listener adopts
the socket.  A listen that fails all the same when the service starts (an
C{ssl:} endpoint whose port another process took meanwhile) is caught by
L{OneLineListener} and said in one line too.
"""

from __future__ import annotations

import errno
import socket
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint

__all__ = ["OneLineListener", "StartupError", "check_listen", "check_state_dir", "listen_address", "listen_early",
           "parse_endpoint"]

_WHY = {
    errno.EADDRINUSE: "address already in use (another program, or another boatwist, listens there)",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "no interface of this machine has that address",
}


class StartupError(Exception):
    """A start-up problem; its message is the one line to show."""


class _Addresses:
    """
    Just enough of a reactor for an endpoint's C{listen}: it notes the port
    and interface a tcp:/ssl: endpoint asks for, and listens on nothing.
    (C{twisted.internet.testing.MemoryReactor} would do as well, but
    importing it brings in twisted.trial and doctest: 2 MB and ~10 ms at
    every start.)
    """

    def __init__(self) -> None:
        self.found: list[tuple[str, int]] = []

    def listenTCP(self, port: int, factory: object, backlog: int = 50, interface: str = "") -> None:
        self.found.append((str(interface), int(port)))

    def listenSSL(self, port: int, factory: object, contextFactory: object, backlog: int = 50,
                  interface: str = "") -> None:
        self.found.append((str(interface), int(port)))


def parse_endpoint(description: str) -> object:
    """
    C{description} parsed by Twisted's C{serverFromString} into an endpoint
    that is never listened on (it raises what Twisted raises for a bad string).
    """
    from twisted.internet.endpoints import serverFromString

    return serverFromString(_Addresses(), description)


def listen_address(description: str) -> tuple[str, int] | None:
    """
    (interface, port) a C{tcp:}/C{ssl:} endpoint string would listen on, as
    Twisted parses it (the interface is C{""} for all); None for other kinds
    or a string Twisted refuses (the INI parser has said so already).
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.protocol import Factory

    if description.split(":", 1)[0] not in ("tcp", "tcp6", "ssl"):
        return None
    reactor = _Addresses()
    try:
        serverFromString(reactor, description).listen(Factory())
    except Exception:  # Twisted raises ValueError, TypeError, OSError ...: config.check_endpoint reports it
        return None
    return reactor.found[0] if reactor.found else None


def check_listen(description: str, where: str) -> None:
    """
    Bind (and release at once) the address C{description} will listen on:
    a port in use, a privileged port, an interface address this machine
    does not have, become one StartupError naming C{where}.
    """
    sock = _bind(description, where)
    if sock is not None:
        sock.close()


def listen_early(description: str, where: str, backlog: int) -> socket.socket | None:
    """
    Listen on a C{tcp:}/C{tcp6:} endpoint now, before the rest of the
    daemon is assembled: the socket returned is listening (connections
    wait in its backlog until the reactor runs), and the listener adopts it
    (L{twisted.internet.endpoints.AdoptedStreamServerEndpoint}).  Fails as
    L{check_listen} does, with one line.  None for other kinds of endpoint
    (C{ssl:}, C{systemd:}, C{unix:}), which are checked as L{check_listen}
    does and listen when the service starts.

    Listening first means a client that connects while the daemon starts
    (a browser reloading across a restart) is answered a moment later
    instead of being refused; and nothing can take the port between the
    check and the listen.
    """
    if description.split(":", 1)[0] not in ("tcp", "tcp6"):
        check_listen(description, where)
        return None
    sock = _bind(description, where)
    if sock is None:
        return None
    try:
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise StartupError(f"{where} = {description!r}: cannot listen: {e.strerror or e}") from None
    return sock


def _bind(description: str, where: str) -> socket.socket | None:
    """A socket bound as Twisted would bind it for C{description} (None for non-TCP kinds); errors in one line."""
    address = listen_address(description)
    if address is None:
        return None
    interface, port = address
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    what = f"{where} = {description!r}: cannot listen on {f'{interface}:' if interface else 'port '}{port}"
    if not 0 <= port <= 65535:
        raise StartupError(f"{what}: a port is a number from 0 to 65535")
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise StartupError(f"{what}: {e.strerror or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Twisted does
        if family == socket.AF_INET6:
            # As Twisted resolves it: a scope (fe80::1%eth0) is kept.
            sock.bind(socket.getaddrinfo(interface, port, family, socket.SOCK_STREAM, 0,
                                         socket.AI_NUMERICHOST)[0][4])
        else:
            sock.bind((interface, port))
    except socket.gaierror:
        sock.close()
        raise StartupError(f"{what}: interface= must be an address of this machine like 127.0.0.1 or ::1, "
                           f"not {interface!r}") from None
    except (OverflowError, ValueError):
        sock.close()
        raise StartupError(f"{what}: a port is a number from 0 to 65535") from None
    except OSError as e:
        sock.close()
        raise StartupError(f"{what}: {_WHY.get(e.errno or 0, e.strerror or str(e))}") from None
    return sock


def check_state_dir(state_dir: Path, where: str) -> None:
    """
    Make C{state_dir} (and missing parents) and make sure a file can be
    written there: a file in its place, a parent that cannot be made, a
    read-only file system become one StartupError naming C{where}.
    """
    what = f"{where} = {str(state_dir)!r}"
    if state_dir.exists() and not state_dir.is_dir():
        raise StartupError(f"{what}: is a file, not a directory")
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError:
        raise StartupError(f"{what}: a part of that path is a file, not a directory") from None
    except NotADirectoryError:
        raise StartupError(f"{what}: a part of that path is a file, not a directory") from None
    except OSError as e:
        raise StartupError(f"{what}: cannot create it ({e.strerror or e})") from None
    try:
        with tempfile.TemporaryFile(dir=state_dir):
            pass
    except OSError as e:
        raise StartupError(f"{what}: cannot write there ({e.strerror or e})") from None


class OneLineListener(StreamServerEndpointService):
    """
    A listener whose failure to start ends twistd with one line.  It is
    started after twistd redirected stderr into its log: the line goes to
    the process's real stderr (and the log), and twistd exits with status 2.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, where: str) -> None:
        super().__init__(endpoint, factory)
        self.where = where
        # Private Twisted API: without it a port that cannot be bound is logged
        # and twistd runs on without it; the start must fail instead.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except Exception as e:  # CannotListenError, OSError, ...
            error = getattr(e, "socketError", None) or e
            code = getattr(error, "errno", None)
            reason = _WHY.get(code or 0) or getattr(error, "strerror", None) or str(error)
            _exit(f"{self.where}: cannot listen: {reason}")


def _exit(message: str) -> NoReturn:
    """One line on the real stderr, and exit 2 (twistd prints no traceback for SystemExit)."""
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"embweb: {message}\n")
    stream.flush()
    raise SystemExit(2)
