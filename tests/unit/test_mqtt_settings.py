"""[mqtt]: off by default, typed values, and one line naming file, line, key and value for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from boatwist.config import ConfigError, describe_defaults, parse_config
from boatwist.mqtt.settings import Broker, MqttSettings, parse_broker, sanitize_name


def test_off_unless_a_broker_is_set() -> None:
    """No [mqtt] section, or one without broker, means no bridge; defaults are the documented ones."""
    s = parse_config("").mqtt
    assert not s.enabled
    assert (s.keepalive, s.qos, s.commands, s.queue, s.discovery) == (30, 1, False, 1000, "")
    assert not parse_config("[mqtt]\nkeepalive = 10\n").mqtt.enabled


def test_values_are_typed_and_defaults_follow_the_device_name() -> None:
    """Numbers and booleans come out typed; topic and client id default from the device name."""
    s = parse_config("[mqtt]\nbroker = tcp:broker.lan:1883\nqos = 0\ncommands = yes\nuser = bot\n"
                     "discovery = homeassistant\nqueue = 5\n").mqtt
    assert s.broker_address == Broker(False, "broker.lan", 1883)
    assert (s.qos, s.commands, s.user, s.queue) == (0, True, "bot", 5)
    assert s.prefix("press 7/a") == "boatwist/press_7_a"
    assert s.client_id_for("press-7") == "boatwist-press-7"
    assert MqttSettings(broker="tcp:h:1", topic="plant/x", client_id="me").prefix("d") == "plant/x"


def test_broker_forms() -> None:
    """tcp: and ssl:, host names, IPv4 and bracketed IPv6."""
    assert parse_broker("ssl:[::1]:8883") == Broker(True, "::1", 8883)
    assert str(parse_broker("ssl:[::1]:8883")) == "ssl:[::1]:8883"
    assert parse_broker("tcp:10.0.0.5:1883").host == "10.0.0.5"


@pytest.mark.parametrize("text, expected", [
    ("[mqtt]\nbroker = mqtt://h:1883\n", "x.ini:2: [mqtt] broker = 'mqtt://h:1883': expected tcp:HOST:PORT"),
    ("[mqtt]\nbroker = tcp:h:99999\n", "x.ini:2: [mqtt] broker = 'tcp:h:99999': expected tcp:HOST:PORT"),
    ("[mqtt]\nqos = 2\n", "x.ini:2: [mqtt] qos = '2': expected a whole number from 0 to 1"),
    ("[mqtt]\nkeepalive = 1\n", "x.ini:2: [mqtt] keepalive = '1': expected a whole number from 2 to 65535"),
    ("[mqtt]\ncommands = maybe\n", "x.ini:2: [mqtt] commands = 'maybe': expected yes or no"),
    ("[mqtt]\ntopic = plant/#\n", "x.ini:2: [mqtt] topic = 'plant/#': expected a topic prefix"),
    ("[mqtt]\ntopic = plant//x\n", "x.ini:2: [mqtt] topic = 'plant//x': expected a topic prefix"),
    ("[mqtt]\ndiscovery = home/+\n", "x.ini:2: [mqtt] discovery = 'home/+': expected a Home Assistant"),
    ("[mqtt]\nclient_id = a b\n", "x.ini:2: [mqtt] client_id = 'a b': expected 1 to 64"),
    ("[mqtt]\nqueue = -1\n", "x.ini:2: [mqtt] queue = '-1': expected a whole number from 0 to 1000000"),
    ("[mqtt]\npassword = secret\n", "x.ini:2: [mqtt] password: unknown key"),
    ("[mqtt]\nbroker = tcp:h:1\n\ncommands = yes\n",
     "x.ini:4: [mqtt] commands = 'yes': expected [mqtt] user too"),
    ("[mqtt]\nbroker = tcp:h:1\nca = /etc/hostname\n",
     "x.ini:3: [mqtt] ca = '/etc/hostname': expected broker = ssl:HOST:PORT too"),
    ("[mqtt]\nbroker = ssl:h:1\nca = /nonexistent.pem\n",
     "x.ini:3: [mqtt] ca = '/nonexistent.pem': expected a PEM file"),
    ("[mqtt]\nbroker = tcp:h:1\nusername = u\npassword_file = /nonexistent\n",
     "x.ini:4: [mqtt] password_file = '/nonexistent': expected a readable file"),
    ("[mqtt]\nbroker = tcp:h:1\npassword_file = /etc/hostname\n",
     "x.ini:3: [mqtt] password_file = '/etc/hostname': expected [mqtt] username too"),
])
def test_mistakes_are_one_line_naming_file_line_key_and_value(text: str, expected: str) -> None:
    """boatwist's format: FILE:LINE: [mqtt] KEY = 'VALUE': expected ..., on one line."""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.ini")
    message = str(info.value)
    assert message.startswith(expected), message
    assert "\n" not in message


def test_the_password_is_read_from_its_file_and_never_part_of_the_settings(tmp_path: Path) -> None:
    """password_file's first line is the password; it is in no field and no repr of the settings."""
    secret = tmp_path / "mqtt.pw"
    secret.write_text("s3cret-pw\nignored\n")
    s = parse_config(f"[mqtt]\nbroker = tcp:h:1\nusername = u\npassword_file = {secret}\n").mqtt
    assert s.read_password() == "s3cret-pw"
    assert "s3cret" not in repr(s)


def test_every_mqtt_key_has_a_default_listed() -> None:
    """describe_defaults (the README table's source) knows the [mqtt] keys."""
    keys = {key for section, key, _ in describe_defaults() if section == "mqtt"}
    assert keys == {"broker", "ca", "username", "password_file", "client_id", "topic", "keepalive", "qos",
                    "commands", "user", "discovery", "queue"}


def test_device_names_become_safe_topic_levels() -> None:
    """Wildcards, slashes and spaces never reach a topic or a Home Assistant node id."""
    assert sanitize_name("a/b+c#d e") == "a_b_c_d_e"
    assert sanitize_name("  ") == "device"
