"""
TLS for the HTTPS listener.

The HTTPS listener is a plain stream endpoint (``tcp:8443``, or
``systemd:domain=INET:index=1`` under socket activation) with TLS put on top
by L{wrap_tls}, rather than Twisted's ``ssl:`` endpoint, for two reasons:
socket-activated listeners arrive as bare file descriptors, and the
certificate may have to be *made* before the listener exists.

A device leaves the factory with no certificate, and nobody will hand it one.
With ``[server] certificate = auto`` (the default), L{ensure_self_signed}
makes one on first start in ``state_dir/tls/`` and reuses it ever after, so
that the SHA-256 fingerprint the daemon logs (L{fingerprint}) stays what the
operator compared and pinned the first time.  The certificate is a
self-signed *leaf* (``CA:FALSE``): OpenSSL 3, Python's C{ssl} module and
curl accept it as its own trust anchor (``--cacert cert.pem``; pinned by a
test, including with C{VERIFY_X509_STRICT}), and Firefox refuses a
``CA:TRUE`` certificate presented as a server certificate.

Errors in what an integrator configured are a L{TLSConfigError} with one line
naming the file, for the same reason as L{boatwist.config.ConfigError}: the
person fixing it is editing C{/etc/boatwist/embweb.ini}, not reading Python.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, Union

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import OpenSSL
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IProtocolFactory
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from boatwist.files import atomic_write

if TYPE_CHECKING:
    from boatwist.config import ServerSettings

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "TLS_DIRECTORY",
    "TLSConfigError",
    "certificate_files",
    "ensure_self_signed",
    "fingerprint",
    "server_tls_options",
    "wrap_tls",
]

#: Sub-directory of ``state_dir`` holding the automatic certificate.
TLS_DIRECTORY = "tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

#: How long the automatic certificate is valid.  Long, because a device in a
#: cabinet is not re-provisioned; an operator who pinned the fingerprint would
#: otherwise face a new one out of the blue.
VALIDITY = datetime.timedelta(days=3650)

#: A device without a battery-backed clock boots in 1970 (or at its image's
#: build date) until NTP answers.  A certificate dated from such a clock would
#: expire in 1980, i.e. be expired as soon as the clock is right.  Below this
#: date the clock is assumed unset: the certificate still starts a day before
#: "now", so it is valid at once, but ends VALIDITY after this date.
EARLIEST_PLAUSIBLE_TIME = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)

#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with an AEAD cipher
#: only, the Mozilla "intermediate" profile minus finite-field DHE (Twisted
#: offers DHE only with explicit DH parameters).  Twisted's default list
#: would also allow static-RSA key exchange and CBC.  TLS 1.3 suites are all
#: AEAD and are not governed by this string.
CIPHERS = (
    "TLS13-AES-256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256:TLS13-AES-128-GCM-SHA256:"
    "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"
)

PrivateKey = Union[
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
]


#: The key types that can sign a TLS handshake (not X25519/X448 or DH keys).
_SIGNING_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class TLSConfigError(ValueError):
    """
    A certificate or key file is missing, unreadable, malformed or does not
    match its partner.  The message is one line and names the file.
    """


# ------------------------------------------------------------ public API


def ensure_self_signed(
    state_dir: Path,
    hostnames: Sequence[str] = (),
    *,
    now: Callable[[], datetime.datetime] | None = None,
) -> tuple[Path, Path]:
    """
    Return C{(cert_path, key_path)} of the automatic certificate in
    C{state_dir/tls/}, making it first if there is none yet.

    An existing pair that loads and matches is reused as it is, even if
    C{hostnames} or the host name changed since: its fingerprint is what
    operators pinned.  (To get a new one, delete both files and restart.)
    A pair that is incomplete, unparseable, mismatched or expired is
    replaced, with a warning, because the alternative is a device whose
    HTTPS never comes up again; a pair that exists but cannot be *read*
    (permissions) raises L{TLSConfigError} instead, so that a daemon started
    as the wrong user does not overwrite the right user's key.

    @param hostnames: names or addresses to add to the subject alternative
        names, after C{localhost}, C{127.0.0.1}, C{::1} and this host's name.
    @param now: returns the current time (timezone-aware); tests inject it.
    """
    clock = now or (lambda: datetime.datetime.now(datetime.timezone.utc))
    return _SelfSigned(Path(state_dir) / TLS_DIRECTORY, tuple(hostnames), clock).ensure()


def fingerprint(cert_path: Path) -> str:
    """
    The SHA-256 fingerprint of the (first) certificate in C{cert_path}, as
    colon-separated upper-case hex pairs.

    This is the form browsers show in their certificate viewer and
    C{openssl x509 -noout -fingerprint -sha256} prints, so an operator can
    compare what the daemon logged with what their client shows, byte pair
    by byte pair, before trusting a self-signed certificate.
    """
    certs = _parse_certificates(_read(Path(cert_path), "certificate"), Path(cert_path))
    return ":".join(f"{byte:02X}" for byte in certs[0].fingerprint(hashes.SHA256()))


def server_tls_options(cert_path: Path, key_path: Path) -> CertificateOptions:
    """
    Server-side TLS options for the certificate (plus any chain following it
    in the same PEM file, as in a C{fullchain.pem}) and its private key.

    TLS 1.2 is the minimum and only forward-secret AEAD suites are offered
    (L{CIPHERS}).  Everything is loaded, checked and handed to OpenSSL now,
    so a bad file stops the daemon at start with a L{TLSConfigError} naming
    it, instead of every later handshake failing with an error nobody reads.
    No ALPN protocols are offered: HTTP/1.1 is all the web server speaks.
    (Twisted installs pyOpenSSL's ALPN callback regardless; it is a cffi
    callback, which needs writable and executable memory, so TLS cannot work
    under systemd's C{MemoryDenyWriteExecute=yes}; see C{docs/systemd.md}.)
    """
    cert_path, key_path = Path(cert_path), Path(key_path)
    certs = _parse_certificates(_read(cert_path, "certificate"), cert_path)
    key = _parse_private_key(_read(key_path, "private key"), key_path)
    _check_match(certs[0], key, cert_path, key_path)
    try:
        options = CertificateOptions(
            privateKey=_for_pyopenssl_key(key),
            certificate=_for_pyopenssl_cert(certs[0]),
            extraCertChain=[_for_pyopenssl_cert(c) for c in certs[1:]],
            raiseMinimumTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(CIPHERS),
        )
        # Builds the OpenSSL context now; OpenSSL's own checks (a key too
        # weak for the system's security level, say) surface here.
        options.getContext()
    except (SSL.Error, ValueError, TypeError) as e:
        raise TLSConfigError(f"{cert_path}: OpenSSL refuses this certificate and key ({_one_line(e)})") from None
    except MemoryError as e:
        # Twisted always installs pyOpenSSL's ALPN callback, a cffi callback
        # that needs writable+executable memory; MemoryDenyWriteExecute=yes
        # in a systemd unit forbids it.  Say so rather than print a traceback.
        if "write+execute" not in str(e):
            raise
        raise TLSConfigError(
            f"{cert_path}: cannot set up TLS: pyOpenSSL needs write+execute memory for its callbacks"
            " (is MemoryDenyWriteExecute=yes set in the systemd unit?)"
        ) from None
    return options


def wrap_tls(factory: IProtocolFactory, tls_options: IOpenSSLServerConnectionCreator) -> TLSMemoryBIOFactory:
    """
    Put server-side TLS on top of C{factory}, so that any plain stream
    endpoint (``tcp:``, ``systemd:``) serves TLS.

    The protocols C{factory} builds see the TLS layer as their transport;
    the socket is one level down (C{transport.transport}).
    """
    return TLSMemoryBIOFactory(tls_options, False, factory)


def certificate_files(server: ServerSettings, hostnames: Sequence[str] = ()) -> tuple[Path, Path]:
    """
    The C{(cert_path, key_path)} that C{[server] certificate} and
    C{private_key} designate: the automatic pair in C{state_dir} for
    C{auto}, else the configured files (checked by L{server_tls_options}).
    """
    if server.certificate.strip().lower() == "auto":
        return ensure_self_signed(server.state_dir, hostnames)
    return Path(server.certificate), Path(server.private_key)


# ------------------------------------------------------------ the automatic pair


class _SelfSigned:
    """Makes, checks and reuses the automatic pair in one directory."""

    _log = Logger()

    def __init__(
        self,
        directory: Path,
        hostnames: tuple[str, ...],
        now: Callable[[], datetime.datetime],
    ) -> None:
        self._directory = directory
        self._hostnames = hostnames
        self._now = now
        self._cert = directory / CERT_FILE
        self._key = directory / KEY_FILE

    def ensure(self) -> tuple[Path, Path]:
        problem = self._problem_with_existing()
        if problem is None:
            return self._cert, self._key
        if problem:
            self._log.warn(
                "Replacing the automatic TLS certificate in {directory}: {problem}",
                directory=str(self._directory),
                problem=problem,
            )
        self._generate()
        return self._cert, self._key

    def _problem_with_existing(self) -> str | None:
        """
        None if the existing pair is fine to reuse, "" if there is none, else
        why it must be replaced.  Unreadable files raise L{TLSConfigError}.
        """
        contents: dict[Path, bytes] = {}
        for path in (self._cert, self._key):
            try:
                contents[path] = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise TLSConfigError(f"{path}: cannot read the automatic TLS {path.stem} ({e.strerror})") from None
        if not contents:
            return ""
        if len(contents) == 1:
            (present,) = contents
            return f"{present.name} exists without its partner"
        try:
            certs = _parse_certificates(contents[self._cert], self._cert)
            key = _parse_private_key(contents[self._key], self._key)
            _check_match(certs[0], key, self._cert, self._key)
        except TLSConfigError as e:
            return str(e)
        now = self._now()
        if now >= EARLIEST_PLAUSIBLE_TIME and certs[0].not_valid_after_utc < now:
            return f"{self._cert.name} expired on {certs[0].not_valid_after_utc:%Y-%m-%d}"
        self._tighten_key_mode()
        return None

    def _tighten_key_mode(self) -> None:
        """A reused key readable by others is made 0600 again: it is ours."""
        try:
            mode = stat.S_IMODE(self._key.stat().st_mode)
            if mode & 0o077:
                os.chmod(self._key, 0o600)
                self._log.warn("{key} was mode {mode:o}; set it to 600", key=str(self._key), mode=mode)
        except OSError as e:
            self._log.warn("{key}: cannot check or fix its mode ({error})", key=str(self._key), error=e.strerror)

    def _generate(self) -> None:
        now = self._now()
        if now < EARLIEST_PLAUSIBLE_TIME:
            self._log.warn(
                "The clock says {now:%Y-%m-%d}, which looks unset; the automatic TLS certificate"
                " is made valid from then until {until:%Y-%m-%d}",
                now=now,
                until=EARLIEST_PLAUSIBLE_TIME + VALIDITY,
            )
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build_certificate(key, _subject_alt_names(self._hostnames, self._log), now)
        # Key first: a crash in between leaves a key without a certificate,
        # which the next start treats as "incomplete" and replaces.
        atomic_write(
            self._key,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            0o600,
        )
        atomic_write(self._cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        self._log.info(
            "Made a self-signed TLS certificate {cert} for {names}",
            cert=str(self._cert),
            names=", ".join(_names_of(cert)),
        )

    def _remove_stale_temporaries(self) -> None:
        """Temporaries a crash left behind may hold key material: remove them."""
        for leftover in self._directory.glob(".*.tmp"):
            try:
                leftover.unlink()
            except OSError:
                pass


def _subject_alt_names(extra: Sequence[str], log: Logger) -> list[x509.GeneralName]:
    """
    localhost, the loopback addresses, this host's name (and its mDNS
    C{.local} form, how most people reach a device on a LAN), then C{extra}.
    Names that are not valid DNS names or IP addresses are skipped with a
    warning rather than refused: a strange host name must not keep HTTPS down.
    """
    host = socket.gethostname()
    candidates = ["localhost", "127.0.0.1", "::1", host]
    if host and "." not in host and host != "localhost":
        candidates.append(f"{host}.local")
    candidates.extend(extra)
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in candidates:
        text = raw.strip().rstrip(".")
        if not text:
            continue
        general: x509.GeneralName
        try:
            address = ipaddress.ip_address(text)
            key = str(address)
            general = x509.IPAddress(address)
        except ValueError:
            ascii_name = _dns_name(text)
            if ascii_name is None:
                log.warn("Not putting {name!r} in the TLS certificate: not a DNS name or IP address", name=raw)
                continue
            key = ascii_name
            general = x509.DNSName(ascii_name)
        if key not in seen:
            seen.add(key)
            names.append(general)
    return names


def _dns_name(text: str) -> str | None:
    """C{text} as an ASCII (IDNA) DNS name, lower case, or None if it is not one."""
    try:
        ascii_name = text.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        return None
    labels = ascii_name.split(".")
    for index, label in enumerate(labels):
        if label == "*" and index == 0 and len(labels) > 2:
            continue
        if not (0 < len(label) <= 63) or label[0] == "-" or label[-1] == "-":
            return None
        if not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return None
    return ascii_name if len(ascii_name) <= 253 else None


def _build_certificate(
    key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName], now: datetime.datetime
) -> x509.Certificate:
    """
    A self-signed server certificate: C{CA:FALSE}, key usage for ECDSA
    signatures, extended key usage serverAuth (Apple clients insist), and
    key identifiers (OpenSSL's strict mode, Python 3.13's default, wants them).
    """
    first_dns = next((n.value for n in names if isinstance(n, x509.DNSName) and n.value != "localhost"), "localhost")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "boatwist (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, first_dns[:64]),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(max(now, EARLIEST_PLAUSIBLE_TIME) + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _names_of(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in san]


# ------------------------------------------------------------ loading and checking


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSConfigError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{path}: is a directory, expected a PEM {what} file") from None
    except OSError as e:
        raise TLSConfigError(f"{path}: cannot read the {what} file ({e.strerror})") from None


def _parse_certificates(data: bytes, path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(
            f"{path}: expected PEM certificates (-----BEGIN CERTIFICATE-----) ({_one_line(e)})") from None
    if not certs:
        raise TLSConfigError(f"{path}: expected PEM certificates (-----BEGIN CERTIFICATE-----)")
    return certs


def _parse_private_key(data: bytes, path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"{path}: the private key is encrypted; expected an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(
            f"{path}: expected a PEM private key (-----BEGIN PRIVATE KEY-----) ({_one_line(e)})") from None
    if not isinstance(key, _SIGNING_KEY_TYPES):
        raise TLSConfigError(f"{path}: a {type(key).__name__} cannot sign TLS handshakes")
    return key


def _check_match(cert: x509.Certificate, key: PrivateKey, cert_path: Path, key_path: Path) -> None:
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TLSConfigError(f"{key_path}: this private key does not belong to the certificate in {cert_path}")


def _pyopenssl_takes_cryptography_objects() -> bool:
    """
    pyOpenSSL 24.3 and later take C{cryptography} keys and certificates and
    deprecate their own C{X509}/C{PKey} (warning on every use); older ones
    take only the latter.  Twisted hands whichever it is given straight to
    pyOpenSSL's C{use_certificate}/C{use_privatekey}/C{add_extra_chain_cert},
    whatever its type hints say.
    """
    try:
        major, minor = (int(part) for part in OpenSSL.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (24, 3)


def _for_pyopenssl_cert(cert: x509.Certificate) -> crypto.X509:
    if _pyopenssl_takes_cryptography_objects():
        return cert  # type: ignore[return-value]
    return crypto.X509.from_cryptography(cert)


def _for_pyopenssl_key(key: PrivateKey) -> crypto.PKey:
    if _pyopenssl_takes_cryptography_objects():
        return key  # type: ignore[return-value]
    return crypto.PKey.from_cryptography_key(key)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
