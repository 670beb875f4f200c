"""
What Home Assistant's MQTT integration documents for each entity type
(home-assistant.io/integrations/switch.mqtt, number.mqtt, select.mqtt,
button.mqtt, sensor.mqtt, binary_sensor.mqtt, and docs/mqtt/discovery), as
checks on one discovery config -- shared by the unit tests of the payloads
(tests/unit/test_mqtt_discovery.py) and the daemon's end-to-end test
against a real broker (tests/integration/test_mqtt_daemon.py).  Templates
are rendered with Jinja2, as Home Assistant renders them.
"""

from __future__ import annotations

import re

import jinja2

#: Keys every MQTT entity accepts (the "Configuration Variables" common to the pages).
COMMON = {
    "availability", "availability_mode", "availability_template", "availability_topic", "default_entity_id",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "origin", "payload_available",
    "payload_not_available", "platform", "qos", "unique_id",
}
#: Per entity type: (required keys, further keys it knows).
DOCUMENTED: dict[str, tuple[set[str], set[str]]] = {
    "switch": ({"command_topic"}, {"command_template", "device_class", "optimistic", "payload_off", "payload_on",
                                   "retain", "state_off", "state_on", "state_topic", "value_template"}),
    "number": ({"command_topic"}, {"command_template", "device_class", "max", "min", "mode", "optimistic",
                                   "payload_reset", "retain", "state_topic", "step", "unit_of_measurement",
                                   "value_template"}),
    "select": ({"command_topic", "options"}, {"command_template", "optimistic", "retain", "state_topic",
                                              "value_template"}),
    "button": ({"command_topic"}, {"command_template", "device_class", "payload_press", "retain"}),
    "sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "last_reset_value_template",
                                 "options", "state_class", "suggested_display_precision", "unit_of_measurement",
                                 "value_template"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update", "off_delay",
                                        "payload_off", "payload_on", "value_template"}),
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
               "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
ID = re.compile(r"^[a-zA-Z0-9_-]+$")

env = jinja2.Environment()


def render(template: str, **variables: object) -> str:
    return env.from_string(template).render(**variables).strip()


def check_documented(component: str, config: dict[str, object]) -> None:
    """What Home Assistant's docs require of a config of C{component}."""
    required, known = DOCUMENTED[component]
    assert required <= set(config), (component, required - set(config))
    unknown = set(config) - known - required - COMMON
    assert not unknown, (component, unknown)
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    assert not ("availability" in config and "availability_topic" in config), "documented as exclusive"
    for item in config["availability"]:  # type: ignore[attr-defined]
        assert "topic" in item and set(item) <= AVAILABILITY_KEYS
    device = config["device"]
    assert isinstance(device, dict) and set(device) <= DEVICE_KEYS
    assert device.get("identifiers") or device.get("connections"), "a device needs identifiers or connections"
    origin = config["origin"]
    assert isinstance(origin, dict) and "name" in origin and set(origin) <= ORIGIN_KEYS
    assert config.get("qos") in (0, 1, 2)
    for key in ("state_topic", "command_topic"):
        if key in config:
            assert isinstance(config[key], str) and not set("+#") & set(config[key])  # type: ignore[arg-type]
    if component == "number":
        assert config.get("mode", "auto") in ("auto", "box", "slider")
        assert float(config.get("step", 1)) >= 0.001  # type: ignore[arg-type]
        assert float(config.get("min", 1)) < float(config.get("max", 100))  # type: ignore[arg-type]
    if component == "select":
        options = config["options"]
        assert isinstance(options, list) and options and all(isinstance(o, str) for o in options)
    if component == "sensor":
        if config.get("device_class") == "enum":
            assert config.get("options") and "state_class" not in config and "unit_of_measurement" not in config
        if "state_class" in config:
            assert config["state_class"] in ("measurement", "total", "total_increasing")
