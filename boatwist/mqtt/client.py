"""
paho-mqtt driven by the Twisted reactor: Twisted owns the connection, paho
speaks MQTT over it.  No thread, and nothing that can block the reactor.

Why paho-mqtt (2.1 to 2.2, pinned in pyproject), and why this way
-------------------------------------------------------------------

paho-mqtt is the Eclipse reference client: MQTT 3.1.1 and 5, the encoding,
the QoS 1 in-flight window, re-sending unacknowledged messages with DUP
after a reconnect, keepalive pings and the PINGRESP deadline -- all used by
Home Assistant itself and by most of the Python MQTT world.  The
alternative, twisted-mqtt (0.3.x), is Twisted-native but speaks only 3.1/3.1.1,
has a small user base and an irregular release history; writing our own
client would be a second MQTT implementation to keep correct.  We want the
mature protocol engine, so paho.

But paho's own way to open a connection blocks: C{reconnect()} calls
C{socket.create_connection()} (name resolution and the TCP handshake, up to
its connect timeout) and, for TLS, a blocking C{do_handshake()}.  Driving
paho through its socket callbacks (C{on_socket_open},
C{on_socket_register_write}, C{loop_read/loop_write/loop_misc}) keeps every
later byte off the reactor's back, but not that first connect: a broker
behind a dead route would stall the reactor -- the heartbeat, presence,
every operator -- for seconds at each attempt.  So the connection is made
by Twisted (C{HostnameEndpoint}: asynchronous resolution and connect, TLS
by C{wrapClientTLS} with the configured CA), and paho is given a
socket-shaped adapter over the Twisted transport (L{_TransportSocket}).
The one hook into paho this needs is C{Client._create_socket}, overridden
in L{_ReactorClient}; it is a private method, which is why the pinned
range is narrow and C{tests/unit/test_mqtt_client.py} checks it exists.

Everything else is paho's public external-loop API: bytes received are fed
and C{loop_read()} is called; C{on_socket_register_write} schedules one
C{loop_write()} for the next reactor turn (never re-entering paho from its
own callbacks); a C{LoopingCall} runs C{loop_misc()} every second for
pings and the keepalive deadline.  paho's callbacks into the bridge are
also moved to the next reactor turn, for the same reason and so that what
paho does right after a callback (re-sending in-flight messages after
CONNACK) happens before the bridge publishes anything new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol as TypingProtocol

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.mqtt.outbox import Backoff, Message
from boatwist.mqtt.settings import Broker

__all__ = ["BrokerLink", "LinkHandler", "broker_endpoint"]


def broker_endpoint(reactor: object, broker: Broker, ca: Path | None, timeout: float = 10.0) -> IStreamClientEndpoint:
    """
    The endpoint of the broker: asynchronous name resolution and connect,
    and for C{ssl:} TLS that checks the broker's name against its
    certificate, signed by C{ca} (or by the system's trust store).
    """
    endpoint: IStreamClientEndpoint = HostnameEndpoint(reactor, broker.host, broker.port, timeout=timeout)
    if broker.tls:
        from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust

        trust = Certificate.loadPEM(ca.read_bytes()) if ca is not None else platformTrust()
        endpoint = wrapClientTLS(optionsForClientTLS(broker.host, trustRoot=trust), endpoint)
    return endpoint


class _TransportSocket:
    """
    What paho takes for its socket: reads come from what the transport
    delivered (C{BlockingIOError} when there is nothing yet, C{b""} after
    the connection ended), writes go to the transport, which buffers.
    """

    def __init__(self, transport: ITransport) -> None:
        self._transport = transport
        self._inbox = bytearray()
        self.ended = False

    def feed(self, data: bytes) -> None:
        self._inbox += data

    @property
    def unread(self) -> int:
        return len(self._inbox)

    def recv(self, buffer_size: int) -> bytes:
        if self._inbox:
            chunk = bytes(self._inbox[:buffer_size])
            del self._inbox[:buffer_size]
            return chunk
        if self.ended:
            return b""
        raise BlockingIOError()

    def send(self, buffer: bytes | bytearray) -> int:
        if self.ended:
            raise ConnectionResetError("the connection to the broker has ended")
        self._transport.write(bytes(buffer))
        return len(buffer)

    def close(self) -> None:
        if not self.ended:
            # Lets what paho wrote last (a DISCONNECT) go out first; the link
            # aborts the connection if that does not end it in time.
            self._transport.loseConnection()

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass

    def pending(self) -> int:
        return 0


class _ReactorClient(paho.Client):
    """paho's client, made to speak over the connection Twisted opened."""

    _next_socket: _TransportSocket | None = None

    def _create_socket(self) -> _TransportSocket:
        sock, self._next_socket = self._next_socket, None
        if sock is None:
            raise ConnectionError("no connection to the broker to speak over")
        return sock


class LinkHandler(TypingProtocol):
    """What L{BrokerLink} tells its owner (the bridge); each is called on a reactor turn of its own."""

    def will(self) -> Message:
        """The last will of the next connection (called before each attempt)."""

    def connected(self) -> None: ...

    def disconnected(self) -> None: ...

    def acknowledged(self, mid: int) -> None: ...

    def received(self, topic: str, payload: bytes, retained: bool) -> None: ...


class _BrokerProtocol(Protocol):
    def __init__(self, link: BrokerLink) -> None:
        self.link = link

    def connectionMade(self) -> None:
        self.link._transport_up(self)

    def dataReceived(self, data: bytes) -> None:
        self.link._data(self, data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.link._transport_down(self, reason)


class BrokerLink:
    """
    One MQTT connection, kept up: connect, speak MQTT through paho, and after
    any loss try again after a bounded, jittered backoff -- until L{stop}.
    """

    _log = Logger()

    def __init__(self, reactor: IReactorTime, endpoint: IStreamClientEndpoint, handler: LinkHandler,
                 client_id: str, keepalive: int, username: str = "", password: str | None = None,
                 backoff: Backoff | None = None) -> None:
        self._reactor = reactor
        self._endpoint = endpoint
        self._handler = handler
        self._keepalive = keepalive
        self._backoff = backoff or Backoff()
        client = _ReactorClient(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                protocol=MQTTProtocolVersion.MQTTv311, reconnect_on_failure=False)
        # The bridge bounds what is in flight itself (outbox.py); paho must not hold back
        # messages in a queue of its own, which would reorder them around a reconnect.
        client.max_inflight_messages_set(0)
        # Any port: the connection is Twisted's; paho only checks both are set.
        client.connect_async("broker", 1883, keepalive)
        if username:
            client.username_pw_set(username, password)
        client.on_socket_register_write = lambda c, u, s: self._want_write()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._protocol: _BrokerProtocol | None = None
        self._socket: _TransportSocket | None = None
        self._attempt: Deferred[IProtocol] | None = None
        self._retry: IDelayedCall | None = None
        self._write_scheduled = False
        self._misc = LoopingCall(self._loop_misc)
        self._misc.clock = reactor
        self._stopping = False
        self._lost: list[Deferred[None]] = []
        #: CONNACK received and not lost since.
        self.connected = False

    # ------------------------------------------------------------ control

    def start(self) -> None:
        self._stopping = False
        self._connect()

    def publish(self, message: Message) -> int | None:
        """Hand C{message} to paho; its mid (acknowledged later), or C{None} when not connected."""
        if not self.connected:
            return None
        info = self._client.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        return info.mid

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        if self.connected:
            self._client.subscribe(topic_filter, qos)

    def stop(self, grace: float = 2.0) -> Deferred[None]:
        """
        Disconnect cleanly (DISCONNECT: the broker discards the will) and stop
        trying; fires when the connection has ended, within C{grace} seconds.
        """
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self._protocol is None:
            self._stop_misc()
            return defer.succeed(None)
        ended: Deferred[None] = Deferred()
        self._lost.append(ended)
        protocol = self._protocol
        if self.connected:
            self._client.disconnect()
            self._flush()
        else:
            protocol.transport.loseConnection()  # type: ignore[union-attr]

        def abort() -> None:
            if self._protocol is protocol:
                protocol.transport.abortConnection()  # type: ignore[union-attr]

        timer = self._reactor.callLater(grace, abort)

        def cancel_timer(result: None) -> None:
            if timer.active():
                timer.cancel()

        ended.addCallback(cancel_timer)
        return ended

    # ---------------------------------------------------------- connecting

    def _connect(self) -> None:
        self._retry = None
        if self._stopping:
            return
        will = self._handler.will()
        self._client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        factory = Factory.forProtocol(lambda: _BrokerProtocol(self))
        attempt = self._endpoint.connect(factory)
        self._attempt = attempt

        def done(result: IProtocol) -> None:
            self._attempt = None

        def failed(reason: Failure) -> None:
            self._attempt = None
            if not reason.check(defer.CancelledError):
                self._log.info("MQTT broker unreachable: {reason}", reason=reason.getErrorMessage())
                self._schedule_retry()

        attempt.addCallbacks(done, failed)

    def _schedule_retry(self) -> None:
        if self._stopping or self._retry is not None:
            return
        delay = self._backoff.next()
        self._retry = self._reactor.callLater(delay, self._connect)

    def _transport_up(self, protocol: _BrokerProtocol) -> None:
        assert protocol.transport is not None
        if self._stopping:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._protocol = protocol
        self._socket = _TransportSocket(protocol.transport)
        self._client._next_socket = self._socket
        self._client.reconnect()  # queues CONNECT; written on the next turn
        if not self._misc.running:
            self._misc.start(1.0, now=False)

    def _data(self, protocol: _BrokerProtocol, data: bytes) -> None:
        sock = self._socket
        if protocol is not self._protocol or sock is None:
            return
        sock.feed(data)
        while sock.unread and self._client.socket() is sock:
            before = sock.unread
            self._client.loop_read()
            if sock.unread >= before:
                break

    def _transport_down(self, protocol: _BrokerProtocol, reason: Failure) -> None:
        if protocol is not self._protocol:
            return
        sock = self._socket
        if sock is not None:
            sock.ended = True
            if self._client.socket() is sock:
                self._client.loop_read()  # paho reads b"": connection lost, on_disconnect
        self._protocol = None
        self._socket = None
        self._stop_misc()
        if self.connected:
            self.connected = False
            self._reactor.callLater(0, self._handler.disconnected)
        if not self._stopping:
            self._log.info("MQTT connection lost: {reason}", reason=reason.getErrorMessage())
            self._schedule_retry()
        lost, self._lost = self._lost, []
        for d in lost:
            d.callback(None)

    def _stop_misc(self) -> None:
        if self._misc.running:
            self._misc.stop()

    # ------------------------------------------------------ paho's engine

    def _want_write(self) -> None:
        if not self._write_scheduled:
            self._write_scheduled = True
            self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._write_scheduled = False
        if self._client.socket() is not None:
            self._client.loop_write()

    def _loop_misc(self) -> None:
        try:
            self._client.loop_misc()
        except Exception:
            self._log.failure("paho loop_misc failed")
        # paho may have given up on the connection (no PINGRESP in time): end it.
        if self._client.socket() is None and self._protocol is not None:
            assert self._protocol.transport is not None
            self._protocol.transport.abortConnection()  # type: ignore[attr-defined]

    # -------------------------------------------------- paho's callbacks

    def _on_connect(self, client: paho.Client, userdata: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, properties: object) -> None:
        if reason.is_failure:
            # Bad credentials, unknown client id...: the broker closes; we retry later.
            self._log.warn("MQTT broker refused the connection: {reason}", reason=str(reason))
            self._reactor.callLater(0, self._end, self._protocol, False)
            return
        self._backoff.reset()
        protocol = self._protocol

        def up() -> None:
            if self._protocol is protocol and protocol is not None and not self._stopping:
                self.connected = True
                self._handler.connected()

        self._reactor.callLater(0, up)

    def _on_disconnect(self, client: paho.Client, userdata: object, flags: object, reason: ReasonCode,
                       properties: object) -> None:
        # paho closed its socket (keepalive deadline, protocol error, our DISCONNECT):
        # end the transport too; its connectionLost does the rest.  Only our own
        # DISCONNECT deserves a graceful close: a dead link would hold it forever.
        self._reactor.callLater(0, self._end, self._protocol, not self._stopping)

    def _end(self, protocol: _BrokerProtocol | None, abort: bool) -> None:
        """End C{protocol}'s connection if it is still the current one (outside paho's callbacks)."""
        if protocol is None or protocol is not self._protocol or protocol.transport is None:
            return
        if abort:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]
        else:
            protocol.transport.loseConnection()

    def _on_publish(self, client: paho.Client, userdata: object, mid: int, reason: ReasonCode,
                    properties: object) -> None:
        self._reactor.callLater(0, self._handler.acknowledged, mid)

    def _on_message(self, client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        self._reactor.callLater(0, self._handler.received, message.topic, bytes(message.payload),
                                bool(message.retain))

