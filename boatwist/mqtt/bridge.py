"""
The MQTT bridge: one boatwist on a broker, as a Twisted service.

Topics (P is the prefix, C{[mqtt] topic}, by default C{boatwist/<device name>}):

    P/status                retained, QoS 1.  {"state": "online", "session": N, "at": T,
                            "device": NAME, "version": V} after each connect; the last will,
                            set at each connect, is {"state": "offline", "session": N};
                            a clean stop publishes {"state": "offline", "session": N,
                            "at": T, "reason": "stopped"} and waits for the broker's PUBACK
                            before disconnecting.  N grows with every connection and is
                            persisted (state_dir/mqtt-session): an "offline" whose N is
                            below the last "online" seen is a late will of an old
                            connection, to be ignored (embweb-fleet does).  The bridge
                            subscribes to this topic itself and answers such a late
                            will by publishing its "online" again (the same payload), so
                            the retained status is right for every subscriber, also
                            those that compare no sessions (mosquitto_sub, Home
                            Assistant's availability).
    P/presence              retained, [mqtt] qos.  {"seats": {"used", "limit"}, "users":
                            [{"user", "state", "since", "connections": COUNT}], "at"}
    P/floor                 retained.  {"mode", "holder", "since", "requested_by", "at"}
    P/controls/NAME         retained.  {"value", "quality", "changed_by", "changed_at"}
    P/last_operation        retained.  the data of the last control event (an operation)
    P/events/KIND           QoS 1, not retained, in the order of the event hub, KIND one of
                            presence, chat, control, value, floor: the event's data plus
                            "event_id" (the hub's id; "id" stays the message's or the
                            operation's own)
    P/controls/NAME/set     in, with [mqtt] commands = yes: {"value": V}, a bare value, or
                            nothing for an action (boatwist.mqtt.commands)
    P/controls/NAME/result  QoS 1: {"status": 200, "operation": {...}} or
                            {"status": 400|403|404|409|428|502|504, "error": TEXT, ...}
    D/COMPONENT/NODE/NAME/config   Home Assistant discovery, with [mqtt] discovery = D
                            (boatwist.mqtt.discovery)

Why a will can come late: a broker that sees the same client id connect again
takes the old connection over and publishes its will at once, before the new
CONNACK (Mosquitto 2 does), so the order is right.  But where the two
connections are not linked -- another client id, a broker cluster or a load
balancer that put them on different nodes, brokers bridged in a failover --
the old connection lives on, half-open, until its keepalive expires (1.5 x
keepalive, later on a broker that checks keepalives every few seconds), and
its will lands after the new "online": hence the re-publish above.

Retained state is re-read from the device and re-published at every
(re)connect and after each event of its kind, so it is the state as it is,
not a sum of events a broker outage may have cut.  Events are delivered at
least once (QoS 1; a PUBACK lost with the connection means a duplicate,
recognisable by event_id).

The broker going away never hurts the device: the connection is Twisted's
(L{boatwist.mqtt.client}), nothing waits for the broker on the reactor
thread, reconnection backs off (bounded, jittered), and events wait in a
bounded queue (L{boatwist.mqtt.outbox}) whose oldest are dropped and
counted when it is full.  At most C{window} events are in flight (handed to
paho, not yet acknowledged); the queue holds the rest, in order.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger

if TYPE_CHECKING:
    from prometheus_client.core import Metric
from twisted.python.failure import Failure

from boatwist.events import Event

from boatwist.mqtt.client import BrokerLink, broker_endpoint
from boatwist.mqtt.commands import (
    CONTROL_NAME,
    CommandError,
    error_payload,
    parse_command,
    result_payload,
)
from boatwist.mqtt.discovery import DeviceInfo, config_messages
from boatwist.mqtt.interfaces import ControlSnapshot, DeviceState, EventSource, OperationOutcome, Operator
from boatwist.mqtt.outbox import Backoff, BridgeStats, Message, Outbox
from boatwist.mqtt.session import SessionCounter
from boatwist.mqtt.settings import MqttSettings
from boatwist.mqtt.topics import (
    Topics,
    control_payload,
    dumps,
    event_payload,
    floor_payload,
    presence_payload,
    status_payload,
)

__all__ = ["MqttBridgeService"]

#: The via of operations commanded over MQTT.
VIA = "mqtt"


class MqttBridgeService(Service):
    """
    Publish this boatwist's availability, state and events to a broker and,
    when enabled, take commands from it.  C{stats} holds the counters for
    ``/metrics``.
    """

    _log = Logger()

    def __init__(self, settings: MqttSettings, hub: EventSource, state: DeviceState, operator: Operator | None,
                 reactor: IReactorTime, state_dir: Path, *, endpoint: IStreamClientEndpoint | None = None,
                 backoff: Backoff | None = None, wall_clock: Callable[[], float] = time.time,
                 window: int = 20, stop_timeout: float = 3.0, ready: Deferred[None] | None = None) -> None:
        """
        C{ready}: fires once the device C{state} describes is there (the daemon's
        controls read for the first time); the bridge connects only then, so the
        first retained snapshot and the discovery configs are the whole device,
        not the empty registry of a daemon still opening its store.  Events
        before it wait in the queue.  C{None}: connect at once.
        """
        if settings.commands and (operator is None or not settings.user):
            raise ValueError("[mqtt] commands = yes needs an operator and [mqtt] user")
        self.settings = settings
        self.hub = hub
        self.state = state
        self.operator = operator
        self.reactor = reactor
        self.topics = Topics(settings.prefix(state.device_name))
        self.device = DeviceInfo(state.device_name, state.version)
        self.stats = BridgeStats()
        self._endpoint = endpoint
        self._backoff = backoff
        self._wall_clock = wall_clock
        self._window = window
        self._stop_timeout = stop_timeout
        self._sessions = SessionCounter(state_dir / "mqtt-session", wall_clock)
        self._outbox = Outbox(settings.queue, self.stats)
        #: mids of events handed to paho and not yet acknowledged.
        self._in_flight: set[int] = set()
        self._last_operation: Mapping[str, object] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._link: BrokerLink | None = None
        self._ever_connected = False
        self._offline_mid: int | None = None
        self._offline_acked: Deferred[None] | None = None
        #: The "online" status of the current connection, said again over a late will.
        self._online: bytes | None = None
        self._ready = ready

    def stats_metrics(self) -> Iterator[Metric]:
        """The bridge's counters as Prometheus families (L{boatwist.metrics.Metrics.add_source})."""
        # Imported at the first scrape, as boatwist.metrics does: not at start.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        stats = self.stats
        connected = GaugeMetricFamily("boatwist_mqtt_connected", "1 while connected to the MQTT broker")
        connected.add_metric([], 1 if stats.connected else 0)
        yield connected
        for name, help_text, value in (
            ("boatwist_mqtt_reconnects", "Connections to the broker after the first", stats.reconnects),
            ("boatwist_mqtt_published", "Messages the broker acknowledged", stats.published),
            ("boatwist_mqtt_dropped", "Events dropped while the broker was away (queue full)", stats.dropped),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter
        queued = GaugeMetricFamily("boatwist_mqtt_queued", "Events waiting for the broker")
        queued.add_metric([], stats.queued)
        yield queued

    # ---------------------------------------------------------- service

    def startService(self) -> None:
        super().startService()
        settings = self.settings
        endpoint = self._endpoint or broker_endpoint(self.reactor, settings.broker_address, settings.ca)
        self._link = BrokerLink(
            self.reactor, endpoint, self,
            client_id=settings.client_id_for(self.state.device_name),
            keepalive=settings.keepalive,
            username=settings.username,
            password=settings.read_password(),
            backoff=self._backoff,
        )
        self._unsubscribe = self.hub.subscribe(self._on_event)
        self._log.info("MQTT bridge to {broker} as {prefix}", broker=settings.broker_address, prefix=self.topics.prefix)
        if self._ready is None:
            self._link.start()
        else:
            link = self._link

            def start(result: object) -> object:
                if self.running and self._link is link:
                    link.start()
                return result

            self._ready.addBoth(start)

    def stopService(self) -> Deferred[None]:
        """Say ``offline`` (and wait for the broker to have it, within a bound), then disconnect."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        link = self._link
        if link is None:
            return succeed(None)
        if len(self._outbox):
            self._log.info("MQTT bridge stops with {count} events not delivered", count=len(self._outbox))
        offline = self._say_offline(link)
        offline.addCallback(lambda _: link.stop())
        return offline

    def _say_offline(self, link: BrokerLink) -> Deferred[None]:
        if not link.connected:
            return succeed(None)
        payload = status_payload("offline", self.stats.session, at=self._wall_clock(), reason="stopped")
        mid = link.publish(Message(self.topics.status, payload, qos=1, retain=True))
        if mid is None:
            return succeed(None)
        self._offline_mid = mid
        acked: Deferred[None] = Deferred()
        self._offline_acked = acked
        timer: IDelayedCall = self.reactor.callLater(self._stop_timeout, self._offline_done)

        def cancel(result: None) -> None:
            if timer.active():
                timer.cancel()

        acked.addCallback(cancel)
        return acked

    def _offline_done(self) -> None:
        acked, self._offline_acked = self._offline_acked, None
        if acked is not None:
            acked.callback(None)

    # ----------------------------------------------------- link handler

    def will(self) -> Message:
        session = self._sessions.next()
        self.stats.session = session
        return Message(self.topics.status, status_payload("offline", session), qos=1, retain=True)

    def connected(self) -> None:
        self.stats.connected = True
        if self._ever_connected:
            self.stats.reconnects += 1
        self._ever_connected = True
        self._log.info("MQTT connected (session {session})", session=self.stats.session)
        self._online = status_payload("online", self.stats.session, at=self._wall_clock(), device=self.device.name,
                                      version=self.device.version)
        self._publish_state(self.topics.status, self._online, qos=1)
        assert self._link is not None
        # Our own status, after our online (the broker keeps one connection's order): a late
        # will of an older session lands here, live or as the retained message.
        self._link.subscribe(self.topics.status, 1)
        if self.settings.commands:
            self._link.subscribe(self.topics.command_filter, 1)
        controls = self.state.controls_snapshot()
        self._publish_discovery(controls)
        self._publish_presence()
        self._publish_floor()
        for control in controls:
            self._publish_control(control)
        if self._last_operation is not None:
            self._publish_state(self.topics.last_operation, dumps(self._last_operation))
        self._pump()

    def disconnected(self) -> None:
        self.stats.connected = False
        self._log.info("MQTT disconnected; {queued} events queued", queued=len(self._outbox))
        if self._offline_acked is not None:
            self._offline_done()

    def acknowledged(self, mid: int) -> None:
        self.stats.published += 1
        self._in_flight.discard(mid)
        if mid == self._offline_mid:
            self._offline_mid = None
            self._offline_done()
        self._pump()

    def received(self, topic: str, payload: bytes, retained: bool) -> None:
        if topic == self.topics.status:
            self._own_status(payload)
            return
        name = self.topics.command_control(topic)
        if name is None or not self.settings.commands or self.operator is None:
            return
        if not CONTROL_NAME.fullmatch(name):
            self._result(name, error_payload(404, f"no control named {name!r}"))
            return
        try:
            command = parse_command(name, payload, retained)
        except CommandError as e:
            self._result(name, error_payload(400, str(e)))
            return
        try:
            d = self.operator.operate(self.settings.user, name, command.value, VIA)
        except Exception:
            self._log.failure("MQTT command on {control} failed", control=name)
            self._result(name, error_payload(500, "internal error"))
            return

        def done(outcome: OperationOutcome) -> None:
            self._result(name, result_payload(outcome))

        def failed(reason: Failure) -> None:
            self._log.failure("MQTT command on {control} failed", reason, control=name)
            self._result(name, error_payload(500, "internal error"))

        d.addCallbacks(done, failed)

    def _own_status(self, payload: bytes) -> None:
        """
        A message on our own status topic.  An C{offline} of an older session
        is a late will: the broker noticed an old connection's end only after
        this one said C{online}, and the retained status would say the device
        is down while it is up.  Say C{online} again.  Anything else -- our own
        messages coming back, an C{offline} of this session or a newer one
        (we are stopping, or another process uses our topic), a payload
        without a session -- is left as it is: no answer can loop.
        """
        link = self._link
        if not self.running or self._online is None or link is None or not link.connected:
            return
        try:
            data = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: [[[[... nested past Python's limit
            return
        if not isinstance(data, dict) or data.get("state") != "offline":
            return
        old = data.get("session")
        if isinstance(old, bool) or not isinstance(old, int) or old >= self.stats.session:
            return
        self._log.info("MQTT: a late will of session {old} said offline; online again (session {session})",
                       old=old, session=self.stats.session)
        self._publish_state(self.topics.status, self._online, qos=1)

    # ------------------------------------------------------- publishing

    def _on_event(self, event: Event) -> None:
        """Every event goes out on its events topic, and the retained state of its kind is refreshed."""
        self._queue(Message(self.topics.event(event.kind), event_payload(event), qos=1))
        try:
            if event.kind == "presence":
                self._publish_presence()
            elif event.kind == "floor":
                self._publish_floor()
            elif event.kind in ("control", "value"):
                name = event.data.get("control")
                if isinstance(name, str) and self._link is not None and self._link.connected:
                    # Only this control (at the next connect, the snapshot has them all).
                    control = self.state.control_snapshot(name)
                    if control is not None:
                        self._publish_control(control)
                if event.kind == "control":
                    self._last_operation = dict(event.data)
                    self._publish_state(self.topics.last_operation, dumps(self._last_operation))
        except Exception:
            self._log.failure("MQTT: reading the state after a {kind} event failed", kind=event.kind)

    def _queue(self, message: Message) -> None:
        self._outbox.put(message)
        self._pump()

    def _result(self, name: str, payload: bytes) -> None:
        self._queue(Message(self.topics.control_result(name), payload, qos=1))

    def _pump(self) -> None:
        """Hand queued events to paho, in order, while connected and the window has room."""
        link = self._link
        while link is not None and link.connected and len(self._in_flight) < self._window:
            message = self._outbox.take()
            if message is None:
                return
            mid = link.publish(message)
            if mid is None:
                self._outbox.put_back(message)
                return
            self._in_flight.add(mid)

    def _publish_state(self, topic: str, payload: bytes, qos: int | None = None) -> None:
        """A retained state message: sent now when connected, else left to the snapshot at the next connect."""
        link = self._link
        if link is not None and link.connected:
            link.publish(Message(topic, payload, qos=self.settings.qos if qos is None else qos, retain=True))

    def _publish_presence(self) -> None:
        if self._link is not None and self._link.connected:
            self._publish_state(self.topics.presence, presence_payload(self.state.presence_snapshot(),
                                                                       self._wall_clock()))

    def _publish_floor(self) -> None:
        if self._link is not None and self._link.connected:
            self._publish_state(self.topics.floor, floor_payload(self.state.floor_snapshot(), self._wall_clock()))

    def _publish_control(self, control: ControlSnapshot) -> None:
        self._publish_state(self.topics.control(control["name"]), control_payload(control))

    def _publish_discovery(self, controls: Sequence[ControlSnapshot]) -> None:
        if not self.settings.discovery:
            return
        for topic, payload in config_messages(self.settings.discovery, self.topics, self.device, controls,
                                              self.settings.commands, self.settings.qos):
            self._publish_state(topic, payload, qos=1)
