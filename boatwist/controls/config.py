r"""
``[control:NAME]`` sections turned into L{ControlSpec}s, or one line saying what is wrong.

An integrator declares a pump, a valve or a temperature in the INI and
expects boatwist to refuse, at start, anything it would later get wrong at
3 a.m.: a switch wired to a read-only Modbus input, a set-point with no
range, a command whose quoting does not close.  So every key is checked
here, against the control's type and backend, and every error is one line
in the format of L{boatwist.config}:

    etc/embweb.ini:41: [control:pump] register = 'discrete:3': expected coil:N or holding:N for a switch (...)

Which keys go with what (any other key is refused as unknown, listing these):

    every control      type (required), backend (required), label, timeout
    all but actions    poll            seconds between reads (needs a read path)
    all but sensors    role            operator (default) or admin
                       confirm         the question asked before operating
    switch/number/choice  safe_value   set when the floor holder vanishes
    number             min, max (both required: the UI shows a range), step, unit
    sensor             unit            with a unit the reading is a number;
                                       without, a number or else text
    choice             choices         comma-separated, at least one

    memory   initial   (switch/number/choice) the value until first set;
                       default off / min / the first choice.  No sensors:
                       nothing would ever change a sensor kept in memory.
    file     path (absolute); on, off (switch; on also for an action: the
             string written); scale (number, sensor); field (sensor: the
             N-th white-space separated field of the first line, 1-based)
    command  read (not for actions), write (not for sensors): argv split like
             a shell would (shlex) but never run by one; {value} in an
             argument of write is the value, required for switch/number/choice,
             refused in the program name and for an action.  In the INI a
             ";" or "#" after white space starts a comment: write \; (shlex
             turns it into ;), as in  find ... -exec CMD {} \;
    modbus   modbus = tcp:HOST[:PORT] | rtu:DEVICE:BAUD:8N1 (bytesize 7/8,
             parity N/E/O, stopbits 1/2), modbus_device (default 1, 0..247;
             1..247 on a serial bus, where 0 is broadcast and never answers),
             register = coil:N | discrete:N | holding:N | input:N (N 0..65535),
             scale and signed (number, sensor; registers only).  A switch or
             an action is a coil or a holding register (1 / 0), a number a
             holding register whose min/max fit in it after scale; a sensor
             may read any.  No choices on Modbus.

L{parse_controls} also checks what involves several controls: two controls
on one register of the same bus and device, and one serial port declared
with two different line settings.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from boatwist.config import ConfigError
from boatwist.controls.roles import Role
from boatwist.controls.spec import (
    NAME_PATTERN,
    BackendSpec,
    CommandSpec,
    ControlSpec,
    ControlType,
    FileSpec,
    MemorySpec,
    ModbusBus,
    ModbusSpec,
    RegisterKind,
    Value,
)
from boatwist.controls.values import on_grid

__all__ = ["CONTROL_PREFIX", "Items", "parse_control", "parse_controls"]

#: Sections whose name starts with it declare a control.
CONTROL_PREFIX = "control:"

#: key -> (raw value, 1-based line), in INI order.
Items = Mapping[str, "tuple[str, int]"]

_T = TypeVar("_T")

_BACKENDS = ("memory", "file", "command", "modbus")
_TYPES = ", ".join(t.value for t in ControlType)
#: The placeholder a write argv carries.
VALUE_PLACEHOLDER = "{value}"

_MAX_LABEL = 64
_MAX_UNIT = 16
_MAX_CONFIRM = 200
_MAX_CHOICE = 64


def _a(kind: ControlType) -> str:
    """C{a switch}, C{an action}."""
    return f"{'an' if kind.value[0] in 'aeiou' else 'a'} {kind}"


class _Bad(Exception):
    """A value is wrong; the message says what was expected."""


def _known_keys(kind: ControlType, backend: str) -> tuple[str, ...]:
    """The keys a control of this type on this backend may have, in documentation order."""
    keys = ["type", "backend", "label", "timeout"]
    if kind.has_value:
        keys.append("poll")
    if kind.writable:
        keys += ["role", "confirm"]
    if kind in (ControlType.SWITCH, ControlType.NUMBER, ControlType.CHOICE):
        keys.append("safe_value")
    if kind is ControlType.NUMBER:
        keys += ["min", "max", "step"]
    if kind in (ControlType.NUMBER, ControlType.SENSOR):
        keys.append("unit")
    if kind is ControlType.CHOICE:
        keys.append("choices")
    if backend == "memory" and kind in (ControlType.SWITCH, ControlType.NUMBER, ControlType.CHOICE):
        keys.append("initial")
    if backend == "file":
        keys.append("path")
        if kind is ControlType.SWITCH:
            keys += ["on", "off"]
        if kind is ControlType.ACTION:
            keys.append("on")
        if kind in (ControlType.NUMBER, ControlType.SENSOR):
            keys.append("scale")
        if kind is ControlType.SENSOR:
            keys.append("field")
    if backend == "command":
        if kind is not ControlType.ACTION:
            keys.append("read")
        if kind.writable:
            keys.append("write")
    if backend == "modbus":
        keys += ["modbus", "modbus_device", "register"]
        if kind in (ControlType.NUMBER, ControlType.SENSOR):
            keys += ["scale", "signed"]
    return tuple(keys)


class _Section:
    """One [control:NAME] section: raw values with their lines, and errors that name them."""

    def __init__(self, name: str, items: Items, source: str, line: int) -> None:
        self.name = name
        self.items = items
        self.source = source
        self.line = line

    @property
    def header(self) -> str:
        return f"[{CONTROL_PREFIX}{self.name}]"

    def raw(self, key: str) -> str:
        return self.items[key][0].strip()

    def has(self, key: str) -> bool:
        return key in self.items

    def error(self, key: str, expected: str) -> ConfigError:
        """The one line for a bad value of C{key}."""
        value, line = self.items[key]
        return ConfigError(f"{self.source}:{line}: {self.header} {key} = {value.strip()!r}: expected {expected}")

    def missing(self, key: str, expected: str) -> ConfigError:
        return ConfigError(f"{self.source}:{self.line}: {self.header} {key}: missing, expected {expected}")

    def get(self, key: str, parse: Callable[[str], _T], default: _T) -> _T:
        if key not in self.items:
            return default
        try:
            return parse(self.raw(key))
        except _Bad as e:
            raise self.error(key, str(e)) from None

    def get_required(self, key: str, parse: Callable[[str], _T], expected: str) -> _T:
        if key not in self.items:
            raise self.missing(key, expected)
        try:
            return parse(self.raw(key))
        except _Bad as e:
            raise self.error(key, str(e)) from None


# ------------------------------------------------------------ value parsers


def _seconds(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    above = f"more than {low:g}" if low_open else f"from {low:g}"
    expected = f"seconds {above} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Bad(expected) from None
        ok = (low < value if low_open else low <= value) and value <= high  # refuses nan too
        if not ok:
            raise _Bad(expected)
        return value

    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Bad("a number") from None
    if not math.isfinite(value):
        raise _Bad("a finite number")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Bad("a nonzero finite number (0.001 for milli-units)") from None
    if not math.isfinite(value) or value == 0:
        raise _Bad("a nonzero finite number (0.001 for milli-units)")
    return value


def _printable(limit: int, what: str, *, empty: bool) -> Callable[[str], str]:
    expected = f"{what} of {'at most' if empty else '1 to'} {limit} printable characters"

    def parse(text: str) -> str:
        if (not text and not empty) or len(text) > limit or not text.isprintable():
            raise _Bad(expected)
        return text

    return parse


def _yes_no(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "yes", "true", "on"):
        return True
    if lowered in ("0", "no", "false", "off"):
        return False
    raise _Bad("yes or no")


def _role(text: str) -> Role:
    try:
        role = Role.parse(text)
    except ValueError:
        raise _Bad("operator or admin") from None
    if role is Role.VIEWER:
        raise _Bad("operator or admin (a viewer operates nothing)")
    return role


def _choices(text: str) -> tuple[str, ...]:
    names = [part.strip() for part in text.split(",")]
    names = [name for name in names if name]
    expected = f"a comma-separated list of names of 1 to {_MAX_CHOICE} printable characters, each once"
    if not names or len(set(names)) != len(names):
        raise _Bad(expected)
    if any(len(name) > _MAX_CHOICE or not name.isprintable() for name in names):
        raise _Bad(expected)
    return tuple(names)


def _path(text: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise _Bad("an absolute path like /sys/class/leds/NAME/brightness")
    return text


def _file_word(text: str) -> str:
    if not text or len(text) > 64 or not text.isprintable() or text != text.strip():
        raise _Bad("the text the file holds, 1 to 64 printable characters")
    return text


def _argv(text: str) -> tuple[str, ...]:
    try:
        argv = tuple(shlex.split(text))
    except ValueError as e:
        raise _Bad(f"a command line, quoted as a shell would ({str(e).lower()})") from None
    if not argv or not argv[0]:
        raise _Bad("a command line: the program and its arguments")
    if VALUE_PLACEHOLDER in argv[0]:
        raise _Bad("{value} in an argument, not in the program name")
    return argv


def _register(text: str) -> tuple[RegisterKind, int]:
    expected = "coil:N, discrete:N, holding:N or input:N with N from 0 to 65535"
    kind, sep, number = text.partition(":")
    try:
        register = RegisterKind(kind.strip().lower())
    except ValueError:
        raise _Bad(expected) from None
    if not sep or not re.fullmatch(r"[0-9]{1,5}", number.strip()) or int(number) > 65535:
        raise _Bad(expected)
    return register, int(number)


_FRAMING = re.compile(r"([78])([NEO])([12])")


def _bus(text: str) -> ModbusBus:
    expected = "tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1 (bytesize 7 or 8, parity N, E or O, stopbits 1 or 2)"
    transport, sep, rest = text.partition(":")
    transport = transport.lower()
    if not sep or not rest:
        raise _Bad(expected)
    if transport == "tcp":
        host, port = _host_port(rest, expected)
        return ModbusBus("tcp", host, port)
    if transport == "rtu":
        # DEVICE may hold colons (/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0).
        parts = rest.rsplit(":", 2)
        if len(parts) != 3:
            raise _Bad(expected)
        device, baud, framing = parts
        match = _FRAMING.fullmatch(framing.upper())
        if not device.startswith("/") or not match or not re.fullmatch(r"[0-9]{2,7}", baud):
            raise _Bad(expected)
        baudrate = int(baud)
        if not 50 <= baudrate <= 4000000:
            raise _Bad(f"{expected}; a baud rate from 50 to 4000000")
        return ModbusBus(
            "rtu",
            device,
            baudrate=baudrate,
            bytesize=int(match.group(1)),
            parity=match.group(2),
            stopbits=int(match.group(3)),
        )
    raise _Bad(expected)


def _host_port(text: str, expected: str) -> tuple[str, int]:
    """C{HOST}, C{HOST:PORT}, C{[V6]} or C{[V6]:PORT}."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise _Bad(expected)
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
        if ":" in port_text:
            raise _Bad(f"{expected}; an IPv6 address in brackets, [::1]:502")
    if not host or any(c.isspace() or c in "/?#@" for c in host):
        raise _Bad(expected)
    if not port_text:
        return host, 502
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise _Bad(f"{expected}; a port from 1 to 65535")
    return host, int(port_text)


