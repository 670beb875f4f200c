"""The floor: every transition, driven by a fake clock, as the hub and the safe-state hook see it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.task import Clock

from boatwist.config import AdmissionSettings, ConfigError, parse_config
from boatwist.controls.floor import (
    MAX_REQUEST_MESSAGE,
    Floor,
    FloorEvent,
    FloorMode,
    FloorSettings,
    LastOperatorTracker,
    RefusalCode,
    describe,
)
from boatwist.controls.roles import RolePolicy, RoleSettings
from boatwist.controls.spec import ControlSpec, ControlType, MemorySpec
from boatwist.events import Event, EventHub
from boatwist.presence import Kind, Presence
from boatwist.reasons import Reason

T0 = 1_700_000_000.0
EVENT_FIELDS = {"state", "holder", "user", "reason", "at", "previous", "by", "requested_by", "message",
                "request_dropped", "detected_after", "safe"}


@dataclass
class Harness:
    floor: Floor
    clock: Clock
    hub: EventHub
    seen: list[Event] = field(default_factory=list)
    lost: list[FloorEvent] = field(default_factory=list)

    def floor_events(self) -> list[dict[str, Any]]:
        return [e.data for e in self.seen if e.kind == "floor"]

    def last(self) -> dict[str, Any]:
        return self.floor_events()[-1]

    def states(self) -> list[tuple[str, str, str | None]]:
        return [(d["state"], d["reason"], d["holder"]) for d in self.floor_events()]


def make(mode: FloorMode = FloorMode.OPTIONAL, idle: float = 300.0, handover: float = 30.0) -> Harness:
    clock = Clock()
    hub = EventHub()
    roles = RolePolicy(RoleSettings(viewer=("vic",), admin=("carol",)))
    lost: list[FloorEvent] = []
    floor = Floor(FloorSettings(mode, idle, handover), roles, hub, clock, lost.append, wall=lambda: T0 + clock.seconds())
    h = Harness(floor, clock, hub, lost=lost)
    hub.subscribe(h.seen.append)
    return h


def held_by_alice_requested_by_bob(**kw: Any) -> Harness:
    h = make(**kw)
    assert h.floor.take("alice") is None
    assert h.floor.request("bob", "my turn please") is None
    return h


# ------------------------------------------------------------------ take


def test_take_when_free_publishes_taken_with_every_field() -> None:
    """Taking the free floor makes the user holder, with one `taken` event carrying every documented field."""
    h = make()
    h.clock.advance(5)
    assert h.floor.take("alice") is None
    assert h.floor.holder == "alice"
    event = h.last()
    assert set(event) == EVENT_FIELDS
    assert event == {"state": "taken", "holder": "alice", "user": "alice", "reason": "taken", "at": T0 + 5,
                     "previous": None, "by": None, "requested_by": None, "message": None,
                     "request_dropped": None, "detected_after": None, "safe": False}
    snap = h.floor.snapshot()
    assert (snap["state"], snap["holder"], snap["since"]) == ("held", "alice", T0 + 5)
    assert snap["idle_release_in"] == 300.0 and snap["idle_release_at"] == T0 + 305


def test_take_when_held_by_another_is_refused_naming_the_holder() -> None:
    """The 409 of DESIGN.md: someone else holds it, and the refusal says who; nothing is published."""
    h = make()
    h.floor.take("alice")
    refusal = h.floor.take("bob")
    assert refusal is not None and refusal.code is RefusalCode.HELD and refusal.holder == "alice"
    assert "alice" in refusal.message
    assert len(h.floor_events()) == 1


def test_taking_a_floor_you_hold_is_a_no_op() -> None:
    """A second click on "take" changes nothing and tells nobody."""
    h = make()
    h.floor.take("alice")
    assert h.floor.take("alice") is None
    assert len(h.floor_events()) == 1


def test_viewers_neither_take_nor_request_the_floor() -> None:
    """A viewer holding the floor would block every operator: both are refused for the role."""
    h = make()
    refusal = h.floor.take("vic")
    assert refusal is not None and refusal.code is RefusalCode.ROLE
    h.floor.take("alice")
    refusal = h.floor.request("vic")
    assert refusal is not None and refusal.code is RefusalCode.ROLE
    assert h.floor.requested_by is None


def test_claim_takes_when_free_and_requests_when_held() -> None:
    """POST /api/floor: one call that takes a free floor or asks for a held one."""
    h = make()
    assert h.floor.claim("alice") is None
    assert h.floor.claim("bob", "please") is None
    assert h.states() == [("taken", "taken", "alice"), ("requested", "requested", "alice")]


# --------------------------------------------------------------- request


def test_request_is_shown_to_everyone_with_its_message_and_deadline() -> None:
    """A request names the requester and the holder, carries the message, and the snapshot counts down."""
    h = held_by_alice_requested_by_bob()
    event = h.last()
    assert (event["state"], event["user"], event["holder"], event["requested_by"], event["message"]) == (
        "requested", "bob", "alice", "bob", "my turn please")
    h.clock.advance(10)
    snap = h.floor.snapshot()
    assert (snap["state"], snap["requested_by"], snap["request_message"]) == ("requested", "bob", "my turn please")
    assert snap["handover_in"] == 20.0 and snap["handover_deadline"] == T0 + 30


def test_request_message_is_cleaned_and_cut() -> None:
    """The message reaches other terminals: escape sequences go, and it is at most MAX_REQUEST_MESSAGE long."""
    h = make()
    h.floor.take("alice")
    h.floor.request("bob", "\x1b[2Jhi" + "x" * 1000)
    message = h.last()["message"]
    assert message.startswith("hi") and "\x1b" not in message
    assert len(message) == MAX_REQUEST_MESSAGE


def test_a_second_requester_is_refused_naming_who_is_waiting() -> None:
    """One request at a time: the second requester learns who is already waiting, and nothing is published."""
    h = held_by_alice_requested_by_bob()
    refusal = h.floor.request("dave")
    assert refusal is not None and refusal.code is RefusalCode.ALREADY_REQUESTED
    assert refusal.requested_by == "bob" and "bob" in refusal.message
    assert len(h.floor_events()) == 2


def test_asking_again_while_your_request_is_pending_does_not_restart_the_timeout() -> None:
    """A repeated request is a no-op: it cannot push back (or bring forward) the handover."""
    h = held_by_alice_requested_by_bob()
    h.clock.advance(20)
    assert h.floor.request("bob", "again") is None
    assert len(h.floor_events()) == 2
    assert h.floor.snapshot()["handover_in"] == 10.0


def test_requesting_a_free_floor_or_your_own_is_refused() -> None:
    """Request is for a floor held by someone else: free says take it, your own says you have it."""
    h = make()
    refusal = h.floor.request("bob")
    assert refusal is not None and refusal.code is RefusalCode.FREE
    h.floor.take("alice")
    refusal = h.floor.request("alice")
    assert refusal is not None and refusal.code is RefusalCode.HOLDER


# -------------------------------------------------------------- handover


def test_hand_over_gives_the_floor_to_the_requester() -> None:
    """The holder hands over: `taken` by the requester, reason handover, previous and by the old holder; no safe state."""
    h = held_by_alice_requested_by_bob()
    h.clock.advance(3)
    assert h.floor.hand_over("alice") is None
    event = h.last()
    assert (event["state"], event["reason"], event["holder"], event["user"], event["previous"], event["by"]) == (
        "taken", "handover", "bob", "bob", "alice", "alice")
    assert event["requested_by"] is None and event["message"] == "my turn please" and event["safe"] is False
    assert h.lost == []
    snap = h.floor.snapshot()
    assert (snap["holder"], snap["since"], snap["requested_by"], snap["handover_in"]) == ("bob", T0 + 3, None, None)
    h.clock.advance(60)  # the handover timer is gone with the request
    assert h.floor.holder == "bob" and len(h.floor_events()) == 3


def test_only_the_holder_hands_over_and_only_when_asked() -> None:
    """hand_over by the requester or a bystander is refused; with no request pending there is nobody to hand to."""
    h = held_by_alice_requested_by_bob()
    refusal = h.floor.hand_over("bob")
    assert refusal is not None and refusal.code is RefusalCode.NOT_HOLDER and refusal.holder == "alice"
    h2 = make()
    h2.floor.take("alice")
    refusal = h2.floor.hand_over("alice")
    assert refusal is not None and refusal.code is RefusalCode.NO_REQUEST


def test_refuse_keeps_the_floor_and_tells_the_requester() -> None:
    """The holder refuses: a `refused` event about the requester, by the holder; the timeout no longer grants."""
    h = held_by_alice_requested_by_bob()
    h.clock.advance(5)
    assert h.floor.refuse("alice") is None
    event = h.last()
    assert (event["state"], event["user"], event["by"], event["holder"], event["requested_by"]) == (
        "refused", "bob", "alice", "alice", None)
    h.clock.advance(60)
    assert h.floor.holder == "alice" and len(h.floor_events()) == 3
    refusal = h.floor.refuse("alice")
    assert refusal is not None and refusal.code is RefusalCode.NO_REQUEST


def test_refusing_counts_as_the_holder_being_there() -> None:
    """Answering a request restarts the idle release: the holder is evidently at the screen."""
    h = make()
    h.floor.take("alice")
    h.clock.advance(290)
    h.floor.request("bob")
    h.floor.refuse("alice")
    h.clock.advance(20)
    assert h.floor.holder == "alice"
    assert h.floor.snapshot()["idle_release_in"] == 280.0


def test_unanswered_request_is_granted_after_handover_timeout() -> None:
    """Not a moment before the timeout; at it, `taken` by the requester, reason handover-timeout, by nobody."""
    h = held_by_alice_requested_by_bob()
    h.clock.advance(29.9)
    assert h.floor.holder == "alice"
    h.clock.advance(0.1)
    event = h.last()
    assert (event["state"], event["reason"], event["holder"], event["previous"], event["by"], event["safe"]) == (
        "taken", "handover-timeout", "bob", "alice", None, False)
    assert h.lost == []


def test_handover_timeout_zero_means_the_request_waits_for_an_answer() -> None:
    """With handover_timeout = 0 a request is never granted by itself, and no deadline is shown."""
    h = held_by_alice_requested_by_bob(handover=0)
    h.clock.advance(250)
    assert (h.floor.holder, h.floor.requested_by) == ("alice", "bob")
    assert h.floor.snapshot()["handover_deadline"] is None


def test_requester_withdraws() -> None:
    """The requester takes the request back: `withdrawn`, the holder keeps the floor, the timer stops."""
    h = held_by_alice_requested_by_bob()
    refusal = h.floor.withdraw("dave")
    assert refusal is not None and refusal.code is RefusalCode.NO_REQUEST
    assert h.floor.withdraw("bob") is None
    assert h.states()[-1] == ("withdrawn", "withdrawn", "alice")
    h.clock.advance(60)
    assert h.floor.holder == "alice"


def test_requester_offline_drops_the_request_with_the_presence_reason() -> None:
    """A requester who vanishes cannot receive the floor: the request ends, reason and latency from presence."""
    h = held_by_alice_requested_by_bob()
    h.floor.user_offline("bob", Reason.KEEPALIVE_TIMEOUT.value, 3.1)
    event = h.last()
    assert (event["state"], event["user"], event["reason"], event["detected_after"], event["holder"]) == (
        "withdrawn", "bob", "keepalive-timeout", 3.1, "alice")
    assert event["safe"] is False and h.lost == []
    h.clock.advance(60)
    assert h.floor.holder == "alice"


# ---------------------------------------------------------------- release


def test_holder_releases() -> None:
    """Released by hand: `released`, reason released, the floor free, no safe state."""
    h = make()
    h.floor.take("alice")
    assert h.floor.release("alice") is None
    event = h.last()
    assert (event["state"], event["reason"], event["user"], event["holder"], event["previous"], event["safe"]) == (
        "released", "released", "alice", None, "alice", False)
    assert h.floor.holder is None and h.lost == []
    assert h.floor.snapshot()["idle_release_at"] is None


def test_only_the_holder_releases() -> None:
    """Releasing a floor held by someone else, or a free one, is refused."""
    h = make()
    refusal = h.floor.release("alice")
    assert refusal is not None and refusal.code is RefusalCode.FREE
    h.floor.take("alice")
    refusal = h.floor.release("bob")
    assert refusal is not None and refusal.code is RefusalCode.NOT_HOLDER


def test_releasing_drops_a_pending_request() -> None:
    """The floor goes free, not to the requester: the event names whose request was dropped."""
    h = held_by_alice_requested_by_bob()
    h.floor.release("alice")
    event = h.last()
    assert (event["state"], event["holder"], event["requested_by"], event["request_dropped"]) == (
        "released", None, None, "bob")
    h.clock.advance(60)
    assert h.floor.holder is None


def test_idle_holder_loses_the_floor_after_idle_release() -> None:
    """No operation for idle_release seconds: `released`, reason idle, no safe state (the holder is still online)."""
    h = make(idle=300)
    h.floor.take("alice")
    h.clock.advance(299.9)
    assert h.floor.holder == "alice"
    h.clock.advance(0.1)
    event = h.last()
    assert (event["state"], event["reason"], event["user"], event["safe"]) == ("released", "idle", "alice", False)
    assert h.lost == []


def test_touch_by_the_holder_postpones_the_idle_release() -> None:
    """Each operation by the holder starts the idle count again; operations by others do not."""
    h = make(idle=300)
    h.floor.take("alice")
    h.clock.advance(200)
    h.floor.touch("alice")
    h.clock.advance(200)
    h.floor.touch("bob")
    assert h.floor.holder == "alice"
    assert h.floor.snapshot()["idle_release_in"] == 100.0
    h.clock.advance(100)
    assert h.floor.holder is None and h.last()["reason"] == "idle"


def test_idle_release_zero_means_never() -> None:
    """idle_release = 0: the holder keeps the floor however long they do nothing."""
    h = make(idle=0)
    h.floor.take("alice")
    h.clock.advance(86400 * 7)
    assert h.floor.holder == "alice"
    assert h.floor.snapshot()["idle_release_at"] is None


def test_idle_release_while_a_request_waits_drops_the_request() -> None:
    """Idle wins over a slower handover: the floor frees and the pending request ends with it."""
    h = make(idle=10, handover=30)
    h.floor.take("alice")
    h.floor.request("bob")
    h.clock.advance(10)
    assert h.last()["reason"] == "idle" and h.last()["request_dropped"] == "bob"
    h.clock.advance(30)
    assert h.floor.holder is None


def test_admin_breaks_the_floor() -> None:
    """An admin frees the floor: `released`, reason broken, naming the admin; no safe state."""
    h = held_by_alice_requested_by_bob()
    assert h.floor.break_("carol") is None
    event = h.last()
    assert (event["state"], event["reason"], event["user"], event["by"], event["request_dropped"], event["safe"]) == (
        "released", "broken", "alice", "carol", "bob", False)
    assert h.floor.holder is None and h.lost == []


def test_only_admins_break_and_only_a_held_floor() -> None:
    """An operator cannot break the floor; an admin cannot break a free one; breaking your own is releasing."""
    h = make()
    h.floor.take("alice")
    refusal = h.floor.break_("bob")
    assert refusal is not None and refusal.code is RefusalCode.ROLE
    h.floor.release("alice")
    refusal = h.floor.break_("carol")
    assert refusal is not None and refusal.code is RefusalCode.FREE
    h.floor.take("carol")
    assert h.floor.break_("carol") is None
    assert h.last()["reason"] == "released"


# ------------------------------------------------------------------- lost


@pytest.mark.parametrize("reason", [
    Reason.CLOSED, Reason.RESET, Reason.KEEPALIVE_TIMEOUT, Reason.HEARTBEAT_TIMEOUT, Reason.TCP_STATE,
    Reason.SLOW_READER, Reason.KICKED, Reason.REVOKED, Reason.IDLE,
])
def test_holder_offline_for_any_reason_loses_the_floor_and_calls_for_the_safe_state(reason: Reason) -> None:
    """Whatever ended the holder's presence, the floor is `lost` with that reason, and on_lost runs once."""
    h = make()
    h.floor.take("alice")
    h.clock.advance(1)
    h.floor.user_offline("alice", reason.value, 3.1)
    event = h.last()
    assert (event["state"], event["reason"], event["user"], event["holder"], event["detected_after"]) == (
        "lost", reason.value, "alice", None, 3.1)
    assert event["safe"] is True
    assert [e.as_data() for e in h.lost] == [event]
    h.clock.advance(1000)  # the idle timer went with the holder
    assert len(h.floor_events()) == 2


