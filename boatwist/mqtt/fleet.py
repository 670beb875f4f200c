"""
``embweb-fleet``: the devices on a broker, at a glance.

    embweb-fleet --broker tcp:broker.plant.lan:1883 [--topic boatwist/+] [--once] [--json]

Subscribes to the retained topics every boatwist bridge publishes
(C{…/status}, C{…/presence}, C{…/floor}, C{…/last_operation}; see
L{boatwist.mqtt.bridge}) and shows one row per device -- up or down and
since when, who is operating it, who holds the floor, the last operation --
redrawn as messages arrive.  C{--once} prints the table once the retained
messages are in and exits; C{--json} prints JSON instead of a table.

When the retained messages are all in: MQTT has no marker for it, so after
subscribing the tool publishes a message of its own on
C{embweb-fleet/sync/<client id>} and waits for it to come back; the broker
sends a subscription's retained messages before that later message
(Mosquitto does, in order).  Where an ACL refuses that topic, C{--wait}
bounds the wait instead.

A status C{offline} whose C{session} is lower than that of the C{online}
already seen is the late will of an old connection and is ignored.

Every text in the table comes from the broker -- any client may publish
there -- and is shown on a terminal, so each cell goes through
L{boatwist.textsafe.clean_message} (no escape sequence reaches the screen),
and an operation reads as on the chat port (L{boatwist.controls.words}).

This is a terminal tool, not part of the daemon: it runs paho's own loop
(blocking is fine here) and shares only the pure model below with tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence, TextIO

from boatwist.controls.words import operation_line
from boatwist.mqtt.settings import SettingError, parse_broker
from boatwist.textsafe import clean_message

if TYPE_CHECKING:
    import paho.mqtt.client as paho

__all__ = ["DeviceView", "Fleet", "main", "render_table"]

#: Retained topics read, after a device's prefix.
SUFFIXES = ("status", "presence", "floor", "last_operation")


@dataclass
class DeviceView:
    """What is known of one device."""

    prefix: str
    state: str = "?"  # online | offline | ?
    session: int = -1
    since: float | None = None
    reason: str | None = None
    seats: Mapping[str, object] = field(default_factory=dict)
    operators: list[Mapping[str, object]] = field(default_factory=list)
    floor: Mapping[str, object] = field(default_factory=dict)
    last_operation: Mapping[str, object] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        return {
            "device": self.prefix, "state": self.state, "session": self.session, "since": self.since,
            "reason": self.reason, "seats": dict(self.seats), "operators": list(self.operators),
            "floor": dict(self.floor), "last_operation": dict(self.last_operation),
        }


class Fleet:
    """The devices seen under one topic pattern (like C{boatwist/+}); no I/O."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.devices: dict[str, DeviceView] = {}

    @property
    def filters(self) -> list[str]:
        return [f"{self.pattern}/{suffix}" for suffix in SUFFIXES]

    def _matches(self, prefix: str) -> bool:
        want, have = self.pattern.split("/"), prefix.split("/")
        return len(want) == len(have) and all(w in ("+", h) for w, h in zip(want, have, strict=True))

    def update(self, topic: str, payload: bytes, retained: bool, now: float) -> bool:
        """Take one message; whether the view changed."""
        prefix, _, suffix = topic.rpartition("/")
        if suffix not in SUFFIXES or not self._matches(prefix):
            return False
        device = self.devices.get(prefix)
        if not payload:  # a retained topic cleared
            return False
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: [[[[... nested past Python's limit
            return False
        if not isinstance(data, dict):
            return False
        if device is None:
            device = self.devices[prefix] = DeviceView(prefix)
        if suffix == "status":
            return self._status(device, data, retained, now)
        if suffix == "presence":
            users = data.get("users")
            device.operators = [u for u in users if isinstance(u, dict)] if isinstance(users, list) else []
            seats = data.get("seats")
            device.seats = seats if isinstance(seats, dict) else {}
        elif suffix == "floor":
            device.floor = data
        elif suffix == "last_operation":
            device.last_operation = data
        return True

    def _status(self, device: DeviceView, data: dict[str, object], retained: bool, now: float) -> bool:
        session = data.get("session")
        state = data.get("state")
        if isinstance(session, bool) or not isinstance(session, int) or state not in ("online", "offline"):
            return False
        if session < device.session:
            return False  # a late will (or status) of an older connection
        if session == device.session and device.state == "offline" and state == "online":
            return False  # the same connection cannot come back: stale retained online
        at = data.get("at")
        device.state = str(state)
        device.session = session
        device.reason = str(data["reason"]) if isinstance(data.get("reason"), str) else None
        if isinstance(at, (int, float)):
            device.since = float(at)
        else:
            # A will carries no time: when it reached us, unless it was already waiting there.
            device.since = None if retained else now
        return True

    def rows(self) -> list[DeviceView]:
        return [self.devices[k] for k in sorted(self.devices)]


def _when(at: float | None, now: float) -> str:
    """C{at} as local time and how long ago; C{?} for a time no clock can show (a broken payload)."""
    if at is None or not math.isfinite(at):
        return "?"
    try:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    except (OverflowError, OSError, ValueError):
        return "?"
    ago = max(0, int(now - at))
    if ago < 120:
        rel = f"{ago}s"
    elif ago < 7200:
        rel = f"{ago // 60}m"
    elif ago < 172800:
        rel = f"{ago // 3600}h"
    else:
        rel = f"{ago // 86400}d"
    return f"{stamp} ({rel} ago)"


def _text(value: object) -> str:
    """Text from the broker, safe to show on a terminal."""
    return clean_message(str(value))


def _operators(view: DeviceView) -> str:
    names = []
    for user in view.operators:
        name = _text(user.get("user", "?"))
        if user.get("state") == "unstable":
            name += " (unstable)"
        names.append(name)
    seats = ""
    if "used" in view.seats and "limit" in view.seats:
        seats = f"{_text(view.seats['used'])}/{_text(view.seats['limit'])} "
    return (seats + ", ".join(names)).strip() or "-"


def _floor(view: DeviceView) -> str:
    if not view.floor:
        return "?"
    if view.floor.get("mode") == "off":
        return "off"
    holder = view.floor.get("holder")
    text = _text(holder) if holder else "free"
    if view.floor.get("requested_by"):
        text += f" (requested by {_text(view.floor['requested_by'])})"
    return text


def _operation(view: DeviceView, now: float) -> str:
    op = view.last_operation
    if not op:
        return "-"
    text = operation_line(op)
    if op.get("via") and op.get("via") != "safe-state":  # a safe-state line says so itself
        text += f" via {_text(op['via'])}"
    at = op.get("at")
    when = _when(float(at), now) if isinstance(at, (int, float)) else "?"
    return text if when == "?" else f"{text}, {when}"


def display_width(text: str) -> int:
    """
    Columns C{text} takes on a terminal: two for a wide character (CJK, most
    emoji), none for a combining mark -- a device or user named in another
    script must not push the columns after it out of line.
    """
    width = 0
    for char in text:
        if unicodedata.combining(char):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def render_table(rows: Sequence[DeviceView], now: float) -> str:
    """The fleet as a plain-text table (one device a row)."""
    header = ("DEVICE", "STATUS", "SINCE", "OPERATORS", "FLOOR", "LAST OPERATION")
    lines = [header]
    for view in rows:
        status = {"online": "up", "offline": "down"}.get(view.state, "?")
        if view.state == "offline" and view.reason:
            status += f" ({_text(view.reason)})"
        lines.append((_text(view.prefix), status, _when(view.since, now), _operators(view), _floor(view),
                      _operation(view, now)))
    widths = [max(display_width(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell + " " * (width - display_width(cell)) for cell, width in zip(line, widths, strict=False)]
        out.append("  ".join(cells + [line[-1]]).rstrip())
    if not rows:
        out.append("(no device seen)")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------- the tool


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="embweb-fleet", description="The boatwist devices on an MQTT broker.")
    parser.add_argument("--broker", required=True, help="tcp:HOST:PORT or ssl:HOST:PORT")
    parser.add_argument("--topic", default="boatwist/+",
                        help="the devices' prefixes, + for one level (default boatwist/+)")
    parser.add_argument("--once", action="store_true", help="print once the retained messages are in, then exit")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument("--wait", type=float, default=5.0, help="with --once: wait at most this long (seconds)")
    parser.add_argument("--ca", help="with ssl: the CA of the broker's certificate")
    parser.add_argument("--username", default="")
    parser.add_argument("--password-file", help="a file holding the password (first line)")
    args = parser.parse_args(argv)
    try:
        args.address = parse_broker(args.broker)
    except SettingError as e:
        parser.error(f"--broker {args.broker!r}: {e}")
    if "#" in args.topic or not args.topic:
        parser.error(f"--topic {args.topic!r}: expected a prefix pattern with + wildcards only, like boatwist/+")
    return args


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout,
         clock: Callable[[], float] = time.time) -> int:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    args = _parse_args(argv)
    fleet = Fleet(args.topic)
    client_id = f"embweb-fleet-{os.getpid()}-{int(clock() * 1000) % 100000}"
    sync_topic = f"embweb-fleet/sync/{client_id}"
    done = {"synced": False, "failed": ""}
    live_tty = not args.once and out.isatty()

    def show() -> None:
        now = clock()
        if args.json:
            out.write(json.dumps([v.as_json() for v in fleet.rows()], ensure_ascii=False) + "\n")
        else:
            if live_tty:
                out.write("\x1b[H\x1b[2J")
            out.write(render_table(fleet.rows(), now))
            if not args.once and not live_tty:
                out.write("\n")
        out.flush()

    def on_connect(client: paho.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if getattr(reason, "is_failure", False):
            done["failed"] = f"the broker refused the connection: {reason}"
            client.disconnect()
            return
        client.subscribe([(f, 1) for f in fleet.filters] + [(sync_topic, 1)])

    def on_subscribe(client: paho.Client, userdata: object, mid: int, codes: object, props: object) -> None:
        client.publish(sync_topic, b"sync", qos=1)

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        if message.topic == sync_topic:
            done["synced"] = True
            if not args.once:
                show()
            return
        changed = fleet.update(message.topic, bytes(message.payload), bool(message.retain), clock())
        if changed and done["synced"] and not args.once:
            show()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if args.username:
        password = None
        if args.password_file:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        client.username_pw_set(args.username, password)
    if args.address.tls:
        client.tls_set(ca_certs=args.ca)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(args.address.host, args.address.port, keepalive=30)
    except OSError as e:
        sys.stderr.write(f"embweb-fleet: cannot reach {args.broker}: {e}\n")
        return 1
    try:
        if args.once:
            deadline = time.monotonic() + args.wait
            while not done["synced"] and not done["failed"] and time.monotonic() < deadline:
                client.loop(timeout=0.1)
            if done["failed"]:
                sys.stderr.write(f"embweb-fleet: {done['failed']}\n")
                return 1
            show()
            client.disconnect()
            return 0
        client.loop_forever()
    except KeyboardInterrupt:
        # Ctrl-C: say goodbye (DISCONNECT), so that the broker sees a client that left, not one that vanished.
        _disconnect(client)
    if done["failed"]:
        sys.stderr.write(f"embweb-fleet: {done['failed']}\n")
        return 1
    return 0


def _disconnect(client: "paho.Client") -> None:
    """Send DISCONNECT and let it out (a second at most); a broker already gone is no error here."""
    try:
        client.disconnect()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and client.loop(timeout=0.1) == 0:
            pass
    except (OSError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
