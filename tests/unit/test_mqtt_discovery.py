"""
Home Assistant discovery payloads, checked against what Home Assistant's MQTT
integration documents for each entity type (home-assistant.io/integrations/
switch.mqtt, number.mqtt, select.mqtt, button.mqtt, sensor.mqtt,
binary_sensor.mqtt, and docs/mqtt/discovery): required keys, the keys each
type knows (a misspelt key is silently ignored by Home Assistant, so it is
an error here), value ranges -- and the templates, rendered with Jinja2 as
Home Assistant renders them, against the payloads the bridge really
publishes and the command parser really reads.
"""

from __future__ import annotations

import json

import pytest
from ha_discovery import ID, check_documented, render
from mqtt_fakes import DEMO_CONTROLS, control

from boatwist.mqtt.commands import parse_command
from boatwist.mqtt.discovery import (
    COMPONENTS_OF,
    DeviceInfo,
    component_for,
    config_messages,
)
from boatwist.mqtt.topics import Topics, control_payload, status_payload

TOPICS = Topics("boatwist/press-7")
DEVICE = DeviceInfo("press 7", "0.1.0")


def configs(commands: bool) -> dict[str, tuple[str, str, dict[str, object]]]:
    """control name -> (component, topic, config) of the configs (not the clearing messages)."""
    found = {}
    for topic, payload in config_messages("homeassistant", TOPICS, DEVICE, DEMO_CONTROLS, commands, 1):
        if payload:
            prefix, component, node, object_id, last = topic.split("/")
            assert (prefix, last) == ("homeassistant", "config")
            assert ID.match(node) and ID.match(object_id)
            found[object_id] = (component, topic, json.loads(payload))
    return found


@pytest.mark.parametrize("commands", [True, False])
def test_every_config_is_what_home_assistant_documents(commands: bool) -> None:
    """Required keys present, no key Home Assistant does not know, values in range."""
    for component, _, config in configs(commands).values():
        check_documented(component, config)
        assert ("command_topic" in config) == (commands and component in ("switch", "number", "select", "button"))


def test_components_with_and_without_commands() -> None:
    """Operable controls become switch/number/select/button; without commands they are shown read-only."""
    on = {name: c for name, (c, _, _) in configs(True).items()}
    off = {name: c for name, (c, _, _) in configs(False).items()}
    assert on == {"pump": "switch", "setpoint": "number", "mode": "select", "reset": "button", "temp": "sensor"}
    assert off == {"pump": "binary_sensor", "setpoint": "sensor", "mode": "sensor", "temp": "sensor"}
    assert component_for(control("pump", "switch", writable=False), True) == "binary_sensor"


def test_the_other_component_is_cleared() -> None:
    """Each config topic a control could have is published: its config, the others empty (no stale entity)."""
    messages = dict(config_messages("homeassistant", TOPICS, DEVICE, DEMO_CONTROLS, False, 1))
    assert messages["homeassistant/switch/press_7/pump/config"] == b""
    assert messages["homeassistant/binary_sensor/press_7/pump/config"] != b""
    assert messages["homeassistant/button/press_7/reset/config"] == b""
    expected = sum(len(COMPONENTS_OF[c["type"]]) for c in DEMO_CONTROLS)
    assert len(messages) == expected


def test_availability_template_reads_the_status_json() -> None:
    """{{ value_json.state }} on …/status gives payload_available / payload_not_available."""
    _, _, config = configs(True)["pump"]
    availability = config["availability"][0]  # type: ignore[index]
    assert availability["topic"] == TOPICS.status
    for state, key in (("online", "payload_available"), ("offline", "payload_not_available")):
        value_json = json.loads(status_payload(state, 3))
        assert render(availability["value_template"], value_json=value_json) == availability[key]


def test_switch_templates_round_trip() -> None:
    """State: true/false/null -> ON/OFF/None (unknown); commands payload_on/off parse to true/false."""
    _, _, config = configs(True)["pump"]
    for value, shown in ((True, "ON"), (False, "OFF"), (None, "None")):
        value_json = json.loads(control_payload(control("pump", value=value)))
        assert render(config["value_template"], value_json=value_json) == shown  # type: ignore[arg-type]
    assert config["state_on"] == "ON" and config["state_off"] == "OFF"
    assert parse_command("pump", config["payload_on"].encode()).value is True  # type: ignore[attr-defined]
    assert parse_command("pump", config["payload_off"].encode()).value is False  # type: ignore[attr-defined]
    _, _, read_only = configs(False)["pump"]
    value_json = json.loads(control_payload(control("pump", value=True)))
    assert render(read_only["value_template"], value_json=value_json) == read_only["payload_on"]  # type: ignore[arg-type]


def test_number_select_button_templates_round_trip() -> None:
    """What Home Assistant sends after rendering command_template is what the command parser reads."""
    found = configs(True)
    _, _, number = found["setpoint"]
    assert parse_command("setpoint", render(number["command_template"], value=21.5).encode()).value == 21.5  # type: ignore[arg-type]
    assert render(number["value_template"], value_json={"value": 20.0}) == "20.0"  # type: ignore[arg-type]
    assert (number["min"], number["max"], number["step"], number["unit_of_measurement"]) == (5.0, 90.0, 0.5, "°C")
    _, _, select = found["mode"]
    sent = render(select["command_template"], value='man"ual').encode()  # type: ignore[arg-type]
    assert parse_command("mode", sent).value == 'man"ual'
    _, _, button = found["reset"]
    assert parse_command("reset", button["payload_press"].encode()).value is None  # type: ignore[attr-defined]


def test_sensor_and_device_block() -> None:
    """A sensor with a unit is a measurement; the device block ties every entity to one device."""
    _, _, temp = configs(True)["temp"]
    assert temp["unit_of_measurement"] == "°C" and temp["state_class"] == "measurement"
    assert temp["device"] == {"identifiers": ["boatwist_press_7"], "name": "press 7", "manufacturer": "boatwist",
                              "model": "boatwist device", "sw_version": "0.1.0"}
    assert temp["unique_id"] == "boatwist_press_7_temp"
    _, _, mode = configs(False)["mode"]
    assert mode["device_class"] == "enum" and mode["options"] == ["auto", "manual", "off"]
