"""
The INI file turned into typed, frozen, validated settings.

Every key has a default (so an empty file is a working configuration) and
every bad value is refused with one line that names the file, the line, the
``[section] key``, the value and what was expected: an integrator editing
``/etc/boatwist/embweb.ini`` on a device must not have to read a traceback.
Unknown sections and keys are refused too, because a misspelt key that is
silently ignored is a limit that silently does not apply.
"""

from __future__ import annotations

import configparser
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from boatwist.inivalues import boolean, optional_path, whole_number
from boatwist.controls.floor import FloorSettings, parse_floor_mode
from boatwist.controls.roles import RoleSettings, parse_role_setting, parse_user_list, role_lists_conflict

from boatwist.controls.spec import ControlSpec

from boatwist.mqtt import settings as _mqtt
from boatwist.mqtt.settings import MqttSettings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A configuration value is missing, malformed or out of range."""


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class ServerSettings:
    #: The device's name (the console's header, MQTT topics); empty: the host name.
    name: str = ""
    http: str = "tcp:8080:interface=127.0.0.1"
    https: str = ""
    chat: str = "tcp:8023:interface=127.0.0.1"
    state_dir: Path = Path("var")
    #: ``auto``: a self-signed certificate made in state_dir on first start.
    certificate: str = "auto"
    private_key: str = ""
    #: When https is on, answer every plain-HTTP request with a redirect to it.
    redirect_http: bool = False


@dataclass(frozen=True)
class AuthSettings:
    realm: str = "boatwist"
    schemes: tuple[str, ...] = ("digest", "basic")
    #: Digest algorithms offered, best first (urllib before Python 3.14, which
    #: reads only the first challenge and knows no SHA-256, is offered MD5 first).
    digest_algorithms: tuple[str, ...] = ("SHA-256", "MD5")
    #: htpasswd file with bcrypt hashes (Basic).  Empty: state_dir/users.htpasswd.
    users: Path | None = None
    #: htdigest file (Digest).  Empty: state_dir/users.htdigest.
    digest_users: Path | None = None
    #: How long a verified Basic credential is remembered, seconds.
    cache_ttl: float = 300.0
    #: Lifetime of a Digest nonce, seconds; older ones get ``stale=true``.
    nonce_lifetime: float = 300.0
    #: Password checks a minute for one user name, from all addresses together
    #: (a right password gives its check back; boatwist.auth.throttle).
    max_guesses: int = 60
    #: Seconds a login attempt may wait for a check before it is refused with Retry-After.
    max_wait: float = 5.0
    #: Failures from one address on one name within failure_window after which
    #: that address no longer goes first as one the user logged in from.
    max_failures: int = 5
    #: Seconds a failed or refused attempt is remembered (its address goes last for that name).
    failure_window: float = 300.0
    #: Seconds a failed login is answered late (the same for every name).
    failure_delay: float = 0.5


@dataclass(frozen=True)
class AdmissionSettings:
    max_users: int = 10
    max_connections_per_user: int = 8
    http_grace: float = 30.0
    networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    max_connections: int = 512
    max_connections_per_address: int = 64
    #: HTTP connections not (yet) authenticated; past it (or past either cap
    #: above) the one that should give way is closed (boatwist.net.tracking).
    max_unauthenticated: int = 128


@dataclass(frozen=True)
class KeepaliveSettings:
    idle: int = 1
    interval: int = 1
    count: int = 2
    #: Seconds unacknowledged data may stay in flight (TCP_USER_TIMEOUT); 0 = off.
    user_timeout: float = 3.0


@dataclass(frozen=True)
class HeartbeatSettings:
    interval: float = 1.0
    stream_interval: float = 15.0


@dataclass(frozen=True)
class HttpSettings:
    #: Seconds in which the request line and all headers must have arrived.
    header_timeout: float = 10.0
    #: Largest request body accepted, bytes; larger gets 413 unread.
    max_body: int = 65536
    #: Seconds an idle keep-alive HTTP connection is kept.
    idle_timeout: float = 60.0
    #: Seconds an idle keep-alive connection that has not authenticated is kept.
    unauthenticated_idle: float = 5.0
    #: Host header values served (name, name:port, .domain, IP); others get 421 (DNS
    #: rebinding).  Empty: any Host.
    hosts: tuple[str, ...] = ()
    #: Where the access log goes: None (empty) -- C{state_dir/access.log}, buffered
    #: and flushed every second; a path -- that file; L{ACCESS_LOG_TO_LOG} -- through
    #: twisted.logger (twistd's log, the journal); L{ACCESS_LOG_OFF} -- nowhere.
    access_log: Path | str | None = None


@dataclass(frozen=True)
class ChatSettings:
    #: Messages of history shown on login.
    history: int = 20
    max_line: int = 4096
    login_timeout: float = 30.0
    max_login_attempts: int = 3
    #: Connections on the chat port that have not logged in yet (boatwist.chat.gate:
    #: when full, the worst pending one is evicted for a newcomer).
    max_pending_logins: int = 16
    #: Bytes a chat connection may send before it has logged in (telnet included).
    max_login_bytes: int = 8192
    #: Telnet commands a chat connection may send per second (as many in a burst).
    max_telnet_commands: int = 50
    #: At most rate_messages per rate_period seconds per user.
    rate_messages: int = 10
    rate_period: float = 10.0
    #: Seconds a PING opted into with /heartbeat may stay unanswered.
    ping_timeout: float = 10.0


@dataclass(frozen=True)
class StoreSettings:
    #: Chat messages kept at most (oldest dropped first).
    retention_count: int = 10000
    #: Days a chat message is kept.
    retention_days: float = 90.0
    #: Bytes the database and its WAL stay within; 0 (``auto``): a quarter of
    #: the file system holding state_dir, at most 64 MiB (boatwist.store).
    max_size: int = 0


@dataclass(frozen=True)
class LogSettings:
    #: Empty: the log goes where twistd sends it (stdout with -n: the journal
    #: under systemd; --logfile, bounded by max_size and files).  A path:
    #: boatwist writes it there too, rotated.
    file: Path | None = None
    #: Bytes a log file (this one, twistd's, the access log) grows to before it is rotated.
    max_size: int = 1024 * 1024
    #: Rotated files kept of each.
    files: int = 5
    #: Lines a second about one source's unauthenticated or refused requests
    #: before the rest are counted into a summary line.
    per_source: int = 5
    #: Such lines a second from all sources together.
    max_lines: int = 50


@dataclass(frozen=True)
class EventSettings:
    #: Events kept for clients reconnecting with Last-Event-ID.
    buffer: int = 1000
    #: Bytes an event stream may have queued before it is dropped as a slow reader.
    max_queued: int = 262144


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    admission: AdmissionSettings = field(default_factory=AdmissionSettings)
    keepalive: KeepaliveSettings = field(default_factory=KeepaliveSettings)
    heartbeat: HeartbeatSettings = field(default_factory=HeartbeatSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    chat: ChatSettings = field(default_factory=ChatSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    events: EventSettings = field(default_factory=EventSettings)
    log: LogSettings = field(default_factory=LogSettings)
    roles: RoleSettings = field(default_factory=RoleSettings)
    floor: FloorSettings = field(default_factory=FloorSettings)
    #: The device's controls, [control:NAME] sections in INI order (boatwist.controls.config).
    controls: tuple[ControlSpec, ...] = ()
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    #: Where the settings came from, for messages.
    source: str = "<defaults>"

    @property
    def device_name(self) -> str:
        """C{[server] name}, or the host name when it is empty."""
        return self.server.name or socket.gethostname()

    @property
    def users_file(self) -> Path:
        return self.auth.users or self.server.state_dir / "users.htpasswd"

    @property
    def digest_users_file(self) -> Path:
        return self.auth.digest_users or self.server.state_dir / "users.htdigest"

    @property
    def access_log_file(self) -> Path | None:
        """The access log's file: C{[http] access_log}, C{state_dir/access.log} by default; None for log or off."""
        target = self.http.access_log
        if isinstance(target, Path):
            return target
        return self.server.state_dir / ACCESS_LOG_FILE if target is None else None


