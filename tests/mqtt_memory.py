"""
A broker's side of MQTT 3.1.1, in memory, for unit tests of the bridge and
its link: an endpoint whose connections are StringTransports, a decoder of
the packets paho writes, and the few packets a broker sends.  With a
twisted.internet.task.Clock as the reactor, every step is deterministic.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransportWithDisconnection
from zope.interface import implementer


@dataclass
class Packet:
    kind: int  # high nibble of the first byte: 1 CONNECT, 3 PUBLISH, 8 SUBSCRIBE, 12 PINGREQ, 14 DISCONNECT
    flags: int
    body: bytes

    @property
    def publish(self) -> tuple[str, bytes, int, bool, int | None]:
        """topic, payload, qos, retain, packet id."""
        assert self.kind == 3
        (length,) = struct.unpack("!H", self.body[:2])
        topic = self.body[2:2 + length].decode()
        qos = (self.flags >> 1) & 3
        rest = self.body[2 + length:]
        mid = None
        if qos:
            (mid,) = struct.unpack("!H", rest[:2])
            rest = rest[2:]
        return topic, rest, qos, bool(self.flags & 1), mid


def decode(data: bytes) -> tuple[list[Packet], bytes]:
    """The whole packets in C{data}, and what is left."""
    packets: list[Packet] = []
    while len(data) >= 2:
        length, mult, i = 0, 1, 1
        while True:
            if i >= len(data):
                return packets, data
            byte = data[i]
            length += (byte & 127) * mult
            mult *= 128
            i += 1
            if not byte & 128:
                break
        if len(data) < i + length:
            break
        packets.append(Packet(data[0] >> 4, data[0] & 15, data[i:i + length]))
        data = data[i + length:]
    return packets, data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (128 if n else 0))
        if not n:
            return bytes(out)


CONNACK = b"\x20\x02\x00\x00"
CONNACK_REFUSED = b"\x20\x02\x00\x05"  # not authorised
PINGRESP = b"\xd0\x00"


def puback(mid: int) -> bytes:
    return b"\x40\x02" + struct.pack("!H", mid)


def suback(mid: int) -> bytes:
    return b"\x90\x03" + struct.pack("!H", mid) + b"\x01"


def publish(topic: str, payload: bytes, retain: bool = False) -> bytes:
    """A QoS 0 PUBLISH from the broker."""
    body = struct.pack("!H", len(topic.encode())) + topic.encode() + payload
    return bytes([0x30 | int(retain)]) + _remaining(len(body)) + body


class Connection:
    """One connection the endpoint made: what the client wrote, and a way to answer."""

    def __init__(self, protocol: IProtocol) -> None:
        self.protocol = protocol
        self.transport = StringTransportWithDisconnection()
        self.transport.protocol = protocol
        protocol.makeConnection(self.transport)
        self._pending = b""
        self.packets: list[Packet] = []

    def read(self) -> list[Packet]:
        """Packets written since the last read."""
        data = self._pending + self.transport.value()
        self.transport.clear()
        packets, self._pending = decode(data)
        self.packets += packets
        return packets

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def drop(self) -> None:
        """The broker went away."""
        self.transport.loseConnection()


@implementer(IStreamClientEndpoint)
class MemoryEndpoint:
    """Each connect() gives a L{Connection}, or fails while C{refuse} is set."""

    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.refuse = False
        self.attempts = 0
        self.hold: Deferred[IProtocol] | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError("refused"))
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        self.connections.append(Connection(protocol))
        return succeed(protocol)

    @property
    def last(self) -> Connection:
        return self.connections[-1]