def _integer(low: int, high: int, extra: str = "") -> Callable[[str], int]:
    expected = f"a whole number from {low} to {high}{extra}"

    def parse(text: str) -> int:
        if not re.fullmatch(r"[0-9]{1,6}", text) or not low <= int(text) <= high:
            raise _Bad(expected)
        return int(text)

    return parse


# ------------------------------------------------------------------- values


def _value_parser(
    kind: ControlType,
    low: float | None,
    high: float | None,
    step: float | None,
    choices: tuple[str, ...],
) -> Callable[[str], Value]:
    """How C{safe_value} and C{initial} are read for a control of this type."""

    def parse(text: str) -> Value:
        if kind is ControlType.SWITCH:
            lowered = text.lower()
            if lowered not in ("on", "off"):
                raise _Bad("on or off")
            return lowered == "on"
        if kind is ControlType.CHOICE:
            if text not in choices:
                raise _Bad("one of " + ", ".join(choices))
            return text
        assert kind is ControlType.NUMBER and low is not None and high is not None
        grid = f" on the grid of step {step:g} from {low:g}" if step else ""
        expected = f"a number from {low:g} to {high:g}{grid}"
        try:
            value = float(text)
        except ValueError:
            raise _Bad(expected) from None
        if not (low <= value <= high) or (step and not on_grid(value, low, step)):
            raise _Bad(expected)
        return value

    return parse


