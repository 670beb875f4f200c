"""BackendFactory: the right backend for each declaration, shared Modbus buses, one close for all."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from boatwist.config import parse_config
from boatwist.controls.backends.command import CommandBackend
from boatwist.controls.backends.factory import BackendFactory
from boatwist.controls.backends.file import FileBackend
from boatwist.controls.backends.memory import MemoryBackend
from boatwist.controls.backends.modbus import ModbusBackend
from boatwist.workers import SynchronousRunner

_Gen = Generator[Any, Any, None]

DEVICE = """
[control:relay]
type = switch
backend = memory
[control:led]
type = switch
backend = file
path = /sys/class/leds/none/brightness
[control:load]
type = sensor
backend = command
read = /bin/cat /proc/loadavg
[control:pump]
type = switch
backend = modbus
modbus = tcp:127.0.0.1:1
register = coil:1
"""


class RecordingRunner(SynchronousRunner):
    def __init__(self, log: list[str], name: str) -> None:
        self.log = log
        self.name = name

    def start(self) -> None:
        self.log.append(f"start {self.name}")

    def stop(self) -> None:
        self.log.append(f"stop {self.name}")


class FactoryTests(SynchronousTestCase):
    def test_each_backend_kind_and_one_close_for_all(self) -> None:
        """memory/file/command/modbus get their classes; each file control and each bus gets a started runner; close stops them."""
        controls = parse_config(DEVICE, "dev.ini").controls
        log: list[str] = []
        factory = BackendFactory(
            Clock(), reactor, reactor, make_runner=lambda name: RecordingRunner(log, name)  # type: ignore[arg-type]
        )
        built = [factory.build(c, restored=True if c.name == "relay" else None) for c in controls]
        self.assertEqual(
            [type(b) for b in built], [MemoryBackend, FileBackend, CommandBackend, ModbusBackend]
        )
        self.assertIs(self.successResultOf(built[0].read()), True)  # restored
        self.assertEqual(log, ["start boatwist-file-led", "start boatwist-modbus-tcp:127.0.0.1:1"])
        self.successResultOf(factory.close())
        self.assertEqual(log[2:], ["stop boatwist-file-led", "stop boatwist-modbus-tcp:127.0.0.1:1"])


class RealThreadsTests(TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_file_backend_on_its_own_thread_with_the_real_reactor(self) -> _Gen:
        """The default runner is a real ThreadRunner: a write and a read come back on the reactor, then close joins it."""
        directory = Path(tempfile.mkdtemp(prefix="boatwist-factory-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "brightness"
        path.write_text("0\n")
        (control,) = parse_config(
            f"[control:led]\ntype = switch\nbackend = file\npath = {path}\n", "dev.ini"
        ).controls
        factory = BackendFactory(reactor, reactor, reactor)  # type: ignore[arg-type]
        led = factory.build(control)
        yield led.write(True)
        self.assertIs((yield led.read()), True)
        self.assertEqual(path.read_text(), "1\n")
        yield factory.close()