# ----------------------------------------------------------------- parsers

Parser = Callable[[str], object]


def _seconds(low: float, high: float) -> Parser:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"expected seconds from {low:g} to {high:g}") from None
        if not (low <= value <= high):  # also refuses nan
            raise ConfigError(f"expected seconds from {low:g} to {high:g}")
        return value

    return parse


def _expecting(parse: Callable[[str], object]) -> Parser:
    """
    A parser kept next to the settings it fills (L{boatwist.controls}) raises
    ValueError("expected ..."), so that module needs nothing from this one;
    here it becomes the ConfigError that names file, line and key.
    """

    def wrapped(text: str) -> object:
        try:
            return parse(text)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(str(e)) from None

    return wrapped


def _text(text: str) -> str:
    return text


_SIZE_UNITS = {"": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}


def _size(low: int, auto: bool) -> Parser:
    """Bytes, with an optional K/M/G (KiB, MiB, GiB) suffix; with C{auto}, ``auto`` is 0."""
    smallest = f"{low // 1024}K"
    expected = ("auto, or " if auto else "") + "a size in bytes like 4194304, 512K or 4M"

    def parse(text: str) -> int:
        if auto and text.lower() == "auto":
            return 0
        number = text.rstrip("kKmMgGiIbB ")
        unit = text[len(number):].strip().lower()
        if unit not in _SIZE_UNITS or not number.isdigit():
            raise ConfigError(f"expected {expected}")
        value = int(number) * _SIZE_UNITS[unit]
        if not low <= value <= 1 << 40:
            raise ConfigError(f"expected {'auto, or ' if auto else ''}a size from {smallest} to 1T")
        return value

    return parse