def test_kicked_holder_is_named_with_who_kicked_them() -> None:
    """A kick frees the floor with reason kicked, safe state on, and the admin named when presence knows them."""
    h = make()
    h.floor.take("alice")
    h.floor.user_offline("alice", "kicked", None, by="carol")
    event = h.last()
    assert (event["state"], event["reason"], event["by"], event["safe"]) == ("lost", "kicked", "carol", True)
    assert describe(h.lost[0]) == "the floor is free: alice was removed by carol"


def test_shutdown_loses_the_floor_without_the_safe_state() -> None:
    """The daemon stopping is not the operator vanishing: a restart must not cycle the hardware."""
    h = make()
    h.floor.take("alice")
    h.floor.user_offline("alice", "shutdown", None)
    assert h.states()[-1] == ("lost", "shutdown", None)
    assert h.last()["safe"] is False and h.lost == []


def test_holder_offline_while_a_request_waits_frees_the_floor_and_drops_the_request() -> None:
    """The requester does not inherit a vanished holder's floor: it is free, the safe state runs, no grant follows."""
    h = held_by_alice_requested_by_bob()
    h.floor.user_offline("alice", "reset", 0.0)
    event = h.last()
    assert (event["state"], event["holder"], event["request_dropped"], event["safe"]) == ("lost", None, "bob", True)
    h.clock.advance(60)
    assert h.floor.holder is None and len(h.floor_events()) == 3


