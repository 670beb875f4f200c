"""
boatwist.net.sockopts, tcpinfo and recorder with fake sockets: keepalive options per platform, the
struct tcp_info parser, finding the socket under a transport, and the
recorder that recovers why a connection ended.

No network: the sockets here are objects that record what was asked of them,
and the platform's option constants are passed in as a namespace.
"""

from __future__ import annotations

import errno
import socket
import sys
from dataclasses import FrozenInstanceError, fields, replace
from types import SimpleNamespace
from typing import Any
from unittest import mock

from twisted.internet import error as ierror
from twisted.internet import main, tcp
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from boatwist.net import tcpinfo

try:
    from twisted.internet._newtls import _BypassTLS
except ImportError:  # private to Twisted: may move
    _BypassTLS = None
from boatwist.config import KeepaliveSettings
from boatwist.net.recorder import RecordingSocket, SocketRecord, find_socket, find_tcp_transport, install_recorder
from boatwist.net.sockopts import apply_keepalive
from boatwist.net.tcpinfo import TCP_STATES, TcpInfo, parse_tcp_info, read_tcp_info

ON_LINUX = sys.platform.startswith("linux")

# ------------------------------------------------------------------- fakes

#: Linux's values, as Python's socket module has them there.
LINUX = SimpleNamespace(
    SOL_SOCKET=1, SO_KEEPALIVE=9, IPPROTO_TCP=6,
    TCP_KEEPIDLE=4, TCP_KEEPINTVL=5, TCP_KEEPCNT=6, TCP_USER_TIMEOUT=18,
)
#: macOS with a Python that does not expose TCP_KEEPALIVE (0x10).
DARWIN = SimpleNamespace(SOL_SOCKET=0xFFFF, SO_KEEPALIVE=8, IPPROTO_TCP=6, TCP_KEEPINTVL=0x101, TCP_KEEPCNT=0x102)
#: Windows before 10 1709: only the ioctl.
WINDOWS_OLD = SimpleNamespace(SOL_SOCKET=0xFFFF, SO_KEEPALIVE=8, IPPROTO_TCP=6, SIO_KEEPALIVE_VALS=0x98000004)
#: Windows 10 1709+ with a Python that exposes the options.
WINDOWS_NEW = SimpleNamespace(
    SOL_SOCKET=0xFFFF, SO_KEEPALIVE=8, IPPROTO_TCP=6, SIO_KEEPALIVE_VALS=0x98000004,
    TCP_KEEPIDLE=3, TCP_KEEPINTVL=17, TCP_KEEPCNT=16,
)

SETTINGS = KeepaliveSettings(idle=7, interval=3, count=4, user_timeout=2.5)


