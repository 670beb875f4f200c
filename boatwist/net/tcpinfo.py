"""
Linux's C{struct tcp_info}: state, keepalive probes, retransmissions, RTT,
time since the peer's last sign of life.

The heartbeat reads this for every connection every second, so a read is
one C{getsockopt} and one precompiled unpack (L{read_tcp_vitals}: the 72
bytes it needs; L{read_tcp_info}: the full record, for logs and tests).
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple, Protocol

__all__ = ["TCP_STATES", "TcpInfo", "TcpVitals", "parse_tcp_info", "read_tcp_calm", "read_tcp_info",
           "read_tcp_vitals"]



#: Linux TCP states (include/net/tcp_states.h) by number.
TCP_STATES: dict[int, str] = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}

TCP_ESTABLISHED = 1
TCP_CLOSE = 7

#: The first 104 bytes of struct tcp_info (linux/tcp.h), in host byte order,
#: up to and including tcpi_total_retrans: every kernel since 2.6 has at
#: least these, newer ones append fields we do not need.  Skipped ("x"):
#: the wscale and app-limited bit fields, tcpi_fackets (unused since 4.15)
#: and tcpi_last_ack_sent (never filled in).
_TCP_INFO = struct.Struct(
    "="
    "6B"  # state ca_state retransmits probes backoff options
    "2x"  # snd_wscale:4 rcv_wscale:4, delivery_rate_app_limited:1 fastopen_client_fail:2
    "8I"  # rto ato snd_mss rcv_mss unacked sacked lost retrans
    "4x"  # fackets
    "I"  # last_data_sent
    "4x"  # last_ack_sent
    "13I"  # last_data_recv last_ack_recv pmtu rcv_ssthresh rtt rttvar snd_ssthresh
    # snd_cwnd advmss reordering rcv_rtt rcv_space total_retrans
)
_TCP_INFO_SIZE = _TCP_INFO.size  # 104

#: socket.TCP_INFO, which Python defines on Linux (11); the fallback is
#: Linux's number too, only used where platform says "linux".
_SOCKOPT_TCP_INFO: int = getattr(socket, "TCP_INFO", 11)
_ON_LINUX = sys.platform.startswith("linux")


@dataclass(frozen=True)
class TcpInfo:
    """
    One reading of a connection's Linux C{struct tcp_info}.

    Field names follow C{tcpi_*}, with the unit appended where the kernel's
    name does not say it (C{rto_us}, C{last_data_recv_ms}).  Every field but
    C{state} defaults to 0 so that tests can build the case they need.
    """

    state: int
    ca_state: int = 0
    #: Consecutive retransmissions of the same segment not yet acknowledged.
    retransmits: int = 0
    #: Keepalive (or zero-window) probes sent without an answer.
    probes: int = 0
    #: Exponential backoff of the retransmission timer.
    backoff: int = 0
    options: int = 0
    rto_us: int = 0
    ato_us: int = 0
    snd_mss: int = 0
    rcv_mss: int = 0
    #: Segments sent and not yet acknowledged.
    unacked: int = 0
    sacked: int = 0
    lost: int = 0
    retrans: int = 0
    last_data_sent_ms: int = 0
    last_data_recv_ms: int = 0
    #: Milliseconds since the peer last acknowledged anything (keepalive
    #: answers included).
    last_ack_recv_ms: int = 0
    pmtu: int = 0
    rcv_ssthresh: int = 0
    rtt_us: int = 0
    rttvar_us: int = 0
    snd_ssthresh: int = 0
    snd_cwnd: int = 0
    advmss: int = 0
    reordering: int = 0
    rcv_rtt_us: int = 0
    rcv_space: int = 0
    total_retrans: int = 0

    @property
    def state_name(self) -> str:
        return _state_name(self.state)

    @property
    def established(self) -> bool:
        return self.state == TCP_ESTABLISHED

    @property
    def troubled(self) -> bool:
        return _troubled(self)

    @property
    def idle_ms(self) -> int:
        return _idle_ms(self)


def _state_name(state: int) -> str:
    """C{"ESTABLISHED"}, C{"CLOSE_WAIT"}, ... as Linux names the state."""
    return TCP_STATES.get(state) or f"UNKNOWN({state})"


# What both readings mean: TcpInfo and TcpVitals answer state_name (Linux's
# name), established (anything else, e.g. CLOSE_WAIT, is ending), troubled
# and idle_ms alike.


def _idle_ms(info: "TcpInfo | TcpVitals") -> int:
    """Milliseconds since the peer's last sign of life: data or an ACK."""
    return min(info.last_data_recv_ms, info.last_ack_recv_ms)


def _troubled(info: "TcpInfo | TcpVitals") -> bool:
    """
    Keepalive probes unanswered or data being retransmitted: the peer may be
    gone, and the kernel will say so within seconds if it is.
    """
    return info.probes > 0 or info.retransmits > 0 or info.backoff > 0


