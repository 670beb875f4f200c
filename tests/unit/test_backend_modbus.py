"""
The modbus backend's own logic with a fake connection: values and scale,
errors, one link per bus, fail-fast while down, background reconnection with
bounded backoff.  Clock and SynchronousRunner: no thread, no socket, no sleep.
(tests/integration/test_modbus_real.py runs it against real pymodbus servers.)
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from boatwist.config import parse_config
from boatwist.controls.backends.base import Backend, BackendError
from boatwist.controls.backends.factory import BackendFactory
from boatwist.controls.backends.modbus import (
    BACKOFF_MAX,
    BACKOFF_START,
    Disconnected,
    ModbusConnection,
    NoAnswer,
    Refused,
)
from boatwist.controls.spec import ControlSpec, ModbusBus, RegisterKind
from boatwist.workers import SynchronousRunner, TimedOut

BUS = "tcp:plc:502"


def spec(body: str, name: str = "x", bus: str = BUS) -> ControlSpec:
    return parse_config(f"[control:{name}]\nbackend = modbus\nmodbus = {bus}\n{body}", "dev.ini").controls[0]


class FakeDevice:
    """A ModbusConnection over a dict; can be unplugged, made silent or made to refuse."""

    def __init__(self, bus: ModbusBus) -> None:
        self.bus = bus
        self.table: dict[tuple[int, RegisterKind, int], int] = {}
        self.is_open = False
        self.opens = 0
        self.unplugged: str | None = None
        self.silent = False
        self.refuse: str | None = None
        self.timeouts: list[float] = []

    def open(self, timeout: float) -> None:
        if self.is_open:
            return
        self.opens += 1
        if self.unplugged:
            raise Disconnected(self.unplugged)
        self.is_open = True

    def _check(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        self.open(timeout)
        if self.unplugged:
            self.is_open = False
            raise Disconnected(self.unplugged)
        if self.silent:
            raise NoAnswer()
        if self.refuse:
            raise Refused(self.refuse)

    def read(self, register: RegisterKind, address: int, device: int, timeout: float) -> int:
        self._check(timeout)
        return self.table.get((device, register, address), 0)

    def write(self, register: RegisterKind, address: int, device: int, raw: int, timeout: float) -> None:
        self._check(timeout)
        self.table[(device, register, address)] = raw

    def close(self) -> None:
        self.is_open = False


class ModbusBackendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.devices: dict[ModbusBus, FakeDevice] = {}

        def connect(bus: ModbusBus) -> ModbusConnection:
            device = FakeDevice(bus)
            self.devices[bus] = device
            return device

        self.factory = BackendFactory(
            self.clock,
            None,  # type: ignore[arg-type]  # no commands here
            None,  # type: ignore[arg-type]
            make_runner=lambda name: SynchronousRunner(),
            make_connection=connect,
            monotonic=self.clock.seconds,
        )

    def build(self, body: str, name: str = "x", bus: str = BUS) -> Backend:
        return self.factory.build(spec(body, name, bus))

    @property
    def device(self) -> FakeDevice:
        (device,) = self.devices.values()
        return device

    def test_coil_switch(self) -> None:
        """A switch on a coil writes 1/0 and reads a bool."""
        pump = self.build("type = switch\nregister = coil:3\nmodbus_device = 17")
        self.successResultOf(pump.write(True))
        self.assertEqual(self.device.table, {(17, RegisterKind.COIL, 3): 1})
        self.assertIs(self.successResultOf(pump.read()), True)

    def test_holding_number_scaled_and_rounded(self) -> None:
        """value / scale, rounded, is written; raw × scale is read, without binary noise."""
        sp = self.build("type = number\nmin = 0\nmax = 100\nscale = 0.1\nregister = holding:10")
        self.successResultOf(sp.write(23.46))
        self.assertEqual(self.device.table[(1, RegisterKind.HOLDING, 10)], 235)
        self.assertEqual(self.successResultOf(sp.read()), 23.5)

    def test_signed_registers(self) -> None:
        """signed = yes: two's complement both ways."""
        offset = self.build("type = number\nmin = -100\nmax = 100\nsigned = yes\nregister = holding:1")
        self.successResultOf(offset.write(-10.0))
        self.assertEqual(self.device.table[(1, RegisterKind.HOLDING, 1)], 65526)
        self.assertEqual(self.successResultOf(offset.read()), -10.0)
        unsigned = self.build("type = sensor\nregister = holding:1", name="u")
        self.assertEqual(self.successResultOf(unsigned.read()), 65526.0)

    def test_value_that_does_not_fit_the_register_is_refused_before_the_bus(self) -> None:
        """A write outside 0..65535 after scale never reaches the device and says why."""
        sp = self.build("type = number\nmin = 0\nmax = 6000\nscale = 0.1\nregister = holding:2")
        failure = self.failureResultOf(sp.write(7000.0), BackendError)
        self.assertEqual(
            str(failure.value),
            "modbus tcp:plc:502 device 1 holding:2: 7000 / scale 0.1 = 70000, outside the register's 0..65535",
        )
        self.assertEqual(self.device.table, {})

    def test_switch_on_a_holding_register_that_holds_something_else(self) -> None:
        """A holding-register switch reads 0/1 only; 7 is an error naming the register."""
        flag = self.build("type = switch\nregister = holding:4")
        self.device.table[(1, RegisterKind.HOLDING, 4)] = 7
        failure = self.failureResultOf(flag.read(), BackendError)
        self.assertEqual(str(failure.value), "modbus tcp:plc:502 device 1 holding:4: holds 7, expected 0 (off) or 1 (on)")

    def test_discrete_as_sensor_and_action_on_a_coil(self) -> None:
        """A bit read by a sensor is 1.0/0.0; an action sets its coil."""
        door = self.build("type = sensor\nregister = discrete:5", name="door")
        self.device.table[(1, RegisterKind.DISCRETE, 5)] = 1
        self.assertEqual(self.successResultOf(door.read()), 1.0)
        go = self.build("type = action\nregister = coil:9", name="go")
        self.successResultOf(go.write(None))
        self.assertEqual(self.device.table[(1, RegisterKind.COIL, 9)], 1)

    def test_modbus_exception_names_bus_device_and_register(self) -> None:
        """An exception response is a BackendError saying where and which exception."""
        sensor = self.build("type = sensor\nregister = input:700")
        self.device.refuse = "illegal data address (exception 2)"
        failure = self.failureResultOf(sensor.read(), BackendError)
        self.assertEqual(
            str(failure.value), "modbus tcp:plc:502 device 1 input:700: illegal data address (exception 2)"
        )
        self.device.refuse = None
        self.assertEqual(self.successResultOf(sensor.read()), 0.0)  # an exception is not an outage

    def test_no_answer_is_timed_out(self) -> None:
        """A device that does not answer in time: TimedOut, and the bus is not marked down."""
        sensor = self.build("type = sensor\nregister = input:1\ntimeout = 0.7")
        self.device.silent = True
        failure = self.failureResultOf(sensor.read(), TimedOut)
        self.assertEqual(failure.value.seconds, 0.7)
        self.device.silent = False
        self.assertEqual(self.successResultOf(sensor.read()), 0.0)

    def test_the_time_left_is_passed_to_the_connection(self) -> None:
        """The connection gets the control's timeout as its own socket/serial timeout."""
        sensor = self.build("type = sensor\nregister = input:1\ntimeout = 1.5")
        self.successResultOf(sensor.read())
        self.assertEqual(self.device.timeouts, [1.5])

    def test_controls_on_one_bus_share_one_connection(self) -> None:
        """Two controls on one bus: one link, one connection; another bus gets its own."""
        a = self.build("type = sensor\nregister = input:1", name="a")
        b = self.build("type = sensor\nregister = input:2\nmodbus_device = 2", name="b")
        c = self.build("type = sensor\nregister = input:1", name="c", bus="tcp:other:502")
        for backend in (a, b, c):
            self.successResultOf(backend.read())
        self.assertEqual(len(self.devices), 2)
        self.assertEqual(self.devices[ModbusBus("tcp", "plc", 502)].opens, 1)

    def test_bus_down_fails_fast_for_everyone_and_reconnects_with_backoff(self) -> None:
        """
        The device goes away: the call that finds out fails naming bus and cause;
        every later call on any control of that bus fails at once without touching
        the connection; reconnection is tried after 0.5 s, then 1, 2, 4 ... capped
        at 30 s; the first success brings the bus back for every control.
        """
        a = self.build("type = sensor\nregister = input:1", name="a")
        b = self.build("type = switch\nregister = coil:1", name="b")
        self.successResultOf(a.read())
        device = self.device
        device.unplugged = "connection refused"

        failure = self.failureResultOf(a.read(), BackendError)
        self.assertEqual(str(failure.value), "modbus tcp:plc:502: connection refused")
        calls_before = len(device.timeouts)
        failure = self.failureResultOf(b.write(True), BackendError)
        self.assertEqual(str(failure.value), "modbus tcp:plc:502: connection refused")
        self.assertEqual(len(device.timeouts), calls_before, "fail fast: the connection is not touched")

        attempts: list[float] = []
        opens = device.opens
        delays = []
        for _ in range(10):
            delay = min(call.getTime() for call in self.clock.getDelayedCalls()) - self.clock.seconds()
            delays.append(delay)
            self.clock.advance(delay)
            attempts.append(self.clock.seconds())
        self.assertEqual(device.opens - opens, 10)
        expected = [BACKOFF_START * 2**i for i in range(10)]
        self.assertEqual(delays, [min(d, BACKOFF_MAX) for d in expected])

        device.unplugged = None
        delay = min(call.getTime() for call in self.clock.getDelayedCalls()) - self.clock.seconds()
        self.clock.advance(delay)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.successResultOf(a.read()), 0.0)
        self.successResultOf(b.write(True))
        self.assertIs(self.successResultOf(b.read()), True)

    def test_backoff_starts_over_after_a_recovery(self) -> None:
        """After the bus came back, the next outage retries after 0.5 s again, not after the last long wait."""
        a = self.build("type = sensor\nregister = input:1")
        device = self.device
        device.unplugged = "no route to host"
        self.failureResultOf(a.read(), BackendError)
        for delay in (0.5, 1.0, 2.0):
            self.clock.advance(delay)
        device.unplugged = None
        self.clock.advance(4.0)
        self.successResultOf(a.read())
        device.unplugged = "no route to host"
        self.failureResultOf(a.read(), BackendError)
        (retry,) = self.clock.getDelayedCalls()
        self.assertEqual(retry.getTime() - self.clock.seconds(), BACKOFF_START)

    def test_close_stops_reconnecting_and_closes_the_connection(self) -> None:
        """Closing the factory cancels the retry timer, closes the connection, and later calls fail cleanly."""
        a = self.build("type = sensor\nregister = input:1")
        self.successResultOf(a.read())
        device = self.device
        self.assertTrue(device.is_open)
        self.successResultOf(self.factory.close())
        self.assertFalse(device.is_open)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.failureResultOf(a.read(), BackendError)

    def test_close_while_down_cancels_the_retry(self) -> None:
        """A bus that is down at stop leaves no timer behind."""
        a = self.build("type = sensor\nregister = input:1")
        self.device.unplugged = "connection refused"
        self.failureResultOf(a.read(), BackendError)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.successResultOf(self.factory.close())
        self.assertEqual(self.clock.getDelayedCalls(), [])
