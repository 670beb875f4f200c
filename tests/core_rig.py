"""
A real boatwist core for unit tests: every part real, driven by a C{Clock}.

The store is SQLite C{:memory:} on a L{SynchronousRunner} (no thread, results
already fired); connections are real L{TrackedConnection}s made by the real
tracker over a L{StringTransport}.  Tests use these instead of fakes of the
tracker or presence, so a renamed method breaks the test, not production.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from boatwist.config import AdmissionSettings, Settings
from boatwist.controls.backends.factory import BackendFactory
from boatwist.core import Core, build_core
from boatwist.events import Event
from boatwist.net.tracking import TrackedConnection, TrackingProtocol
from boatwist.presence import Kind
from boatwist.store.service import Store
from boatwist.workers import Runner, SynchronousRunner

WALL = 1_700_000_000.0
#: What the rig's connections come from, and the network the rig allows.
NETWORK = ipaddress.ip_network("10.0.0.0/8")


class NoProcesses:
    """The rig runs no programs: a command control in a unit test is a mistake, said loudly."""

    def spawnProcess(self, *args: object, **kw: object) -> None:
        raise AssertionError("unit tests run no processes: use a memory or file control")


class NoThreads:
    """The rig's backends run on SynchronousRunners: nothing comes back from a thread."""

    def callFromThread(self, *args: object, **kw: object) -> None:
        raise AssertionError("unit tests use no threads")


class Rig:
    """A core on a Clock, with every event it published in C{events}."""

    def __init__(self, settings: Settings | None = None, store: Store | None = None,
                 runners: Callable[[str], Runner] | None = None, **admission: Any) -> None:
        """
        @param runners: the runner for a backend thread's name (default: a
            L{SynchronousRunner} for each); a test of a hung device passes
            one whose work runs when the test says.
        """
        settings = settings or Settings()
        if admission or NETWORK not in settings.admission.networks:
            fields = {"networks": (NETWORK,), **admission}
            settings = replace(settings, admission=replace(settings.admission, **fields))
        self.clock = Clock()
        self.clock.advance(100)
        self.wall = [WALL]
        if store is None:
            # A second rig may be given the first one's store: a restart.
            store = Store(":memory:", retention_count=settings.store.retention_count,
                          retention_days=settings.store.retention_days, runner=SynchronousRunner(),
                          wall_clock=lambda: self.wall[0])
            store.startService()
        self.store = store
        # Deadlines on the backends' side are kept by the Clock too: one time for everything.
        self.backends = BackendFactory(self.clock, NoProcesses(), NoThreads(),
                                       make_runner=runners or (lambda name: SynchronousRunner()),
                                       monotonic=self.clock.seconds)
        self.core: Core = build_core(settings, self.clock, self.store, self.backends, wall=lambda: self.wall[0],
                                     first_event_id=1)
        self.events: list[Event] = []
        self.core.hub.subscribe(self.events.append)
        self._port = 40000

    @property
    def settings(self) -> Settings:
        return self.core.settings

    @property
    def admission(self) -> AdmissionSettings:
        return self.core.settings.admission

    def connect(self, factory: IProtocolFactory | None = None, kind: Kind = Kind.HTTP,
                host: str = "10.0.0.7") -> tuple[Protocol, StringTransport, TrackedConnection]:
        """
        A connection accepted by the real tracker wrapping C{factory} (a bare
        Protocol when None), on a fresh L{StringTransport}: the application
        protocol, the transport and the tracked connection.
        """
        self._port += 1
        peer = IPv4Address("TCP", host, self._port)
        wrapped = self.core.tracker.wrap(factory or Factory.forProtocol(Protocol), kind)
        proto = wrapped.buildProtocol(peer)
        assert isinstance(proto, TrackingProtocol), proto
        transport = StringTransport(peerAddress=peer)
        proto.makeConnection(transport)
        return proto.wrappedProtocol, transport, proto.conn

    def presence_events(self) -> list[tuple[str, str, str]]:
        return [(e.data["user"], e.data["state"], e.data["reason"]) for e in self.events if e.kind == "presence"]
