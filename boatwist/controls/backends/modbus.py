"""
The C{modbus} backend: PLCs and I/O modules over Modbus TCP and RTU, with pymodbus.

    modbus = tcp:10.0.0.5:502          or rtu:/dev/ttyUSB0:19200:8E1
    modbus_device = 1
    register = holding:3               coil:N | discrete:N | holding:N | input:N

Values:

  - coil, discrete input: a bit; a switch is on when it is set, a sensor
    reads 1.0 / 0.0, an action sets the coil;
  - holding, input register: 16 bits, 0..65535 (or -32768..32767 with
    C{signed = yes}) times C{scale}; a number is written as
    C{round(value / scale)}, refused with a clear error when that does not
    fit (config checks min and max already); a switch or an action on a
    holding register writes 1 / 0 and reads 0 as off, 1 as on, anything
    else as an error.

Errors, each one line naming the bus:

  - C{"modbus tcp:10.0.0.5:502: connection refused"}: the bus is down.  Every
    call then fails at once with that line (the controls' quality goes
    C{error}) while the bus reconnects by itself in the background, after
    0.5 s, then 1, 2, 4 ... up to 30 s between attempts; the first success
    brings it back for everyone;
  - C{"modbus tcp:10.0.0.5:502 device 1 holding:3: illegal data address
    (exception 2)"}: the device answered with a Modbus exception;
  - L{TimedOut}: no answer within the control's C{timeout} (a hung server,
    an unplugged RS-485 device).  On TCP the connection is dropped and made
    again on the next call, because a late answer would otherwise be taken
    for the next request's.

Why pymodbus's synchronous client on a worker thread, and not Twisted's
asyncio reactor: pymodbus 3 dropped its Twisted support and its async
client needs a running asyncio loop.  The daemon runs the default epoll
reactor; switching the whole daemon to C{asyncioreactor} would have to
happen before anything imports C{twisted.internet.reactor} (the twistd
plugin, every test that uses the global reactor), changes timer and I/O
behaviour under everything else (the heartbeat, TCP_INFO tracking, the
netns tests), and ties boatwist to asyncio's loop policy -- invasive, for
one backend.  A Modbus bus is one conversation at a time anyway (RTU is
half-duplex; most TCP devices serve requests in order), so one thread per
bus (L{ThreadRunner}) running the synchronous client serialises the bus for
free, keeps the serial port or socket on the thread that opened it, and
never touches the reactor thread.  Every call is bounded twice: the caller
gets L{TimedOut} at the control's timeout (L{with_timeout}), and the
thread's own socket/serial timeout is set to the time left, with pymodbus's
retries off, so the work ends with it (L{BoundedCalls}).

pymodbus versions: this module is tested with pymodbus 3.9 and 3.16 (see
pyproject for the pinned range).  3.10 renamed the request keyword
C{slave=} to C{device_id=}; L{device_keyword} is whichever the installed
version takes.  pymodbus is imported when the first bus connects, so a
device without Modbus controls never loads it.  To report why a connection failed ("connection refused",
"no such file or directory"), the clients' C{connect} is overridden to let
the error through instead of logging it and returning False; it sets the
same C{socket} attribute, which every version in the range uses.
"""

from __future__ import annotations

import errno
import functools
import inspect
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.workers import Runner, TimedOut
from boatwist.controls.spec import ControlSpec, ControlType, ModbusBus, ModbusSpec, RegisterKind, Value
from boatwist.controls.backends._bounded import BoundedCalls
from boatwist.controls.backends._text import tidy
from boatwist.controls.backends.base import BackendError

if TYPE_CHECKING:  # pymodbus itself is imported when the first bus connects
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    from pymodbus.pdu import ModbusPDU

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_START",
        "EXCEPTION_NAMES",
    "Disconnected",
    "ModbusBackend",
    "ModbusBusPool",
    "ModbusConnection",
    "ModbusLink",
    "NoAnswer",
    "PymodbusConnection",
    "Refused",
    "device_keyword",
]

_T = TypeVar("_T")

#: Seconds before the first reconnection attempt; doubled after each failure.
BACKOFF_START = 0.5
#: The longest wait between reconnection attempts, seconds.
BACKOFF_MAX = 30.0

#: The Modbus exception codes (Modbus Application Protocol v1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


# ------------------------------------------------------------ the connection seam


