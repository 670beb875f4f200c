"""A control's value from JSON or a chat word, checked against its declaration."""

from __future__ import annotations

import pytest

from boatwist.config import parse_config
from boatwist.controls.spec import ControlSpec
from boatwist.controls.values import BadValue, allowed, from_json, from_text

SPECS = {spec.name: spec for spec in parse_config("""
[control:pump]
type = switch
backend = memory

[control:level]
type = number
backend = memory
min = -10
max = 10
step = 0.25
unit = bar

[control:mode]
type = choice
backend = memory
choices = manual, auto

[control:go]
type = action
backend = memory

[control:temp]
type = sensor
backend = file
path = /dev/null
""").controls}


def spec(name: str) -> ControlSpec:
    return SPECS[name]


@pytest.mark.parametrize("word, value", [("on", True), ("OFF", False), ("1", True), ("no", False),
                                         (" yes ", True)])
def test_switch_words(word: str, value: bool) -> None:
    """The chat port takes on/off and their usual spellings."""
    assert from_text(spec("pump"), word) is value


def test_numbers_on_the_grid_within_range() -> None:
    """A number must be within min..max on the step grid from min; JSON numbers and numeric strings."""
    assert from_json(spec("level"), -9.75) == -9.75
    assert from_json(spec("level"), "2.5") == 2.5
    assert from_text(spec("level"), "10") == 10.0
    for bad in (10.25, -10.5, 0.1, "abc", float("nan"), float("-inf"), None, [1]):
        with pytest.raises(BadValue) as e:
            from_json(spec("level"), bad)
        assert "from -10 to 10 in steps of 0.25 (bar)" in str(e.value)


def test_choice_is_exact_and_action_takes_nothing() -> None:
    """A choice is one of its names exactly; an action has no value."""
    assert from_json(spec("mode"), "auto") == "auto"
    with pytest.raises(BadValue):
        from_json(spec("mode"), "Auto")
    assert from_json(spec("go"), None) is None
    assert from_text(spec("go"), "") is None
    with pytest.raises(BadValue):
        from_text(spec("go"), "now")


def test_sensors_are_never_operated() -> None:
    """A sensor refuses every value, saying it is read-only."""
    with pytest.raises(BadValue, match="sensor"):
        from_json(spec("temp"), 1)
    assert "never operated" in allowed(spec("temp"))