class FakeSocket:
    """
    Records every call; C{refuse} maps option numbers to the errno their
    setsockopt fails with; C{script} lists what successive recv/send calls
    return or raise.
    """

    def __init__(self, refuse: dict[int, int] | None = None, tcp_info: bytes = b"", so_error: int = 0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse = refuse or {}
        self.tcp_info = tcp_info
        self.so_error = so_error
        self.script: list[Any] = []
        self.closed = False

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        self.calls.append(("setsockopt", level, option, value))
        if option in self.refuse:
            raise OSError(self.refuse[option], "refused")

    def ioctl(self, code: int, value: Any) -> None:
        self.calls.append(("ioctl", code, value))
        if code in self.refuse:
            raise OSError(self.refuse[code], "refused")

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        self.calls.append(("getsockopt", level, option, buflen))
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")
        if (level, option) == (socket.SOL_SOCKET, socket.SO_ERROR):
            return self.so_error
        if (level, option) == (socket.IPPROTO_TCP, 11):
            return self.tcp_info[:buflen]
        raise OSError(errno.ENOPROTOOPT, "Protocol not available")

    def fileno(self) -> int:
        return -1 if self.closed else 42

    def setblocking(self, flag: bool) -> None:
        self.calls.append(("setblocking", flag))

    def getpeername(self) -> tuple[str, int]:
        return ("127.0.0.1", 5555)

    def _next(self, name: str, *args: Any) -> Any:
        self.calls.append((name,) + args)
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def recv(self, bufsize: int, flags: int = 0) -> Any:
        return self._next("recv", bufsize, flags)

    def send(self, data: Any, flags: int = 0) -> Any:
        return self._next("send", bytes(data), flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> Any:
        return self._next("recv_into", nbytes, flags)

    def sendmsg(self, *args: Any) -> Any:
        return self._next("sendmsg", *args)

    def shutdown(self, how: int) -> None:
        self.calls.append(("shutdown", how))
        if self.closed:
            raise OSError(errno.EBADF, "Bad file descriptor")

    def close(self) -> None:
        self.calls.append(("close",))
        self.closed = True


def setsockopts(fake: FakeSocket) -> list[tuple[int, int, Any]]:
    return [call[1:] for call in fake.calls if call[0] == "setsockopt"]


# --------------------------------------------------------------- keepalive


class LinuxKeepaliveTests(SynchronousTestCase):
    def test_sets_every_option_in_order(self) -> None:
        """
        On Linux: SO_KEEPALIVE on, then idle, interval and count in seconds,
        then TCP_USER_TIMEOUT in milliseconds; nothing is reported missing.
        """
        fake = FakeSocket()
        missing = apply_keepalive(fake, SETTINGS, "linux", names=LINUX)
        self.assertEqual(missing, [])
        self.assertEqual(setsockopts(fake), [(1, 9, 1), (6, 4, 7), (6, 5, 3), (6, 6, 4), (6, 18, 2500)])

    def test_user_timeout_zero_is_not_set(self) -> None:
        """user_timeout = 0 means off: TCP_USER_TIMEOUT is left alone and not reported."""
        fake = FakeSocket()
        missing = apply_keepalive(fake, replace(SETTINGS, user_timeout=0.0), "linux", names=LINUX)
        self.assertEqual(missing, [])
        self.assertNotIn(18, [option for _, option, _ in setsockopts(fake)])

    def test_tiny_user_timeout_is_not_turned_into_off(self) -> None:
        """A positive user_timeout under 1 ms is set as 1 ms: 0 would switch the timeout off."""
        fake = FakeSocket()
        apply_keepalive(fake, replace(SETTINGS, user_timeout=0.0004), "linux", names=LINUX)
        self.assertIn((6, 18, 1), setsockopts(fake))

    def test_refused_option_is_reported_and_the_rest_still_set(self) -> None:
        """A refused option is named in the result; the options after it are still set."""
        fake = FakeSocket(refuse={5: errno.EINVAL})
        missing = apply_keepalive(fake, SETTINGS, "linux", names=LINUX)
        self.assertEqual(missing, ["TCP_KEEPINTVL"])
        self.assertIn((6, 6, 4), setsockopts(fake))
        self.assertIn((6, 18, 2500), setsockopts(fake))

    def test_missing_constant_is_reported(self) -> None:
        """An option this Python does not define is reported by name, not raised."""
        names = SimpleNamespace(**{k: v for k, v in vars(LINUX).items() if k != "TCP_USER_TIMEOUT"})
        fake = FakeSocket()
        self.assertEqual(apply_keepalive(fake, SETTINGS, "linux", names=names), ["TCP_USER_TIMEOUT"])
        self.assertEqual(len(setsockopts(fake)), 4)

    def test_closed_socket_never_raises(self) -> None:
        """A socket that refuses everything (closed: EBADF) yields the list of every option."""
        fake = FakeSocket(refuse={option: errno.EBADF for option in (9, 4, 5, 6, 18)})
        missing = apply_keepalive(fake, SETTINGS, "linux", names=LINUX)
        self.assertEqual(missing, ["SO_KEEPALIVE", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"])

    def test_not_a_socket_never_raises(self) -> None:
        """An object without setsockopt (a test transport's handle) is reported, not raised on."""
        self.assertIn("SO_KEEPALIVE", apply_keepalive(object(), SETTINGS, "linux", names=LINUX))

    def test_other_posix_uses_linux_names(self) -> None:
        """FreeBSD and others share Linux's option names: same calls; what they lack is reported."""
        names = SimpleNamespace(**{k: v for k, v in vars(LINUX).items() if k != "TCP_USER_TIMEOUT"})
        fake = FakeSocket()
        self.assertEqual(apply_keepalive(fake, SETTINGS, "freebsd14", names=names), ["TCP_USER_TIMEOUT"])
        self.assertEqual(setsockopts(fake), [(1, 9, 1), (6, 4, 7), (6, 5, 3), (6, 6, 4)])

    def test_default_names_are_this_pythons(self) -> None:
        """Without names, the real socket module's constants are used."""
        fake = FakeSocket()
        apply_keepalive(fake, SETTINGS, "linux")
        self.assertIn((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1), setsockopts(fake))


class DarwinKeepaliveTests(SynchronousTestCase):
    def test_idle_through_tcp_keepalive(self) -> None:
        """
        macOS: the idle time goes through TCP_KEEPALIVE (0x10, even when Python
        does not name it), interval and count through their own options.
        """
        fake = FakeSocket()
        apply_keepalive(fake, SETTINGS, "darwin", names=DARWIN)
        self.assertEqual(setsockopts(fake)[:4], [(0xFFFF, 8, 1), (6, 0x10, 7), (6, 0x101, 3), (6, 0x102, 4)])

    def test_named_tcp_keepalive_is_used(self) -> None:
        """Where Python names TCP_KEEPALIVE, that value is used."""
        names = SimpleNamespace(TCP_KEEPALIVE=0x77, **vars(DARWIN))
        fake = FakeSocket()
        apply_keepalive(fake, SETTINGS, "darwin", names=names)
        self.assertIn((6, 0x77, 7), setsockopts(fake))

    def test_no_user_timeout_is_reported(self) -> None:
        """macOS has no TCP_USER_TIMEOUT: reported, so the admin knows mid-transfer deaths are found late."""
        self.assertEqual(apply_keepalive(FakeSocket(), SETTINGS, "darwin", names=DARWIN), ["TCP_USER_TIMEOUT"])

    def test_old_macos_without_interval_and_count(self) -> None:
        """Without TCP_KEEPINTVL / TCP_KEEPCNT, idle is still set and the two are reported."""
        names = SimpleNamespace(SOL_SOCKET=0xFFFF, SO_KEEPALIVE=8, IPPROTO_TCP=6)
        fake = FakeSocket()
        missing = apply_keepalive(fake, replace(SETTINGS, user_timeout=0), "darwin", names=names)
        self.assertEqual(missing, ["TCP_KEEPINTVL", "TCP_KEEPCNT"])
        self.assertEqual(setsockopts(fake), [(0xFFFF, 8, 1), (6, 0x10, 7)])


class WindowsKeepaliveTests(SynchronousTestCase):
    def test_ioctl_in_milliseconds(self) -> None:
        """
        Windows without the TCP_KEEP* options: SIO_KEEPALIVE_VALS with
        (on, idle ms, interval ms); count and user timeout reported missing.
        """
        fake = FakeSocket()
        missing = apply_keepalive(fake, SETTINGS, "win32", names=WINDOWS_OLD)
        self.assertIn(("ioctl", 0x98000004, (1, 7000, 3000)), fake.calls)
        self.assertEqual(missing, ["TCP_KEEPCNT", "TCP_USER_TIMEOUT"])

    def test_options_preferred_over_ioctl(self) -> None:
        """Where the build has TCP_KEEPIDLE/INTVL/CNT they are set, and the ioctl is not used."""
        fake = FakeSocket()
        missing = apply_keepalive(fake, replace(SETTINGS, user_timeout=0), "win32", names=WINDOWS_NEW)
        self.assertEqual(missing, [])
        self.assertEqual(setsockopts(fake), [(0xFFFF, 8, 1), (6, 3, 7), (6, 17, 3), (6, 16, 4)])
        self.assertNotIn("ioctl", [call[0] for call in fake.calls])

    def test_refused_option_falls_back_to_ioctl(self) -> None:
        """Constants defined but refused by an older Windows: the ioctl sets idle and interval."""
        fake = FakeSocket(refuse={3: 10042})  # WSAENOPROTOOPT
        missing = apply_keepalive(fake, replace(SETTINGS, user_timeout=0), "win32", names=WINDOWS_NEW)
        self.assertIn(("ioctl", 0x98000004, (1, 7000, 3000)), fake.calls)
        self.assertEqual(missing, [])

    def test_failed_ioctl_is_reported(self) -> None:
        """A refused ioctl is reported as SIO_KEEPALIVE_VALS, not raised."""
        fake = FakeSocket(refuse={0x98000004: 10045})
        missing = apply_keepalive(fake, replace(SETTINGS, user_timeout=0), "win32", names=WINDOWS_OLD)
        self.assertEqual(missing, ["SIO_KEEPALIVE_VALS", "TCP_KEEPCNT"])

    def test_nothing_available(self) -> None:
        """Neither options nor ioctl: both reported; SO_KEEPALIVE alone is still set."""
        names = SimpleNamespace(SOL_SOCKET=0xFFFF, SO_KEEPALIVE=8, IPPROTO_TCP=6)
        fake = FakeSocket()
        missing = apply_keepalive(fake, SETTINGS, "win32", names=names)
        self.assertEqual(missing, ["SIO_KEEPALIVE_VALS", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"])
        self.assertEqual(setsockopts(fake), [(0xFFFF, 8, 1)])


# ----------------------------------------------------------------- TCP_INFO

#: (offset, value) of the fields of struct tcp_info, from linux/tcp.h,
#: written independently of the parser's format string.
U8_FIELDS = {"state": 0, "ca_state": 1, "retransmits": 2, "probes": 3, "backoff": 4, "options": 5}
U32_FIELDS = {
    "rto_us": 8, "ato_us": 12, "snd_mss": 16, "rcv_mss": 20, "unacked": 24, "sacked": 28,
    "lost": 32, "retrans": 36, "last_data_sent_ms": 44, "last_data_recv_ms": 52,
    "last_ack_recv_ms": 56, "pmtu": 60, "rcv_ssthresh": 64, "rtt_us": 68, "rttvar_us": 72,
    "snd_ssthresh": 76, "snd_cwnd": 80, "advmss": 84, "reordering": 88, "rcv_rtt_us": 92,
    "rcv_space": 96, "total_retrans": 100,
}
#: Bytes the parser must skip: wscale and app-limited bit fields (6, 7),
#: tcpi_fackets (40), tcpi_last_ack_sent (48).
SKIPPED = {6: 0xEE, 7: 0xEE, 40: 0xDEADBEEF, 48: 0xCAFEF00D}


def packed(size: int = 104, **values: int) -> bytes:
    """
    A struct tcp_info laid out by hand: every field a distinct value unless
    given, each with its top bit set so that a signed read would show.
    """
    raw = bytearray(size)
    for position, (name, offset) in enumerate(U8_FIELDS.items()):
        raw[offset] = values.get(name, 0x80 + position)
    for position, (name, offset) in enumerate(U32_FIELDS.items()):
        value = values.get(name, 0x8000_0000 + 1_000 * position)
        raw[offset:offset + 4] = value.to_bytes(4, sys.byteorder)
    for offset, value in SKIPPED.items():
        width = 1 if value <= 0xFF else 4
        raw[offset:offset + width] = value.to_bytes(width, sys.byteorder)
    for offset in range(104, size):
        raw[offset] = 0xAB  # fields of newer kernels
    return bytes(raw)


def expected_fields(**values: int) -> dict[str, int]:
    expected = {name: values.get(name, 0x80 + i) for i, name in enumerate(U8_FIELDS)}
    expected.update({name: values.get(name, 0x8000_0000 + 1_000 * i) for i, name in enumerate(U32_FIELDS)})
    return expected


class ParseTcpInfoTests(SynchronousTestCase):
    def test_fields_at_their_offsets(self) -> None:
        """Every field is read from its offset in linux/tcp.h, in host byte order."""
        info = parse_tcp_info(packed())
        self.assertEqual({f.name: getattr(info, f.name) for f in fields(TcpInfo)}, expected_fields())

    def test_every_field_is_parsed(self) -> None:
        """TcpInfo has exactly the fields the hand-made layout above names: none unparsed."""
        self.assertEqual({f.name for f in fields(TcpInfo)}, set(U8_FIELDS) | set(U32_FIELDS))

    def test_skipped_bytes_do_not_leak(self) -> None:
        """fackets, last_ack_sent and the bit fields are not taken for a neighbouring field."""
        info = parse_tcp_info(packed())
        values = {getattr(info, f.name) for f in fields(TcpInfo)}
        self.assertFalse(values & set(SKIPPED.values()))

    def test_large_values(self) -> None:
        """Fields are unsigned: 0xFF and 0xFFFFFFFF stay 255 and 4294967295."""
        info = parse_tcp_info(packed(probes=0xFF, rto_us=0xFFFFFFFF, snd_ssthresh=0xFFFFFFFF))
        self.assertEqual((info.probes, info.rto_us, info.snd_ssthresh), (0xFF, 0xFFFFFFFF, 0xFFFFFFFF))

    def test_longer_struct_of_newer_kernels(self) -> None:
        """A kernel's longer struct (6.x returns 200+ bytes) parses to the same values."""
        self.assertEqual(parse_tcp_info(packed(size=280)), parse_tcp_info(packed()))

    def test_short_struct_refused(self) -> None:
        """Fewer than 104 bytes is not a struct tcp_info: ValueError, not garbage."""
        self.assertRaises(ValueError, parse_tcp_info, packed()[:103])

    def test_same_as_the_constructor(self) -> None:
        """The fast construction gives an object equal, with equal hash, to TcpInfo(**fields)."""
        parsed = parse_tcp_info(packed())
        built = TcpInfo(**expected_fields())
        self.assertEqual(parsed, built)
        self.assertEqual(hash(parsed), hash(built))
        self.assertEqual(repr(parsed), repr(built))

    def test_frozen(self) -> None:
        """A reading cannot be changed after the fact."""
        info = parse_tcp_info(packed())
        with self.assertRaises(FrozenInstanceError):
            info.state = 1  # type: ignore[misc]


class TcpInfoPropertyTests(SynchronousTestCase):
    def test_state_names(self) -> None:
        """Each Linux TCP state number has its name; an unknown one says so with its number."""
        expected = [
            "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
            "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV", "BOUND_INACTIVE",
        ]
        self.assertEqual([TcpInfo(state=n).state_name for n in range(1, 14)], expected)
        self.assertEqual(sorted(TCP_STATES), list(range(1, 14)))
        self.assertEqual(TcpInfo(state=99).state_name, "UNKNOWN(99)")

    def test_established(self) -> None:
        """Only state 1 is established; CLOSE_WAIT (peer closed, unnoticed) is not."""
        self.assertTrue(TcpInfo(state=1).established)
        self.assertFalse(TcpInfo(state=8).established)

    def test_troubled(self) -> None:
        """Probes, retransmits or backoff each make a connection troubled; none, not."""
        self.assertFalse(TcpInfo(state=1, total_retrans=5, unacked=3).troubled)
        self.assertTrue(TcpInfo(state=1, probes=1).troubled)
        self.assertTrue(TcpInfo(state=1, retransmits=1).troubled)
        self.assertTrue(TcpInfo(state=1, backoff=1).troubled)

    def test_idle_ms_is_the_last_sign_of_life(self) -> None:
        """idle_ms is the younger of last data and last ACK received: keepalive answers count."""
        self.assertEqual(TcpInfo(state=1, last_data_recv_ms=9000, last_ack_recv_ms=400).idle_ms, 400)
        self.assertEqual(TcpInfo(state=1, last_data_recv_ms=300, last_ack_recv_ms=900).idle_ms, 300)


class ReadTcpInfoTests(SynchronousTestCase):
    def test_one_getsockopt_of_104_bytes(self) -> None:
        """One getsockopt(IPPROTO_TCP, TCP_INFO=11, 104), parsed."""
        fake = FakeSocket(tcp_info=packed(size=232))
        info = read_tcp_info(fake, platform="linux")
        self.assertEqual(fake.calls, [("getsockopt", socket.IPPROTO_TCP, 11, 104)])
        self.assertEqual(info, parse_tcp_info(packed()))

    def test_not_linux(self) -> None:
        """Elsewhere struct tcp_info differs or does not exist: None, without asking the socket."""
        fake = FakeSocket(tcp_info=packed())
        self.assertIsNone(read_tcp_info(fake, platform="darwin"))
        self.assertIsNone(read_tcp_info(fake, platform="win32"))
        self.assertEqual(fake.calls, [])

    def test_closed_socket(self) -> None:
        """A closed socket (getsockopt raises EBADF) gives None."""
        fake = FakeSocket(tcp_info=packed())
        fake.close()
        self.assertIsNone(read_tcp_info(fake, platform="linux"))

    def test_short_answer(self) -> None:
        """A kernel answer too short to parse gives None, not an exception."""
        self.assertIsNone(read_tcp_info(FakeSocket(tcp_info=packed()[:60]), platform="linux"))

    def test_through_the_recording_proxy(self) -> None:
        """The recorder's proxy answers getsockopt like the socket it wraps."""
        fake = FakeSocket(tcp_info=packed())
        proxy = RecordingSocket(fake)  # type: ignore[arg-type]
        self.assertEqual(read_tcp_info(proxy, platform="linux"), parse_tcp_info(packed()))


# ------------------------------------------------------- finding the socket


class FakeConnection:
    """Owns a socket the way twisted.internet.tcp.Connection does: an instance attribute."""

    def __init__(self, skt: Any) -> None:
        self.socket = skt


def tls_factory() -> TLSMemoryBIOFactory:
    """A TLS layer's factory; nothing is negotiated, so no certificate is needed."""
    return TLSMemoryBIOFactory(optionsForClientTLS("localhost"), True, WrappingFactory(None))  # type: ignore[arg-type]


class FindSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.fake = FakeSocket()
        self.conn = FakeConnection(self.fake)

    def test_tcp_transport_itself(self) -> None:
        """A protocol directly on TCP: the transport is the owner."""
        self.assertIs(find_tcp_transport(self.conn), self.conn)
        self.assertIs(find_socket(self.conn), self.fake)

    def test_through_protocol_wrappers(self) -> None:
        """Under WrappingFactory, the protocol's transport is a ProtocolWrapper: walked through."""
        outer = ProtocolWrapper(WrappingFactory(None), Protocol())  # type: ignore[arg-type]
        inner = ProtocolWrapper(WrappingFactory(None), Protocol())  # type: ignore[arg-type]
        outer.transport = inner  # type: ignore[assignment]
        inner.transport = self.conn  # type: ignore[assignment]
        self.assertIs(find_tcp_transport(outer), self.conn)
        self.assertIs(find_socket(outer), self.fake)

    def test_through_tls_layer(self) -> None:
        """
        Under TLS the transport is a TLSMemoryBIOProtocol, whose getHandle()
        is an OpenSSL Connection: the socket is found one level down instead.
        """
        tls = TLSMemoryBIOProtocol(tls_factory(), Protocol())
        tls.transport = self.conn  # type: ignore[assignment]
        self.assertIs(find_tcp_transport(tls), self.conn)
        self.assertIs(find_socket(tls), self.fake)

    def test_through_start_tls_bypass(self) -> None:
        """
        After startTLS the TLS layer's transport is Twisted's _BypassTLS, which
        only forwards attribute reads: the owner found is the connection behind
        it, so that the recorder replaces the connection's socket.
        """
        if _BypassTLS is None:
            raise SkipTest("twisted.internet._newtls._BypassTLS is gone")
        bypass = _BypassTLS(tcp.Server, self.conn)
        tls = TLSMemoryBIOProtocol(tls_factory(), Protocol())
        tls.transport = bypass  # type: ignore[assignment]
        self.assertIs(find_tcp_transport(tls), self.conn)

    def test_string_transport(self) -> None:
        """A test transport has no socket: None."""
        self.assertIsNone(find_tcp_transport(StringTransport()))
        self.assertIsNone(find_socket(StringTransport()))

    def test_none(self) -> None:
        """A protocol not connected (transport None): None."""
        self.assertIsNone(find_socket(None))

    def test_closed_connection(self) -> None:
        """tcp.Connection deletes its socket on connectionLost: then there is nothing to find."""
        del self.conn.socket
        self.assertIsNone(find_tcp_transport(self.conn))

    def test_endless_chains_are_bounded(self) -> None:
        """A Mock (every attribute exists) or a cycle of transports ends the walk with None."""
        self.assertIsNone(find_tcp_transport(mock.Mock()))
        a, b = SimpleNamespace(), SimpleNamespace()
        a.transport, b.transport = b, a
        self.assertIsNone(find_tcp_transport(a))

    def test_socket_attribute_that_is_not_a_socket(self) -> None:
        """An attribute named socket that is not one (no getsockopt/fileno) is not taken for it."""
        self.assertIsNone(find_tcp_transport(SimpleNamespace(socket="not a socket")))

    def test_unwraps_the_recorder(self) -> None:
        """With a recorder installed, find_socket returns the kernel socket behind it."""
        install_recorder(self.conn)
        self.assertIsInstance(self.conn.socket, RecordingSocket)
        self.assertIs(find_tcp_transport(self.conn), self.conn)
        self.assertIs(find_socket(self.conn), self.fake)

    def test_real_twisted_connection(self) -> None:
        """A real twisted tcp.Connection (on a fake socket) is recognised as the owner."""
        conn = tcp.Connection(self.fake, Protocol(), MemoryReactor())  # type: ignore[arg-type]
        wrapper = ProtocolWrapper(WrappingFactory(None), Protocol())  # type: ignore[arg-type]
        wrapper.transport = conn  # type: ignore[assignment]
        self.assertIs(find_tcp_transport(wrapper), conn)


# -------------------------------------------------------------- recording


def recorded(fake: FakeSocket) -> tuple[RecordingSocket, SocketRecord]:
    conn = FakeConnection(fake)
    record = install_recorder(conn)
    return conn.socket, record


class RecorderDataPathTests(SynchronousTestCase):
    def test_data_passes_through(self) -> None:
        """recv/send results and arguments pass through unchanged; no error, nothing recorded."""
        fake = FakeSocket()
        proxy, record = recorded(fake)
        fake.script = [b"hello", 3]
        self.assertEqual(proxy.recv(65536), b"hello")
        self.assertEqual(proxy.send(memoryview(b"abc")), 3)
        self.assertEqual(fake.calls, [("recv", 65536, 0), ("send", b"abc", 0)])
        self.assertIsNone(record.errno)

    def test_error_reraised_unchanged_and_recorded(self) -> None:
        """ECONNRESET from recv is re-raised (the same exception object) and recorded."""
        fake = FakeSocket()
        proxy, record = recorded(fake)
        reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        fake.script = [reset]
        with self.assertRaises(OSError) as caught:
            proxy.recv(10)
        self.assertIs(caught.exception, reset)
        self.assertEqual(record.errno, errno.ECONNRESET)

    def test_each_data_call_records(self) -> None:
        """send, recv_into and sendmsg record their errors like recv."""
        for call, args in (("send", (b"x",)), ("recv_into", (bytearray(4),)), ("sendmsg", ([b"x"],))):
            fake = FakeSocket()
            proxy, record = recorded(fake)
            fake.script = [OSError(errno.EPIPE, "Broken pipe")]
            self.assertRaises(OSError, getattr(proxy, call), *args)
            self.assertEqual(record.errno, errno.EPIPE, call)

    def test_transient_errors_are_not_recorded(self) -> None:
        """EAGAIN/EWOULDBLOCK, EINTR and ENOBUFS mean "not now": re-raised, not recorded."""
        fake = FakeSocket()
        proxy, record = recorded(fake)
        fake.script = [
            BlockingIOError(errno.EAGAIN, "again"), OSError(errno.EWOULDBLOCK, "would block"),
            InterruptedError(errno.EINTR, "interrupted"), OSError(errno.ENOBUFS, "no buffers"),
        ]
        for _ in range(2):
            self.assertRaises(OSError, proxy.recv, 10)
        for _ in range(2):
            self.assertRaises(OSError, proxy.send, b"x")
        self.assertIsNone(record.errno)

    def test_first_error_wins(self) -> None:
        """The first real error is the cause; a later EPIPE from a write does not overwrite it."""
        fake = FakeSocket()
        proxy, record = recorded(fake)
        fake.script = [OSError(errno.ETIMEDOUT, "timed out"), OSError(errno.EPIPE, "Broken pipe")]
        self.assertRaises(OSError, proxy.recv, 10)
        self.assertRaises(OSError, proxy.send, b"x")
        self.assertEqual(record.errno, errno.ETIMEDOUT)

    def test_other_calls_are_delegated(self) -> None:
        """Everything else reaches the socket: fileno, getpeername, setblocking."""
        fake = FakeSocket()
        proxy, _ = recorded(fake)
        self.assertEqual(proxy.fileno(), 42)
        self.assertEqual(proxy.getpeername(), ("127.0.0.1", 5555))
        proxy.setblocking(False)
        self.assertIn(("setblocking", False), fake.calls)
        self.assertRaises(AttributeError, getattr, proxy, "no_such_method")


class RecorderSnapshotTests(SynchronousTestCase):
    def test_snapshot_before_shutdown(self) -> None:
        """
        On shutdown(SHUT_RDWR), TCP_INFO and SO_ERROR are read first, then the
        socket is shut down: afterwards there would be nothing left to read.
        """
        fake = FakeSocket(tcp_info=packed(state=8), so_error=errno.ECONNRESET)
        proxy, record = recorded(fake)
        proxy.shutdown(socket.SHUT_RDWR)
        self.assertEqual([call[0] for call in fake.calls], ["getsockopt", "getsockopt", "shutdown"])
        self.assertEqual(record.so_error, errno.ECONNRESET)
        self.assertTrue(record.finished)
        if ON_LINUX:
            assert record.final_info is not None
            self.assertEqual(record.final_info.state_name, "CLOSE_WAIT")

    def test_snapshot_once(self) -> None:
        """shutdown then close (Twisted's _closeSocket): one snapshot, at the shutdown."""
        fake = FakeSocket(tcp_info=packed())
        proxy, _ = recorded(fake)
        proxy.shutdown(socket.SHUT_RDWR)
        proxy.close()
        self.assertEqual([call[0] for call in fake.calls], ["getsockopt", "getsockopt", "shutdown", "close"])

    def test_snapshot_at_close_alone(self) -> None:
        """An abort (SO_LINGER 0, then close without shutdown) still gets its snapshot."""
        fake = FakeSocket(tcp_info=packed(), so_error=errno.ETIMEDOUT)
        proxy, record = recorded(fake)
        proxy.close()
        self.assertEqual([call[0] for call in fake.calls], ["getsockopt", "getsockopt", "close"])
        self.assertEqual(record.so_error, errno.ETIMEDOUT)

    def test_half_close_is_not_the_end(self) -> None:
        """shutdown(SHUT_WR) (loseWriteConnection) takes no snapshot; the later close does."""
        fake = FakeSocket(tcp_info=packed())
        proxy, record = recorded(fake)
        proxy.shutdown(socket.SHUT_WR)
        self.assertFalse(record.finished)
        self.assertEqual(fake.calls, [("shutdown", socket.SHUT_WR)])
        proxy.close()
        self.assertTrue(record.finished)

    def test_unreadable_socket(self) -> None:
        """If nothing can be read any more (EBADF), the record says None and close still happens."""
        fake = FakeSocket()
        fake.closed = True
        proxy, record = recorded(fake)
        proxy.close()
        self.assertIsNone(record.final_info)
        self.assertIsNone(record.so_error)
        self.assertEqual(fake.calls[-1], ("close",))

    def test_shutdown_error_reraised(self) -> None:
        """A failing shutdown (ENOTCONN after a reset) is raised as it was; Twisted ignores it."""
        fake = FakeSocket()
        fake.closed = True
        proxy, _ = recorded(fake)
        with self.assertRaises(OSError) as caught:
            proxy.shutdown(socket.SHUT_RDWR)
        self.assertEqual(caught.exception.errno, errno.EBADF)


class InstallRecorderTests(SynchronousTestCase):
    def test_replaces_the_socket(self) -> None:
        """The owner's socket becomes a RecordingSocket around the original."""
        fake = FakeSocket()
        conn = FakeConnection(fake)
        record = install_recorder(conn)
        self.assertIsInstance(conn.socket, RecordingSocket)
        self.assertIs(conn.socket.wrapped, fake)
        self.assertIs(conn.socket.record, record)

    def test_twice_is_once(self) -> None:
        """A second install returns the first record; the socket is not wrapped twice."""
        conn = FakeConnection(FakeSocket())
        first = install_recorder(conn)
        proxy = conn.socket
        self.assertIs(install_recorder(conn), first)
        self.assertIs(conn.socket, proxy)

    def test_no_socket(self) -> None:
        """A transport without a socket (already closed) is refused loudly."""
        self.assertRaises(ValueError, install_recorder, SimpleNamespace())

    def test_twisted_connection_swallows_the_errno_we_keep(self) -> None:
        """
        The reason the recorder exists: tcp.Connection.doRead turns ECONNRESET
        into a bare CONNECTION_LOST, and connectionLost closes the socket
        before the protocol hears of it.  With the recorder, the errno and the
        last TCP_INFO survive, and the fileno Twisted bound at init still works.
        """
        fake = FakeSocket(tcp_info=packed(state=7))
        lost: list[Failure] = []

        class Witness(Protocol):
            def connectionLost(self, reason: Failure = main.CONNECTION_DONE) -> None:
                lost.append(reason)

        conn = tcp.Connection(fake, Witness(), MemoryReactor())  # type: ignore[arg-type]
        record = install_recorder(conn)
        self.assertEqual(conn.fileno(), 42)
        fake.script = [ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")]
        why = conn.doRead()
        self.assertIs(why, main.CONNECTION_LOST)
        conn.connectionLost(Failure(why))
        self.assertTrue(lost[0].check(ierror.ConnectionLost))
        self.assertIn(("close",), fake.calls)
        self.assertEqual(record.errno, errno.ECONNRESET)
        self.assertEqual(record.cause(), "reset")
        if ON_LINUX:
            assert record.final_info is not None
            self.assertEqual(record.final_info.state_name, "CLOSE")


class CauseTests(SynchronousTestCase):
    def test_errno_mapping(self) -> None:
        """
        ETIMEDOUT (keepalive or user timeout), or the ICMP error Linux reports
        in its place, is keepalive-timeout; ECONNRESET, EPIPE, ECONNABORTED
        are reset; so is an unexpected errno; no error is closed.
        """
        cases = {
            errno.ETIMEDOUT: "keepalive-timeout",
            errno.EHOSTUNREACH: "keepalive-timeout",
            errno.ENETUNREACH: "keepalive-timeout",
            errno.ECONNRESET: "reset",
            errno.EPIPE: "reset",
            errno.ECONNABORTED: "reset",
            errno.EIO: "reset",
        }
        self.assertEqual({code: SocketRecord(errno=code).cause() for code in cases}, cases)
        self.assertEqual(SocketRecord().cause(), "closed")

    def test_pending_so_error(self) -> None:
        """An error no recv picked up (paused connection) is found in SO_ERROR."""
        self.assertEqual(SocketRecord(so_error=errno.ETIMEDOUT).cause(), "keepalive-timeout")
        self.assertEqual(SocketRecord(so_error=errno.ECONNRESET).cause(), "reset")
        self.assertEqual(SocketRecord(so_error=0).cause(), "closed")

    def test_errno_before_so_error(self) -> None:
        """The errno recv/send saw first is the cause, over a later SO_ERROR."""
        record = SocketRecord(errno=errno.ECONNRESET, so_error=errno.ETIMEDOUT)
        self.assertEqual(record.cause(), "reset")
        self.assertEqual(record.error_name, "ECONNRESET")

    def test_final_state_when_the_error_was_consumed(self) -> None:
        """
        TCP_CLOSE with probes or retransmits outstanding: the kernel gave up on
        the peer (verified: that is how a keepalive or user timeout leaves
        the socket) -- keepalive-timeout even without an errno.
        """
        self.assertEqual(SocketRecord(final_info=TcpInfo(state=7, probes=2)).cause(), "keepalive-timeout")
        self.assertEqual(SocketRecord(final_info=TcpInfo(state=7, retransmits=3)).cause(), "keepalive-timeout")

    def test_quiet_final_states_are_closed(self) -> None:
        """CLOSE_WAIT (peer's FIN) and a quiet TCP_CLOSE (both FINs done) are clean closes."""
        self.assertEqual(SocketRecord(final_info=TcpInfo(state=8)).cause(), "closed")
        self.assertEqual(SocketRecord(final_info=TcpInfo(state=7)).cause(), "closed")
        self.assertEqual(SocketRecord(final_info=TcpInfo(state=1, probes=1)).cause(), "closed")

    def test_error_name(self) -> None:
        """error_name names the errno for the log; None when there was none."""
        self.assertEqual(SocketRecord(so_error=errno.ETIMEDOUT).error_name, "ETIMEDOUT")
        self.assertIsNone(SocketRecord(so_error=0).error_name)
        self.assertEqual(SocketRecord(errno=99999).error_name, "99999")


class ModuleHygieneTests(SynchronousTestCase):
    def test_no_reactor_imported(self) -> None:
        """Importing the socket modules does not install or import the global reactor."""
        import subprocess

        code = "import sys, boatwist.net.sockopts, boatwist.net.tcpinfo, boatwist.net.recorder; print('twisted.internet.reactor' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "False")

    def test_struct_and_fields_agree(self) -> None:
        """The precompiled struct yields exactly one value per TcpInfo field."""
        self.assertEqual(len(tcpinfo._TCP_INFO.unpack(bytes(104))), len(fields(TcpInfo)))
        self.assertEqual(tcpinfo._TCP_INFO.size, 104)


class ReadTcpCalmTests(SynchronousTestCase):
    def test_established_with_nothing_outstanding_is_calm(self) -> None:
        """Five bytes of TCP_INFO: ESTABLISHED and no retransmission, probe or backoff is calm."""
        fake = FakeSocket(tcp_info=bytes([1, 3, 0, 0, 0]) + bytes(99))
        self.assertTrue(tcpinfo.read_tcp_calm(fake, platform="linux"))
        self.assertEqual(fake.calls, [("getsockopt", socket.IPPROTO_TCP, 11, 5)])

    def test_anything_outstanding_or_another_state_is_not(self) -> None:
        """Another state, or a retransmission, probe or backoff outstanding: not calm (read in full)."""
        for head in ([8, 0, 0, 0, 0], [7, 0, 0, 0, 0], [1, 0, 1, 0, 0], [1, 0, 0, 2, 0], [1, 0, 0, 0, 3]):
            self.assertFalse(tcpinfo.read_tcp_calm(FakeSocket(tcp_info=bytes(head) + bytes(99)), platform="linux"),
                             head)

    def test_unreadable_is_not_calm(self) -> None:
        """A closed socket, a short answer or another platform: not calm, so the full read decides."""
        closed = FakeSocket(tcp_info=bytes(104))
        closed.close()
        self.assertFalse(tcpinfo.read_tcp_calm(closed, platform="linux"))
        self.assertFalse(tcpinfo.read_tcp_calm(FakeSocket(tcp_info=bytes([1, 0])), platform="linux"))
        self.assertFalse(tcpinfo.read_tcp_calm(FakeSocket(tcp_info=bytes([1]) + bytes(103)), platform="darwin"))


def test_a_recording_socket_is_compared_by_identity() -> None:
    """Like the socket it stands in for: two are never equal, and each can be a dict key."""
    with socket.socket() as one, socket.socket() as two:
        first, second = RecordingSocket(one), RecordingSocket(two)
        assert first != second and first == first
        assert len({first: 1, second: 2}) == 2