class Disconnected(Exception):
    """The bus itself failed (no connection, port gone): every control on it is affected."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


class NoAnswer(Exception):
    """The device did not answer in time (the bus may be fine)."""


class Refused(Exception):
    """The device answered with a Modbus exception, or something the request did not ask for."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ModbusConnection(Protocol):
    """
    One bus's connection, used only from that bus's thread.  Raises
    L{Disconnected}, L{NoAnswer} or L{Refused}; C{timeout} is the time left.
    """

    def open(self, timeout: float) -> None:
        """Connect (or open the serial port) unless already done."""

    def read(self, register: RegisterKind, address: int, device: int, timeout: float) -> int:
        """One coil/discrete (0 or 1) or one register (0..65535)."""

    def write(self, register: RegisterKind, address: int, device: int, raw: int, timeout: float) -> None:
        """Set one coil (0 or 1) or one holding register (0..65535)."""

    def close(self) -> None:
        """Close the socket or port; L{open} may be called again later."""


def _describe(error: BaseException) -> str:
    """A connection error as people read it: C{connection refused}."""
    if isinstance(error, socket.timeout):
        return "connect timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host ({error.strerror or error})"
    if isinstance(error, OSError) and error.errno is not None:
        if error.errno == errno.ETIMEDOUT:
            return "connect timed out"
        return os.strerror(error.errno).lower()
    text = str(error).strip() or type(error).__name__
    # pyserial: "[Errno 2] could not open port /dev/x: [Errno 2] No such file or directory: '/dev/x'"
    return text.split("\n")[0][:200]


@functools.cache
def device_keyword() -> str:
    """The keyword pymodbus's requests take for the unit id: C{device_id} (3.10+) or C{slave}."""
    from pymodbus.client.mixin import ModbusClientMixin

    parameters = inspect.signature(ModbusClientMixin.read_coils).parameters
    return "device_id" if "device_id" in parameters else "slave"


class PymodbusConnection:
    """L{ModbusConnection} with pymodbus's synchronous TCP or serial (RTU) client."""

    def __init__(self, bus: ModbusBus) -> None:
        self._bus = bus
        self._client: Any = None  # a pymodbus client: its API differs by version
        self._keyword = device_keyword()

    def open(self, timeout: float) -> None:
        if self._client is not None and self._client.socket is not None:
            return
        self.close()
        client = _make_client(self._bus, timeout)
        try:
            client.connect()
        except Exception as e:  # OSError, serial.SerialException, termios.error ...
            client.close()
            raise Disconnected(_describe(e)) from None
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead socket or port: nothing left to do
                pass

    def read(self, register: RegisterKind, address: int, device: int, timeout: float) -> int:
        call = {
            RegisterKind.COIL: "read_coils",
            RegisterKind.DISCRETE: "read_discrete_inputs",
            RegisterKind.HOLDING: "read_holding_registers",
            RegisterKind.INPUT: "read_input_registers",
        }[register]
        response = self._execute(call, timeout, address, count=1, **{self._keyword: device})
        values = response.bits if register.is_bit else response.registers
        if not values:  # seen from pymodbus 3.9's own server for an address it does not have
            raise Refused("the answer holds no value")
        if register.is_bit:
            return 1 if values[0] else 0
        return int(values[0])

    def write(self, register: RegisterKind, address: int, device: int, raw: int, timeout: float) -> None:
        if register is RegisterKind.COIL:
            self._execute("write_coil", timeout, address, bool(raw), **{self._keyword: device})
        else:
            self._execute("write_register", timeout, address, raw, **{self._keyword: device})

    def _execute(self, name: str, timeout: float, *args: object, **kwargs: object) -> ModbusPDU:
        from pymodbus.exceptions import (
            ConnectionException,
            ModbusException,
            ModbusIOException,
        )

        self.open(timeout)
        client = self._client
        client.comm_params.timeout_connect = timeout
        if self._bus.transport == "rtu":
            client.socket.timeout = timeout
            client.socket.write_timeout = timeout
        started = time.monotonic()
        try:
            response = getattr(client, name)(*args, **kwargs)
        except ConnectionException:
            self.close()
            raise Disconnected("connection lost") from None
        except ModbusIOException as e:
            if self._bus.transport == "tcp":
                self.close()  # a late answer would be taken for the next request's
            if time.monotonic() - started >= 0.9 * timeout:
                raise NoAnswer() from None
            raise Refused(_describe(e)) from None
        except ModbusException as e:
            raise Refused(_describe(e)) from None
        except OSError as e:
            self.close()
            raise Disconnected(_describe(e)) from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name_ = EXCEPTION_NAMES.get(code, "exception")
            raise Refused(f"{name_} (exception {code})")
        return response


