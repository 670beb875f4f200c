"""
Backends built from declarations: the one place that knows which class serves which backend.

The assembly (tap.py) makes one L{BackendFactory}, asks it for each
control's backend, and closes it at stop: that closes every backend, stops
every file thread, ends every command still running and closes every Modbus
bus.  Modbus controls on the same bus share one L{ModbusLink} (one
connection, one thread); each file control gets a thread of its own (see
L{boatwist.controls.backends.file} for why).

    factory = BackendFactory(reactor, reactor, reactor)
    backend = factory.build(spec, restored=last_recorded_value)
    ...
    yield factory.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IReactorFromThreads,
    IReactorProcess,
    IReactorTime,
)

from boatwist.workers import Runner, ThreadRunner
from boatwist.controls.spec import (
    CommandSpec,
    ControlSpec,
    FileSpec,
    MemorySpec,
    ModbusBus,
    ModbusSpec,
    Value,
)
from boatwist.controls.backends.base import Backend
from boatwist.controls.backends.command import CommandBackend
from boatwist.controls.backends.file import FileBackend, FileReads
from boatwist.controls.backends.memory import MemoryBackend

if TYPE_CHECKING:
    # Imported by the first Modbus control (_modbus): a device without one does not load it.
    from boatwist.controls.backends.modbus import ModbusBusPool, ModbusConnection

__all__ = ["POLL_THREAD", "BackendFactory"]

#: The name of the thread that reads batches of file polls.
POLL_THREAD = "boatwist-file-polls"


class BackendFactory:
    """
    @param clock: timeouts, reconnection backoff.
    @param processes: spawns the command backend's programs.
    @param threads: where the file and Modbus threads deliver results (the
        reactor); ignored when C{make_runner} is given.
    @param make_runner: a runner (not yet started) for a thread name; tests
        pass C{lambda name: SynchronousRunner()}.  The thread polls of file
        controls share is C{boatwist-file-polls} (L{file_reads}); by default
        a daemon thread, since a hung file may leave it stuck for good.
    @param make_connection: the Modbus connection for a bus (default:
        L{boatwist.controls.backends.modbus.PymodbusConnection}); tests pass fakes.
    """

    def __init__(
        self,
        clock: IReactorTime,
        processes: IReactorProcess,
        threads: IReactorFromThreads,
        *,
        make_runner: Callable[[str], Runner] | None = None,
        make_connection: Callable[[ModbusBus], ModbusConnection] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._processes = processes
        self._make_runner: Callable[[str], Runner] = make_runner or (
            lambda name: ThreadRunner(threads, name, daemon=name == POLL_THREAD))
        self._make_connection = make_connection
        self._monotonic = monotonic
        self._backends: list[Backend] = []
        self._pool: ModbusBusPool | None = None  # made with the first Modbus control
        self._file_reads: FileReads | None = None  # made with the first batch of file polls

    def _runner(self, name: str) -> Runner:
        runner = self._make_runner(name)
        runner.start()
        return runner

    def build(self, control: ControlSpec, restored: Value = None) -> Backend:
        """
        The backend for C{control}.

        @param restored: for a C{memory} control, the value last recorded (None:
            nothing recorded; start from C{initial}); ignored for the others.
        """
        spec = control.backend
        backend: Backend
        if isinstance(spec, MemorySpec):
            backend = MemoryBackend(control, restored)
        elif isinstance(spec, FileSpec):
            backend = FileBackend(control, self._runner(f"boatwist-file-{control.name}"), self._clock, self._monotonic)
        elif isinstance(spec, CommandSpec):
            backend = CommandBackend(control, self._processes, self._clock)
        elif isinstance(spec, ModbusSpec):
            backend = self._modbus(control, spec)
        else:
            raise TypeError(f"{control.name}: unknown backend {spec!r}")
        self._backends.append(backend)
        return backend

    def file_reads(self) -> FileReads:
        """The reader that polls file controls in batches, on one shared thread (made the first time)."""
        if self._file_reads is None:
            self._file_reads = FileReads(lambda: self._runner(POLL_THREAD), self._clock, self._monotonic)
        return self._file_reads

    def _modbus(self, control: ControlSpec, spec: ModbusSpec) -> Backend:
        from boatwist.controls.backends.modbus import ModbusBackend, ModbusBusPool, PymodbusConnection

        if self._pool is None:
            self._pool = ModbusBusPool(self._clock, self._runner, self._make_connection or PymodbusConnection,
                                       self._monotonic)
        return ModbusBackend(control, self._pool.link(spec.bus))

    def close(self) -> Deferred[None]:
        """Close every backend built, then every Modbus bus; fires when all are done."""
        backends, self._backends = self._backends, []
        closing = [backend.close() for backend in backends]
        pool, self._pool = self._pool, None
        if pool is not None:
            closing.append(pool.close())
        reads, self._file_reads = self._file_reads, None
        if reads is not None:
            reads.close()
        return defer.DeferredList(closing, consumeErrors=True).addCallback(lambda _: None)
