"""
Tests for boatwist.tls: the automatic certificate, the server options and
real TLS handshakes on 127.0.0.1.

The handshake tests use the real reactor (the point is what OpenSSL on both
ends really accepts) with a client from Python's ``ssl`` module in a thread.
They wait on real events (the client's result, the server side's
connectionLost), never on time.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import socket
import ssl
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Generator

from cryptography import x509
from twisted.internet import defer, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from boatwist import tls
from boatwist.tls import TLSConfigError, ensure_self_signed, fingerprint, server_tls_options, wrap_tls

UTC = datetime.timezone.utc


def fresh_path(case: TestCase) -> Path:
    """
    A path that does not exist yet, inside a temporary directory removed
    after the test.  (TestCase.mktemp would put it under the working
    directory, i.e. the source tree, when pytest runs the tests.)
    """
    directory = Path(tempfile.mkdtemp(prefix="boatwist-test-"))
    case.addCleanup(shutil.rmtree, directory, True)
    return directory / "new"


def _load(cert_path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(cert_path.read_bytes())


def _san(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in names]


def _fixed(when: datetime.datetime) -> Callable[[], datetime.datetime]:
    return lambda: when


class SelfSignedTests(TestCase):
    """ensure_self_signed: making, reusing and replacing the automatic pair."""

    def setUp(self) -> None:
        self.state = fresh_path(self)

    def test_generates_pair_in_state_dir(self) -> None:
        """
        On first start the pair is written to state_dir/tls/cert.pem and
        key.pem; the certificate names localhost, both loopback addresses,
        this host and the extra names, is not a CA, and is valid ~10 years.
        """
        cert_path, key_path = ensure_self_signed(self.state, ["device.example", "192.0.2.7"])
        self.assertEqual(cert_path, self.state / "tls" / "cert.pem")
        self.assertEqual(key_path, self.state / "tls" / "key.pem")
        cert = _load(cert_path)
        names = _san(cert)
        for expected in ["localhost", "127.0.0.1", "::1", socket.gethostname().lower(), "device.example", "192.0.2.7"]:
            self.assertIn(expected, names)
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        self.assertFalse(basic.ca)
        lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
        self.assertGreater(lifetime, datetime.timedelta(days=9 * 365))
        self.assertLess(lifetime, datetime.timedelta(days=11 * 365))

    def test_invalid_extra_names_are_skipped(self) -> None:
        """A hostname that is not a DNS name or an address is left out instead of failing start-up."""
        cert_path, _ = ensure_self_signed(self.state, ["not a name!", "ok.example"])
        names = _san(_load(cert_path))
        self.assertIn("ok.example", names)
        self.assertNotIn("not a name!", names)

    def test_reused_on_later_starts(self) -> None:
        """A second start reuses the pair: same fingerprint, same key bytes, even with other hostnames."""
        cert_path, key_path = ensure_self_signed(self.state)
        first = fingerprint(cert_path)
        key_bytes = key_path.read_bytes()
        again = ensure_self_signed(self.state, ["new-name.example"])
        self.assertEqual(again, (cert_path, key_path))
        self.assertEqual(fingerprint(cert_path), first)
        self.assertEqual(key_path.read_bytes(), key_bytes)

    def test_key_mode_0600_whatever_the_umask(self) -> None:
        """The key is created 0600 (and its directory 0700) even under a permissive umask."""
        old = os.umask(0)
        try:
            _, key_path = ensure_self_signed(self.state)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(key_path.stat().st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(key_path.parent.stat().st_mode), 0o700)

    def test_no_temporaries_left(self) -> None:
        """Atomic writes leave only cert.pem and key.pem behind."""
        cert_path, _ = ensure_self_signed(self.state)
        self.assertEqual(sorted(p.name for p in cert_path.parent.iterdir()), ["cert.pem", "key.pem"])

    def test_reused_key_made_private_again(self) -> None:
        """A reused key found readable by others is set back to 0600."""
        _, key_path = ensure_self_signed(self.state)
        key_path.chmod(0o644)
        ensure_self_signed(self.state)
        self.assertEqual(stat.S_IMODE(key_path.stat().st_mode), 0o600)

    def test_incomplete_pair_replaced(self) -> None:
        """A key without its certificate (a crash between the two writes) is replaced by a new pair."""
        cert_path, key_path = ensure_self_signed(self.state)
        old_key = key_path.read_bytes()
        cert_path.unlink()
        ensure_self_signed(self.state)
        self.assertTrue(cert_path.exists())
        self.assertNotEqual(key_path.read_bytes(), old_key)
        server_tls_options(cert_path, key_path)  # and the new pair matches

    def test_corrupt_pair_replaced(self) -> None:
        """A certificate that does not parse is replaced rather than keeping HTTPS down for good."""
        cert_path, key_path = ensure_self_signed(self.state)
        cert_path.write_bytes(b"garbage\n")
        ensure_self_signed(self.state)
        server_tls_options(cert_path, key_path)

    def test_mismatched_pair_replaced(self) -> None:
        """An automatic pair whose key does not match its certificate is replaced."""
        cert_path, key_path = ensure_self_signed(self.state)
        other_cert, _ = ensure_self_signed(fresh_path(self))
        cert_path.write_bytes(other_cert.read_bytes())
        ensure_self_signed(self.state)
        server_tls_options(cert_path, key_path)
        self.assertNotEqual(fingerprint(cert_path), fingerprint(other_cert))

    def test_unreadable_pair_not_overwritten(self) -> None:
        """
        A key that exists but cannot be read is an error naming it, not a
        reason to overwrite it (a daemon started as the wrong user must not
        clobber the right one's key).  A directory stands in for an
        unreadable file, as root reads everything.
        """
        cert_path, key_path = ensure_self_signed(self.state)
        key_path.unlink()
        key_path.mkdir()
        error = self.assertRaises(TLSConfigError, ensure_self_signed, self.state)
        self.assertIn(str(key_path), str(error))
        self.assertTrue(key_path.is_dir())

    def test_unset_clock_still_gives_a_long_lived_certificate(self) -> None:
        """
        Made while the clock says 1970 (no RTC, no NTP yet), the certificate
        is valid from then and still valid ten years after the plausible
        epoch, so it does not expire the moment NTP sets the clock.
        """
        boot = datetime.datetime(1970, 1, 1, 0, 0, 30, tzinfo=UTC)
        cert_path, _ = ensure_self_signed(self.state, now=_fixed(boot))
        cert = _load(cert_path)
        self.assertLessEqual(cert.not_valid_before_utc, boot)
        self.assertGreaterEqual(cert.not_valid_after_utc, tls.EARLIEST_PLAUSIBLE_TIME + datetime.timedelta(days=3649))

    def test_expired_replaced_valid_kept(self) -> None:
        """An expired automatic certificate is replaced; one merely nine years old is kept."""
        made = datetime.datetime(2026, 1, 1, tzinfo=UTC)
        cert_path, _ = ensure_self_signed(self.state, now=_fixed(made))
        first = fingerprint(cert_path)
        ensure_self_signed(self.state, now=_fixed(made + datetime.timedelta(days=9 * 365)))
        self.assertEqual(fingerprint(cert_path), first)
        ensure_self_signed(self.state, now=_fixed(made + datetime.timedelta(days=11 * 365)))
        self.assertNotEqual(fingerprint(cert_path), first)
        self.assertGreater(_load(cert_path).not_valid_after_utc, made + datetime.timedelta(days=20 * 365))


class CertificateFilesTests(TestCase):
    """certificate_files: what [server] certificate / private_key designate."""

    def test_auto_makes_pair_in_state_dir(self) -> None:
        """certificate = auto gives the automatic pair under state_dir/tls, made on the spot."""
        from boatwist.config import ServerSettings

        state = fresh_path(self)
        cert, key = tls.certificate_files(ServerSettings(state_dir=state, certificate="auto"))
        self.assertEqual((cert, key), (state / "tls" / "cert.pem", state / "tls" / "key.pem"))
        self.assertTrue(cert.exists() and key.exists())

    def test_configured_files_used_as_given(self) -> None:
        """Explicit paths are returned as they are, and nothing is generated."""
        from boatwist.config import ServerSettings

        state = fresh_path(self)
        settings = ServerSettings(state_dir=state, certificate="/etc/x/cert.pem", private_key="/etc/x/key.pem")
        self.assertEqual(tls.certificate_files(settings), (Path("/etc/x/cert.pem"), Path("/etc/x/key.pem")))
        self.assertFalse(state.exists())


class FingerprintTests(TestCase):
    """fingerprint(): what the daemon logs for operators to compare."""

    def test_sha256_of_der_in_browser_format(self) -> None:
        """The fingerprint is SHA-256 over the DER certificate, upper-case hex pairs joined by colons."""
        cert_path, _ = ensure_self_signed(fresh_path(self))
        der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
        digest = hashlib.sha256(der).hexdigest().upper()
        expected = ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
        self.assertEqual(fingerprint(cert_path), expected)

    def test_missing_file(self) -> None:
        """A missing certificate is a TLSConfigError naming the file."""
        missing = fresh_path(self) / "cert.pem"
        error = self.assertRaises(TLSConfigError, fingerprint, missing)
        self.assertIn(str(missing), str(error))


class ServerOptionsTests(TestCase):
    """server_tls_options: loading and checking what an integrator configured."""

    def setUp(self) -> None:
        self.cert, self.key = ensure_self_signed(fresh_path(self))

    def assertOneLineNaming(self, error: Exception, path: Path) -> None:
        message = str(error)
        self.assertIn(str(path), message)
        self.assertNotIn("\n", message)

    def test_mismatched_key(self) -> None:
        """A key from another pair is refused at once, in one line naming the key and the certificate."""
        _, other_key = ensure_self_signed(fresh_path(self))
        error = self.assertRaises(TLSConfigError, server_tls_options, self.cert, other_key)
        self.assertOneLineNaming(error, other_key)
        self.assertIn(str(self.cert), str(error))
        self.assertIn("does not belong", str(error))

    def test_files_swapped(self) -> None:
        """Certificate and key given the wrong way round: the error names the file that is not a certificate."""
        error = self.assertRaises(TLSConfigError, server_tls_options, self.key, self.cert)
        self.assertOneLineNaming(error, self.key)

    def test_missing_key(self) -> None:
        """A missing key file is named."""
        missing = self.key.with_name("nope.pem")
        error = self.assertRaises(TLSConfigError, server_tls_options, self.cert, missing)
        self.assertOneLineNaming(error, missing)

    def test_encrypted_key(self) -> None:
        """A passphrase-protected key is refused with a message saying so (the daemon cannot prompt)."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.key.read_bytes(), None)
        encrypted = self.key.with_name("encrypted.pem")
        encrypted.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
        error = self.assertRaises(TLSConfigError, server_tls_options, self.cert, encrypted)
        self.assertOneLineNaming(error, encrypted)
        self.assertIn("encrypted", str(error))

    def test_chain_file_accepted(self) -> None:
        """A fullchain-style file (leaf then more certificates) loads; the first one must match the key."""
        other_cert, _ = ensure_self_signed(fresh_path(self))
        chain = self.cert.with_name("fullchain.pem")
        chain.write_bytes(self.cert.read_bytes() + other_cert.read_bytes())
        options = server_tls_options(chain, self.key)
        self.assertEqual(len(options.extraCertChain), 1)

    def test_minimum_tls_1_2(self) -> None:
        """The context refuses SSLv3, TLS 1.0 and 1.1 by option flags, before any client shows up."""
        from OpenSSL import SSL

        options = server_tls_options(self.cert, self.key).getContext().set_options(0)  # returns the options in force
        for flag in (SSL.OP_NO_SSLv3, SSL.OP_NO_TLSv1, SSL.OP_NO_TLSv1_1):
            self.assertTrue(options & flag, flag)
        self.assertFalse(options & SSL.OP_NO_TLSv1_2)


# ------------------------------------------------------------ real handshakes


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        factory = self.factory
        assert isinstance(factory, _EchoFactory)
        factory.closed.append(reason)
        if factory.all_closed is not None and len(factory.closed) == factory.opened:
            factory.all_closed.callback(None)


class _EchoFactory(ServerFactory):
    """Echoes; lets the test wait until every server-side connection ended."""

    protocol = _Echo

    def __init__(self) -> None:
        self.opened = 0
        self.closed: list[Failure] = []
        self.all_closed: Deferred[None] | None = None

    def buildProtocol(self, addr: IAddress) -> Protocol | None:
        self.opened += 1
        return super().buildProtocol(addr)

    def wait_closed(self) -> Deferred[None]:
        if self.opened == len(self.closed):
            return defer.succeed(None)
        self.all_closed = Deferred()
        return self.all_closed


class HandshakeTests(TestCase):
    """TLS round trips on 127.0.0.1 through wrap_tls, a real reactor and Python's ssl module."""

    timeout = 60
    _log = Logger()

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.cert, key = ensure_self_signed(fresh_path(self))
        self.factory = _EchoFactory()
        self.port: IListeningPort = reactor.listenTCP(  # type: ignore[attr-defined]
            0, wrap_tls(self.factory, server_tls_options(self.cert, key)), interface="127.0.0.1"
        )
        self.addCleanup(self.port.stopListening)

    def _client(
        self,
        server_hostname: str = "localhost",
        adjust: Callable[[ssl.SSLContext], None] = lambda ctx: None,
    ) -> Deferred[tuple[bytes, str | None, tuple[str, str, int] | None]]:
        """
        In a thread: verify the server against the generated certificate as
        the only CA (strict X.509 checks on, as Python 3.13 has by default),
        send b"ping", return (echo, TLS version, cipher).
        """
        context = ssl.create_default_context(cafile=str(self.cert))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        adjust(context)
        port = self.port.getHost().port  # type: ignore[attr-defined]

        def run() -> tuple[bytes, str | None, tuple[str, str, int] | None]:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw, server_hostname=server_hostname) as conn:
                    conn.sendall(b"ping")
                    echoed = b""
                    while len(echoed) < 4:
                        chunk = conn.recv(4 - len(echoed))
                        if not chunk:
                            break
                        echoed += chunk
                    return echoed, conn.version(), conn.cipher()

        return threads.deferToThread(run)

    @inlineCallbacks
    def _client_error(self, **kwargs: object) -> Generator[Deferred[Any], Any, BaseException]:
        """Run the client; return the exception it raised (fail the test if it succeeded)."""
        try:
            result = yield self._client(**kwargs)  # type: ignore[arg-type]
        except Exception as e:
            yield self.factory.wait_closed()
            return e
        self.fail(f"the handshake succeeded: {result!r}")

    @inlineCallbacks
    def test_round_trip_verified_against_generated_cert(self) -> Generator[Deferred[Any], Any, None]:
        """
        A client that trusts only the generated certificate and checks the
        name 'localhost' completes the handshake (so the self-signed leaf
        works as its own trust anchor) and gets its bytes echoed back.
        """
        echoed, version, cipher = yield self._client()
        yield self.factory.wait_closed()
        self.assertEqual(echoed, b"ping")
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    @inlineCallbacks
    def test_loopback_ip_verified(self) -> Generator[Deferred[Any], Any, None]:
        """The certificate is valid for https://127.0.0.1/ as well (an IP SAN)."""
        echoed, _, _ = yield self._client(server_hostname="127.0.0.1")
        yield self.factory.wait_closed()
        self.assertEqual(echoed, b"ping")

    @inlineCallbacks
    def test_wrong_hostname_fails_verification(self) -> Generator[Deferred[Any], Any, None]:
        """Verification is real: a name not in the certificate fails the client's check."""
        error = yield self._client_error(server_hostname="elsewhere.example")
        self.assertIsInstance(error, ssl.SSLCertVerificationError)

    @inlineCallbacks
    def test_tls_1_2_client_accepted(self) -> Generator[Deferred[Any], Any, None]:
        """TLS 1.2 (the minimum) still works, with an ECDHE AEAD suite."""

        def tls12(ctx: ssl.SSLContext) -> None:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2

        echoed, version, cipher = yield self._client(adjust=tls12)
        yield self.factory.wait_closed()
        self.assertEqual((echoed, version), (b"ping", "TLSv1.2"))
        assert cipher is not None
        self.assertTrue(cipher[0].startswith("ECDHE-"), cipher)
        self.assertTrue("GCM" in cipher[0] or "CHACHA20" in cipher[0], cipher)

    @inlineCallbacks
    def test_tls_1_1_client_refused(self) -> Generator[Deferred[Any], Any, None]:
        """
        A TLS 1.1-only client is refused by the *server*: the client gets a
        protocol_version alert from it.  (The client is allowed to offer 1.1
        by security level 0, so the refusal cannot be the client's own.)
        """

        def tls11(ctx: ssl.SSLContext) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # that TLS 1.1 is deprecated is the point
                ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")

        error = yield self._client_error(adjust=tls11)
        self.assertIsInstance(error, ssl.SSLError)
        self.assertEqual(getattr(error, "reason", None), "TLSV1_ALERT_PROTOCOL_VERSION", error)

    @inlineCallbacks
    def test_cbc_suite_refused(self) -> Generator[Deferred[Any], Any, None]:
        """A TLS 1.2 client offering only a CBC suite finds no common cipher (server alert)."""

        def cbc_only(ctx: ssl.SSLContext) -> None:
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA256")

        error = yield self._client_error(adjust=cbc_only)
        self.assertIsInstance(error, ssl.SSLError)
        self.assertEqual(getattr(error, "reason", None), "SSLV3_ALERT_HANDSHAKE_FAILURE", error)
