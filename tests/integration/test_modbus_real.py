"""
The modbus backend against real Modbus servers: pymodbus's own, in a process of its own.

TCP on loopback: set a coil and a holding register (checked by an independent
pymodbus client), read an input register and a discrete input, a Modbus
exception, the server killed (calls fail fast, naming the bus) and started
again on the same port (the bus recovers by itself within the backoff), and a
server that accepts and never answers (TimedOut within the control's
timeout).  RTU: the same server on one end of a socat pseudo-terminal pair,
the backend on the other.

A real reactor (trial TestCase: tests return Deferreds); waits are bounded by
Deferred timeouts or short polls against a deadline; every process is killed
by its fixture however the test ends.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from modbus_tools import (
    PtyPair,
    ServerProcess,
    SilentServer,
    free_port,
    pymodbus_present,
    require,
)
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from boatwist.controls.backends.base import BackendError
from boatwist.controls.backends.factory import BackendFactory
from boatwist.controls.config import parse_control
from boatwist.controls.spec import ControlSpec
from boatwist.workers import TimedOut

pytestmark = pytest.mark.integration

_Gen = Generator[Any, Any, None]


def control(name: str, text: str) -> ControlSpec:
    items = {}
    for number, line in enumerate(text.strip().splitlines(), 2):
        key, _, value = line.partition("=")
        items[key.strip()] = (value.strip(), number)
    return parse_control(name, items, "test.ini", 1)


def independent_client(port: int) -> Any:
    """A pymodbus client of the test's own, to check what the server holds."""
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=1)
    assert client.connect()
    return client


def pymodbus_version() -> tuple[int, int]:
    import pymodbus

    major, minor = pymodbus.__version__.split(".")[:2]
    return int(major), int(minor)


def device_kw() -> str:
    from boatwist.controls.backends.modbus import device_keyword

    return device_keyword()


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)  # type: ignore[arg-type]


@pytest.fixture
def tcp_server() -> Iterator[ServerProcess]:
    require("pymodbus (with pyserial)", pymodbus_present())
    server = ServerProcess("tcp", "127.0.0.1", str(free_port()))
    try:
        yield server.start()
    finally:
        server.kill()


@pytest.fixture
def rtu_line(tmp_path: Path) -> Iterator[tuple[PtyPair, ServerProcess]]:
    require("pymodbus (with pyserial)", pymodbus_present())
    require("socat", shutil.which("socat") is not None)
    pty = PtyPair(tmp_path).start()
    server = ServerProcess("rtu", str(pty.a), "19200", "8N1")
    try:
        yield pty, server.start()
    finally:
        server.kill()
        pty.stop()


