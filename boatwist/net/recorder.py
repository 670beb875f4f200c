"""
Why a connection ended, caught on the way: the errno Twisted swallows.

Twisted swallows the errno of a failed C{recv}/C{send} and closes the
socket before C{connectionLost} runs, so without help a reset, a keepalive
timeout and a clean close all look the same to the application.
L{install_recorder} puts a thin proxy (L{RecordingSocket}) in front of a
connection's socket that notes the first real error, and C{SO_ERROR} and
C{TCP_INFO} just before the socket is closed, into a L{SocketRecord}.

L{find_socket} / L{find_tcp_transport} find the real socket under whatever a
protocol's C{transport} is (a C{tcp.Server}, a C{ProtocolWrapper}, a TLS
layer; test transports have none).
"""

from __future__ import annotations

import errno as _errno
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from boatwist.net.tcpinfo import TCP_CLOSE, TcpInfo, read_tcp_info
from boatwist.reasons import Reason

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer
    from twisted.internet.tcp import Connection

__all__ = ["RecordingSocket", "SocketRecord", "find_socket", "find_tcp_transport", "install_recorder"]



#: Enough for ProtocolWrapper over TLS over a wrapper over TCP, with room;
#: bounds the walk on objects whose attributes never end (mocks).
_MAX_DEPTH = 16


def _looks_like_socket(candidate: object) -> bool:
    return callable(getattr(candidate, "getsockopt", None)) and callable(getattr(candidate, "fileno", None))


def find_tcp_transport(transport: object) -> Connection | None:
    """
    The object under C{transport} that owns the connection's socket (a
    C{twisted.internet.tcp.Connection}: C{tcp.Server} or C{tcp.Client}),
    or L{None} if there is none (C{StringTransport} in tests, a connection
    already closed).

    Walks down C{.transport} links: C{ProtocolWrapper} and
    C{TLSMemoryBIOProtocol} keep the next layer there.  Under TLS,
    C{getHandle()} is the OpenSSL connection, not a socket, so it is not
    used.  The owner is the first object holding C{socket} as an instance
    attribute, as C{tcp.Connection} does; Twisted's C{startTLS} layer
    (C{_BypassTLS}) only forwards attribute reads, so the walk follows its
    C{_connection} to the real owner.
    """
    current: object = transport
    for _ in range(_MAX_DEPTH):
        if current is None:
            return None
        candidate = _own(current, "socket")
        if candidate is not None and _looks_like_socket(candidate):
            return cast("Connection", current)
        following = _own(current, "_connection")
        current = following if following is not None else getattr(current, "transport", None)
    return None


def _own(obj: object, name: str) -> object | None:
    """
    C{obj}'s own attribute C{name} (or its class's), never one a
    C{__getattr__} forwards from another object (as C{_BypassTLS} does).
    Read without touching C{obj.__dict__}: on Python 3.11+ that makes a
    real dict of the instance's attributes, which then stays -- 64 bytes
    and more for every connection this walks.
    """
    try:
        return object.__getattribute__(obj, name)
    except AttributeError:
        return None


def find_socket(transport: object) -> socket.socket | None:
    """
    The kernel socket under C{transport} (see L{find_tcp_transport}), for
    C{setsockopt}/C{getsockopt}; L{None} if there is none.

    If a L{RecordingSocket} is installed, the socket behind it is returned:
    options and C{TCP_INFO} need no recording, and the heartbeat's reads
    then cost no delegation.
    """
    owner = find_tcp_transport(transport)
    if owner is None:
        return None
    found = owner.socket
    if isinstance(found, RecordingSocket):
        found = found.wrapped
    return found


# ------------------------------------------------- why a connection ended

#: Errors that only mean "not now": Twisted retries, the connection lives.
_TRANSIENT = frozenset({_errno.EAGAIN, _errno.EWOULDBLOCK, _errno.EINTR, _errno.ENOBUFS})

#: The peer stopped answering.  Linux reports a keepalive or user timeout as
#: ETIMEDOUT, or as the last ICMP error seen on the way (sk_err_soft: an
#: unreachable host or network) if there was one; on an established
#: connection those errors surface only through such a timeout.
_TIMEOUT_ERRORS = frozenset(
    code for code in (
        _errno.ETIMEDOUT,
        _errno.EHOSTUNREACH,
        _errno.ENETUNREACH,
        getattr(_errno, "EHOSTDOWN", None),
        getattr(_errno, "ENONET", None),
    ) if code is not None
)


@dataclass(slots=True, eq=False)
class SocketRecord:
    """
    What L{RecordingSocket} saw of one connection: enough to tell users why
    it ended (L{cause}).  Compared and hashed by identity, as the socket that
    a L{RecordingSocket} stands in for is.
    """

    #: The first real error of recv/send/recv_into/sendmsg (not EAGAIN &c).
    errno: int | None = None
    #: SO_ERROR read just before the first shutdown()/close(): an error the
    #: kernel had pending that no recv/send picked up (Twisted does not read
    #: while paused, and on POLLHUP without POLLIN it closes without reading).
    so_error: int | None = None
    #: TCP_INFO read just before the first shutdown()/close().
    final_info: TcpInfo | None = None
    #: Whether that final snapshot has been taken.
    finished: bool = False

    @property
    def error_name(self) -> str | None:
        """C{"ECONNRESET"}, ... for the log: the error L{cause} is based on."""
        code = self.errno or self.so_error
        if not code:
            return None
        return _errno.errorcode.get(code, str(code))

    def cause(self) -> Reason:
        """
        Why the connection ended, as users are told: C{keepalive-timeout}
        (the peer stopped answering: keepalive or user timeout),
        C{reset} (the peer aborted, or any other error), or C{closed}.
        """
        code = self.errno or self.so_error
        if code:
            return Reason.KEEPALIVE_TIMEOUT if code in _TIMEOUT_ERRORS else Reason.RESET
        info = self.final_info
        if info is not None and info.state == TCP_CLOSE and (info.probes or info.retransmits):
            # The kernel gave up on the peer and something else consumed the
            # error.  Checked on Linux 6.18 (two network namespaces, cable
            # "pulled"): keepalive 1/1/2 leaves state CLOSE with probes=2,
            # TCP_USER_TIMEOUT leaves retransmits=3; a clean close leaves both 0.
            return Reason.KEEPALIVE_TIMEOUT
        return Reason.CLOSED


