"""
The floor: exclusive control of the device, held by a user and lost with them.

As OPC UA DI locking (C{InitLock}/C{ExitLock}/C{BreakLock}) and the operating
token of SCADA systems, with one thing none of them does: the floor follows
presence.  A holder whose cable is pulled stops holding the device within
the same seconds that free their seat, and the controls with a C{safe_value}
go to it.

    [floor]
    mode = optional         off | optional | required
    idle_release = 300      seconds without an operation by the holder; 0 = never
    handover_timeout = 30   seconds a request waits for the holder; 0 = until answered

Modes (L{Floor.may_operate}):

    off        no floor: anyone whose role reaches a control operates it
    optional   anyone operates while the floor is free; only the holder while held
    required   only the holder operates; while free, nobody ("take the floor first")

The machine (L{_FloorInputs}; every transition is listed in L{_build}):

    free ----take----------------------------------> held
    held ----request(user, message)----------------> requested
    requested --hand_over / grant_unanswered-------> held (by the requester)
    requested --refuse / withdraw------------------> held (by the same holder)
    held, requested --release(released|idle|broken)-> free   (a request is dropped)
    held, requested --lose(presence reason)---------> free   (a request is dropped)
    held, requested --touch------------------------> the same state, idle timer restarted

Who may feed an input (the holder, the requester, an admin, someone with
the operator role) is decided by L{Floor} before the machine is asked, so the
machine holds only the order of things and an input the current state has
no transition for is a bug (automat raises C{NoTransition}), not a refusal.

Why automat's C{TypeMachine}: it ships with Twisted (the transit relay's
server state is the model, STYLE.md), the inputs are a typed C{Protocol} that
mypy checks, and every transition is one decorated function in one place.
Its states carry no data here: data-carrying states are built from the
arguments of the input that enters them, and five inputs with different
arguments enter C{held}.  The holder and the request live in L{_FloorCore},
written only by the transitions.  (TypeMachine needs Automat >= 24.8; recent
Twisted releases require it, pyproject.toml should say so itself.)

Events (kind C{floor} on the hub, L{FloorEvent.as_data}).  C{state} is one
of DESIGN.md's four -- C{taken}, C{released}, C{requested}, C{lost} -- or
C{refused} / C{withdrawn} for a request that ended without the floor moving.
A handover is C{taken} (with C{reason} C{handover} or C{handover-timeout} and
C{previous} naming the former holder): a client that knows only the four
states still shows the right holder.

Safe state: the floor writes no hardware.  When the floor is lost in a way
that calls for the safe state (C{safe} true in the event: the holder went
offline or was kicked), L{Floor} publishes the event; the operation
pipeline, a hub subscriber (L{boatwist.controls.pipeline.Pipeline.on_event}),
sets the safe values from it with C{via} C{safe-state}.  The hub delivers
the C{floor} event to everyone before anything the pipeline then publishes,
even when the loss happens inside the delivery of the C{presence} event
that caused it (L{boatwist.events}).  An C{on_lost(event)} callback may
also be given, called right after the event is published.

C{safe} per cause, and why:

    lost (any presence reason: keepalive-timeout, closed, reset, slow-reader,
          tcp-state, heartbeat-timeout, revoked, idle, kicked)     true
        nobody is watching the device any more; C{closed} too: closing the
        browser is walking away, not releasing by hand
    lost, shutdown                                                  false
        the daemon is stopping: the holder did not vanish, the backends are
        being closed, and a restart for an upgrade must not cycle the pump
    released by hand, handover, handover-timeout                    false
        (issue 11: not when released by hand or handed over)
    idle                                                            false
        the holder is still online -- presence vouches for their link --
        and merely did not operate; the floor frees for others, the device
        keeps the state its operator left it in
    broken by an admin                                              false
        a person is present and acting; setting outputs is then their call,
        not a side effect of an administrative action
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, TypedDict

from automat import TypeMachineBuilder
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from boatwist.events import Event
from boatwist.reasons import Reason, words_for
from boatwist.textsafe import clean_message
from boatwist.controls.roles import RolePolicy
from boatwist.controls.spec import ControlSpec, Value

__all__ = [
    "FLOOR_WORDS",
    "MAX_REQUEST_MESSAGE",
    "Floor",
    "FloorEvent",
    "FloorEventData",
    "FloorMode",
    "FloorReason",
    "FloorRefusal",
    "FloorSettings",
    "FloorSnapshot",
    "FloorState",
    "LastOperatorTracker",
    "Publisher",
    "RefusalCode",
    "describe",
    "parse_floor_mode",
]

#: Characters of a request's message kept (it is shown on the holder's screen and the chat port).
MAX_REQUEST_MESSAGE = 200


class FloorMode(str, enum.Enum):
    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FloorSettings:
    """
    The C{[floor]} section.

    C{mode} defaults to C{optional}: it changes nothing while one person
    works (they operate without ceremony, as before the floor existed), and
    the moment two people do, whoever takes the floor gets exclusive control
    and the dead-man switch.  C{off} would leave that protection unused;
    C{required} would make a fresh device refuse its first operator until
    they found the floor button.

    C{idle_release} 300 s: long enough to watch a process run without
    touching it, short enough that a floor forgotten by someone still logged
    in frees before the next shift looks for it.  C{handover_timeout} 30 s:
    time to read the request and finish a step, not so long that the
    requester gives up (zenon's token dialog behaves alike).
    """

    mode: FloorMode = FloorMode.OPTIONAL
    #: Seconds without an operation by the holder before the floor frees; 0 = never.
    idle_release: float = 300.0
    #: Seconds a request waits for the holder's answer before it is granted; 0 = it waits.
    handover_timeout: float = 30.0


def parse_floor_mode(text: str) -> FloorMode:
    """C{[floor] mode}; ValueError with the "expected ..." part for boatwist.config."""
    try:
        return FloorMode(text.strip().lower())
    except ValueError:
        raise ValueError("expected off, optional or required") from None


class FloorState(str, enum.Enum):
    """The C{state} of a C{floor} event (DESIGN.md's four, and two for requests that ended)."""

    TAKEN = "taken"
    RELEASED = "released"
    REQUESTED = "requested"
    LOST = "lost"
    #: The holder said no; the request is over, the holder keeps the floor.
    REFUSED = "refused"
    #: The requester took the request back, or went offline (C{reason}: the presence reason).
    WITHDRAWN = "withdrawn"

    def __str__(self) -> str:
        return self.value


class FloorReason(str, enum.Enum):
    """The C{reason} of a C{floor} event that is not a presence reason (C{lost} carries those)."""

    TAKEN = "taken"
    REQUESTED = "requested"
    HANDOVER = "handover"
    HANDOVER_TIMEOUT = "handover-timeout"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"
    RELEASED = "released"
    IDLE = "idle"
    BROKEN = "broken"

    def __str__(self) -> str:
        return self.value


#: The words for floor reasons, as L{boatwist.reasons.WORDS} has them for presence.
FLOOR_WORDS = {
    FloorReason.TAKEN.value: "took the floor",
    FloorReason.REQUESTED.value: "asked for the floor",
    FloorReason.HANDOVER.value: "handed over",
    FloorReason.HANDOVER_TIMEOUT.value: "no answer to the request",
    FloorReason.REFUSED.value: "request refused",
    FloorReason.WITHDRAWN.value: "request withdrawn",
    FloorReason.RELEASED.value: "released",
    FloorReason.IDLE.value: "no operation for a while",
    FloorReason.BROKEN.value: "broken by an admin",
}


class FloorEventData(TypedDict):
    """One C{floor} event as the hub, the event stream and the audit log carry it."""

    state: str
    #: Who holds the floor after this change; None: it is free.
    holder: str | None
    #: Whose standing changed: taken -> the new holder; released, lost -> the
    #: former holder; requested, refused, withdrawn -> the requester.
    user: str
    #: A FloorReason, or for lost (and withdrawn by going offline) the presence reason.
    reason: str
    #: Wall-clock time, unix seconds.
    at: float
    #: Who held the floor before this change; None: it was free.
    previous: str | None
    #: Who caused it, when not C{user}: the old holder for handover and
    #: refused, the admin for broken (and kicked, when presence names them).
    by: str | None
    #: The request pending after this change; None: none.
    requested_by: str | None
    #: The message of the request this event is about (requested, refused,
    #: withdrawn, handover); None otherwise.
    message: str | None
    #: The requester whose pending request ended because the floor was freed.
    request_dropped: str | None
    #: Seconds presence took to notice the user was gone (from the presence event).
    detected_after: float | None
    #: Whether this change calls for the controls' safe values.
    safe: bool


@dataclass(frozen=True)
class FloorEvent:
    """One change of the floor; L{as_data} is what is published (every field always present)."""

    state: FloorState
    user: str
    holder: str | None
    reason: str
    at: float
    previous: str | None = None
    by: str | None = None
    requested_by: str | None = None
    message: str | None = None
    request_dropped: str | None = None
    detected_after: float | None = None
    safe: bool = False

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> "FloorEvent":
        """The event back from its published data (the chat port formats what it hears)."""
        return cls(
            state=FloorState(data["state"]), user=str(data.get("user") or ""), holder=data.get("holder"),
            reason=str(data.get("reason") or ""), at=float(data.get("at") or 0.0), previous=data.get("previous"),
            by=data.get("by"), requested_by=data.get("requested_by"), message=data.get("message"),
            request_dropped=data.get("request_dropped"), detected_after=data.get("detected_after"),
            safe=bool(data.get("safe")),
        )

    def as_data(self) -> FloorEventData:
        return FloorEventData(
            state=self.state.value,
            holder=self.holder,
            user=self.user,
            reason=self.reason,
            at=self.at,
            previous=self.previous,
            by=self.by,
            requested_by=self.requested_by,
            message=self.message,
            request_dropped=self.request_dropped,
            detected_after=self.detected_after,
            safe=self.safe,
        )


class FloorSnapshot(TypedDict):
    """C{GET /api/floor}, and the C{floor} member of C{GET /api/controls}."""

    mode: str
    #: free, held or requested.
    state: str
    holder: str | None
    #: Wall-clock time the holder got the floor.
    since: float | None
    requested_by: str | None
    request_message: str | None
    #: Wall-clock time the pending request will be granted; None: no request, or it waits.
    handover_deadline: float | None
    #: The same as seconds from now: a browser counts down from it without
    #: trusting the device's wall clock (a device without an RTC may be wrong).
    handover_in: float | None
    #: Wall-clock time the floor frees if the holder does not operate; None: never / free.
    idle_release_at: float | None
    idle_release_in: float | None


class RefusalCode(str, enum.Enum):
    """Why the floor refused something; the web layer maps them to statuses (C{HELD}: 409)."""

    #: [floor] mode = off: there is no floor to take.
    OFF = "floor-off"
    #: Viewers neither take nor request the floor; only admins break it.
    ROLE = "role"
    #: Someone else holds it (names the holder).
    HELD = "held"
    #: mode = required and nobody holds it.
    TAKE_FIRST = "take-first"
    #: Nothing to release, request, break: the floor is free.
    FREE = "free"
    NOT_HOLDER = "not-holder"
    #: You hold it already (a request to yourself).
    HOLDER = "holder"
    #: Another request is pending (names the requester).
    ALREADY_REQUESTED = "already-requested"
    NO_REQUEST = "no-request"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class FloorRefusal:
    """A refused floor action or operation: C{message} is the one line people read."""

    code: RefusalCode
    message: str
    holder: str | None = None
    requested_by: str | None = None


# ------------------------------------------------------------- the machine


@dataclass
class _Holding:
    user: str
    #: Wall clock, for people.
    since: float


@dataclass
class _Request:
    user: str
    message: str


@dataclass
class _FloorCore:
    """The data the machine's states stand for, and the timers that drive it."""

    settings: FloorSettings
    clock: IReactorTime
    wall: Callable[[], float]
    #: Called by the reactor when the holder has been idle for idle_release.
    idle_expired: Callable[[], None]
    #: Called by the reactor when a request has waited handover_timeout.
    handover_expired: Callable[[], None]
    holding: _Holding | None = None
    request: _Request | None = None
    idle_call: IDelayedCall | None = None
    handover_call: IDelayedCall | None = None

    # The helpers the transitions are made of.

    def hold(self, user: str) -> None:
        self.holding = _Holding(user, self.wall())
        self.restart_idle()

    def restart_idle(self) -> None:
        self._cancel_idle()
        if self.settings.idle_release > 0:
            self.idle_call = self.clock.callLater(self.settings.idle_release, self.idle_expired)

    def ask(self, user: str, message: str) -> None:
        self.request = _Request(user, message)
        if self.settings.handover_timeout > 0:
            self.handover_call = self.clock.callLater(self.settings.handover_timeout, self.handover_expired)

    def end_request(self) -> _Request:
        request = self.request
        assert request is not None
        self.request = None
        if self.handover_call is not None and self.handover_call.active():
            self.handover_call.cancel()
        self.handover_call = None
        return request

    def free(self) -> tuple[_Holding, _Request | None]:
        """Forget the holder and any request; returns both, for the event."""
        holding = self.holding
        assert holding is not None
        request = self.end_request() if self.request is not None else None
        self._cancel_idle()
        self.holding = None
        return holding, request

    def _cancel_idle(self) -> None:
        if self.idle_call is not None and self.idle_call.active():
            self.idle_call.cancel()
        self.idle_call = None

    def holder(self) -> str:
        assert self.holding is not None
        return self.holding.user


class _FloorInputs(Protocol):
    """What can happen to the floor, once L{Floor} has checked who may make it happen."""

    def take(self, user: str) -> FloorEvent:
        "A user takes the free floor."

    def request(self, user: str, message: str) -> FloorEvent:
        "Another user asks the holder for the floor."

    def hand_over(self) -> FloorEvent:
        "The holder gives the floor to the requester."

    def grant_unanswered(self) -> FloorEvent:
        "The holder did not answer within handover_timeout: the requester gets it."

    def refuse(self) -> FloorEvent:
        "The holder keeps the floor and says no."

    def withdraw(self, reason: str, detected_after: float | None) -> FloorEvent:
        "The requester takes the request back (or went offline: a presence reason)."

    def release(self, reason: FloorReason, by: str | None) -> FloorEvent:
        "The floor is freed on purpose: released, idle, broken."

    def lose(self, reason: str, detected_after: float | None, by: str | None) -> FloorEvent:
        "The holder went offline (or was kicked): the floor is freed, the request dropped."

    def touch(self) -> None:
        "The holder operated: the idle timer starts again."


def _build() -> Callable[[_FloorCore], _FloorInputs]:
    """Every transition of the floor, in one place."""
    builder = TypeMachineBuilder(_FloorInputs, _FloorCore)
    free = builder.state("free")
    held = builder.state("held")
    requested = builder.state("requested")

    @free.upon(_FloorInputs.take).to(held)
    def take(inputs: _FloorInputs, core: _FloorCore, user: str) -> FloorEvent:
        core.hold(user)
        return FloorEvent(FloorState.TAKEN, user, user, FloorReason.TAKEN.value, core.wall())

    @held.upon(_FloorInputs.request).to(requested)
    def request(inputs: _FloorInputs, core: _FloorCore, user: str, message: str) -> FloorEvent:
        core.ask(user, message)
        holder = core.holder()
        return FloorEvent(FloorState.REQUESTED, user, holder, FloorReason.REQUESTED.value, core.wall(),
                          previous=holder, requested_by=user, message=message)

    def pass_to_requester(core: _FloorCore, reason: FloorReason, by_holder: bool) -> FloorEvent:
        previous = core.holder()
        asked = core.end_request()
        core.hold(asked.user)
        return FloorEvent(FloorState.TAKEN, asked.user, asked.user, reason.value, core.wall(),
                          previous=previous, by=previous if by_holder else None, message=asked.message)

    @requested.upon(_FloorInputs.hand_over).to(held)
    def hand_over(inputs: _FloorInputs, core: _FloorCore) -> FloorEvent:
        return pass_to_requester(core, FloorReason.HANDOVER, by_holder=True)

    @requested.upon(_FloorInputs.grant_unanswered).to(held)
    def grant_unanswered(inputs: _FloorInputs, core: _FloorCore) -> FloorEvent:
        return pass_to_requester(core, FloorReason.HANDOVER_TIMEOUT, by_holder=False)

    @requested.upon(_FloorInputs.refuse).to(held)
    def refuse(inputs: _FloorInputs, core: _FloorCore) -> FloorEvent:
        asked = core.end_request()
        core.restart_idle()  # answering is activity: the holder is there
        holder = core.holder()
        return FloorEvent(FloorState.REFUSED, asked.user, holder, FloorReason.REFUSED.value, core.wall(),
                          previous=holder, by=holder, message=asked.message)

    @requested.upon(_FloorInputs.withdraw).to(held)
    def withdraw(inputs: _FloorInputs, core: _FloorCore, reason: str, detected_after: float | None) -> FloorEvent:
        asked = core.end_request()
        holder = core.holder()
        return FloorEvent(FloorState.WITHDRAWN, asked.user, holder, reason, core.wall(), previous=holder,
                          message=asked.message, detected_after=detected_after)

    def freed(core: _FloorCore, state: FloorState, reason: str, by: str | None,
              detected_after: float | None, safe: bool) -> FloorEvent:
        holding, dropped = core.free()
        return FloorEvent(state, holding.user, None, reason, core.wall(), previous=holding.user, by=by,
                          request_dropped=dropped.user if dropped else None,
                          detected_after=detected_after, safe=safe)

    for state in (held, requested):

        @state.upon(_FloorInputs.release).to(free)
        def release(inputs: _FloorInputs, core: _FloorCore, reason: FloorReason, by: str | None) -> FloorEvent:
            return freed(core, FloorState.RELEASED, reason.value, by, None, safe=False)

        @state.upon(_FloorInputs.lose).to(free)
        def lose(inputs: _FloorInputs, core: _FloorCore, reason: str, detected_after: float | None,
                 by: str | None) -> FloorEvent:
            return freed(core, FloorState.LOST, reason, by, detected_after, safe=reason != Reason.SHUTDOWN.value)

        @state.upon(_FloorInputs.touch).loop()
        def touch(inputs: _FloorInputs, core: _FloorCore) -> None:
            core.restart_idle()

    return builder.build()


_machine = _build()


# ---------------------------------------------------------------- the floor


class Publisher(Protocol):
    """Where floor events go: L{EventHub} in production and in tests."""

    def publish(self, kind: str, data: dict[str, object]) -> Event: ...


class Floor:
    """
    Exclusive control, for one device: who may hold it, take it, ask for it.

    Every method is called on the reactor thread and returns at once: user
    actions return None when done or a L{FloorRefusal} saying why not; every
    change is published on the hub (kind C{floor}) before the method returns.
    """

    _log = Logger()

    def __init__(
        self,
        settings: FloorSettings,
        roles: RolePolicy,
        hub: Publisher,
        clock: IReactorTime,
        on_lost: Callable[[FloorEvent], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._roles = roles
        self._hub = hub
        self._clock = clock
        self._on_lost = on_lost
        self._wall = wall
        self._core = _FloorCore(settings, clock, wall, self._idle_expired, self._handover_expired)
        self._machine = _machine(self._core)

    # ------------------------------------------------------------ reading

    @property
    def mode(self) -> FloorMode:
        return self.settings.mode

    @property
    def holder(self) -> str | None:
        return self._core.holding.user if self._core.holding else None

    @property
    def requested_by(self) -> str | None:
        return self._core.request.user if self._core.request else None

    def may_operate(self, user: str) -> FloorRefusal | None:
        """
        Whether the floor lets C{user} operate now (the role is asked
        separately, before): None, or the refusal for HTTP 409 / the chat line.
        """
        holder = self.holder
        if self.mode is FloorMode.OFF or holder == user:
            return None
        if holder is None:
            if self.mode is FloorMode.OPTIONAL:
                return None
            return FloorRefusal(RefusalCode.TAKE_FIRST, "nobody holds the floor: take the floor first")
        return self._held_by(holder)

    def snapshot(self) -> FloorSnapshot:
        """The floor as C{GET /api/floor} shows it."""
        core, now = self._core, self._clock.seconds()
        wall = self._wall()

        def left(call: IDelayedCall | None) -> float | None:
            return max(0.0, call.getTime() - now) if call is not None and call.active() else None

        handover_in, idle_in = left(core.handover_call), left(core.idle_call)
        state = "free" if core.holding is None else "requested" if core.request else "held"
        return FloorSnapshot(
            mode=self.mode.value,
            state=state,
            holder=self.holder,
            since=core.holding.since if core.holding else None,
            requested_by=self.requested_by,
            request_message=core.request.message if core.request else None,
            handover_deadline=None if handover_in is None else wall + handover_in,
            handover_in=handover_in,
            idle_release_at=None if idle_in is None else wall + idle_in,
            idle_release_in=idle_in,
        )

    # ------------------------------------------------------------ user actions

    def take(self, user: str) -> FloorRefusal | None:
        """Take the free floor.  Taking a floor you hold is a no-op; one held by another is refused."""
        refusal = self._check_active() or self._check_may_hold(user)
        if refusal is not None:
            return refusal
        holder = self.holder
        if holder is None:
            self._emit(self._machine.take(user))
            return None
        if holder == user:
            return None
        return self._held_by(holder)

    def request(self, user: str, message: str = "") -> FloorRefusal | None:
        """
        Ask the holder for the floor, with an optional message (cleaned of
        terminal escapes, cut to L{MAX_REQUEST_MESSAGE}).  One request is
        pending at a time; asking again while yours is pending is a no-op
        (and does not restart the handover timeout).
        """
        refusal = self._check_active() or self._check_may_hold(user)
        if refusal is not None:
            return refusal
        holder, waiting = self.holder, self.requested_by
        if holder is None:
            return FloorRefusal(RefusalCode.FREE, "the floor is free: take it")
        if holder == user:
            return FloorRefusal(RefusalCode.HOLDER, "you hold the floor already", holder=holder)
        if waiting == user:
            return None
        if waiting is not None:
            return FloorRefusal(RefusalCode.ALREADY_REQUESTED,
                                f"{waiting} is already waiting for the floor from {holder}",
                                holder=holder, requested_by=waiting)
        text = clean_message(message).strip()[:MAX_REQUEST_MESSAGE]
        self._emit(self._machine.request(user, text))
        return None

    def claim(self, user: str, message: str = "") -> FloorRefusal | None:
        """C{POST /api/floor}: take the floor when free, request it when held by another."""
        if self.holder is None:
            return self.take(user)
        return self.request(user, message)

    def withdraw(self, user: str) -> FloorRefusal | None:
        """The requester takes their request back."""
        refusal = self._check_active()
        if refusal is not None:
            return refusal
        if self.requested_by != user:
            return FloorRefusal(RefusalCode.NO_REQUEST, "you have no pending request for the floor",
                                holder=self.holder, requested_by=self.requested_by)
        self._emit(self._machine.withdraw(FloorReason.WITHDRAWN.value, None))
        return None

    def hand_over(self, user: str) -> FloorRefusal | None:
        """The holder gives the floor to the user who requested it."""
        refusal = self._check_active() or self._check_holder(user)
        if refusal is not None:
            return refusal
        if self.requested_by is None:
            return FloorRefusal(RefusalCode.NO_REQUEST, "nobody has requested the floor", holder=user)
        self._emit(self._machine.hand_over())
        return None

    def refuse(self, user: str) -> FloorRefusal | None:
        """The holder keeps the floor; the requester is told."""
        refusal = self._check_active() or self._check_holder(user)
        if refusal is not None:
            return refusal
        if self.requested_by is None:
            return FloorRefusal(RefusalCode.NO_REQUEST, "nobody has requested the floor", holder=user)
        self._emit(self._machine.refuse())
        return None

    def release(self, user: str) -> FloorRefusal | None:
        """The holder lets go; a pending request is dropped with it (the requester may take the free floor)."""
        refusal = self._check_active() or self._check_holder(user)
        if refusal is not None:
            return refusal
        self._emit(self._machine.release(FloorReason.RELEASED, None))
        return None

    def break_(self, admin: str) -> FloorRefusal | None:
        """An admin frees the floor from its holder (an admin breaking their own floor releases it)."""
        refusal = self._check_active()
        if refusal is not None:
            return refusal
        if not self._roles.may_admin(admin):
            return FloorRefusal(RefusalCode.ROLE, "only an admin may break the floor", holder=self.holder)
        holder = self.holder
        if holder is None:
            return FloorRefusal(RefusalCode.FREE, "the floor is free: there is nothing to break")
        if holder == admin:
            return self.release(admin)
        self._emit(self._machine.release(FloorReason.BROKEN, admin))
        return None

    def touch(self, user: str) -> None:
        """C{user} operated a control: when they hold the floor, its idle release starts again."""
        if self.mode is not FloorMode.OFF and self.holder == user:
            self._machine.touch()

    # ------------------------------------------------------------ presence

    def user_offline(self, user: str, reason: str, detected_after: float | None = None,
                     by: str | None = None) -> None:
        """
        The I{user} (their last connection, not one of several) went offline
        for the presence C{reason}: a holder loses the floor, a requester's
        request is dropped.  C{by}: who kicked them, when known.
        """
        if self.mode is FloorMode.OFF:
            return
        if self.holder == user:
            self._emit(self._machine.lose(str(reason), detected_after, by))
        elif self.requested_by == user:
            self._emit(self._machine.withdraw(str(reason), detected_after))

    def on_event(self, event: Event) -> None:
        """
        A hub subscriber: presence C{offline} events become L{user_offline}.
        A C{refused} presence event is a login that was turned away, not
        someone leaving, and is ignored.
        """
        data = event.data
        if event.kind != "presence" or data.get("state") != "offline" or data.get("reason") == Reason.REFUSED.value:
            return
        user, reason = data.get("user"), data.get("reason")
        after, by = data.get("detected_after"), data.get("by")
        if not isinstance(user, str) or not isinstance(reason, str):
            return
        self.user_offline(user, reason,
                          float(after) if isinstance(after, (int, float)) else None,
                          by if isinstance(by, str) else None)

    def stop(self) -> None:
        """Cancel the timers (the service stops; the floor is not announced as freed)."""
        for call in (self._core.idle_call, self._core.handover_call):
            if call is not None and call.active():
                call.cancel()

    # ------------------------------------------------------------ private

    def _idle_expired(self) -> None:
        self._core.idle_call = None
        if self.holder is not None:
            self._emit(self._machine.release(FloorReason.IDLE, None))

    def _handover_expired(self) -> None:
        self._core.handover_call = None
        if self.requested_by is not None:
            self._emit(self._machine.grant_unanswered())

    def _emit(self, event: FloorEvent) -> None:
        """Tell everyone, then -- when the loss calls for it -- the safe state."""
        self._hub.publish("floor", dict(event.as_data()))
        self._log.info("floor: {line}", line=describe(event))
        if event.safe and self._on_lost is not None:
            self._on_lost(event)

    def _check_active(self) -> FloorRefusal | None:
        if self.mode is FloorMode.OFF:
            return FloorRefusal(RefusalCode.OFF, "there is no floor here ([floor] mode = off)")
        return None

    def _check_may_hold(self, user: str) -> FloorRefusal | None:
        if self._roles.may_hold_floor(user):
            return None
        return FloorRefusal(RefusalCode.ROLE, f"{user} is a viewer: viewers do not take the floor",
                            holder=self.holder)

    def _check_holder(self, user: str) -> FloorRefusal | None:
        holder = self.holder
        if holder is None:
            return FloorRefusal(RefusalCode.FREE, "the floor is free")
        if holder != user:
            return FloorRefusal(RefusalCode.NOT_HOLDER, f"{holder} holds the floor, not you", holder=holder)
        return None

    def _held_by(self, holder: str) -> FloorRefusal:
        return FloorRefusal(RefusalCode.HELD, f"{holder} holds the floor: request it", holder=holder,
                            requested_by=self.requested_by)


def describe(event: FloorEvent) -> str:
    """
    One line for the chat port, the audit log and the server log, e.g.
    C{alice took the floor}, C{the floor is free: alice is offline (no answer
    to keepalive probes, detected after 3.1 s)}.
    """
    user, reason, state = event.user, event.reason, event.state
    quoted = f" ({event.message!r})" if event.message else ""
    dropped = f"; {event.request_dropped}'s request is dropped" if event.request_dropped else ""
    if state is FloorState.TAKEN:
        if reason == FloorReason.HANDOVER.value:
            return f"{event.previous} handed the floor over to {user}"
        if reason == FloorReason.HANDOVER_TIMEOUT.value:
            return f"{user} has the floor: {event.previous} did not answer the request"
        return f"{user} took the floor"
    if state is FloorState.REQUESTED:
        return f"{user} asks {event.holder} for the floor{quoted}"
    if state is FloorState.REFUSED:
        return f"{event.by} keeps the floor: {user}'s request is refused"
    if state is FloorState.WITHDRAWN:
        if reason == FloorReason.WITHDRAWN.value:
            return f"{user} withdrew the request for the floor"
        return f"{user}'s request for the floor is dropped: {user} is offline ({_presence_words(event)})"
    if state is FloorState.RELEASED:
        if reason == FloorReason.IDLE.value:
            return f"the floor is free: {user} did not operate for a while{dropped}"
        if reason == FloorReason.BROKEN.value:
            return f"{event.by} broke {user}'s floor: the floor is free{dropped}"
        return f"{user} released the floor{dropped}"
    if reason == Reason.KICKED.value:
        who = f" by {event.by}" if event.by else ""
        return f"the floor is free: {user} was removed{who}{dropped}"
    return f"the floor is free: {user} is offline ({_presence_words(event)}){dropped}"


def _presence_words(event: FloorEvent) -> str:
    words = words_for(event.reason) or event.reason
    if event.detected_after is not None:
        words += f", detected after {event.detected_after:.1f} s"
    return words


# ------------------------------------------------------- mode = off: last operator


class LastOperatorTracker:
    """
    With C{[floor] mode = off} there is no holder whose loss triggers the
    safe state; issue 11 asks instead for a control's safe value when I{the
    last operator who changed it} goes offline.  This remembers, per control
    with a C{safe_value}, who last changed it, and answers which controls
    a departing user leaves unattended.

    The pipeline calls L{changed} after each successful operation other than
    a safe-state one, and L{user_offline} from its presence subscriber (for
    an offline event whose reason calls for the safe state), then sets the
    returned controls to their safe values.  Only in mode C{off}: with a
    floor, a user who changed a control while the floor was free and left
    later must not override the holder who took it since.
    """

    def __init__(self) -> None:
        #: control name -> the user who last set it away from its safe value.
        self._last: dict[str, str] = {}

    def changed(self, spec: ControlSpec, user: str, value: Value) -> None:
        """C{user} set C{spec} to C{value}; set to its safe value, there is nothing to undo."""
        if spec.safe_value is None:
            return
        if value == spec.safe_value and type(value) is type(spec.safe_value):
            self._last.pop(spec.name, None)
        else:
            self._last[spec.name] = user

    def last(self, control: str) -> str | None:
        """Who last changed C{control} away from its safe value, if they are still accountable."""
        return self._last.get(control)

    def user_offline(self, user: str) -> tuple[str, ...]:
        """The controls C{user} changed last, in the order first seen; they are forgotten here."""
        names = tuple(name for name, who in self._last.items() if who == user)
        for name in names:
            del self._last[name]
        return names