class ModbusTcpTests(TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _server(self, tcp_server: ServerProcess) -> None:
        self.server = tcp_server
        self.port = int(tcp_server.args[2])
        self.bus = f"tcp:127.0.0.1:{self.port}"
        self.factory = BackendFactory(reactor, reactor, reactor)  # type: ignore[arg-type]
        self.addCleanup(self.factory.close)

    def spec(self, name: str, text: str) -> ControlSpec:
        return control(name, f"backend = modbus\nmodbus = {self.bus}\n{text}")

    @defer.inlineCallbacks
    def test_coil_and_holding_register_are_set_on_the_device(self) -> _Gen:
        """A switch sets a coil and a number a holding register (× 1/scale): another client reads them there."""
        pump = self.factory.build(self.spec("pump", "type = switch\nregister = coil:3"))
        setpoint = self.factory.build(
            self.spec("setpoint", "type = number\nmin = 0\nmax = 100\nscale = 0.1\nregister = holding:10\nmodbus_device = 17")
        )
        yield pump.write(True)
        yield setpoint.write(42.5)
        client = independent_client(self.port)
        try:
            kw = {device_kw(): 1}
            self.assertTrue(client.read_coils(3, count=1, **kw).bits[0])
            kw = {device_kw(): 17}
            self.assertEqual(client.read_holding_registers(10, count=1, **kw).registers, [425])
        finally:
            client.close()
        self.assertIs((yield pump.read()), True)
        self.assertEqual((yield setpoint.read()), 42.5)
        yield pump.write(False)
        self.assertIs((yield pump.read()), False)

    @defer.inlineCallbacks
    def test_input_register_and_discrete_input_are_read(self) -> _Gen:
        """Read-only tables: an input register × scale, a discrete input as a sensor."""
        temperature = self.factory.build(self.spec("t", "type = sensor\nunit = °C\nscale = 0.1\nregister = input:2"))
        door = self.factory.build(self.spec("door", "type = sensor\nregister = discrete:5"))
        self.assertEqual((yield temperature.read()), 21.5)
        self.assertEqual((yield door.read()), 1.0)

    @defer.inlineCallbacks
    def test_signed_register_round_trip(self) -> _Gen:
        """signed = yes writes -10 as 65526 on the wire (an independent client reads 65526) and reads it back as -10."""
        offset = self.factory.build(self.spec("o", "type = number\nmin = -100\nmax = 100\nsigned = yes\nregister = holding:20"))
        yield offset.write(-10.0)
        self.assertEqual((yield offset.read()), -10.0)
        client = independent_client(self.port)
        try:
            self.assertEqual(client.read_holding_registers(20, count=1, **{device_kw(): 1}).registers, [65526])
        finally:
            client.close()

    @defer.inlineCallbacks
    def test_modbus_exception_is_named(self) -> _Gen:
        """An address the device does not have: BackendError naming the register and the exception."""
        ghost = self.factory.build(self.spec("ghost", "type = sensor\nregister = holding:500"))
        error = yield self.assertFailure(ghost.read(), BackendError)
        where = f"modbus {self.bus} device 1 holding:500: "
        # pymodbus's server answers exception 2 from 3.11 on; 3.9 and 3.10 send an empty answer.
        self.assertIn(str(error), (where + "illegal data address (exception 2)", where + "the answer holds no value"))
        if pymodbus_version() >= (3, 11):
            self.assertEqual(str(error), where + "illegal data address (exception 2)")

    @defer.inlineCallbacks
    def test_server_killed_fails_fast_then_recovers_by_itself(self) -> _Gen:
        """
        The device vanishes: calls fail at once with a line naming the bus and the
        cause, while the bus reconnects in the background; once the device is back
        on the same port, reads work again without anyone doing anything.
        """
        pump = self.factory.build(self.spec("pump", "type = switch\nregister = coil:1\ntimeout = 2"))
        self.assertIs((yield pump.read()), False)
        self.server.kill()

        started = time.monotonic()
        error = yield self.assertFailure(pump.read(), BackendError)
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertTrue(str(error).startswith(f"modbus {self.bus}: "), str(error))
        started = time.monotonic()
        again = yield self.assertFailure(pump.read(), BackendError)
        self.assertLess(time.monotonic() - started, 0.2, "while down, calls fail without waiting")
        self.assertTrue(str(again).startswith(f"modbus {self.bus}: "), str(again))

        self.server.start()
        deadline = time.monotonic() + 10  # backoff 0.5, 1, 2, 4 s: back within ~8 s at worst
        while True:
            try:
                value = yield pump.read()
                break
            except BackendError:
                if time.monotonic() > deadline:
                    raise
                yield sleep(0.2)
        self.assertIs(value, False)
        yield pump.write(True)
        self.assertIs((yield pump.read()), True)


class HungServerTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_server_that_never_answers_times_out_within_the_timeout(self) -> _Gen:
        """A peer that accepts and never answers: TimedOut at the control's timeout, and the thread is free again."""
        require("pymodbus (with pyserial)", pymodbus_present())
        silent = SilentServer()
        self.addCleanup(silent.close)
        factory = BackendFactory(reactor, reactor, reactor)  # type: ignore[arg-type]
        spec = control(
            "valve",
            f"type = switch\nbackend = modbus\nmodbus = tcp:127.0.0.1:{silent.port}\nregister = coil:0\ntimeout = 0.5",
        )
        valve = factory.build(spec)
        started = time.monotonic()
        yield self.assertFailure(valve.read(), TimedOut)
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 1.5)
        started = time.monotonic()
        yield factory.close()
        self.assertLess(time.monotonic() - started, 2.0, "the bus thread's own work was bounded too")


class ModbusRtuTests(TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _line(self, rtu_line: tuple[PtyPair, ServerProcess]) -> None:
        self.pty, self.server = rtu_line
        self.factory = BackendFactory(reactor, reactor, reactor)  # type: ignore[arg-type]
        self.addCleanup(self.factory.close)

    def spec(self, name: str, text: str) -> ControlSpec:
        return control(name, f"backend = modbus\nmodbus = rtu:{self.pty.b}:19200:8N1\n{text}")

    @defer.inlineCallbacks
    def test_rtu_over_a_pseudo_terminal_pair(self) -> _Gen:
        """RTU framing over a serial line: write a coil and a register, read them and an input register back."""
        pump = self.factory.build(self.spec("pump", "type = switch\nregister = coil:4"))
        level = self.factory.build(self.spec("level", "type = number\nmin = 0\nmax = 1000\nregister = holding:8"))
        temperature = self.factory.build(self.spec("t", "type = sensor\nunit = °C\nscale = 0.1\nregister = input:2"))
        yield pump.write(True)
        yield level.write(512)
        self.assertIs((yield pump.read()), True)
        self.assertEqual((yield level.read()), 512.0)
        self.assertEqual((yield temperature.read()), 21.5)

    @defer.inlineCallbacks
    def test_rtu_device_that_stops_answering_times_out_and_the_line_stays_usable(self) -> _Gen:
        """
        The device on the line goes quiet (its process killed; the serial port
        stays): TimedOut at the timeout, not a dead bus -- and once a device
        answers again, the very next read works, with no reconnection wait.
        """
        t = self.factory.build(self.spec("t", "type = sensor\nunit = °C\nscale = 0.1\nregister = input:2\ntimeout = 0.5"))
        self.assertEqual((yield t.read()), 21.5)
        self.server.kill()
        started = time.monotonic()
        yield self.assertFailure(t.read(), TimedOut)
        self.assertLess(time.monotonic() - started, 1.5)
        self.server.start()
        self.assertEqual((yield t.read()), 21.5)