#: The attributes a RecordingSocket has itself (never looked up on the socket it wraps).
_OWN = frozenset(("wrapped", "errno", "so_error", "final_info", "finished"))


class RecordingSocket(SocketRecord):
    """
    A stand-in for a connection's socket that notes the errno Twisted
    swallows and the socket's last state before it is closed: it is its own
    L{SocketRecord} (one object per connection, not two: issue 13, memory
    per idle connection).

    Everything else is delegated (C{__getattr__}).  The data path costs one
    extra Python call: C{recv}/C{send} are plain forwarding methods, the
    C{try} is free until an error is raised, and the error is noted inline
    and re-raised unchanged (measured on x86-64: about +0.3 us per call,
    +0.6 us when an error such as EAGAIN passes through).  The socket's
    bound methods are not kept: 144 bytes per connection for a saving
    too small to measure (Python 3.11 calls C{self.wrapped.recv(...)}
    without making a bound method).
    """

    __slots__ = ("wrapped",)

    def __init__(self, wrapped: socket.socket) -> None:
        super().__init__()
        self.wrapped = wrapped

    @property
    def record(self) -> SocketRecord:
        """What was seen: this object itself."""
        return self

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:
            # Not yet set (copy, unpickling): do not recurse looking for it.
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"<RecordingSocket {self.wrapped!r}>"

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            return self.wrapped.recv(bufsize, flags)
        except OSError as e:
            if self.errno is None and e.errno not in _TRANSIENT:
                self.errno = e.errno
            raise

    def send(self, data: ReadableBuffer, flags: int = 0) -> int:
        try:
            return self.wrapped.send(data, flags)
        except OSError as e:
            if self.errno is None and e.errno not in _TRANSIENT:
                self.errno = e.errno
            raise

    def recv_into(self, buffer: WriteableBuffer, nbytes: int = 0, flags: int = 0) -> int:
        try:
            return self.wrapped.recv_into(buffer, nbytes, flags)
        except OSError as e:
            if self.errno is None and e.errno not in _TRANSIENT:
                self.errno = e.errno
            raise

    def sendmsg(self, *args: Any) -> int:
        try:
            return self.wrapped.sendmsg(*args)
        except OSError as e:
            if self.errno is None and e.errno not in _TRANSIENT:
                self.errno = e.errno
            raise

    def fileno(self) -> int:
        return self.wrapped.fileno()

    def getsockopt(self, *args: Any) -> Any:
        # Explicit rather than through __getattr__: the heartbeat calls it
        # for every connection every tick.
        return self.wrapped.getsockopt(*args)

    def setsockopt(self, *args: Any) -> None:
        self.wrapped.setsockopt(*args)

    def _snapshot(self) -> None:
        """The last look at the socket: after shutdown/close there is nothing to read."""
        self.finished = True
        self.final_info = read_tcp_info(self.wrapped)
        try:
            self.so_error = self.wrapped.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError:
            self.so_error = None

    def shutdown(self, how: int) -> None:
        # shutdown(SHUT_WR) is a half-close (loseWriteConnection): the
        # connection lives on, so the final look waits for SHUT_RDWR/close.
        if not self.finished and how != socket.SHUT_WR:
            self._snapshot()
        self.wrapped.shutdown(how)

    def close(self) -> None:
        if not self.finished:
            self._snapshot()
        self.wrapped.close()


def install_recorder(tcp_transport: Connection) -> SocketRecord:
    """
    Put a L{RecordingSocket} in front of C{tcp_transport.socket} and return
    the L{SocketRecord} it fills in; L{SocketRecord.cause} tells, once the
    connection has ended, why.

    Needed because C{tcp.Connection.doRead}/C{writeSomeData} turn every
    errno into a bare C{CONNECTION_LOST}, and C{connectionLost} closes the
    socket before the protocol hears of it.  The reactor keeps using the
    real file descriptor (C{tcp.Connection} bound C{fileno} at init).
    Installing twice returns the first record.

    @param tcp_transport: the socket's owner, from L{find_tcp_transport}.
    @raise ValueError: C{tcp_transport} has no socket (already closed).
    """
    current = getattr(tcp_transport, "socket", None)
    if isinstance(current, RecordingSocket):
        return current
    if current is None:
        raise ValueError(f"{tcp_transport!r} has no socket to record")
    recording = RecordingSocket(current)
    # The proxy stands in for the socket Twisted declares there, on purpose.
    tcp_transport.socket = recording  # type: ignore[assignment]
    return recording
