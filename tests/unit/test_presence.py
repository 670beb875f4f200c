"""Presence: seats, states, reasons and admission, driven by a fake clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.task import Clock

from boatwist.config import AdmissionSettings
from boatwist.events import EventHub
from boatwist.presence import Connection, Kind, Presence, Refusal
from boatwist.reasons import Reason


@dataclass(eq=False)
class FakeConn:
    """A connection as presence sees it (the Connection protocol); close() is recorded."""

    id: int
    kind: Kind = Kind.WEB
    peer_host: str = "127.0.0.1"
    peer_port: int = 5000
    rtt_ms: float | None = None
    unstable: bool = False
    user: str | None = None
    closed: list[str] = field(default_factory=list)

    def close(self, reason: Reason, note: str | None = None) -> None:
        self.closed.append(reason)


_checked: Connection = FakeConn(0)  # mypy: the fake is what presence needs
_http_ids = iter(range(10_000, 20_000))


def attach(p: Presence, user: str, conn: FakeConn) -> Refusal | None:
    """A persistent connection (event stream or chat) admitted for user."""
    return p.admit(conn, user, conn.kind)


def touch_http(p: Presence, user: str, peer: str) -> Refusal | None:
    """A plain request by user on a connection from peer."""
    return p.admit(FakeConn(next(_http_ids), kind=Kind.HTTP, peer_host=peer), user, Kind.HTTP)


def check(p: Presence, user: str) -> Refusal | None:
    """Would a plain request by user be refused?  (Admits it when not.)"""
    return touch_http(p, user, "127.0.0.1")


def make(max_users: int = 2, per_user: int = 2, grace: float = 30.0) -> tuple[Presence, list, Clock, list]:
    clock = Clock()
    wall = [1_700_000_000.0]
    hub = EventHub()
    events: list = []
    hub.subscribe(events.append)
    settings = AdmissionSettings(max_users=max_users, max_connections_per_user=per_user, http_grace=grace)
    return Presence(hub, settings, clock.seconds, lambda: wall[0]), events, clock, wall


def presence_events(events: list) -> list[tuple[str, str, str]]:
    return [(e.data["user"], e.data["state"], e.data["reason"]) for e in events if e.kind == "presence"]


def test_first_connection_brings_a_user_online() -> None:
    """Attaching a persistent connection publishes online/login with the front end."""
    p, events, _, _ = make()
    assert attach(p, "alice", FakeConn(1)) is None
    assert presence_events(events) == [("alice", "online", "login")]
    assert events[0].data["via"] == "web"
    assert p.seats_used == 1


def test_last_connection_ending_is_offline_at_once_with_reason_and_latency() -> None:
    """The user goes offline when the last persistent connection ends, with detected_after."""
    p, events, _, _ = make()
    a, b = FakeConn(1), FakeConn(2, kind=Kind.CHAT)
    attach(p, "alice", a)
    attach(p, "alice", b)
    p.detach(a, "closed", 0.0)
    assert p.is_online("alice")
    p.detach(b, "keepalive-timeout", 3.04)
    assert not p.is_online("alice")
    last = events[-1].data
    assert (last["state"], last["reason"], last["detected_after"]) == ("offline", "keepalive-timeout", 3.04)


def test_recent_http_request_does_not_keep_a_vanished_stream_online() -> None:
    """http_grace covers plain requests only after the last stream: a pulled cable ends presence."""
    p, events, clock, _ = make()
    conn = FakeConn(1)
    attach(p, "alice", conn)
    touch_http(p, "alice", "127.0.0.1")  # a chat POST a moment before the pull
    p.detach(conn, "keepalive-timeout", 3.0)
    assert not p.is_online("alice")


def test_http_only_user_expires_after_grace() -> None:
    """A user seen only through plain requests is offline with reason idle after http_grace."""
    p, events, clock, _ = make(grace=30)
    touch_http(p, "bob", "127.0.0.1")
    clock.advance(29)
    p.expire()
    assert p.is_online("bob")
    touch_http(p, "bob", "127.0.0.1")
    clock.advance(29)
    p.expire()
    assert p.is_online("bob")
    clock.advance(2)
    p.expire()
    assert not p.is_online("bob")
    assert presence_events(events)[-1] == ("bob", "offline", "idle")


def test_wall_clock_step_causes_no_false_offline() -> None:
    """Deadlines follow the monotonic clock: a one-hour NTP step of the wall clock changes nothing."""
    p, events, clock, wall = make(grace=30)
    touch_http(p, "bob", "127.0.0.1")
    wall[0] += 3600
    p.expire()
    wall[0] -= 7200
    p.expire()
    assert p.is_online("bob")
    assert presence_events(events) == [("bob", "online", "login")]


def test_full_house_refuses_a_new_user_but_not_an_online_one() -> None:
    """max_users distinct users: the next new one is refused, the present ones may add connections."""
    p, events, _, _ = make(max_users=2)
    attach(p, "alice", FakeConn(1))
    attach(p, "bob", FakeConn(2))
    refusal = attach(p, "carol", FakeConn(3))
    assert refusal is not None
    assert refusal.message() == "server full: 2 of 2 operators online"
    assert refusal.retry_after >= 1
    assert attach(p, "alice", FakeConn(4)) is None
    assert touch_http(p, "bob", "127.0.0.1") is None
    assert check(p, "carol") is not None
    refused = [e.data for e in events if e.data["reason"] == "refused"]
    assert refused and refused[0]["user"] == "carol" and refused[0]["refusal"] == "full"
    assert (refused[0]["used"], refused[0]["limit"]) == (2, 2)


def test_seat_frees_at_once_when_a_user_goes_offline() -> None:
    """The next login succeeds as soon as a seat's last connection ends."""
    p, _, _, _ = make(max_users=1)
    conn = FakeConn(1)
    attach(p, "alice", conn)
    assert check(p, "bob") is not None
    p.detach(conn, "keepalive-timeout", 3.0)
    assert attach(p, "bob", FakeConn(2)) is None