# ----------------------------------------------------------------- controls


def parse_control(name: str, items: Items, source: str, section_line: int) -> ControlSpec:
    """
    The control declared by section C{[control:NAME]}.

    @param items: key -> (raw value, line number), in INI order; keys lower-cased.
    @param source: the file name, for messages.
    @param section_line: the line of the section header, for missing keys.
    @raise ConfigError: one line naming C{source}, the line, C{[control:NAME] key},
        the value and what was expected.
    """
    if not re.fullmatch(NAME_PATTERN, name):
        raise ConfigError(
            f"{source}:{section_line}: [{CONTROL_PREFIX}{name}]: expected a control name of "
            "1 to 32 characters from a-z, 0-9, _ and -"
        )
    s = _Section(name, items, source, section_line)

    def parse_type(text: str) -> ControlType:
        try:
            return ControlType(text.lower())
        except ValueError:
            raise _Bad(_TYPES) from None

    kind = s.get_required("type", parse_type, _TYPES)

    def parse_backend(text: str) -> str:
        backend = text.lower()
        if backend not in _BACKENDS:
            raise _Bad(", ".join(_BACKENDS))
        if backend == "memory" and kind is ControlType.SENSOR:
            raise _Bad("file, command or modbus for a sensor (nothing would change a sensor kept in memory)")
        if backend == "modbus" and kind is ControlType.CHOICE:
            raise _Bad("memory, file or command for a choice (Modbus has registers, not names)")
        return backend

    backend = s.get_required("backend", parse_backend, ", ".join(_BACKENDS))
    known = _known_keys(kind, backend)
    for key, (_, line) in items.items():
        if key not in known:
            raise ConfigError(
                f"{source}:{line}: {s.header} {key}: unknown key for {_a(kind)} on the {backend} backend "
                f"(known: {', '.join(known)})"
            )

    label = s.get("label", _printable(_MAX_LABEL, "a label", empty=True), "")
    timeout = s.get("timeout", _seconds(0.1, 600), 2.0)
    poll = s.get("poll", _seconds(0, 86400, low_open=True), None)
    role = s.get("role", _role, Role.OPERATOR)
    confirm = s.get("confirm", _printable(_MAX_CONFIRM, "a question", empty=False), None)
    unit = s.get("unit", _printable(_MAX_UNIT, "a unit", empty=True), "")

    low = high = step = None
    if kind is ControlType.NUMBER:
        low = s.get_required("min", _finite, "the lowest value (a number needs a range the UI can show)")
        high = s.get_required("max", _finite, "the highest value (a number needs a range the UI can show)")
        if high < low:
            raise s.error("max", f"a number at least min = {low:g}")
        step = s.get("step", _finite, None)
        if step is not None and step <= 0:
            raise s.error("step", "a number greater than 0")
    choices: tuple[str, ...] = ()
    if kind is ControlType.CHOICE:
        choices = s.get_required("choices", _choices, "a comma-separated list of the names offered")
    value_of = _value_parser(kind, low, high, step, choices)
    safe_value = s.get("safe_value", value_of, None)

    spec: BackendSpec
    if backend == "memory":
        default: Value = {
            ControlType.SWITCH: False,
            ControlType.NUMBER: low,
            ControlType.CHOICE: choices[0] if choices else None,
        }.get(kind)
        spec = MemorySpec(initial=s.get("initial", value_of, default))
    elif backend == "file":
        spec = _file_spec(s, kind)
    elif backend == "command":
        spec = _command_spec(s, kind)
        if poll is not None and not spec.read:
            raise s.error("poll", "no poll without a read command (there is nothing to read)")
    else:
        spec = _modbus_spec(s, kind, low, high)

    return ControlSpec(
        name=name,
        type=kind,
        backend=spec,
        label=label,
        unit=unit,
        min=low,
        max=high,
        step=step,
        choices=choices,
        poll=poll,
        timeout=timeout,
        role=role,
        safe_value=safe_value,
        confirm=confirm,
        where=f"{source}:{section_line}",
    )