def test_someone_else_going_offline_changes_nothing() -> None:
    """Only the holder's and the requester's presence matter to the floor."""
    h = held_by_alice_requested_by_bob()
    h.floor.user_offline("dave", "closed", 0.0)
    assert (h.floor.holder, h.floor.requested_by, len(h.floor_events())) == ("alice", "bob", 2)


@dataclass(eq=False)
class FakeConn:
    """Enough of a tracked connection for Presence."""

    id: int
    kind: Kind = Kind.WEB
    peer_host: str = "127.0.0.1"
    peer_port: int = 5000
    rtt_ms: float | None = None
    unstable: bool = False
    user: str | None = None
    closed: list[str] = field(default_factory=list)

    def close(self, reason: str, note: str | None = None) -> None:
        self.closed.append(reason)


def test_holder_with_two_connections_keeps_the_floor_while_either_lives() -> None:
    """
    Held by a user, not a connection: through the real Presence on the same
    hub, the browser's stream ending leaves the floor with the chat session;
    the chat's cable pull then loses it -- presence event first, then the
    floor event, then what the safe-state hook published, in that order.
    """
    clock = Clock()
    hub = EventHub()
    seen: list[Event] = []
    presence = Presence(hub, AdmissionSettings(), clock.seconds, lambda: T0)

    def on_lost(event: FloorEvent) -> None:
        hub.publish("control", {"user": event.user, "control": "pump", "via": "safe-state"})

    floor = Floor(FloorSettings(), RolePolicy(), hub, clock, on_lost, wall=lambda: T0)
    hub.subscribe(floor.on_event)
    hub.subscribe(seen.append)
    web, chat = FakeConn(1, Kind.WEB), FakeConn(2, Kind.CHAT)
    presence.admit(web, "alice", Kind.WEB)
    presence.admit(chat, "alice", Kind.CHAT)
    floor.take("alice")
    presence.detach(web, "closed", 0.0)
    assert floor.holder == "alice"
    presence.detach(chat, "keepalive-timeout", 3.1)
    assert floor.holder is None
    tail = [(e.kind, e.data.get("state"), e.data.get("reason")) for e in seen[-3:]]
    assert tail == [("presence", "offline", "keepalive-timeout"), ("floor", "lost", "keepalive-timeout"),
                    ("control", None, None)]
    assert seen[-2].data["detected_after"] == 3.1


