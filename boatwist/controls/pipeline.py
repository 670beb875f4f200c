"""
The one way the device is operated: every channel (browser, chat port, API,
MQTT, the safe state) goes through L{Pipeline.operate}.

    validate  -> 400 bad value (type, range, step, choice; NaN and infinities)
    rate      -> 429 (the per-user allowance the chat shares)
    role      -> 403 (the user's role is below the control's)
    floor     -> 409 (someone else holds it: the answer names them)
    confirm   -> 428 (a control with `confirm`: the question and a token;
                 the same request with the token, within 15 s, goes on)
    write     -> the backend, under the control's lock; 502 failed, 504 timed out
    read back -> what the device now says (when it can be read)
    record    -> SQLite: the operation and the control's new value, one commit
    broadcast -> a `control` event everyone sees, live

A refusal -- by role, by floor, or of a confirmation token that does not
answer the question (wrong user, value or control, expired, replayed) --
and a failed write are operations too: they are recorded and broadcast with
their error (a refusal with C{refused} C{role}, C{floor} or C{confirm}, and
the floor's or the confirmation's C{code}), and the audit log gets a
C{refused-operation} row for each refusal (L{boatwist.core.audit_presence}),
so everyone sees that bob tried.  Asking the question (a first request
without a token) is not a refusal, and a bad value is only answered:
nothing happened.  Operations on one
control are serialised, so two people setting it at the same instant both
get an answer and the recorded old values chain without a gap.

If the record cannot be committed (a full disk), the operation has still
happened on the device: it is broadcast all the same, marked
C{recorded: false}, and the failure is logged -- people must not be told
less because the flash is full.

The safe state (L{Pipeline.safe_state}) runs the same steps but for the
role, floor, confirmation and rate: it acts for nobody, because its
operator vanished.  It is recorded and broadcast with C{via} C{safe-state};
a failure to reach the safe value is broadcast like any failure and logged
at error level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.controls.confirm import Confirmations
from boatwist.controls.floor import Floor, FloorMode, LastOperatorTracker
from boatwist.controls.registry import ControlState, Controls, describe_failure
from boatwist.controls.roles import RolePolicy
from boatwist.controls.spec import Value
from boatwist.controls.values import BadValue, from_json, from_text
from boatwist.events import Event, EventHub
from boatwist.ratelimit import OverRate, TokenBuckets
from boatwist.reasons import Reason
from boatwist.store.operations import OperationRecord
from boatwist.store.service import Store, StoreFull
from boatwist.workers import TimedOut, with_timeout

__all__ = ["Outcome", "Pipeline", "VIAS"]

#: Where an operation may come from (the C{via} of a C{control} event).
VIAS = ("web", "chat", "api", "mqtt", "safe-state")


@dataclass(frozen=True)
class Outcome:
    """
    What an operation came to, for any front end: an HTTP-like status, the
    operation as broadcast (when there was one), the error line, and what
    else the answer needs (the holder for a 409, the token and question for
    a 428, Retry-After for a 429).
    """

    status: int
    operation: Mapping[str, object] | None = None
    error: str | None = None
    detail: Mapping[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200


class Pipeline:
    _log = Logger()

    def __init__(self, controls: Controls, roles: RolePolicy, floor: Floor, confirmations: Confirmations,
                 last_operators: LastOperatorTracker, rate: TokenBuckets, store: Store, hub: EventHub,
                 clock: IReactorTime, wall: Callable[[], float] = time.time,
                 observe: Callable[[str, str, float, bool], None] = lambda name, op, seconds, ok: None) -> None:
        self._controls = controls
        self._roles = roles
        self._floor = floor
        self._confirmations = confirmations
        self._last = last_operators
        self._rate = rate
        self._store = store
        self._hub = hub
        self._clock = clock
        self._wall = wall
        self._observe = observe

    # ------------------------------------------------------------- operate

    def operate(self, user: str, name: str, raw: object, via: str, confirm: str | None = None,
                text: bool = False) -> Deferred[Outcome]:
        """
        C{user} sets control C{name} to C{raw} through C{via}: a JSON value,
        or (C{text}) a word typed on the chat port.  Never fails: every
        refusal is an L{Outcome} with its status.
        """
        state = self._controls.get(name)
        if state is None:
            known = ", ".join(self._controls.names) or "none"
            return defer.succeed(Outcome(404, error=f"no control named {name!r} (controls: {known})"))
        spec = state.spec
        if not spec.type.writable:
            return defer.succeed(Outcome(405, error=f"{name} is a sensor: it is read, never operated"))
        try:
            value = from_text(spec, raw) if text and isinstance(raw, str) else from_json(spec, raw)
        except BadValue as e:
            return defer.succeed(Outcome(400, error=str(e)))
        try:
            self._rate.spend(user)
        except OverRate as e:
            return defer.succeed(Outcome(429, error=str(e), detail={"retry_after": e.retry_after}))
        refusal = self._roles.check_operate(user, spec)
        if refusal is not None:
            return self._refused(state, user, value, via, 403, refusal.message(), {"refused": "role"})
        held = self._floor.may_operate(user)
        if held is not None:
            detail: dict[str, object] = {"refused": "floor", "holder": held.holder, "code": held.code.value}
            return self._refused(state, user, value, via, 409, held.message, detail)
        if spec.confirm is not None:
            checked = None if confirm is None else self._confirmations.confirm(user, spec, value, confirm)
            if confirm is None or checked is not None:
                question = self._confirmations.ask(user, spec, value, via=via)
                answer: dict[str, object] = {
                    "confirm": question.token, "question": question.question, "expires_in": question.expires_in,
                    "control": spec.name, "value": value}
                if checked is None:
                    return defer.succeed(Outcome(428, error="confirmation needed", detail=answer))
                # A token that does not answer this question: refused like a role or a floor refusal --
                # recorded, broadcast, audited (issue 11 item 6) -- and asked again.  The fresh token
                # goes to the one who asked, never into the broadcast.
                refused: dict[str, object] = {"refused": "confirm", "code": checked.reason.value}
                return self._refused(state, user, value, via, 428, checked.message, refused, {**refused, **answer})
        # Before the controls were read at start, an operation waits for them (not a 404, not a failure).
        ready = self._controls.when_built()
        return ready.addCallback(lambda _: state.lock.run(self._write, state, user, value, via, {}))

    def safe_state(self, user: str, reason: str, names: tuple[str, ...] | None = None,
                   by: str | None = None) -> Deferred[list[Outcome]]:
        """
        Set every control with a C{safe_value} (or those of C{names}) to it,
        because C{user} vanished for C{reason} (C{by}: the admin who kicked
        them, when they were kicked): no role, floor, confirmation or rate
        applies.  The operations carry C{reason} (and C{by}) for the line
        everyone reads.
        """
        cause: dict[str, object] = {"reason": reason, **({"by": by} if by is not None else {})}
        outcomes = [state.lock.run(self._write, state, user, state.spec.safe_value, "safe-state", cause)
                    for state in self._controls
                    if state.spec.safe_value is not None and (names is None or state.name in names)]
        return defer.gatherResults(outcomes)

    # --------------------------------------------------------- safe state

    def on_event(self, event: Event) -> None:
        """
        A hub subscriber.  A C{floor} event that calls for the safe state (its
        holder vanished or was kicked: C{safe}) sets it.  With C{[floor] mode =
        off}, a user going offline leaves the controls they changed last
        unattended: their safe values.  A user going offline also leaves their
        pending questions unanswered.
        """
        data = event.data
        by = data.get("by") if isinstance(data.get("by"), str) else None
        if event.kind == "floor" and data.get("safe"):
            self.safe_state(str(data.get("user")), str(data.get("reason")), by=by)
            return
        if event.kind != "presence" or data.get("state") != "offline" or data.get("reason") == Reason.REFUSED:
            return
        user, reason = str(data.get("user")), str(data.get("reason"))
        self._confirmations.forget_user(user)
        if self._floor.mode is FloorMode.OFF and reason != Reason.SHUTDOWN:
            names = self._last.user_offline(user)
            if names:
                self.safe_state(user, reason, names, by=by)

    # ------------------------------------------------------------ private

    def _refused(self, state: ControlState, user: str, value: Value, via: str, status: int, error: str,
                 detail: Mapping[str, object], answer: Mapping[str, object] | None = None) -> Deferred[Outcome]:
        """
        A refusal by role, floor or confirmation: recorded and broadcast with
        C{detail} (everyone sees who tried; the hub's audit subscriber writes
        it down), then answered with C{answer} (C{detail} when None).
        """
        d = self._record(state, user, state.value, value, via, error, None, dict(detail))
        return d.addCallback(lambda operation: Outcome(status, operation, error,
                                                       detail if answer is None else answer))

    def _write(self, state: ControlState, user: str, value: Value, via: str,
               cause: Mapping[str, object]) -> Deferred[Outcome]:
        """
        Under the control's lock: write, read back, record, broadcast (with
        C{cause}: the safe state's C{reason} and C{by}, empty otherwise).
        """
        return Deferred.fromCoroutine(self._write_now(state, user, value, via, cause))

    async def _write_now(self, state: ControlState, user: str, value: Value, via: str,
                         cause: Mapping[str, object]) -> Outcome:
        spec, old = state.spec, state.value
        extra: dict[str, object] = dict(cause)
        started = self._clock.seconds()
        try:
            await with_timeout(state.backend.write(value), spec.timeout, self._clock)
        except Exception as e:
            self._observe(spec.name, "write", self._clock.seconds() - started, False)
            return await self._failed(state, user, old, value, via, describe_failure(Failure(e)),
                                      isinstance(e, TimedOut), extra)
        self._observe(spec.name, "write", self._clock.seconds() - started, True)
        now: Value = value if spec.type.has_value else None
        if spec.type.has_value and state.backend.readable:
            try:
                now = await with_timeout(state.backend.read(), spec.timeout, self._clock)
            except Exception as e:
                error = f"written, but reading it back failed: {describe_failure(Failure(e))}"
                return await self._failed(state, user, old, value, via, error, isinstance(e, TimedOut), extra)
        at = self._wall()
        self._controls.note_written(state, now, user, at)
        if via != "safe-state":
            self._floor.touch(user)
            if spec.safe_value is not None:
                self._last.changed(spec, user, now)
        operation = await self._record(state, user, old, now, via, None, at, extra)
        return Outcome(200, operation)

    async def _failed(self, state: ControlState, user: str, old: Value, value: Value, via: str, error: str,
                      timed_out: bool, extra: dict[str, object]) -> Outcome:
        """A write (or its read back) failed: quality error, recorded and broadcast with the error; 502/504."""
        self._controls.note_failure(state, error)
        if via == "safe-state":
            self._log.error("SAFE STATE NOT REACHED: {control} could not be set to {value}: {error}",
                            control=state.name, value=value, error=error)
        operation = await self._record(state, user, old, value, via, error, None, extra)
        return Outcome(504 if timed_out else 502, operation, error)

    def _record(self, state: ControlState, user: str, old: Value, value: Value, via: str, error: str | None,
                at: float | None, extra: dict[str, object]) -> Deferred[Mapping[str, object]]:
        """Commit the operation (and, done, the control's value), then broadcast it; fires with what was sent."""
        spec = state.spec
        record = OperationRecord(at=at if at is not None else self._wall(), user=user, control=spec.name,
                                 old=old if spec.type.has_value else None,
                                 value=value if spec.type.has_value else None,
                                 result="ok" if error is None else "error", error=error, via=via)
        d = self._store.record_operation(record, keep_value=error is None and spec.type.has_value)

        def broadcast(saved: OperationRecord, recorded: bool = True) -> Mapping[str, object]:
            data: dict[str, object] = {**saved.as_dict(), "type": spec.type.value, "unit": spec.unit or None,
                                       "label": spec.title, **extra}
            if not recorded:
                data["recorded"] = False
            self._hub.publish("control", data)
            return data

        def not_recorded(failure: Failure) -> Mapping[str, object]:
            if not failure.check(StoreFull):
                self._log.failure("operation on {control} not recorded", failure, control=spec.name)
            else:
                self._log.error("operation on {control} not recorded: {error}", control=spec.name,
                                error=failure.getErrorMessage())
            return broadcast(record, recorded=False)

        return d.addCallbacks(broadcast, not_recorded)