def _path(text: str) -> Path:
    if not text:
        raise ConfigError("expected a path")
    return Path(text)


#: The access log's file in state_dir when C{[http] access_log} is empty.
ACCESS_LOG_FILE = "access.log"
#: C{[http] access_log} values that are not a file.
ACCESS_LOG_TO_LOG = "log"
ACCESS_LOG_OFF = "off"


def _access_log(text: str) -> Path | str | None:
    """Empty (the default file in state_dir), C{log}, C{off}, or a file's path."""
    if text in (ACCESS_LOG_TO_LOG, ACCESS_LOG_OFF):
        return text
    return Path(text) if text else None


def _device_name(text: str) -> str:
    if len(text) > 64 or not text.isprintable():
        raise ConfigError("expected a printable name of at most 64 characters (empty: the host name)")
    return text


def _realm(text: str) -> str:
    if not text or any(c in text for c in '"\\:\r\n') or not text.isprintable():
        raise ConfigError("expected a printable name without quotes, backslashes or colons")
    return text


def _schemes(text: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not names or any(name not in ("digest", "basic") for name in names):
        raise ConfigError("expected a list of digest, basic")
    return tuple(dict.fromkeys(names))


def _host_list(text: str) -> tuple[str, ...]:
    hosts = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for host in hosts:
        if any(c.isspace() or c in "/?#@" for c in host):
            raise ConfigError("expected host names like device.local, .example.com, 192.0.2.1 or name:8080")
    return hosts


def _digest_algorithms(text: str) -> tuple[str, ...]:
    known = {"md5": "MD5", "sha-256": "SHA-256"}
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    if not names or any(name not in known for name in names):
        raise ConfigError("expected a list of MD5, SHA-256")
    return tuple(dict.fromkeys(known[name] for name in names))


def _networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as e:
            raise ConfigError(f"expected networks in CIDR form like 192.168.1.0/24 ({e})") from None
    if not networks:
        raise ConfigError("expected at least one network in CIDR form")
    return tuple(networks)


def _endpoint(optional: bool) -> Parser:
    def parse(text: str) -> str:
        if not text:
            if optional:
                return ""
            raise ConfigError("expected a Twisted endpoint string like tcp:8080:interface=127.0.0.1")
        if text.startswith("ssl:"):
            # Its files are checked with the whole [server] section (_check_ssl_files): the
            # automatic certificate in state_dir may not exist yet.
            return text
        check_endpoint(plain_endpoint(text))
        return text

    return parse


def plain_endpoint(description: str) -> str:
    """
    The stream endpoint under C{description}: C{tls:PORT[:options]} is
    C{tcp:PORT[:options]} with TLS put on top by boatwist, using the
    certificate of C{[server] certificate} (the automatic one by default),
    as the https listener always does.
    """
    return "tcp:" + description[4:] if description.startswith("tls:") else description


def is_tls(description: str) -> bool:
    """Whether boatwist puts TLS on the endpoint C{description} itself (C{tls:}; not C{ssl:}, Twisted's own)."""
    return description.startswith("tls:")


#: Options of Twisted's ssl: server endpoint that name files.
_SSL_FILE_OPTIONS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


def ssl_files(description: str) -> dict[str, str]:
    """The files an C{ssl:} endpoint names, by option (certKey defaults to privateKey, as in Twisted)."""
    import re

    fields = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)[1:]]
    options = dict(field.split("=", 1) for field in fields if "=" in field)
    files = {name: options[name] for name in _SSL_FILE_OPTIONS if options.get(name)}
    if "privateKey" in files and "certKey" not in files:
        files["certKey"] = files["privateKey"]
    return files