def test_refused_logins_and_other_events_do_not_touch_the_floor() -> None:
    """A presence `refused` event (a login turned away) is not the holder leaving; chat events are not presence."""
    h = make()
    h.floor.take("alice")
    h.floor.on_event(Event(1, "presence", {"user": "alice", "state": "offline", "reason": "refused"}))
    h.floor.on_event(Event(2, "chat", {"user": "alice", "state": "offline", "reason": "closed"}))
    h.floor.on_event(Event(3, "presence", {"user": "alice", "state": "unstable", "reason": "probes"}))
    assert h.floor.holder == "alice"
    h.floor.on_event(Event(4, "presence", {"user": "alice", "state": "offline", "reason": "tcp-state",
                                           "detected_after": 2}))
    assert h.floor.holder is None and h.last()["detected_after"] == 2.0


# ------------------------------------------------------------------- modes


def test_mode_off_lets_everyone_operate_and_has_no_floor() -> None:
    """mode = off: may_operate never refuses; taking is refused as there is no floor; presence changes nothing."""
    h = make(FloorMode.OFF)
    assert h.floor.may_operate("bob") is None
    refusal = h.floor.take("alice")
    assert refusal is not None and refusal.code is RefusalCode.OFF
    h.floor.user_offline("alice", "closed", 0.0)
    h.floor.touch("alice")
    assert h.floor_events() == [] and h.floor.snapshot()["mode"] == "off"


