"""[control:NAME] sections: typed specs, and one line naming file, line, key, value and what was expected for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from boatwist.config import ConfigError, parse_config
from boatwist.controls.config import parse_control
from boatwist.controls.roles import Role
from boatwist.controls.spec import (
    CommandSpec,
    ControlType,
    FileSpec,
    MemorySpec,
    ModbusBus,
    ModbusSpec,
    RegisterKind,
)


def parse_one(body: str, name: str = "x"):
    """The one control of a file holding [control:NAME] then C{body}."""
    settings = parse_config(f"[control:{name}]\n{body}", "dev.ini")
    assert len(settings.controls) == 1
    return settings.controls[0]


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "dev.ini")
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ accepted


def test_controls_come_out_typed_and_in_ini_order() -> None:
    """Every section becomes a ControlSpec, in the order written; other sections still parse."""
    settings = parse_config(
        "[admission]\nmax_users = 3\n"
        "[control:pump]\ntype = switch\nbackend = memory\nlabel = Coolant pump\ninitial = on\nsafe_value = off\n"
        "[control:setpoint]\ntype = number\nbackend = memory\nmin = 10\nmax = 30\nstep = 0.5\nunit = °C\n"
        "[control:mode]\ntype = choice\nbackend = memory\nchoices = auto, manual , off\nrole = admin\n"
        "[control:reset]\ntype = action\nbackend = memory\nconfirm = Reset the counters?\n",
        "dev.ini",
    )
    assert settings.admission.max_users == 3
    assert [c.name for c in settings.controls] == ["pump", "setpoint", "mode", "reset"]
    pump, setpoint, mode, reset = settings.controls
    assert pump.type is ControlType.SWITCH and pump.title == "Coolant pump"
    assert pump.backend == MemorySpec(initial=True) and pump.safe_value is False
    assert (setpoint.min, setpoint.max, setpoint.step, setpoint.unit) == (10.0, 30.0, 0.5, "°C")
    assert setpoint.backend == MemorySpec(initial=10.0)  # default initial: min
    assert mode.choices == ("auto", "manual", "off") and mode.role is Role.ADMIN
    assert mode.backend == MemorySpec(initial="auto")  # default initial: the first choice
    assert reset.confirm == "Reset the counters?" and reset.backend == MemorySpec(initial=None)
    assert pump.where == "dev.ini:3" and pump.timeout == 2.0 and pump.poll is None


def test_no_controls_is_fine() -> None:
    """A configuration without controls has an empty tuple."""
    assert parse_config("").controls == ()


def test_file_control() -> None:
    """A file: absolute path, on/off texts, scale, poll, timeout."""
    c = parse_one(
        "type = sensor\nbackend = file\npath = /sys/class/thermal/thermal_zone0/temp\nscale = 0.001\n"
        "unit = °C\npoll = 2\ntimeout = 0.5\n"
    )
    assert c.backend == FileSpec(path=Path("/sys/class/thermal/thermal_zone0/temp"), scale=0.001)
    assert (c.poll, c.timeout) == (2.0, 0.5)
    led = parse_one("type = switch\nbackend = file\npath = /sys/class/leds/a/brightness\non = 255\noff = 0\n")
    assert isinstance(led.backend, FileSpec) and (led.backend.on, led.backend.off) == ("255", "0")


def test_file_sensor_field() -> None:
    """``field = N`` on a file sensor is kept as N (1-based); without it the whole first line is read."""
    load = parse_one("type = sensor\nbackend = file\npath = /proc/loadavg\nfield = 1\npoll = 2\n")
    assert load.backend == FileSpec(path=Path("/proc/loadavg"), field=1)
    assert parse_one("type = sensor\nbackend = file\npath = /proc/loadavg\nfield = 64\n").backend.field == 64
    assert parse_one("type = sensor\nbackend = file\npath = /proc/loadavg\n").backend.field is None


def test_command_control_splits_like_a_shell_without_one() -> None:
    """read/write are argv lists; quoting groups, {value} stays inside its argument."""
    c = parse_one(
        "type = number\nbackend = command\nmin = 0\nmax = 10\n"
        "read = /usr/bin/valve --get 'flow rate'\nwrite = /usr/bin/valve --set=\"{value}\" now\n"
    )
    assert c.backend == CommandSpec(
        read=("/usr/bin/valve", "--get", "flow rate"), write=("/usr/bin/valve", "--set={value}", "now")
    )
    write_only = parse_one("type = switch\nbackend = command\nwrite = relay {value}\n")
    assert write_only.backend == CommandSpec(read=(), write=("relay", "{value}"))


@pytest.mark.parametrize(
    "modbus, bus",
    [
        ("tcp:10.0.0.5:1502", ModbusBus("tcp", "10.0.0.5", 1502)),
        ("tcp:plc.local", ModbusBus("tcp", "plc.local", 502)),
        ("tcp:[::1]:5020", ModbusBus("tcp", "::1", 5020)),
        ("rtu:/dev/ttyUSB0:19200:8E1", ModbusBus("rtu", "/dev/ttyUSB0", baudrate=19200, parity="E")),
        (
            "rtu:/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0:9600:7o2",
            ModbusBus(
                "rtu", "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0", baudrate=9600, bytesize=7, parity="O",
                stopbits=2,
            ),
        ),
    ],
)
def test_modbus_bus_forms(modbus: str, bus: ModbusBus) -> None:
    """tcp:HOST[:PORT] (IPv6 in brackets) and rtu:DEVICE:BAUD:8N1, device paths with colons included."""
    c = parse_one(f"type = sensor\nbackend = modbus\nmodbus = {modbus}\nregister = input:0\n")
    assert isinstance(c.backend, ModbusSpec) and c.backend.bus == bus


def test_modbus_control() -> None:
    """Device, register, scale and signed come out typed."""
    c = parse_one(
        "type = number\nbackend = modbus\nmodbus = tcp:plc:502\nmodbus_device = 17\nregister = holding:40\n"
        "min = -20\nmax = 50\nscale = 0.1\nsigned = yes\n"
    )
    assert c.backend == ModbusSpec(
        bus=ModbusBus("tcp", "plc", 502), device=17, register=RegisterKind.HOLDING, address=40, scale=0.1, signed=True
    )


def test_a_sensor_may_read_any_register_kind() -> None:
    """Discrete inputs and input registers are fine for a sensor: it is only read."""
    for register in ("coil:1", "discrete:1", "holding:1", "input:1"):
        c = parse_one(f"type = sensor\nbackend = modbus\nmodbus = tcp:plc\nregister = {register}\n")
        assert isinstance(c.backend, ModbusSpec)


# -------------------------------------------------------------------- refused

S = "[control:x]\n"  # line 1; the first key is on line 2

REFUSED = {
    "bad name": ("[control:Pump]\ntype = switch\nbackend = memory\n", "dev.ini:1: [control:Pump]: expected a control name"),
    "name too long": (f"[control:{'a' * 33}]\ntype = switch\nbackend = memory\n", "expected a control name of 1 to 32"),
    "missing type": (S + "backend = memory\n", "dev.ini:1: [control:x] type: missing, expected switch, number, choice, action, sensor"),
    "bad type": (S + "type = slider\nbackend = memory\n", "dev.ini:2: [control:x] type = 'slider': expected switch, number, choice, action, sensor"),
    "missing backend": (S + "type = switch\n", "dev.ini:1: [control:x] backend: missing, expected memory, file, command, modbus"),
    "bad backend": (S + "type = switch\nbackend = gpio\n", "dev.ini:3: [control:x] backend = 'gpio': expected memory, file, command, modbus"),
    "field not a number": (S + "type = sensor\nbackend = file\npath = /proc/loadavg\nfield = first\n", "dev.ini:5: [control:x] field = 'first': expected a whole number from 1 to 64 (which white-space separated field of the first line to read: 1 for the first, as in /proc/loadavg)"),
    "field zero": (S + "type = sensor\nbackend = file\npath = /proc/loadavg\nfield = 0\n", "dev.ini:5: [control:x] field = '0': expected a whole number from 1 to 64"),
    "field too big": (S + "type = sensor\nbackend = file\npath = /proc/loadavg\nfield = 65\n", "[control:x] field = '65': expected a whole number from 1 to 64"),
    "field negative": (S + "type = sensor\nbackend = file\npath = /proc/loadavg\nfield = -1\n", "[control:x] field = '-1': expected a whole number from 1 to 64"),
    "field empty": (S + "type = sensor\nbackend = file\npath = /proc/loadavg\nfield =\n", "[control:x] field = '': expected a whole number from 1 to 64"),
    "field on a switch": (S + "type = switch\nbackend = file\npath = /x\nfield = 1\n", "dev.ini:5: [control:x] field: unknown key for a switch on the file backend"),
    "field on a command": (S + "type = sensor\nbackend = command\nread = cat /proc/loadavg\nfield = 1\n", "[control:x] field: unknown key for a sensor on the command backend"),
    "memory sensor": (S + "type = sensor\nbackend = memory\n", "[control:x] backend = 'memory': expected file, command or modbus for a sensor"),
    "modbus choice": (S + "type = choice\nbackend = modbus\nchoices = a\n", "[control:x] backend = 'modbus': expected memory, file or command for a choice"),
    "unknown key": (S + "type = switch\nbackend = memory\ncolour = red\n", "dev.ini:4: [control:x] colour: unknown key for a switch on the memory backend (known: type, backend, label, timeout, poll, role, confirm, safe_value, initial)"),
    "key of another backend": (S + "type = switch\nbackend = memory\npath = /x\n", "dev.ini:4: [control:x] path: unknown key for a switch on the memory backend"),
    "min on a switch": (S + "type = switch\nbackend = memory\nmin = 1\n", "[control:x] min: unknown key for a switch"),
    "safe_value on a sensor": (S + "type = sensor\nbackend = file\npath = /x\nsafe_value = 1\n", "[control:x] safe_value: unknown key for a sensor on the file backend"),
    "role on a sensor": (S + "type = sensor\nbackend = file\npath = /x\nrole = admin\n", "[control:x] role: unknown key for a sensor"),
    "initial on an action": (S + "type = action\nbackend = memory\ninitial = on\n", "[control:x] initial: unknown key for an action on the memory backend"),
    "poll on an action": (S + "type = action\nbackend = memory\npoll = 1\n", "[control:x] poll: unknown key"),
    "number without min": (S + "type = number\nbackend = memory\nmax = 5\n", "dev.ini:1: [control:x] min: missing, expected the lowest value (a number needs a range the UI can show)"),
    "number without max": (S + "type = number\nbackend = memory\nmin = 5\n", "[control:x] max: missing, expected the highest value"),
    "min above max": (S + "type = number\nbackend = memory\nmin = 5\nmax = 1\n", "dev.ini:5: [control:x] max = '1': expected a number at least min = 5"),
    "min not a number": (S + "type = number\nbackend = memory\nmin = low\nmax = 1\n", "dev.ini:4: [control:x] min = 'low': expected a number"),
    "min infinite": (S + "type = number\nbackend = memory\nmin = -inf\nmax = 1\n", "[control:x] min = '-inf': expected a finite number"),
    "max nan": (S + "type = number\nbackend = memory\nmin = 0\nmax = nan\n", "[control:x] max = 'nan': expected a finite number"),
    "step zero": (S + "type = number\nbackend = memory\nmin = 0\nmax = 1\nstep = 0\n", "dev.ini:6: [control:x] step = '0': expected a number greater than 0"),
    "step negative": (S + "type = number\nbackend = memory\nmin = 0\nmax = 1\nstep = -1\n", "[control:x] step = '-1': expected a number greater than 0"),
    "empty choices": (S + "type = choice\nbackend = memory\nchoices = , ,\n", "dev.ini:4: [control:x] choices = ', ,': expected a comma-separated list"),
    "duplicate choices": (S + "type = choice\nbackend = memory\nchoices = a, b, a\n", "[control:x] choices = 'a, b, a': expected a comma-separated list of names of 1 to 64 printable characters, each once"),
    "missing choices": (S + "type = choice\nbackend = memory\n", "dev.ini:1: [control:x] choices: missing"),
    "file without path": (S + "type = switch\nbackend = file\n", "dev.ini:1: [control:x] path: missing, expected the absolute path of the device file"),
    "relative path": (S + "type = switch\nbackend = file\npath = leds/a\n", "dev.ini:4: [control:x] path = 'leds/a': expected an absolute path"),
    "on equals off": (S + "type = switch\nbackend = file\npath = /x\non = 1\noff = 1\n", "dev.ini:6: [control:x] off = '1': expected a text other than on = '1'"),
    "scale zero": (S + "type = sensor\nbackend = file\npath = /x\nscale = 0\n", "[control:x] scale = '0': expected a nonzero finite number"),
    "scale infinite": (S + "type = sensor\nbackend = file\npath = /x\nscale = inf\n", "[control:x] scale = 'inf': expected a nonzero finite number"),
    "poll zero": (S + "type = sensor\nbackend = file\npath = /x\npoll = 0\n", "[control:x] poll = '0': expected seconds more than 0 to 86400"),
    "poll too long": (S + "type = sensor\nbackend = file\npath = /x\npoll = 86401\n", "[control:x] poll = '86401': expected seconds more than 0 to 86400"),
    "timeout too short": (S + "type = switch\nbackend = memory\ntimeout = 0.05\n", "dev.ini:4: [control:x] timeout = '0.05': expected seconds from 0.1 to 600"),
    "timeout too long": (S + "type = switch\nbackend = memory\ntimeout = 601\n", "[control:x] timeout = '601': expected seconds from 0.1 to 600"),
    "viewer role": (S + "type = switch\nbackend = memory\nrole = viewer\n", "[control:x] role = 'viewer': expected operator or admin (a viewer operates nothing)"),
    "bad role": (S + "type = switch\nbackend = memory\nrole = god\n", "[control:x] role = 'god': expected operator or admin"),
    "switch safe_value": (S + "type = switch\nbackend = memory\nsafe_value = yes\n", "[control:x] safe_value = 'yes': expected on or off"),
    "number initial out of range": (S + "type = number\nbackend = memory\nmin = 0\nmax = 10\ninitial = 11\n", "dev.ini:6: [control:x] initial = '11': expected a number from 0 to 10"),
    "number initial off the grid": (S + "type = number\nbackend = memory\nmin = 1\nmax = 10\nstep = 2\ninitial = 4\n", "[control:x] initial = '4': expected a number from 1 to 10 on the grid of step 2 from 1"),
    "choice safe_value unknown": (S + "type = choice\nbackend = memory\nchoices = a, b\nsafe_value = c\n", "[control:x] safe_value = 'c': expected one of a, b"),
    "empty confirm": (S + "type = switch\nbackend = memory\nconfirm =\n", "[control:x] confirm = '': expected a question of 1 to 200 printable characters"),
    "long label": (S + "type = switch\nbackend = memory\nlabel = " + "L" * 65 + "\n", "[control:x] label = '" + "L" * 65 + "': expected a label of at most 64"),
    "long unit": (S + "type = sensor\nbackend = file\npath = /x\nunit = " + "u" * 17 + "\n", "expected a unit of at most 16 printable characters"),
    "sensor command without read": (S + "type = sensor\nbackend = command\n", "dev.ini:1: [control:x] read: missing, expected the command that prints the reading"),
    "switch command without write": (S + "type = switch\nbackend = command\nread = get\n", "dev.ini:1: [control:x] write: missing, expected the command that sets the value"),
    "write on a sensor": (S + "type = sensor\nbackend = command\nread = get\nwrite = set {value}\n", "[control:x] write: unknown key for a sensor on the command backend"),
    "read on an action": (S + "type = action\nbackend = command\nread = get\nwrite = go\n", "[control:x] read: unknown key for an action on the command backend"),
    "bad quoting": (S + "type = switch\nbackend = command\nwrite = set '{value}\n", "dev.ini:4: [control:x] write = \"set '{value}\": expected a command line, quoted as a shell would (no closing quotation)"),
    "empty command": (S + "type = sensor\nbackend = command\nread = ''\n", "[control:x] read = \"''\": expected a command line: the program and its arguments"),
    "write without value": (S + "type = number\nbackend = command\nmin = 0\nmax = 1\nwrite = set\n", "dev.ini:6: [control:x] write = 'set': expected {value} in an argument: it is replaced by the value set"),
    "value in the program": (S + "type = switch\nbackend = command\nwrite = {value} now\n", "[control:x] write = '{value} now': expected {value} in an argument, not in the program name"),
    "value for an action": (S + "type = action\nbackend = command\nwrite = go {value}\n", "[control:x] write = 'go {value}': expected no {value}: an action has no value"),
    "poll without read": (S + "type = switch\nbackend = command\nwrite = set {value}\npoll = 5\n", "[control:x] poll = '5': expected no poll without a read command"),
    "modbus missing": (S + "type = switch\nbackend = modbus\nregister = coil:1\n", "dev.ini:1: [control:x] modbus: missing, expected tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1"),
    "modbus scheme": (S + "type = switch\nbackend = modbus\nmodbus = udp:h:1\nregister = coil:1\n", "dev.ini:4: [control:x] modbus = 'udp:h:1': expected tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1"),
    "modbus port": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h:70000\nregister = coil:1\n", "[control:x] modbus = 'tcp:h:70000': expected tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1 (bytesize 7 or 8, parity N, E or O, stopbits 1 or 2); a port from 1 to 65535"),
    "modbus bare ipv6": (S + "type = switch\nbackend = modbus\nmodbus = tcp:::1:502\nregister = coil:1\n", "an IPv6 address in brackets"),
    "rtu parity": (S + "type = switch\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:9600:8X1\nregister = coil:1\n", "[control:x] modbus = 'rtu:/dev/ttyS0:9600:8X1': expected tcp:HOST:PORT or rtu:DEVICE:BAUD:8N1 (bytesize 7 or 8, parity N, E or O, stopbits 1 or 2)"),
    "rtu stopbits": (S + "type = switch\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:9600:8N3\nregister = coil:1\n", "modbus = 'rtu:/dev/ttyS0:9600:8N3': expected"),
    "rtu bytesize": (S + "type = switch\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:9600:6N1\nregister = coil:1\n", "modbus = 'rtu:/dev/ttyS0:9600:6N1': expected"),
    "rtu baud": (S + "type = switch\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:fast:8N1\nregister = coil:1\n", "modbus = 'rtu:/dev/ttyS0:fast:8N1': expected"),
    "rtu relative device": (S + "type = switch\nbackend = modbus\nmodbus = rtu:ttyS0:9600:8N1\nregister = coil:1\n", "modbus = 'rtu:ttyS0:9600:8N1': expected"),
    "register missing": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\n", "dev.ini:1: [control:x] register: missing, expected coil:N, discrete:N, holding:N or input:N"),
    "register kind": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\nregister = hr:1\n", "dev.ini:5: [control:x] register = 'hr:1': expected coil:N, discrete:N, holding:N or input:N with N from 0 to 65535"),
    "register address": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\nregister = coil:65536\n", "[control:x] register = 'coil:65536': expected coil:N"),
    "register no address": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\nregister = coil\n", "[control:x] register = 'coil': expected coil:N"),
    "switch on a discrete input": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\nregister = discrete:3\n", "dev.ini:5: [control:x] register = 'discrete:3': expected coil:N or holding:N for a switch (discrete is read-only in Modbus)"),
    "number on an input register": (S + "type = number\nbackend = modbus\nmodbus = tcp:h\nregister = input:3\nmin = 0\nmax = 1\n", "[control:x] register = 'input:3': expected holding:N for a number (input is read-only in Modbus)"),
    "number on a coil": (S + "type = number\nbackend = modbus\nmodbus = tcp:h\nregister = coil:3\nmin = 0\nmax = 1\n", "[control:x] register = 'coil:3': expected holding:N for a number (coil is a single bit)"),
    "action on an input register": (S + "type = action\nbackend = modbus\nmodbus = tcp:h\nregister = input:3\n", "[control:x] register = 'input:3': expected coil:N or holding:N for an action (input is read-only in Modbus)"),
    "scale on a coil": (S + "type = sensor\nbackend = modbus\nmodbus = tcp:h\nregister = coil:3\nscale = 2\n", "dev.ini:6: [control:x] scale = '2': expected no scale on a coil (a bit is on or off)"),
    "signed bad": (S + "type = sensor\nbackend = modbus\nmodbus = tcp:h\nregister = input:3\nsigned = maybe\n", "[control:x] signed = 'maybe': expected yes or no"),
    "device out of range": (S + "type = switch\nbackend = modbus\nmodbus = tcp:h\nmodbus_device = 248\nregister = coil:1\n", "dev.ini:5: [control:x] modbus_device = '248': expected a whole number from 0 to 247"),
    "device 0 on rtu": (S + "type = switch\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:9600:8N1\nmodbus_device = 0\nregister = coil:1\n", "[control:x] modbus_device = '0': expected a whole number from 1 to 247 (0 is broadcast on a serial bus, never answered)"),
    "range does not fit the register": (S + "type = number\nbackend = modbus\nmodbus = tcp:h\nregister = holding:1\nmin = -5\nmax = 5\n", "dev.ini:6: [control:x] min = '-5': expected a value that fits the register: -5 / scale 1 = -5, outside 0..65535; signed = yes allows -32768..32767"),
    "range does not fit after scale": (S + "type = number\nbackend = modbus\nmodbus = tcp:h\nregister = holding:1\nmin = 0\nmax = 100\nscale = 0.001\n", "[control:x] max = '100': expected a value that fits the register: 100 / scale 0.001 = 100000, outside 0..65535"),
    "same register twice": (
        (
            "[control:a]\ntype = switch\nbackend = modbus\nmodbus = tcp:plc:502\nregister = coil:4\n"
            "[control:b]\ntype = sensor\nbackend = modbus\nmodbus = tcp:plc:502\nregister = coil:4\n"
        ),
        "dev.ini:10: [control:b] register = 'coil:4': expected a register no other control uses on modbus tcp:plc:502 device 1 ([control:a] at dev.ini:1 uses it)",
    ),
    "one serial port, two speeds": (
        (
            "[control:a]\ntype = sensor\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:9600:8N1\nregister = input:4\n"
            "[control:b]\ntype = sensor\nbackend = modbus\nmodbus = rtu:/dev/ttyS0:19200:8N1\nregister = input:5\n"
        ),
        "dev.ini:9: [control:b] modbus = 'rtu:/dev/ttyS0:19200:8N1': expected rtu:/dev/ttyS0:9600:8N1: the line settings [control:a] at dev.ini:1 gives /dev/ttyS0 (one serial port, one speed)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_with_one_line(case: str) -> None:
    """Each mistake is refused at start with one line naming file, line, [control:NAME] key, value and what was expected."""
    text, expected = REFUSED[case]
    message = error_of(text)
    assert expected in message, message
    assert message.startswith("dev.ini:"), message


def test_the_same_register_on_another_device_or_bus_is_fine() -> None:
    """Only the same bus, device, kind and address is a clash."""
    settings = parse_config(
        "[control:a]\ntype = switch\nbackend = modbus\nmodbus = tcp:plc:502\nregister = coil:4\n"
        "[control:b]\ntype = switch\nbackend = modbus\nmodbus = tcp:plc:502\nregister = coil:4\nmodbus_device = 2\n"
        "[control:c]\ntype = switch\nbackend = modbus\nmodbus = tcp:plc2:502\nregister = coil:4\n"
        "[control:d]\ntype = sensor\nbackend = modbus\nmodbus = tcp:plc:502\nregister = discrete:4\n",
        "dev.ini",
    )
    assert len(settings.controls) == 4


def test_unknown_section_message_mentions_controls() -> None:
    """A misspelt section lists [control:NAME] among the known ones."""
    assert "[control:NAME]" in error_of("[controls:x]\ntype = switch\n")


def test_duplicate_control_is_refused_by_the_ini_parser() -> None:
    """Two sections with one name: the strict INI parser says so, with the line."""
    message = error_of("[control:a]\ntype = switch\nbackend = memory\n[control:a]\ntype = switch\nbackend = memory\n")
    assert "dev.ini" in message and "control:a" in message


def test_parse_control_directly() -> None:
    """The function other code calls: items carry their own line numbers."""
    spec = parse_control(
        "pump",
        {"type": ("switch", 11), "backend": ("memory", 12), "initial": ("on", 13)},
        "etc/embweb.ini",
        10,
    )
    assert spec.backend == MemorySpec(initial=True) and spec.where == "etc/embweb.ini:10"
    with pytest.raises(ConfigError) as info:
        parse_control("pump", {"type": ("switch", 11), "backend": ("memory", 12), "initial": ("maybe", 13)}, "e.ini", 10)
    assert str(info.value) == "e.ini:13: [control:pump] initial = 'maybe': expected on or off"