def _check_ssl_files(settings: Settings) -> None:
    """
    An C{ssl:} listener's files must exist -- except the automatic
    certificate and key in C{state_dir/tls/}, which the daemon makes before
    it listens -- and a missing one is named (Twisted's own message says
    only that the endpoint string is wrong).  When they all exist, Twisted
    checks the whole endpoint.
    """
    s = settings
    for key in ("http", "https", "chat"):
        description = getattr(s.server, key)
        if not description.startswith("ssl:"):
            continue
        from .tls import CERT_FILE, KEY_FILE, TLS_DIRECTORY  # here: without ssl: listeners it is not loaded

        automatic = {(s.server.state_dir / TLS_DIRECTORY / name).resolve() for name in (CERT_FILE, KEY_FILE)}
        where = f"{s.source}: [server] {key} = {description!r}"
        files = ssl_files(description)
        if "privateKey" not in files:
            raise ConfigError(f"{where}: expected privateKey=FILE (and certKey=FILE), or use tls:PORT for the "
                              f"certificate of [server] certificate")
        pending = False
        for option, name in files.items():
            path = Path(name)
            if path.exists():
                continue
            if path.resolve() in automatic and option in ("privateKey", "certKey"):
                pending = True  # made on first start, before the listeners
                continue
            raise ConfigError(f"{where}: {option} file {name!r} does not exist")
        if not pending:
            try:
                check_endpoint(description)
            except ConfigError as e:
                raise ConfigError(f"{where}: {e}") from None


def check_endpoint(description: str) -> None:
    """
    Refuse a malformed server endpoint string without listening on it.

    The string is parsed by Twisted itself (never listened on), so every
    endpoint type Twisted knows (``tcp:``, ``ssl:``, ``unix:``, ``systemd:``)
    is accepted and checked the way ``twistd`` would check it.
    """
    from .startup import listen_address, parse_endpoint

    expected = "expected a Twisted endpoint string like tcp:8080:interface=127.0.0.1"
    kind = description.split(":", 1)[0]
    if kind == "systemd":
        # Resolved against LISTEN_FDS only when listening; check the syntax here.
        if "domain=" not in description or "index=" not in description:
            raise ConfigError("expected systemd:domain=INET:index=N")
        return
    try:
        parse_endpoint(description)
    except Exception as e:  # Twisted raises ValueError, TypeError, KeyError, OSError ...
        reason = str(e) or type(e).__name__
        raise ConfigError(f"{expected} ({reason})") from None
    address = listen_address(description)
    if address is not None and not 0 <= address[1] <= 65535:
        raise ConfigError(f"expected a port from 0 to 65535, not {address[1]}")