def test_mode_optional_lets_anyone_operate_a_free_floor_and_only_the_holder_a_held_one() -> None:
    """mode = optional: free -> everyone; held -> the holder, others refused naming the holder."""
    h = make(FloorMode.OPTIONAL)
    assert h.floor.may_operate("bob") is None
    h.floor.take("alice")
    assert h.floor.may_operate("alice") is None
    refusal = h.floor.may_operate("bob")
    assert refusal is not None and refusal.code is RefusalCode.HELD and refusal.holder == "alice"


def test_mode_required_lets_only_the_holder_operate() -> None:
    """mode = required: free -> nobody ("take the floor first"); held -> the holder only."""
    h = make(FloorMode.REQUIRED)
    refusal = h.floor.may_operate("bob")
    assert refusal is not None and refusal.code is RefusalCode.TAKE_FIRST
    assert "take the floor first" in refusal.message
    h.floor.take("alice")
    assert h.floor.may_operate("alice") is None
    refusal = h.floor.may_operate("bob")
    assert refusal is not None and refusal.code is RefusalCode.HELD


# ------------------------------------------------------------------- other


def test_floor_settings_defaults_and_errors() -> None:
    """[floor] defaults to optional / 300 / 30; a bad mode or a negative time is one line naming the key."""
    s = parse_config("")
    assert s.floor == FloorSettings(FloorMode.OPTIONAL, 300.0, 30.0)
    s = parse_config("[floor]\nmode = Required\nidle_release = 0\nhandover_timeout = 5\n")
    assert s.floor == FloorSettings(FloorMode.REQUIRED, 0.0, 5.0)
    with pytest.raises(ConfigError) as info:
        parse_config("[floor]\nmode = exclusive\n", source="e.ini")
    assert str(info.value) == "e.ini:2: [floor] mode = 'exclusive': expected off, optional or required"
    with pytest.raises(ConfigError, match=r"^e.ini:3: \[floor\] idle_release = '-1'"):
        parse_config("[floor]\n\nidle_release = -1\n", source="e.ini")