def _file_spec(s: _Section, kind: ControlType) -> FileSpec:
    path = s.get_required("path", _path, "the absolute path of the device file")
    on = s.get("on", _file_word, "1")
    off = s.get("off", _file_word, "0")
    if kind is ControlType.SWITCH and on == off:
        raise s.error("off" if s.has("off") else "on", f"a text other than on = {on!r}")
    scale = s.get("scale", _scale, 1.0)
    field: int | None = None
    if s.has("field"):
        field = s.get("field", _integer(1, 64, " (which white-space separated field of the first line to read: "
                                               "1 for the first, as in /proc/loadavg)"), 1)
    return FileSpec(path=Path(path), on=on, off=off, scale=scale, field=field)


def _command_spec(s: _Section, kind: ControlType) -> CommandSpec:
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    if kind is ControlType.SENSOR:
        read = s.get_required("read", _argv, "the command that prints the reading")
    else:
        read = s.get("read", _argv, ())
    if kind.writable:
        write = s.get_required("write", _argv, "the command that sets the value ({value} is replaced by it)")
        has_placeholder = any(VALUE_PLACEHOLDER in arg for arg in write)
        if kind is ControlType.ACTION and has_placeholder:
            raise s.error("write", "no {value}: an action has no value")
        if kind is not ControlType.ACTION and not has_placeholder:
            raise s.error("write", "{value} in an argument: it is replaced by the value set")
    return CommandSpec(read=read, write=write)