#: TcpInfo's fields in the order _TCP_INFO unpacks them (a test pins that).
_TCP_INFO_FIELDS = tuple(f.name for f in fields(TcpInfo))


class TcpInfoSource(Protocol):
    """What C{TCP_INFO} is read from: a C{socket.socket}, or a stand-in for one."""

    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


def _tcp_info_from(values: tuple[int, ...], _new: Callable[[type[TcpInfo]], TcpInfo] = object.__new__) -> TcpInfo:
    """
    Build a L{TcpInfo} without the frozen C{__init__}, which calls
    C{object.__setattr__} once per field (2.7 us for 28 fields, four times
    the getsockopt itself); filling C{__dict__} in one go takes 1.1 us and
    gives the same object: same fields, equality, hash and repr.
    """
    info: TcpInfo = _new(TcpInfo)
    info.__dict__.update(zip(_TCP_INFO_FIELDS, values, strict=True))
    return info


def parse_tcp_info(raw: bytes) -> TcpInfo:
    """
    Parse a Linux C{struct tcp_info} as C{getsockopt(TCP_INFO)} returns it:
    at least 104 bytes; longer structs from newer kernels are fine.

    @raise ValueError: C{raw} is shorter than 104 bytes.
    """
    if len(raw) < _TCP_INFO_SIZE:
        raise ValueError(f"struct tcp_info needs at least {_TCP_INFO_SIZE} bytes, got {len(raw)}")
    return _tcp_info_from(_TCP_INFO.unpack_from(raw))


def read_tcp_info(sock: TcpInfoSource, platform: str | None = None) -> TcpInfo | None:
    """
    Read C{TCP_INFO} of C{sock} with one C{getsockopt}: it runs for every
    connection on every heartbeat tick.

    @return: L{None} where there is nothing to read: not Linux, a closed
        socket, a socket that is not TCP, or any other L{OSError}.
    @param platform: a C{sys.platform} value; defaults to this one.
    """
    if not (_ON_LINUX if platform is None else platform.startswith("linux")):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _SOCKOPT_TCP_INFO, _TCP_INFO_SIZE)
    except OSError:
        return None
    if len(raw) < _TCP_INFO_SIZE:
        return None
    return _tcp_info_from(_TCP_INFO.unpack_from(raw))


class TcpVitals(NamedTuple):
    """
    The part of C{struct tcp_info} the heartbeat needs, every tick, for every
    connection: read from the first 72 bytes and unpacked into a tuple, it
    costs about half of a full L{TcpInfo}.  The names and properties are
    those of L{TcpInfo}, so either serves the heartbeat.
    """

    state: int
    retransmits: int
    probes: int
    backoff: int
    unacked: int
    last_data_recv_ms: int
    last_ack_recv_ms: int
    rtt_us: int

    # The same meaning under the same names as TcpInfo's (a NamedTuple takes no mixin).
    @property
    def state_name(self) -> str:
        return _state_name(self.state)

    @property
    def established(self) -> bool:
        return self.state == TCP_ESTABLISHED

    @property
    def troubled(self) -> bool:
        return _troubled(self)

    @property
    def idle_ms(self) -> int:
        return _idle_ms(self)


#: state, retransmits, probes, backoff @0..4; unacked @24; last_data_recv @52,
#: last_ack_recv @56; rtt @68 (linux/tcp.h; a test checks them against TcpInfo).
_TCP_VITALS = struct.Struct("=BxBBB3x16xI24xII8xI")


#: state, ca_state, retransmits, probes, backoff: the first 5 bytes of struct tcp_info.
_CALM_SIZE = 5


def read_tcp_calm(sock: TcpInfoSource, platform: str | None = None) -> bool:
    """
    Is C{sock} ESTABLISHED with no retransmission, keepalive probe or
    backoff outstanding?  Then the heartbeat has nothing to do about a
    connection that is nobody's presence: read in 5 bytes and no object,
    a third of what L{read_tcp_vitals} costs (bench/deadpeer.py's fallback
    rows).  False where L{read_tcp_vitals} would give None.
    """
    if not (_ON_LINUX if platform is None else platform.startswith("linux")):
        return False
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _SOCKOPT_TCP_INFO, _CALM_SIZE)
    except OSError:
        return False
    return len(raw) == _CALM_SIZE and raw[0] == TCP_ESTABLISHED and not (raw[2] or raw[3] or raw[4])


def read_tcp_vitals(sock: TcpInfoSource, platform: str | None = None) -> TcpVitals | None:
    """L{TcpVitals} of C{sock}, or L{None} where L{read_tcp_info} gives None."""
    if not (_ON_LINUX if platform is None else platform.startswith("linux")):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, _SOCKOPT_TCP_INFO, _TCP_VITALS.size)
    except OSError:
        return None
    if len(raw) < _TCP_VITALS.size:
        return None
    return TcpVitals._make(_TCP_VITALS.unpack_from(raw))