#: section -> key -> (field name, parser); the whitelist of what may be written.
_SCHEMA: dict[str, dict[str, Parser]] = {
    "server": {
        "name": _device_name,
        "http": _endpoint(optional=True),
        "https": _endpoint(optional=True),
        "chat": _endpoint(optional=True),
        "state_dir": _path,
        "certificate": _text,
        "private_key": _text,
        "redirect_http": boolean,
    },
    "auth": {
        "realm": _realm,
        "schemes": _schemes,
        "digest_algorithms": _digest_algorithms,
        "users": optional_path,
        "digest_users": optional_path,
        "cache_ttl": _seconds(0, 86400),
        "nonce_lifetime": _seconds(10, 86400),
        "max_guesses": whole_number(2, 100000),
        "max_wait": _seconds(0, 60),
        "max_failures": whole_number(1, 1000),
        "failure_window": _seconds(1, 86400),
        "failure_delay": _seconds(0, 10),
    },
    "admission": {
        "max_users": whole_number(1, 10000),
        "max_connections_per_user": whole_number(1, 1000),
        "http_grace": _seconds(0, 86400),
        "networks": _networks,
        "max_connections": whole_number(1, 1000000),
        "max_connections_per_address": whole_number(1, 1000000),
        "max_unauthenticated": whole_number(1, 1000000),
    },
    "keepalive": {
        "idle": whole_number(1, 32767),
        "interval": whole_number(1, 32767),
        "count": whole_number(1, 127),
        "user_timeout": _seconds(0, 3600),
    },
    "heartbeat": {
        "interval": _seconds(0.05, 3600),
        "stream_interval": _seconds(0.1, 3600),
    },
    "http": {
        "header_timeout": _seconds(0.1, 3600),
        "max_body": whole_number(0, 1 << 30),
        "idle_timeout": _seconds(1, 86400),
        "unauthenticated_idle": _seconds(0.1, 86400),
        "access_log": _access_log,
        "hosts": _host_list,
    },
    "chat": {
        "history": whole_number(0, 1000),
        "max_line": whole_number(64, 1 << 20),
        "login_timeout": _seconds(1, 3600),
        "max_login_attempts": whole_number(1, 100),
        "max_pending_logins": whole_number(1, 100000),
        "max_login_bytes": whole_number(256, 1 << 20),
        "max_telnet_commands": whole_number(1, 100000),
        "rate_messages": whole_number(1, 100000),
        "rate_period": _seconds(0.1, 86400),
        "ping_timeout": _seconds(0.1, 3600),
    },
    "store": {
        "retention_count": whole_number(1, 100000000),
        "retention_days": _seconds(0.001, 100000),
        "max_size": _size(256 * 1024, auto=True),
    },
    "events": {
        "buffer": whole_number(0, 1000000),
        "max_queued": whole_number(1024, 1 << 30),
    },
    "log": {
        "file": optional_path,
        "max_size": _size(64 * 1024, auto=False),
        "files": whole_number(0, 1000),
        "per_source": whole_number(1, 100000),
        "max_lines": whole_number(1, 1000000),
    },
    "roles": {
        "default": _expecting(parse_role_setting),
        "viewer": _expecting(parse_user_list),
        "operator": _expecting(parse_user_list),
        "admin": _expecting(parse_user_list),
    },
    "floor": {
        "mode": _expecting(parse_floor_mode),
        "idle_release": _seconds(0, 86400),
        "handover_timeout": _seconds(0, 3600),
    },
    "mqtt": _mqtt.PARSERS,
}

#: Checks of a whole section, after each key parsed: (key to name, what was expected) or None.
_SECTION_CHECKS: dict[str, Callable[[Mapping[str, object]], tuple[str, str] | None]] = {
    "roles": role_lists_conflict,
}

_SECTION_TYPES = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "admission": AdmissionSettings,
    "keepalive": KeepaliveSettings,
    "heartbeat": HeartbeatSettings,
    "http": HttpSettings,
    "chat": ChatSettings,
    "store": StoreSettings,
    "events": EventSettings,
    "log": LogSettings,
    "roles": RoleSettings,
    "floor": FloorSettings,
    "mqtt": MqttSettings,
}


class _LineTrackingParser(configparser.ConfigParser):
    """A strict ConfigParser with keys lower-cased (lines are found by L{_key_lines})."""

    def __init__(self) -> None:
        super().__init__(interpolation=None, inline_comment_prefixes=(";", "#"), strict=True)

    def optionxform(self, optionstr: str) -> str:
        return optionstr.strip().lower()


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """Map (section, key) to its 1-based line number, for error messages."""
    lines: dict[tuple[str, str], int] = {}
    section = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            lines.setdefault((section, ""), number)
        elif "=" in line or ":" in line:
            sep = min(i for i in (line.find("="), line.find(":")) if i >= 0)
            lines.setdefault((section, line[:sep].strip().lower()), number)
    return lines


