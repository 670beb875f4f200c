"""
The typed parts of one running boatwist, built once.

L{build_core} makes every part in the order data flows (events, presence,
connections, the store and the room, the device's controls with roles, the
floor and the operation pipeline, the heartbeat, metrics) and returns
them in a frozen L{Core}: nothing in it is filled in later, nothing is
optional.  L{boatwist.tap.makeService} builds one and wires the services and
listeners around it; a test builds its own with a C{Clock} and an in-memory
store.  Each resource, the heartbeat, the metrics and the chat take the
parts they use, typed -- the core is handed whole only to the resource tree
that distributes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Mapping

from twisted.internet.interfaces import IReactorTime

from boatwist.chat.room import ChatRoom
from boatwist.config import AdmissionSettings, Settings
from boatwist.controls.backends.factory import BackendFactory
from boatwist.controls.confirm import Confirmations
from boatwist.controls.floor import Floor, FloorEvent, LastOperatorTracker, describe
from boatwist.controls.pipeline import Pipeline
from boatwist.controls.registry import Controls
from boatwist.controls.roles import RolePolicy
from boatwist.controls.words import format_value
from boatwist.events import Event, EventHub
from boatwist.heartbeat import HeartbeatService
from boatwist.metrics import BackendCalls, Metrics
from boatwist.net.tracking import ConnectionTracker
from boatwist.presence import Presence
from boatwist.ratelimit import TokenBuckets
from boatwist.reasons import Reason
from boatwist.store.service import Store
from boatwist.web.static import StaticFiles, static_dir
from boatwist.web.stream import StreamRegistry

__all__ = ["Core", "audit_floor", "audit_presence", "build_core", "refusal_detail"]


@dataclass(frozen=True)
class Core:
    settings: Settings
    clock: IReactorTime
    #: Monotonic seconds: deadlines (the reactor's own clock, made monotonic).
    monotonic: Callable[[], float]
    #: Wall-clock seconds: only for what people read (C{at}, log lines).
    wall: Callable[[], float]
    hub: EventHub
    presence: Presence
    tracker: ConnectionTracker
    streams: StreamRegistry
    store: Store
    room: ChatRoom
    roles: RolePolicy
    floor: Floor
    controls: Controls
    #: Every operation of the device goes through it.
    operations: Pipeline
    heartbeat: HeartbeatService
    metrics: Metrics
    #: The UI's files, read once.
    static: StaticFiles


def build_core(
    settings: Settings,
    clock: IReactorTime,
    store: Store,
    backends: BackendFactory,
    *,
    admission: AdmissionSettings | None = None,
    watchdog: Callable[[], object] | None = None,
    wall: Callable[[], float] = time.time,
    first_event_id: int | None = None,
) -> Core:
    """
    Every part, in the order data flows.  C{store} is made by the caller
    (a thread runner in the daemon, C{:memory:} in tests), and so is
    C{backends} (the reactor's threads and processes, or tests' fakes); C{admission}
    replaces C{settings.admission} (the daemon lowers the connection cap to
    fit the file-descriptor limit).
    """
    monotonic = clock.seconds
    # Event ids continue from the time of day (unless told otherwise), so a
    # browser reconnecting after a restart with an old Last-Event-ID is told it
    # missed events.
    hub = EventHub(settings.events.buffer, first_id=int(wall() * 1000) if first_event_id is None else first_event_id)
    admission = admission or settings.admission
    presence = Presence(hub, admission, monotonic, wall)
    tracker = ConnectionTracker(presence, admission, settings.keepalive, clock, monotonic,
                                max_held=settings.events.max_queued)
    # One allowance per user for chat messages and operations alike.
    rate = TokenBuckets(clock, settings.chat.rate_messages, settings.chat.rate_period)
    room = ChatRoom(hub, store, presence, clock, settings.chat, rate)
    hub.subscribe(audit_presence(store))
    hub.subscribe(audit_floor(store))
    roles = RolePolicy(settings.roles)
    # Backend call times for /metrics: not events, so told through the controls' and pipeline's hook.
    backend_calls = BackendCalls()
    controls = Controls(settings.controls, backends, store, hub, clock, wall, observe=backend_calls.observe)
    # The safe state follows the floor's "lost" event on the hub (the pipeline subscribes), not a callback.
    floor = Floor(settings.floor, roles, hub, clock, wall=wall)
    pipeline = Pipeline(controls, roles, floor, Confirmations(clock), LastOperatorTracker(), rate, store, hub,
                        clock, wall, observe=backend_calls.observe)
    # Presence offline -> the floor lost -> the safe state: delivered in that order (EventHub).
    hub.subscribe(floor.on_event)
    hub.subscribe(pipeline.on_event)
    streams = StreamRegistry()
    heartbeat = HeartbeatService(tracker, presence, streams, settings.heartbeat, clock, monotonic,
                                 keepalive=settings.keepalive, watchdog=watchdog)
    metrics = Metrics(presence, tracker, heartbeat, streams, backend_calls)
    hub.subscribe(metrics.on_event)
    return Core(settings=settings, clock=clock, monotonic=monotonic, wall=wall, hub=hub, presence=presence,
                tracker=tracker, streams=streams, store=store, room=room, roles=roles, floor=floor,
                controls=controls, operations=pipeline, heartbeat=heartbeat, metrics=metrics,
                static=StaticFiles(str(static_dir())))


def audit_presence(store: Store) -> Callable[[Event], None]:
    """
    An event-hub subscriber writing to the audit log: logouts (with their
    reasons), refusals of a seat, and every operation refused by role,
    floor or confirmation (operations themselves are in their own table;
    floor changes are L{audit_floor}'s).
    """

    def on_event(event: Event) -> None:
        data = event.data
        if event.kind == "control" and data.get("refused"):
            store.audit("refused-operation", data.get("user"), None, refusal_detail(data)).addErrback(lambda _: None)
            return
        if event.kind != "presence":
            return
        if data.get("reason") == Reason.REFUSED:
            kind = "refused"
            detail = f"{data.get('refusal')} {data.get('used')}/{data.get('limit')}"
        elif data.get("state") == "offline":
            kind = "logout"
            detail = str(data["reason"]) + (f" by {data['by']}" if data.get("by") else "")
        else:
            return
        store.audit(kind, data.get("user"), None, f"{detail} via {data.get('via')}").addErrback(lambda _: None)

    return on_event


def refusal_detail(data: Mapping[str, object]) -> str:
    """
    The audit line of a refused operation (a C{control} event with
    C{refused}), one format for role, floor and confirmation:
    C{pump = on: refused (floor, held): alice holds the floor ... via api}.
    """
    control = str(data.get("control"))
    target = control if data.get("type") == "action" else \
        f"{control} = {format_value(data.get('value'), str(data.get('unit') or ''))}"
    code = data.get("code")
    why = f"{data.get('refused')}, {code}" if code else str(data.get("refused"))
    return f"{target}: refused ({why}): {data.get('error')} via {data.get('via')}"


def audit_floor(store: Store) -> Callable[[Event], None]:
    """An event-hub subscriber writing every change of the floor to the audit log, in the chat port's words."""

    def on_event(event: Event) -> None:
        if event.kind != "floor":
            return
        floor = FloorEvent.from_data(event.data)
        store.audit("floor", floor.user, None, f"{floor.state.value}: {describe(floor)}").addErrback(lambda _: None)

    return on_event