def _modbus_spec(s: _Section, kind: ControlType, low: float | None, high: float | None) -> ModbusSpec:
    bus = s.get_required("modbus", _bus, "tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1")
    if bus.transport == "rtu":
        device = s.get("modbus_device", _integer(1, 247, " (0 is broadcast on a serial bus, never answered)"), 1)
    else:
        device = s.get("modbus_device", _integer(0, 247), 1)
    register, address = s.get_required("register", _register, "coil:N, discrete:N, holding:N or input:N")
    allowed = {
        ControlType.SWITCH: (RegisterKind.COIL, RegisterKind.HOLDING),
        ControlType.ACTION: (RegisterKind.COIL, RegisterKind.HOLDING),
        ControlType.NUMBER: (RegisterKind.HOLDING,),
        ControlType.SENSOR: tuple(RegisterKind),
    }[kind]
    if register not in allowed:
        names = " or ".join(f"{r}:N" for r in allowed)
        why = "read-only in Modbus" if not register.writable else "a single bit"
        raise s.error("register", f"{names} for {_a(kind)} ({register} is {why})")
    if register.is_bit:
        for key in ("scale", "signed"):
            if s.has(key):
                raise s.error(key, f"no {key} on a {register} (a bit is on or off)")
    scale = s.get("scale", _scale, 1.0)
    signed = s.get("signed", _yes_no, False)
    if kind is ControlType.NUMBER:
        assert low is not None and high is not None
        lowest, highest = (-32768, 32767) if signed else (0, 65535)
        for key, bound in (("min", low), ("max", high)):
            raw = round(bound / scale)
            if not lowest <= raw <= highest:
                hint = "" if signed else "; signed = yes allows -32768..32767"
                raise s.error(
                    key,
                    f"a value that fits the register: {bound:g} / scale {scale:g} = {raw}, "
                    f"outside {lowest}..{highest}{hint}",
                )
    return ModbusSpec(bus=bus, device=device, register=register, address=address, scale=scale, signed=signed)


def parse_controls(sections: Iterable[tuple[str, Items, int]], source: str) -> tuple[ControlSpec, ...]:
    """
    Every control of the file, in INI order, checked one by one (L{parse_control})
    and then together: no two controls on one register of the same Modbus bus and
    device, and one set of line settings per serial port.

    @param sections: (NAME, items, section line) for each C{[control:NAME]}.
    """
    controls: list[ControlSpec] = []
    registers: dict[tuple[ModbusBus, int, RegisterKind, int], ControlSpec] = {}
    serial_ports: dict[str, tuple[ModbusBus, ControlSpec]] = {}
    for name, items, line in sections:
        control = parse_control(name, items, source, line)
        spec = control.backend
        if isinstance(spec, ModbusSpec):
            s = _Section(name, items, source, line)
            key = (spec.bus, spec.device, spec.register, spec.address)
            other = registers.get(key)
            if other is not None:
                raise s.error(
                    "register",
                    f"a register no other control uses on modbus {spec.bus} device {spec.device} "
                    f"([{CONTROL_PREFIX}{other.name}] at {other.where} uses it)",
                )
            registers[key] = control
            if spec.bus.transport == "rtu":
                seen = serial_ports.get(spec.bus.host)
                if seen is not None and seen[0] != spec.bus:
                    raise s.error(
                        "modbus",
                        f"{seen[0]}: the line settings [{CONTROL_PREFIX}{seen[1].name}] at {seen[1].where} "
                        f"gives {spec.bus.host} (one serial port, one speed)",
                    )
                serial_ports.setdefault(spec.bus.host, (spec.bus, control))
        controls.append(control)
    return tuple(controls)
