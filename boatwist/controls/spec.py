"""
A control as declared in the INI: typed, frozen, validated at start.

    [control:pump]
    type = switch            switch | number | choice | action | sensor
    label = Coolant pump
    backend = memory         memory | file | command | modbus
    ...                      the backend's keys (below), poll, timeout, role,
                             safe_value, confirm, initial

Values, in Python, as the API carries them (L{Value}):

    switch   bool                 (INI and chat port: on / off)
    number   float                within min..max, on the step grid from min
    choice   str                  one of choices
    action   None                 a button: operated, never holds a value
    sensor   float, or str when the sensor has no unit and reads text

The backends' own keys:

    memory   initial                          the value until first set; then
                                              persisted and restored at start
    file     path, on, off, scale, field      on/off: the strings written for a
                                              switch (default 1 / 0); scale: a
                                              number read is multiplied by it
                                              (0.001 for milli-degrees); field:
                                              a sensor reads that field of the
                                              first line (/proc/loadavg: 1)
    command  read, write                      argv, shlex-split; {value} in an
                                              argument of write is replaced by
                                              the value (one argument, no shell)
    modbus   modbus, modbus_device, register, scale, signed
             modbus = tcp:HOST:PORT | rtu:DEVICE:BAUD:8N1
             register = coil:N | discrete:N | holding:N | input:N
             (N: the 0-based protocol address, as pymodbus and Wireshark show it)
             signed = yes: a register holds -32768..32767 (two's complement)

L{boatwist.controls.config} documents which key goes with which type and
backend, and refuses the rest.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from boatwist.controls.roles import Role

__all__ = [
    "BackendSpec",
    "CommandSpec",
    "ControlSpec",
    "ControlType",
    "FileSpec",
    "MemorySpec",
    "ModbusBus",
    "ModbusSpec",
    "NAME_PATTERN",
    "RegisterKind",
    "Value",
]

#: A control's name: a section [control:NAME], a path segment, a chat word.
NAME_PATTERN = r"[a-z0-9_-]{1,32}"

#: A control's value as the API carries it (see the module docstring).
Value = Union[bool, float, str, None]


class ControlType(str, enum.Enum):
    SWITCH = "switch"
    NUMBER = "number"
    CHOICE = "choice"
    ACTION = "action"
    SENSOR = "sensor"

    def __str__(self) -> str:
        return self.value

    @property
    def writable(self) -> bool:
        """Sensors are read, never operated."""
        return self is not ControlType.SENSOR

    @property
    def has_value(self) -> bool:
        """An action is a button: it is operated but holds no value."""
        return self is not ControlType.ACTION


@dataclass(frozen=True)
class MemorySpec:
    """A value kept by boatwist itself (set-points, demos), persisted in the store."""

    initial: Value = None


@dataclass(frozen=True)
class FileSpec:
    """A device file: sysfs LEDs and GPIO, /sys/class/thermal/.../temp, any file."""

    path: Path
    #: What is written for a switch that is on / off, and read back as such.
    on: str = "1"
    off: str = "0"
    #: A number read is multiplied by it; a number written is divided by it.
    scale: float = 1.0
    #: A sensor reads the N-th white-space separated field of the first line
    #: (1-based): /proc/loadavg's first field is the 1-minute load.
    field: int | None = None


@dataclass(frozen=True)
class CommandSpec:
    """Commands run without a shell; C{{value}} in a C{write} argument is the value."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


class RegisterKind(str, enum.Enum):
    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"

    def __str__(self) -> str:
        return self.value

    @property
    def writable(self) -> bool:
        """Discrete inputs and input registers are read-only in Modbus itself."""
        return self in (RegisterKind.COIL, RegisterKind.HOLDING)

    @property
    def is_bit(self) -> bool:
        return self in (RegisterKind.COIL, RegisterKind.DISCRETE)


@dataclass(frozen=True)
class ModbusBus:
    """
    One Modbus connection, shared by every control that names it alike:
    C{tcp:HOST:PORT} or C{rtu:DEVICE:BAUD:8N1}.
    """

    transport: str  # "tcp" or "rtu"
    #: tcp: host name or address; rtu: the serial device path.
    host: str
    #: tcp: the port.
    port: int = 502
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"  # N, E or O
    stopbits: int = 1

    def __str__(self) -> str:
        if self.transport == "tcp":
            return f"tcp:{self.host}:{self.port}"
        return f"rtu:{self.host}:{self.baudrate}:{self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True)
class ModbusSpec:
    bus: ModbusBus
    #: The unit id (slave id) on the bus.
    device: int
    register: RegisterKind
    #: The 0-based protocol address.
    address: int
    #: A register is multiplied by it when read, divided when written.
    scale: float = 1.0
    #: A register is a two's-complement int16 (-32768..32767), not 0..65535.
    signed: bool = False


BackendSpec = Union[MemorySpec, FileSpec, CommandSpec, ModbusSpec]


@dataclass(frozen=True)
class ControlSpec:
    name: str
    type: ControlType
    backend: BackendSpec
    label: str = ""
    unit: str = ""
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    #: Seconds between reads; None: read at start and after each operation only.
    poll: float | None = None
    #: Seconds every backend call may take before it is a failed operation (504).
    timeout: float = 2.0
    #: The least role that may operate it.
    role: Role = Role.OPERATOR
    #: Set to this when the floor is lost because its holder vanished (a dead-man switch).
    safe_value: Value = None
    #: When set, operating it takes two steps: this question, then a confirmation.
    confirm: str | None = None
    #: Where in the INI it was declared, for messages: "file:line".
    where: str = field(default="", compare=False)

    @property
    def title(self) -> str:
        """What people read: the label, or the name when there is none."""
        return self.label or self.name