def _make_client(bus: ModbusBus, timeout: float) -> ModbusTcpClient | ModbusSerialClient:
    """A pymodbus client whose connect() raises the reason instead of returning False."""
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient

    if bus.transport == "tcp":

        class _Tcp(ModbusTcpClient):
            def connect(self) -> bool:
                if self.socket is None:
                    sock = socket.create_connection((bus.host, bus.port), timeout=self.comm_params.timeout_connect)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.socket = sock
                return True

        return _Tcp(bus.host, port=bus.port, timeout=timeout, retries=0)

    import serial  # pyserial ships no annotations

    class _Serial(ModbusSerialClient):
        def connect(self) -> bool:
            if self.socket is None:
                port = serial.serial_for_url(
                    bus.host,
                    timeout=self.comm_params.timeout_connect,
                    write_timeout=self.comm_params.timeout_connect,
                    bytesize=bus.bytesize,
                    stopbits=bus.stopbits,
                    baudrate=bus.baudrate,
                    parity=bus.parity,
                    exclusive=True,
                )
                port.inter_byte_timeout = self.inter_byte_timeout
                self.socket = port
                if hasattr(self, "last_frame_end"):  # pymodbus < 3.10
                    self.last_frame_end = None
            return True

    return _Serial(
        bus.host,
        baudrate=bus.baudrate,
        bytesize=bus.bytesize,
        parity=bus.parity,
        stopbits=bus.stopbits,
        timeout=timeout,
        retries=0,
    )


# ------------------------------------------------------------------- one bus


