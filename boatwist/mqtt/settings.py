"""
``[mqtt]``: the bridge to a broker, as typed, frozen, validated settings.

    [mqtt]
    broker = tcp:broker.plant.lan:1883      off while empty; ssl:HOST:PORT for TLS
    ca = /etc/boatwist/plant-ca.pem         ssl: only; empty = the system's trust store
    username = press-7
    password_file = /etc/boatwist/mqtt.pw   the password never sits in the INI
    client_id =                             empty: boatwist-<device name>
    topic =                                 empty: boatwist/<device name>
    keepalive = 30
    qos = 1                                 of the retained state topics; events are always 1
    commands = no                           yes: accept …/controls/NAME/set
    user =                                  the boatwist user commands act as (required with commands)
    discovery =                             Home Assistant's prefix (homeassistant); empty = off
    queue = 1000                            events kept while the broker is away

This module imports nothing from L{boatwist.config} (which imports it):
each parser raises L{SettingError} with the "expected ..." half of the
message, and config adds the file, line, key and value in front, so a
mistake in ``[mqtt]`` reads like a mistake anywhere else.  Checks that
involve two keys are in L{check}, which names the key to blame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from boatwist.inivalues import boolean, optional_path, whole_number

__all__ = ["Broker", "MqttSettings", "PARSERS", "SettingError", "check", "parse_broker", "sanitize_name"]


class SettingError(ValueError):
    """The "expected ..." part of a one-line configuration error; C{key} is the key to blame."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Broker:
    """Where the broker listens: C{tcp:HOST:PORT} or C{ssl:HOST:PORT}."""

    tls: bool
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'ssl' if self.tls else 'tcp'}:{host}:{self.port}"


@dataclass(frozen=True)
class MqttSettings:
    #: C{tcp:HOST:PORT} or C{ssl:HOST:PORT}; empty: no bridge at all.
    broker: str = ""
    #: PEM file of the CA that signed the broker's certificate (ssl: only).
    ca: Path | None = None
    username: str = ""
    #: A file holding the password (first line); read at start, never logged.
    password_file: Path | None = None
    #: Empty: C{boatwist-<device name>}.
    client_id: str = ""
    #: Topic prefix; empty: C{boatwist/<device name>}.
    topic: str = ""
    #: Seconds; the broker declares us gone (and publishes the will) after 1.5 times this.
    keepalive: int = 30
    #: QoS of the retained state topics (events and command results are always QoS 1).
    qos: int = 1
    #: Accept commands on C{…/controls/NAME/set}.
    commands: bool = False
    #: The boatwist user that MQTT commands act as (its role and the floor apply).
    user: str = ""
    #: Home Assistant discovery prefix (usually C{homeassistant}); empty: no discovery.
    discovery: str = ""
    #: Events kept while the broker is away; beyond it the oldest are dropped and counted.
    queue: int = 1000

    @property
    def enabled(self) -> bool:
        return bool(self.broker)

    @property
    def broker_address(self) -> Broker:
        return parse_broker(self.broker)

    def prefix(self, device_name: str) -> str:
        """The topic prefix: C{topic}, or C{boatwist/<device name>}."""
        return self.topic or f"boatwist/{sanitize_name(device_name)}"

    def client_id_for(self, device_name: str) -> str:
        """The MQTT client id: C{client_id}, or C{boatwist-<device name>}."""
        return self.client_id or f"boatwist-{sanitize_name(device_name)}"[:64]

    def read_password(self) -> str | None:
        """
        The password from C{password_file} (its first line), or C{None}.

        Read at start, not at parse time, so it is in memory only while the
        bridge runs and never part of the settings object someone may log.
        """
        if self.password_file is None:
            return None
        try:
            text = self.password_file.read_text(encoding="utf-8")
        except OSError as e:
            raise SettingError(f"expected a readable file holding the broker password ({e.strerror or e})",
                               "password_file") from None
        except UnicodeDecodeError:
            raise SettingError("expected a UTF-8 file holding the broker password", "password_file") from None
        return text.splitlines()[0] if text else ""


def sanitize_name(name: str) -> str:
    """
    A device name made safe as one topic level, a client id and a Home
    Assistant node id: letters, digits, C{_} and C{-}; anything else C{_}.
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name.strip())
    return cleaned or "device"


# ----------------------------------------------------------------- parsers

_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)$")


def parse_broker(text: str) -> Broker:
    expected = "expected tcp:HOST:PORT or ssl:HOST:PORT (an IPv6 address in brackets)"
    scheme, _, rest = text.partition(":")
    host, _, port_text = rest.rpartition(":")
    if scheme not in ("tcp", "ssl") or not _HOST.match(host) or not port_text.isdigit():
        raise SettingError(expected)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise SettingError(expected)
    return Broker(tls=scheme == "ssl", host=host.strip("[]"), port=port)


def _broker(text: str) -> str:
    if text:
        parse_broker(text)
    return text


def _topic(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text:
            return ""
        levels = text.split("/")
        if (
            len(text.encode("utf-8")) > 200
            or any(c in text for c in "+#\x00")
            or not text.isprintable()
            or any(not level for level in levels)
            or text.startswith("$")
        ):
            raise SettingError(f"expected {what}: levels separated by /, none empty, no + # or leading $")
        return text

    return parse


def _client_id(text: str) -> str:
    if text and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", text):
        raise SettingError("expected 1 to 64 letters, digits, _ . : or -")
    return text


def _user(text: str) -> str:
    if text and (not text.isprintable() or any(c.isspace() or c == ":" for c in text) or len(text) > 64):
        raise SettingError("expected a boatwist user name (no spaces or colons)")
    return text


def _username(text: str) -> str:
    if not text.isprintable() or len(text.encode("utf-8")) > 65535:
        raise SettingError("expected a printable user name")
    return text


#: key -> parser of its text; the whitelist of the section.
PARSERS: dict[str, Callable[[str], object]] = {
    "broker": _broker,
    "ca": optional_path,
    "username": _username,
    "password_file": optional_path,
    "client_id": _client_id,
    "topic": _topic("a topic prefix like boatwist/press-7"),
    # MQTT's keepalive is 16 bits; below 2 s the will would fire on a busy reactor.
    "keepalive": whole_number(2, 65535),
    "qos": whole_number(0, 1),
    "commands": boolean,
    "user": _user,
    "discovery": _topic("a Home Assistant discovery prefix like homeassistant"),
    "queue": whole_number(0, 1000000),
}


def check(settings: MqttSettings) -> None:
    """
    Checks that involve more than one key; raise L{SettingError} whose
    C{key} names the key to blame (the one whose value needs the other).
    """
    if not settings.enabled:
        return
    broker = settings.broker_address
    if settings.ca is not None and not broker.tls:
        raise SettingError("expected broker = ssl:HOST:PORT too (a CA is for TLS)", "ca")
    if settings.ca is not None and not settings.ca.is_file():
        raise SettingError("expected a PEM file holding the broker's CA certificate", "ca")
    if settings.password_file is not None:
        if not settings.username:
            raise SettingError("expected [mqtt] username too (MQTT sends no password without one)",
                               "password_file")
        settings.read_password()
    if settings.commands and not settings.user:
        raise SettingError("expected [mqtt] user too: the boatwist user MQTT commands act as", "commands")
