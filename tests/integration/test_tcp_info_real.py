"""
boatwist.net.sockets against the real Linux kernel, on loopback only.

Plain sockets check TCP_INFO parsing (against ``ss``, an independent
reader of the same struct), TCP states and the keepalive options; a real
Twisted reactor (trial TestCase: tests return Deferreds) checks that the
recorder reports why a connection ended and stays out of the way of data.

Waits are bounded: Deferreds with timeouts, or short polling of kernel state
against a deadline; trial's class timeout bounds each test as a last resort.
"""

from __future__ import annotations

import errno
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Callable, Generator

from twisted.internet import defer, protocol
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from boatwist.config import KeepaliveSettings
from boatwist.net.recorder import RecordingSocket, SocketRecord, find_socket, find_tcp_transport, install_recorder
from boatwist.net.sockopts import apply_keepalive
from boatwist.net.tcpinfo import TcpInfo, read_tcp_info

if not sys.platform.startswith("linux"):
    raise SkipTest("TCP_INFO and these socket options are Linux's")

_Gen = Generator[Any, Any, None]

#: A deadline for waiting on the kernel: loopback delivers at once, so this
#: only matters when something is wrong.
DEADLINE = 3.0


def connected_pair(family: int = socket.AF_INET) -> tuple[socket.socket, socket.socket]:
    """(client, server side) of a fresh loopback TCP connection."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind((host, 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname()[:2], timeout=DEADLINE)
        server, _ = listener.accept()
    return client, server


def wait_for(predicate: Callable[[], Any], what: str) -> Any:
    """Poll kernel state until C{predicate} is truthy, at most DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not within {DEADLINE} s: {what}")
        time.sleep(0.01)


def global_reactor() -> Any:
    """The reactor trial runs, imported when a test needs it, not at import time."""
    from twisted.internet import reactor

    return reactor


def ss_line(local_port: int) -> str:
    """``ss -tnoi`` for the connection whose local port is C{local_port}: header and info lines joined."""
    if shutil.which("ss") is None:
        raise SkipTest("ss (iproute2) is not installed")
    out = subprocess.run(
        ["ss", "-tnoiH", "state", "all", f"( sport = :{local_port} )"],
        capture_output=True, text=True, timeout=DEADLINE, check=True,
    ).stdout
    return " ".join(out.split())


class PlainSocketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.client, self.server = connected_pair()
        self.addCleanup(self.client.close)
        self.addCleanup(self.server.close)

    def test_established(self) -> None:
        """Both ends of a fresh connection read as ESTABLISHED, untroubled."""
        for end in (self.client, self.server):
            info = read_tcp_info(end)
            assert info is not None
            self.assertEqual(info.state_name, "ESTABLISHED")
            self.assertTrue(info.established)
            self.assertFalse(info.troubled)

    def test_ipv6(self) -> None:
        """The same struct is read from an IPv6 socket."""
        try:
            client, server = connected_pair(socket.AF_INET6)
        except OSError as e:
            raise SkipTest(f"no IPv6 loopback here: {e}")
        self.addCleanup(client.close)
        self.addCleanup(server.close)
        info = read_tcp_info(server)
        assert info is not None
        self.assertTrue(info.established)

    def test_agrees_with_ss(self) -> None:
        """
        The parsed fields match what ``ss -i`` (iproute2, its own reader of
        struct tcp_info) prints for the same socket: this pins the offsets
        against the running kernel.
        """
        self.client.sendall(b"x" * 5000)
        received = 0
        while received < 5000:
            received += len(self.server.recv(65536))
        self.server.sendall(b"y" * 3000)
        wait_for(lambda: (i := read_tcp_info(self.server)) and i.unacked == 0, "data acked")
        info = read_tcp_info(self.server)
        line = ss_line(self.server.getsockname()[1])
        assert info is not None
        printed = dict(re.findall(r"(?<![\w_])([a-z_]+):([\d.]+)(?=[\s/]|$)", line))
        # ss leaves out what is zero.
        printed.setdefault("ato", "0")
        for name, value in (("rto", info.rto_us / 1000), ("ato", info.ato_us / 1000), ("mss", info.snd_mss),
                            ("pmtu", info.pmtu), ("rcvmss", info.rcv_mss), ("advmss", info.advmss),
                            ("cwnd", info.snd_cwnd), ("rcv_space", info.rcv_space),
                            ("rcv_ssthresh", info.rcv_ssthresh)):
            self.assertIn(name, printed, line)
            self.assertEqual(float(printed[name]), value, f"{name}: {line}")
        rtt, rttvar = re.search(r"rtt:([\d.]+)/([\d.]+)", line).groups()  # type: ignore[union-attr]
        self.assertAlmostEqual(float(rtt), info.rtt_us / 1000, places=3)
        self.assertAlmostEqual(float(rttvar), info.rttvar_us / 1000, places=3)
        # ss read a moment later: its "time since" figures are a little larger.
        for name, value in (("lastsnd", info.last_data_sent_ms), ("lastrcv", info.last_data_recv_ms),
                            ("lastack", info.last_ack_recv_ms)):
            self.assertTrue(0 <= int(printed.get(name, 0)) - value < 1000, f"{name}={value}: {line}")
        self.assertEqual(info.state_name, "ESTABLISHED")
        self.assertTrue(line.startswith("ESTAB"), line)

    def test_unacked_counts_what_the_peer_has_not_acknowledged(self) -> None:
        """Data the peer acknowledged leaves unacked at 0 and updates last_data_sent."""
        self.server.sendall(b"y" * 1000)
        info = wait_for(lambda: (i := read_tcp_info(self.server)) and i.unacked == 0 and i, "data acked")
        self.assertLess(info.last_data_sent_ms, 2000)
        self.assertEqual(info.total_retrans, 0)

    def test_close_wait_when_the_peer_closed_and_we_did_not_read(self) -> None:
        """
        The peer's FIN moves our end to CLOSE_WAIT even though nothing read the
        EOF: what the heartbeat catches on a connection nobody is reading.
        """
        self.client.close()
        info = wait_for(lambda: (i := read_tcp_info(self.server)) and i.state_name == "CLOSE_WAIT" and i,
                        "CLOSE_WAIT")
        self.assertFalse(info.established)

    def test_closed_socket_reads_none(self) -> None:
        """A closed socket has no TCP_INFO: None, no exception."""
        self.server.close()
        self.assertIsNone(read_tcp_info(self.server))

    def test_not_tcp_reads_none(self) -> None:
        """A UNIX or UDP socket has no TCP_INFO: None."""
        a, b = socket.socketpair()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for s in (a, b, udp):
            self.addCleanup(s.close)
            self.assertIsNone(read_tcp_info(s))

    def test_keepalive_options_are_set(self) -> None:
        """apply_keepalive's values read back through getsockopt, and nothing is missing on Linux."""
        missing = apply_keepalive(self.server, KeepaliveSettings(idle=5, interval=2, count=3, user_timeout=4.5))
        self.assertEqual(missing, [])
        get = self.server.getsockopt
        self.assertEqual(get(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(get(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 5)
        self.assertEqual(get(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), 2)
        self.assertEqual(get(socket.IPPROTO_TCP, socket.TCP_KEEPCNT), 3)
        self.assertEqual(get(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 4500)

    def test_keepalive_timer_runs(self) -> None:
        """
        After apply_keepalive the kernel runs a keepalive timer on the
        established socket (``ss -o`` shows ``timer:(keepalive,...)``);
        before, it runs none.
        """
        port = self.server.getsockname()[1]
        self.assertNotIn("timer:(keepalive", ss_line(port))
        apply_keepalive(self.server, KeepaliveSettings(idle=30, interval=5, count=2, user_timeout=0))
        line = ss_line(port)
        self.assertRegex(line, r"timer:\(keepalive,(2\d|30)(\.\d+)?sec,0\)")

    def test_closed_socket_options_reported(self) -> None:
        """apply_keepalive on a closed socket lists every option and raises nothing."""
        self.server.close()
        missing = apply_keepalive(self.server, KeepaliveSettings())
        self.assertEqual(missing, ["SO_KEEPALIVE", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT", "TCP_USER_TIMEOUT"])

    def test_proxy_reads_the_same(self) -> None:
        """Through a RecordingSocket, TCP_INFO and options read as on the socket itself."""
        proxy = RecordingSocket(self.server)
        info = read_tcp_info(proxy)
        assert info is not None
        self.assertTrue(info.established)
        self.assertEqual(apply_keepalive(proxy, KeepaliveSettings()), [])
        self.assertEqual(self.server.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 3000)

    def test_unread_reset_is_kept_in_so_error(self) -> None:
        """
        A RST nobody read (Twisted does not read while paused) is still found:
        the snapshot before close reads it from SO_ERROR, and the state is CLOSE.
        """
        proxy = RecordingSocket(self.server)
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.close()
        wait_for(lambda: (i := read_tcp_info(self.server)) and i.state_name == "CLOSE", "reset arrives")
        proxy.close()
        self.assertEqual(proxy.record.so_error, errno.ECONNRESET)
        self.assertEqual(proxy.record.cause(), "reset")


# ------------------------------------------------------ with a real reactor


class Recorded(protocol.Protocol):
    """
    Server side: on connection, finds the TCP transport under whatever
    transport it has, installs the recorder and keepalive; echoes; fires
    C{factory.ended} with the record when the connection is lost.
    """

    def connectionMade(self) -> None:
        tcp = find_tcp_transport(self.transport)
        assert tcp is not None, self.transport
        self.record = install_recorder(tcp)
        self.missing = apply_keepalive(find_socket(self.transport), KeepaliveSettings())
        self.factory.made.callback(self)  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.ended.callback((self.record, reason))  # type: ignore[attr-defined]


class RecordedFactory(protocol.Factory):
    protocol = Recorded

    def __init__(self, reactor: Any) -> None:
        self.made: defer.Deferred[Recorded] = defer.Deferred()
        self.ended: defer.Deferred[tuple[SocketRecord, Any]] = defer.Deferred()
        self.made.addTimeout(DEADLINE, reactor)
        self.ended.addTimeout(DEADLINE, reactor)


class Collector(protocol.Protocol):
    """Client side: sends C{payload}, closes once all of it came back."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.received = bytearray()
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= len(self.payload):
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(bytes(self.received))


class ReactorRecorderTests(TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.reactor = global_reactor()
        self.factory = RecordedFactory(self.reactor)
        self.port = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.address = ("127.0.0.1", self.port.getHost().port)

    def plain_client(self) -> socket.socket:
        client = socket.create_connection(self.address, timeout=DEADLINE)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_reset_by_peer(self) -> _Gen:
        """The peer closes with SO_LINGER 0 (RST): Twisted says ConnectionLost, the record says reset."""
        client = self.plain_client()
        server = yield self.factory.made
        self.assertEqual(server.missing, [])
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        record, reason = yield self.factory.ended
        self.assertEqual(record.errno, errno.ECONNRESET)
        self.assertEqual(record.cause(), "reset")
        self.assertTrue(record.finished)

    @defer.inlineCallbacks
    def test_clean_close(self) -> _Gen:
        """The peer closes with a FIN: no error, the last state was CLOSE_WAIT, the record says closed."""
        client = self.plain_client()
        yield self.factory.made
        client.close()
        record, reason = yield self.factory.ended
        self.assertIsNone(record.errno)
        self.assertEqual(record.so_error, 0)
        assert record.final_info is not None
        self.assertEqual(record.final_info.state_name, "CLOSE_WAIT")
        self.assertEqual(record.cause(), "closed")

    @defer.inlineCallbacks
    def test_serves_data_through_the_proxy(self) -> _Gen:
        """
        With the recorder installed, a real reactor still reads and writes
        through it: 4 MB echoed intact (partial writes, would-block retries
        and all), then a clean close, no error recorded.
        """
        payload = bytes(range(256)) * (4 * 4096)
        client = Collector(payload)
        yield connectProtocol(TCP4ClientEndpoint(self.reactor, *self.address), client)
        server = yield self.factory.made
        self.assertIsInstance(server.transport.socket, RecordingSocket)
        received = yield client.done.addTimeout(10, self.reactor)
        self.assertEqual(received, payload)
        record, _ = yield self.factory.ended
        self.assertIsNone(record.errno)
        self.assertEqual(record.cause(), "closed")

    @defer.inlineCallbacks
    def test_tcp_info_of_a_live_twisted_connection(self) -> _Gen:
        """
        The heartbeat's read: TCP_INFO of a connection a reactor is serving,
        found with find_socket: established, with the handshake's RTT.
        """
        client = self.plain_client()
        server = yield self.factory.made
        info = read_tcp_info(find_socket(server.transport))
        assert isinstance(info, TcpInfo)
        self.assertTrue(info.established)
        self.assertGreater(info.rtt_us, 0)
        self.assertLess(info.idle_ms, DEADLINE * 1000)
        client.close()
        yield self.factory.ended

    @defer.inlineCallbacks
    def test_abort_is_snapshotted(self) -> _Gen:
        """Our own abortConnection (close without shutdown) still leaves a final snapshot."""
        self.plain_client()
        server = yield self.factory.made
        server.transport.abortConnection()
        record, _ = yield self.factory.ended
        self.assertTrue(record.finished)
        assert record.final_info is not None
        self.assertEqual(record.final_info.state_name, "ESTABLISHED")
        self.assertEqual(record.cause(), "closed")


def self_signed_pem() -> str:
    """A throwaway key and self-signed certificate for localhost, as one PEM."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return (key_pem + cert.public_bytes(serialization.Encoding.PEM)).decode("ascii")


class TlsRecorderTests(TestCase):
    """The same recorder under TLS: the protocol's transport is the TLS layer."""

    timeout = 20

    @defer.inlineCallbacks
    def test_tls_reset_and_data(self) -> _Gen:
        """
        Through TLSMemoryBIOProtocol the socket is found one level down;
        data flows over TLS through the proxy, and a RST is reported as reset.
        """
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

        certificate = ssl.PrivateCertificate.loadPEM(self_signed_pem())
        reactor = global_reactor()
        factory = RecordedFactory(reactor)
        tls = TLSMemoryBIOFactory(certificate.options(), False, factory)
        port = reactor.listenTCP(0, tls, interface="127.0.0.1")
        self.addCleanup(port.stopListening)

        client = Collector(b"hello over tls" * 1000)
        client_options = ssl.CertificateOptions(verify=False)
        yield connectProtocol(SSL4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port, client_options), client)
        server = yield factory.made
        self.assertIsInstance(server.transport, TLSMemoryBIOProtocol)
        self.assertIsInstance(find_tcp_transport(server.transport).socket, RecordingSocket)
        received = yield client.done.addTimeout(DEADLINE, reactor)
        self.assertEqual(received, b"hello over tls" * 1000)
        record, _ = yield factory.ended
        self.assertIsNone(record.errno)
        self.assertEqual(record.cause(), "closed")

        # A second connection, reset by a plain-socket peer mid-handshake.
        factory2 = RecordedFactory(reactor)
        port2 = reactor.listenTCP(0, TLSMemoryBIOFactory(certificate.options(), False, factory2),
                                  interface="127.0.0.1")
        self.addCleanup(port2.stopListening)
        raw = socket.create_connection(("127.0.0.1", port2.getHost().port), timeout=DEADLINE)
        self.addCleanup(raw.close)
        yield factory2.made
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        record2, _ = yield factory2.ended
        self.assertEqual(record2.cause(), "reset")


def test_vitals_agree_with_the_full_tcp_info_on_a_real_socket() -> None:
    """The heartbeat's 72-byte read gives the same values as the full parser, field by field."""
    import socket as socketmodule

    from boatwist.net.tcpinfo import TcpVitals, read_tcp_info, read_tcp_vitals

    server = socketmodule.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socketmodule.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        client.sendall(b"x" * 1000)
        accepted.recv(1000)
        accepted.sendall(b"y" * 500)
        client.recv(500)
        vitals = read_tcp_vitals(accepted)
        info = read_tcp_info(accepted)
        assert vitals is not None and info is not None
        for name in TcpVitals._fields:
            if name in ("last_data_recv_ms", "last_ack_recv_ms", "rtt_us"):
                assert abs(getattr(vitals, name) - getattr(info, name)) <= 5 + getattr(info, name) // 2, name
            else:
                assert getattr(vitals, name) == getattr(info, name), name
        assert vitals.state_name == "ESTABLISHED" and vitals.established and not vitals.troubled
        assert vitals.rtt_us > 0
    finally:
        for s in (client, accepted, server):
            s.close()