def test_describe_gives_the_chat_lines_of_issue_11() -> None:
    """One line per change, as the chat port prints them."""
    h = make()
    h.floor.take("alice")
    h.floor.request("bob", "please")
    h.floor.hand_over("alice")
    h.floor.user_offline("bob", "keepalive-timeout", 3.1)
    lines = [describe(FloorEvent(**_event_kwargs(d))) for d in h.floor_events()]
    assert lines == [
        "alice took the floor",
        "bob asks alice for the floor ('please')",
        "alice handed the floor over to bob",
        "the floor is free: bob is offline (no answer to keepalive probes, detected after 3.1 s)",
    ]


def _event_kwargs(data: dict[str, Any]) -> dict[str, Any]:
    from boatwist.controls.floor import FloorState

    return {**data, "state": FloorState(data["state"])}


def test_stop_cancels_every_timer() -> None:
    """At service stop nothing of the floor is left on the reactor."""
    h = held_by_alice_requested_by_bob()
    assert len(h.clock.getDelayedCalls()) == 2
    h.floor.stop()
    assert h.clock.getDelayedCalls() == []


def test_random_sequences_keep_the_floor_consistent() -> None:
    """
    Whatever users do in whatever order, the facade never feeds the machine
    an input its state has no transition for (automat would raise), the
    requester is never the holder, a request implies a holder, and only
    lost events call for the safe state.
    """
    rng = random.Random(11)
    users = ["alice", "bob", "dave", "vic", "carol"]
    for _ in range(30):
        h = make(idle=rng.choice([0, 5, 50]), handover=rng.choice([0, 3, 30]))
        for _ in range(200):
            user = rng.choice(users)
            action = rng.choice(["take", "request", "claim", "withdraw", "hand_over", "refuse", "release",
                                 "break_", "touch", "offline", "advance"])
            if action == "offline":
                h.floor.user_offline(user, rng.choice(["closed", "kicked", "shutdown"]), 1.0)
            elif action == "advance":
                h.clock.advance(rng.choice([0.5, 3, 10, 60]))
            elif action in ("request", "claim"):
                getattr(h.floor, action)(user, "m")
            else:
                getattr(h.floor, action)(user)
            snap = h.floor.snapshot()
            assert snap["requested_by"] is None or (snap["holder"] not in (None, snap["requested_by"]))
            assert snap["holder"] != "vic"
        assert all(e.state.value == "lost" for e in h.lost)
        assert all(d["safe"] == (d["state"] == "lost" and d["reason"] != "shutdown") for d in h.floor_events())