def test_per_user_connection_limit() -> None:
    """An online user may not open more than max_connections_per_user persistent connections."""
    p, _, _, _ = make(per_user=2)
    attach(p, "alice", FakeConn(1))
    attach(p, "alice", FakeConn(2))
    refusal = attach(p, "alice", FakeConn(3))
    assert refusal is not None and refusal.reason == "too-many-connections"


def test_repeated_refusals_are_announced_once_per_quiet_period() -> None:
    """A refused browser retrying every second does not flood everyone with events."""
    p, events, clock, _ = make(max_users=1)
    attach(p, "alice", FakeConn(1))
    for _ in range(4):
        check(p, "carol")
        clock.advance(1)
    assert len([e for e in events if e.data["reason"] == "refused"]) == 1
    clock.advance(5)
    check(p, "carol")
    assert len([e for e in events if e.data["reason"] == "refused"]) == 2


def test_unstable_and_recovered() -> None:
    """A troubled link makes the user unstable; when it recovers they are online again."""
    p, events, _, _ = make()
    conn = FakeConn(1)
    attach(p, "alice", conn)
    p.set_unstable(conn, True, "probes")
    p.set_unstable(conn, True, "probes")
    p.set_unstable(conn, False, "recovered")
    assert presence_events(events) == [
        ("alice", "online", "login"),
        ("alice", "unstable", "probes"),
        ("alice", "online", "recovered"),
    ]


def test_state_since_is_when_the_state_changed_since_is_the_login() -> None:
    """
    A user's C{since} stays their login; C{state_since} is when their state
    last changed: the console says "unstable since 12:01:07", not since the
    login hours before.
    """
    p, _, _, wall = make()
    conn = FakeConn(1)
    attach(p, "alice", conn)
    login = wall[0]
    (alice,) = p.users()
    assert (alice.since, alice.state_since) == (login, login)
    wall[0] += 3600
    p.set_unstable(conn, True, "retransmits")
    assert (alice.state, alice.since, alice.state_since) == ("unstable", login, login + 3600)
    wall[0] += 10
    p.set_unstable(conn, False, "recovered")
    assert (alice.state, alice.since, alice.state_since) == ("online", login, login + 3610)


def test_kick_closes_every_connection_with_reason_kicked() -> None:
    """Kicking a user closes their connections; the tracker reports them with reason kicked."""
    p, _, _, _ = make()
    a, b = FakeConn(1), FakeConn(2)
    attach(p, "alice", a)
    attach(p, "alice", b)
    assert p.kick("alice")
    assert a.closed == ["kicked"] and b.closed == ["kicked"]
    assert not p.kick("nobody")


def test_snapshot_lists_seats_users_and_connections() -> None:
    """/api/presence: seats used and limit, users with state, since and connections."""
    p, _, _, wall = make()
    conn = FakeConn(1, kind=Kind.CHAT, rtt_ms=0.25)
    attach(p, "alice", conn)
    touch_http(p, "bob", "::1")
    snap = p.snapshot()
    assert snap["seats"] == {"used": 2, "limit": 2}
    alice, bob = snap["users"]
    assert alice["user"] == "alice" and alice["state"] == "online" and alice["since"] == wall[0]
    assert alice["connections"] == [{"kind": "chat", "peer": "127.0.0.1", "port": 5000, "rtt_ms": 0.25,
                                     "unstable": False}]
    assert bob["connections"] == [{"kind": "http", "peer": "::1"}]


def test_retry_after_is_when_a_seat_may_free() -> None:
    """A refused user is told to retry when an HTTP-only seat expires, and never later than a few seconds."""
    from boatwist.presence import RETRY_AFTER

    p, _, clock, _ = make(max_users=2, grace=30)
    attach(p, "alice", FakeConn(1))
    touch_http(p, "bob", "127.0.0.1")
    assert check(p, "carol").retry_after == RETRY_AFTER
    clock.advance(27.5)
    assert check(p, "dave").retry_after == 3
    p2, _, _, _ = make(max_users=1)
    attach(p2, "alice", FakeConn(1))
    assert check(p2, "carol").retry_after == RETRY_AFTER


def test_an_event_id_from_before_a_restart_means_missed_events() -> None:
    """A Last-Event-ID above anything this process issued (an old process's) asks the client to reload."""
    hub = EventHub(first_id=5000)
    first = hub.publish("chat", {"user": "a"})
    assert first.id == 5000
    assert hub.since(4999) == [first]
    assert hub.since(5000) == []
    assert hub.since(90000) is None


def test_whoever_reads_presence_on_the_login_event_sees_the_connection() -> None:
    """
    The login event goes out once the connection is the user's: a subscriber
    reading the snapshot then (the MQTT bridge's retained presence) counts it,
    and a plain request's user shows with their http peer.
    """
    hub, clock, seen = EventHub(), Clock(), []
    p = Presence(hub, AdmissionSettings(max_users=2), clock.seconds, lambda: 1_700_000_000.0)
    hub.subscribe(lambda e: seen.append(p.snapshot()) if e.kind == "presence" else None)
    attach(p, "alice", FakeConn(1))
    touch_http(p, "bob", "10.0.0.9")
    alice, bob = (next(u for u in snap["users"] if u["user"] == name) for snap, name in zip(seen, ["alice", "bob"]))
    assert [c["kind"] for c in alice["connections"]] == [Kind.WEB]
    assert bob["connections"] == [{"kind": "http", "peer": "10.0.0.9"}]