class ModbusLink:
    """
    One bus: its connection, its thread, its state (up, or down and why), and
    the background reconnection.  Shared by every control on the bus.

    State is changed on the reactor thread only; the bus's thread reads
    C{_cause} (one attribute, read atomically) so that calls queued before the
    bus went down fail at once too.
    """

    _log = Logger()

    def __init__(
        self,
        bus: ModbusBus,
        connection: ModbusConnection,
        runner: Runner,
        clock: IReactorTime,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bus = bus
        self._connection = connection
        self._runner = runner
        self._clock = clock
        self._calls = BoundedCalls(runner, clock, monotonic)
        self._cause: str | None = None
        self._backoff = BACKOFF_START
        self._retry: IDelayedCall | None = None
        self._attempting = False
        self._closed = False
        #: Bounds a background reconnection attempt: the longest timeout of the bus's controls.
        self.connect_timeout = 0.0

    @property
    def down(self) -> str | None:
        """Why the bus is down, or None when it is not known to be."""
        return self._cause

    def call(self, work: Callable[[ModbusConnection, float], _T], timeout: float) -> Deferred[_T]:
        """
        C{work(connection, seconds_left)} on the bus's thread, after every call
        made before; fails at once with a L{BackendError} while the bus is down.
        """
        if self._closed:
            return defer.fail(BackendError(f"modbus {self.bus}: closed"))
        if self._cause is not None:
            return defer.fail(BackendError(f"modbus {self.bus}: {self._cause}"))

        def job(remaining: float) -> _T:
            cause = self._cause
            if cause is not None:
                raise Disconnected(cause)
            return work(self._connection, remaining)

        d = self._calls.call(job, timeout)
        d.addErrback(self._failed)
        return d

    def _failed(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, Disconnected):
            self._went_down(error.cause)
            raise BackendError(f"modbus {self.bus}: {error.cause}")
        return failure

    def _went_down(self, cause: str) -> None:
        if self._closed:
            return
        first = self._cause is None
        self._cause = cause
        if first:
            self._log.warn("modbus {bus}: down ({cause}); reconnecting", bus=str(self.bus), cause=cause)
            self._backoff = BACKOFF_START
        if not self._attempting and (self._retry is None or not self._retry.active()):
            self._retry = self._clock.callLater(self._backoff, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        if self._closed:
            return
        self._attempting = True
        timeout = self.connect_timeout or 2.0

        def attempt(remaining: float) -> None:
            self._connection.open(remaining)

        def up(_: None) -> None:
            self._attempting = False
            if self._closed:
                return
            self._log.info("modbus {bus}: connected again", bus=str(self.bus))
            self._cause = None
            self._backoff = BACKOFF_START

        def still_down(failure: Failure) -> None:
            self._attempting = False
            error = failure.value
            cause = error.cause if isinstance(error, Disconnected) else str(error)
            if self._closed:
                return
            self._cause = cause
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._retry = self._clock.callLater(self._backoff, self._reconnect)

        self._calls.call(attempt, timeout).addCallbacks(up, still_down)

    def close(self) -> Deferred[None]:
        """Stop reconnecting, close the connection on its thread, stop the thread."""
        if self._closed:
            return defer.succeed(None)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._closed = True

        def close_connection(_remaining: float) -> None:
            self._connection.close()

        closed = self._calls.call(close_connection, max(self.connect_timeout, 2.0))
        closed.addErrback(lambda _: None)

        def stop(idle: bool) -> None:
            if idle:
                self._runner.stop()
            else:
                self._log.warn("modbus {bus}: thread still busy at stop; left behind", bus=str(self.bus))

        return closed.addCallback(lambda _: self._calls.idle(max(self.connect_timeout, 2.0))).addCallback(stop)


class ModbusBusPool:
    """
    One L{ModbusLink} per bus, made on first use, shared by the controls on it.

    @param make_runner: a started runner for a bus, given a thread name.
    @param make_connection: the connection for a bus (tests pass fakes).
    """

    def __init__(
        self,
        clock: IReactorTime,
        make_runner: Callable[[str], Runner],
        make_connection: Callable[[ModbusBus], ModbusConnection] = PymodbusConnection,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._make_runner = make_runner
        self._make_connection = make_connection
        self._monotonic = monotonic
        self._links: dict[ModbusBus, ModbusLink] = {}

    def link(self, bus: ModbusBus) -> ModbusLink:
        link = self._links.get(bus)
        if link is None:
            runner = self._make_runner(f"boatwist-modbus-{bus}")
            link = ModbusLink(bus, self._make_connection(bus), runner, self._clock, self._monotonic)
            self._links[bus] = link
        return link

    def links(self) -> list[ModbusLink]:
        return list(self._links.values())

    def close(self) -> Deferred[None]:
        links, self._links = list(self._links.values()), {}
        closing = [link.close() for link in links]
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)


# ------------------------------------------------------------------ a control


class ModbusBackend:
    """One control: one coil or register on one device of a shared bus."""

    readable = True

    def __init__(self, control: ControlSpec, link: ModbusLink) -> None:
        spec = control.backend
        if not isinstance(spec, ModbusSpec):
            raise TypeError(f"{control.name}: not a modbus control")
        self._control = control
        self._spec = spec
        self._link = link
        link.connect_timeout = max(link.connect_timeout, control.timeout)
        self._where = f"modbus {spec.bus} device {spec.device} {spec.register}:{spec.address}"

    def read(self) -> Deferred[Value]:
        spec = self._spec

        def work(connection: ModbusConnection, remaining: float) -> int:
            return connection.read(spec.register, spec.address, spec.device, remaining)

        return self._call(work).addCallback(self._value)

    def write(self, value: Value) -> Deferred[None]:
        spec = self._spec
        try:
            raw = self._raw(value)
        except BackendError:
            return defer.fail()

        def work(connection: ModbusConnection, remaining: float) -> None:
            connection.write(spec.register, spec.address, spec.device, raw, remaining)

        return self._call(work)

    def close(self) -> Deferred[None]:
        return defer.succeed(None)  # the bus is the pool's, closed by the factory

    def _call(self, work: Callable[[ModbusConnection, float], _T]) -> Deferred[_T]:
        timeout = self._control.timeout

        def explain(failure: Failure) -> Failure:
            error = failure.value
            if isinstance(error, NoAnswer):
                raise TimedOut(timeout)
            if isinstance(error, Refused):
                raise BackendError(f"{self._where}: {error.reason}")
            return failure

        return self._link.call(work, timeout).addErrback(explain)

    def _value(self, raw: int) -> Value:
        spec, kind = self._spec, self._control.type
        if kind is ControlType.ACTION:
            return None
        if spec.register.is_bit:
            on = bool(raw)
            return on if kind is ControlType.SWITCH else (1.0 if on else 0.0)
        if kind is ControlType.SWITCH:
            if raw not in (0, 1):
                raise BackendError(f"{self._where}: holds {raw}, expected 0 (off) or 1 (on)")
            return raw == 1
        if spec.signed and raw >= 0x8000:
            raw -= 0x10000
        return tidy(raw * spec.scale)

    def _raw(self, value: Value) -> int:
        spec, kind = self._spec, self._control.type
        if kind is ControlType.ACTION:
            return 1
        if kind is ControlType.SWITCH:
            return 1 if value else 0
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BackendError(f"{self._where}: a number, not {value!r}")
        raw = round(value / spec.scale)
        low, high = (-32768, 32767) if spec.signed else (0, 65535)
        if not low <= raw <= high:
            raise BackendError(
                f"{self._where}: {value:g} / scale {spec.scale:g} = {raw}, outside the register's {low}..{high}"
            )
        return raw & 0xFFFF
