"""
Home Assistant MQTT discovery: one retained config message per control.

Topic: C{<discovery prefix>/<component>/<node_id>/<object_id>/config}, with
C{node_id} the device name made safe (C{[A-Za-z0-9_-]}) and C{object_id}
the control's name (already C{[a-z0-9_-]}).  Fields as Home Assistant's MQTT
integration documents them for each entity type (home-assistant.io,
integrations/switch.mqtt, number.mqtt, select.mqtt, button.mqtt,
sensor.mqtt, binary_sensor.mqtt).

Which entity a control becomes:

    control   commands on, writable       otherwise
    switch    switch                      binary_sensor
    number    number                      sensor (with unit)
    choice    select                      sensor (device_class enum, options)
    action    button                      -- (a button nobody can press is noise)
    sensor    sensor                      sensor

A switch, number, select and button need a C{command_topic} in Home
Assistant; with commands off there is none to give, so the control is shown
read-only instead.  When a control changes component (commands turned on
or off), the config of its other component is cleared with an empty
retained message, so no stale entity stays behind.

State comes from the control's retained topic C{…/controls/NAME}
(C{{"value", "quality", "changed_by", "changed_at"}}) through a
C{value_template}; commands are sent as C{{"value": V}} by
C{payload_on}/C{payload_off}, C{command_template} or C{payload_press}.
Availability reads C{state} out of the JSON on C{…/status}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from boatwist.mqtt.interfaces import ControlSnapshot
from boatwist.mqtt.settings import sanitize_name
from boatwist.mqtt.topics import Topics, dumps

__all__ = ["DeviceInfo", "component_for", "config_messages", "COMPONENTS_OF"]

#: Every component a control of each type may be shown as.
COMPONENTS_OF: dict[str, tuple[str, ...]] = {
    "switch": ("switch", "binary_sensor"),
    "number": ("number", "sensor"),
    "choice": ("select", "sensor"),
    "action": ("button",),
    "sensor": ("sensor",),
}

#: Jinja: "ON"/"OFF" from a JSON boolean, "None" (Home Assistant's unknown) from null.
ON_OFF_TEMPLATE = "{% if value_json.value is none %}None{% elif value_json.value %}ON{% else %}OFF{% endif %}"
VALUE_TEMPLATE = "{{ value_json.value }}"


@dataclass(frozen=True)
class DeviceInfo:
    """Home Assistant's device registry entry for this boatwist."""

    name: str
    version: str
    manufacturer: str = "boatwist"
    model: str = "boatwist device"

    @property
    def node_id(self) -> str:
        return sanitize_name(self.name)


def component_for(control: ControlSnapshot, commands: bool) -> str | None:
    """The Home Assistant component C{control} appears as, or C{None} (not at all)."""
    kind = control["type"]
    choices = COMPONENTS_OF.get(kind)
    if choices is None:
        return None
    operable = commands and control["writable"] and kind != "sensor"
    if operable:
        return choices[0]
    if kind == "action":
        return None
    return choices[-1]


def config_topic(discovery: str, component: str, node_id: str, object_id: str) -> str:
    return f"{discovery}/{component}/{node_id}/{object_id}/config"


def config_payload(control: ControlSnapshot, component: str, topics: Topics, device: DeviceInfo,
                   commands: bool, qos: int) -> dict[str, object]:
    """The discovery config of C{control} shown as C{component}."""
    name = control["name"]
    payload: dict[str, object] = {
        "name": control["label"] or name,
        "unique_id": f"boatwist_{device.node_id}_{name}",
        "availability": [
            {
                "topic": topics.status,
                "value_template": "{{ value_json.state }}",
                "payload_available": "online",
                "payload_not_available": "offline",
            }
        ],
        "device": {
            "identifiers": [f"boatwist_{device.node_id}"],
            "name": device.name,
            "manufacturer": device.manufacturer,
            "model": device.model,
            "sw_version": device.version,
        },
        "origin": {"name": "boatwist", "sw_version": device.version},
        "qos": qos,
    }
    if component != "button":
        payload["state_topic"] = topics.control(name)
    unit = control["unit"]
    if component in ("switch", "binary_sensor"):
        payload["value_template"] = ON_OFF_TEMPLATE
        if component == "switch":
            payload.update(payload_on='{"value": true}', payload_off='{"value": false}', state_on="ON",
                           state_off="OFF")
        else:
            payload.update(payload_on="ON", payload_off="OFF")
    elif component == "number":
        payload["value_template"] = VALUE_TEMPLATE
        payload["command_template"] = '{"value": {{ value }}}'
        if control["min"] is not None:
            payload["min"] = control["min"]
        if control["max"] is not None:
            payload["max"] = control["max"]
        # Home Assistant's step defaults to 1 and may not be below 0.001.
        payload["step"] = max(control["step"] or 0.001, 0.001)
        payload["mode"] = "box"
        if unit:
            payload["unit_of_measurement"] = unit
    elif component == "select":
        payload["value_template"] = VALUE_TEMPLATE
        payload["command_template"] = '{"value": {{ value | tojson }}}'
        payload["options"] = list(control["choices"] or ())
    elif component == "button":
        payload["payload_press"] = '{"value": null}'
    elif component == "sensor":
        payload["value_template"] = VALUE_TEMPLATE
        if control["type"] == "choice":
            payload["device_class"] = "enum"
            payload["options"] = list(control["choices"] or ())
        elif unit:
            payload["unit_of_measurement"] = unit
            payload["state_class"] = "measurement"
    if commands and component in ("switch", "number", "select", "button"):
        payload["command_topic"] = topics.control_set(name)
    return payload


def config_messages(discovery: str, topics: Topics, device: DeviceInfo, controls: Sequence[ControlSnapshot],
                    commands: bool, qos: int) -> list[tuple[str, bytes]]:
    """
    (topic, retained payload) for every control: its config, and an empty
    payload on each other component it could be shown as (which removes a
    stale entity from Home Assistant).
    """
    messages: list[tuple[str, bytes]] = []
    for control in controls:
        chosen = component_for(control, commands)
        for component in COMPONENTS_OF.get(control["type"], ()):
            topic = config_topic(discovery, component, device.node_id, control["name"])
            if component == chosen:
                messages.append((topic, dumps(config_payload(control, component, topics, device, commands, qos))))
            else:
                messages.append((topic, b""))
    return messages