def parse_config(text: str, source: str = "<string>") -> Settings:
    """
    Parse INI text into L{Settings}, or raise L{ConfigError} with one line
    naming C{source}, the line, C{[section] key}, the value and what was expected.
    """
    parser = _LineTrackingParser()
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        message = " ".join(str(e).split())
        raise ConfigError(f"{source}: {message}") from None
    # Imported here: boatwist.controls.config raises this module's ConfigError.
    from boatwist.controls.config import CONTROL_PREFIX, parse_controls

    where = _key_lines(text)
    sections: dict[str, dict[str, object]] = {}
    controls: list[tuple[str, dict[str, tuple[str, int]], int]] = []
    for section in parser.sections():
        line = where.get((section, ""), 0)
        if section.startswith(CONTROL_PREFIX):
            items = {key: (raw, where.get((section, key), 0)) for key, raw in parser.items(section, raw=True)}
            controls.append((section[len(CONTROL_PREFIX) :], items, line))
            continue
        if section not in _SCHEMA:
            known = ", ".join([f"[{name}]" for name in _SCHEMA] + [f"[{CONTROL_PREFIX}NAME]"])
            raise ConfigError(f"{source}:{line}: unknown section [{section}] (known: {known})")
        values: dict[str, object] = {}
        texts: dict[str, str] = {}
        for key, raw in parser.items(section, raw=True):
            line = where.get((section, key), 0)
            if key not in _SCHEMA[section]:
                known = ", ".join(_SCHEMA[section])
                raise ConfigError(f"{source}:{line}: [{section}] {key}: unknown key (known: {known})")
            value = texts[key] = raw.strip()
            try:
                values[key] = _SCHEMA[section][key](value)
            except ValueError as e:  # ConfigError, SettingError, and the "expected ..." of boatwist.inivalues
                raise ConfigError(f"{source}:{line}: [{section}] {key} = {value!r}: {e}") from None
        check = _SECTION_CHECKS.get(section)
        problem = check(values) if check is not None else None
        if problem is not None:
            key, expected = problem
            line = where.get((section, key), 0)
            raise ConfigError(f"{source}:{line}: [{section}] {key} = {texts[key]!r}: {expected}")
        sections[section] = values
    built = {name: kind(**sections.get(name, {})) for name, kind in _SECTION_TYPES.items()}
    settings = Settings(source=source, controls=parse_controls(controls, source), **built)
    _check_consistency(settings)
    try:
        _mqtt.check(settings.mqtt)
    except _mqtt.SettingError as e:
        value = parser.get("mqtt", e.key, raw=True, fallback="").strip()
        raise ConfigError(f"{source}:{where.get(('mqtt', e.key), 0)}: [mqtt] {e.key} = {value!r}: {e}") from None
    return settings


def _check_consistency(settings: Settings) -> None:
    """Checks that involve more than one key."""
    s = settings
    if s.server.certificate != "auto" and s.server.https and not s.server.private_key:
        raise ConfigError(
            f"{s.source}: [server] private_key: expected the key file of certificate = {s.server.certificate!r}"
        )
    if s.server.redirect_http and not s.server.https:
        raise ConfigError(f"{s.source}: [server] redirect_http = yes: expected [server] https to be set too")
    if not (s.server.http or s.server.https):
        raise ConfigError(f"{s.source}: [server] http and https are both empty: expected at least one listener")
    if is_tls(s.server.http):
        raise ConfigError(f"{s.source}: [server] http = {s.server.http!r}: the plain HTTP listener takes no TLS; "
                          f"expected tcp:PORT here and tls:PORT in [server] https")
    _check_ssl_files(s)
    if s.admission.max_connections_per_user > s.admission.max_connections:
        raise ConfigError(
            f"{s.source}: [admission] max_connections_per_user = {s.admission.max_connections_per_user}: "
            f"expected at most max_connections = {s.admission.max_connections}"
        )


def load_config(path: str | Path) -> Settings:
    """Read and parse the INI file at C{path}; a missing file is a L{ConfigError}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration file ({e})") from None
    return parse_config(text, source=str(path))


def describe_defaults() -> Sequence[tuple[str, str, object]]:
    """(section, key, default) for every key: the README's table is checked against it."""
    rows = []
    for section, keys in _SCHEMA.items():
        defaults = _SECTION_TYPES[section]()
        for key in keys:
            rows.append((section, key, getattr(defaults, key)))
    return rows