# ------------------------------------------------------- last operator (mode off)


def switch(name: str, safe: bool | None) -> ControlSpec:
    return ControlSpec(name=name, type=ControlType.SWITCH, backend=MemorySpec(initial=False), safe_value=safe)


def test_last_operator_going_offline_names_the_controls_to_make_safe() -> None:
    """mode = off: a control goes safe when the last user who changed it leaves -- not when someone else does."""
    tracker = LastOperatorTracker()
    pump, valve, heater, lamp = switch("pump", False), switch("valve", False), switch("heater", False), switch("lamp", None)
    tracker.changed(pump, "alice", True)
    tracker.changed(valve, "alice", True)
    tracker.changed(heater, "alice", True)
    tracker.changed(heater, "bob", True)
    tracker.changed(lamp, "alice", True)
    assert tracker.last("heater") == "bob" and tracker.last("lamp") is None
    assert tracker.user_offline("dave") == ()
    assert tracker.user_offline("alice") == ("pump", "valve")
    assert tracker.user_offline("alice") == ()
    assert tracker.user_offline("bob") == ("heater",)


def test_a_control_set_back_to_its_safe_value_needs_no_safe_state() -> None:
    """Setting a control to its safe value leaves nothing to undo when its operator leaves."""
    tracker = LastOperatorTracker()
    pump = switch("pump", False)
    tracker.changed(pump, "alice", True)
    tracker.changed(pump, "alice", False)
    assert tracker.user_offline("alice") == ()
