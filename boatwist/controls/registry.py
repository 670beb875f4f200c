"""
The device's controls as they are now: each one's value, its quality, who
changed it last and when; and the polling that keeps them true.

Every control has one L{ControlState}.  Its value comes from the backend
(a read at start, after each operation, and every C{poll} seconds) and from
operations (L{boatwist.controls.pipeline}).  Its quality says how far to
trust the value shown:

  - C{good}: the last read or write succeeded;
  - C{stale}: no reading yet, or the last one is overdue (a poll that
    cannot run because an operation holds the control, a hung device);
  - C{error}: the backend failed; C{error} holds its one line.

A change that nobody in boatwist made -- a sensor's new reading, a hand on
the device, another program writing the file -- is published as a C{value}
event, and so is every change of quality: everyone sees the device as it
is, not as boatwist last left it.  Going stale is such a change although no
read happens: the poll loop, on the reactor's clock, looks at each control
whose poll it has to skip, and publishes the moment its reading becomes
overdue (L{Controls.quality_of}); the next good reading (a poll, or an
operation's read back) publishes C{good} again.  Nothing is done per
request.

Reads and operations on one control are serialised (one lock per control):
a poll never interleaves with an operation, and a poll that would have to
wait is skipped rather than queued (the next one comes soon).  The backends
bound every call in time; the registry bounds it again (C{with_timeout}),
so a misbehaving backend cannot hold a control forever.

Polling is one C{LoopingCall} per distinct C{poll} interval, not one per
control: the controls polled every second are due at the same tick, and
their C{file} reads go to one shared thread in one hand-off
(L{boatwist.controls.backends.file.FileReads}, which bounds the batch by the
controls' timeout and marks only a hung file's control); the others (and a
file set apart for hanging or being slow) are read one by one as before.
Taking an uncontended lock costs nothing (L{ControlLock.try_acquire}), and
an unchanged reading publishes nothing.
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence, cast

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from boatwist.controls.backends.base import Backend, BackendError
from boatwist.controls.backends.factory import BackendFactory
from boatwist.controls.backends.file import FileBackend, FileReading
from boatwist.controls.roles import Role, RolePolicy
from boatwist.controls.spec import ControlSpec, ControlType, MemorySpec, Value
from boatwist.events import EventHub
from boatwist.store.operations import ControlValue
from boatwist.store.service import Store
from boatwist.workers import TimedOut, with_timeout

__all__ = ["ControlLock", "ControlState", "Controls", "ControlsService", "Quality", "describe_error",
           "describe_failure"]


class Quality(str, enum.Enum):
    GOOD = "good"
    STALE = "stale"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


def describe_error(error: BaseException) -> str:
    """A backend's error as the one line people read (never a traceback)."""
    if isinstance(error, (TimedOut, BackendError)):
        return str(error)
    return f"internal error ({type(error).__name__})"


def describe_failure(failure: Failure) -> str:
    """L{describe_error} of a Failure."""
    return describe_error(failure.value) if failure.value is not None else "internal error (unknown)"


class ControlLock(DeferredLock):
    """A control's lock: operations wait for it (L{run}); a poll only takes it when it is free."""

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (no Deferred, nothing queued); release it with L{release}."""
        if self.locked:
            return False
        self.locked = True
        return True


@dataclass
class ControlState:
    """One control as it is now."""

    spec: ControlSpec
    backend: Backend
    value: Value = None
    quality: Quality = Quality.STALE
    #: The backend's last failure, one line; None while it works.
    error: str | None = None
    #: Wall clock of the last change, and who made it (None: a reading, not an operation).
    changed_at: float | None = None
    changed_by: str | None = None
    #: Monotonic time of the last successful read or write.
    seen_at: float | None = None
    lock: ControlLock = field(default_factory=ControlLock)
    #: Counts every assignment to the fields above (L{__setattr__}): a listing made at one
    #: revision of every control is still right while none of them moved.
    revision: int = field(default=0, compare=False, repr=False)

    def __setattr__(self, name: str, value: object) -> None:
        # Whoever changes a field, now or in code written later, moves the revision: a cache
        # that asked each place that changes a state to say so would be one forgotten line
        # from showing an old value.
        object.__setattr__(self, name, value)
        if name != "revision":
            object.__setattr__(self, "revision", self.revision + 1)

    @property
    def name(self) -> str:
        return self.spec.name


def _stale_at(state: ControlState) -> float | None:
    """When a polled control's last good reading goes overdue (L{Controls._overdue}); None if never."""
    poll, seen = state.spec.poll, state.seen_at
    if poll is None or seen is None:
        return None
    return seen + 2 * poll + state.spec.timeout


class Controls:
    """
    Every control of the device, in INI order.

    @param observe: told (control name, "read" or "write", seconds, ok) of
        every backend call: the metrics' latency histogram and error counts.
    """

    _log = Logger()

    def __init__(self, specs: tuple[ControlSpec, ...], backends: BackendFactory, store: Store, hub: EventHub,
                 clock: IReactorTime, wall: Callable[[], float] = time.time,
                 observe: Callable[[str, str, float, bool], None] = lambda name, op, seconds, ok: None) -> None:
        self._specs = specs
        self._backends = backends
        self._store = store
        self._hub = hub
        self._clock = clock
        self._wall = wall
        self._observe = observe
        # Every control is known (and listed, quality stale) from the start; its
        # backend is built once the recorded values are read (L{start}).
        self._states: dict[str, ControlState] = {spec.name: ControlState(spec, _Starting(spec)) for spec in specs}
        self._pollers: list[LoopingCall] = []
        #: Each control's last JSON, with what it showed (see describe_json).
        self._encoded: dict[str, tuple[tuple[object, ...], bytes]] = {}
        #: The listing's last JSON per role: (every control's revision, good until (monotonic), JSON).
        self._listings: dict[Role, tuple[tuple[int, ...], float, bytes]] = {}
        #: Fired once every control has its state (L{when_built}).
        self._waiting: list[Deferred[None]] = []
        self._built = False

    # ------------------------------------------------------------ queries

    def __iter__(self) -> Iterator[ControlState]:
        return iter(self._states.values())

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> ControlState | None:
        return self._states.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self._specs)

    @property
    def built(self) -> bool:
        """Whether every control has its state: not yet in the moment after start when the store is read."""
        return self._built

    def when_built(self) -> Deferred[None]:
        """
        Fires once every control has its state (at once when it has): the
        listeners open while the recorded values are still being read, and a
        request in that moment must wait for them, not be told a declared
        control does not exist.
        """
        if self._built:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def quality_of(self, state: ControlState) -> Quality:
        """The quality now: a good value whose poll is overdue has gone stale."""
        if state.quality is Quality.GOOD and self._overdue(state):
            return Quality.STALE
        return state.quality

    def _overdue(self, state: ControlState) -> bool:
        """
        Whether a polled control's last good reading is older than two polls
        and a timeout: two polls missed, the last one given all its time.
        """
        stale_at = _stale_at(state)
        return stale_at is not None and self._clock.seconds() > stale_at

    def describe_json(self, state: ControlState, user: str, roles: RolePolicy) -> bytes:
        """
        L{describe} as JSON (UTF-8), encoded again only when something it
        shows changed: C{GET /api/controls} is what a console polls, and
        encoding every control on every request cost more than the rest of
        the request.
        """
        spec = state.spec
        writable = spec.type.writable and roles.may_operate(user, spec)
        value = state.value
        # The value's type too: True == 1, yet one is "true" and the other "1".
        key = (type(value), value, self.quality_of(state), state.error, state.changed_at, state.changed_by,
               writable)
        cached = self._encoded.get(spec.name)
        if cached is not None and cached[0] == key:
            return cached[1]
        encoded = json.dumps(self.describe(state, user, roles), ensure_ascii=False).encode("utf-8")
        self._encoded[spec.name] = (key, encoded)
        return encoded

    def listing_json(self, user: str, roles: RolePolicy) -> bytes:
        """
        Every control's L{describe_json}, comma-separated, in INI order:
        made again only when a control changed, or when one of the polled
        controls may have gone stale since (what a control shows to a user
        depends on nothing else but the user's role).
        """
        role = roles.role_of(user)
        revisions = tuple(state.revision for state in self._states.values())
        now = self._clock.seconds()
        cached = self._listings.get(role)
        if cached is not None and cached[0] == revisions and now < cached[1]:
            return cached[2]
        body = b",".join(self.describe_json(state, user, roles) for state in self._states.values())
        # The first moment a control shown good turns stale (L{_overdue}); one already overdue
        # is shown stale, and stays so until a reading moves its revision.
        good_until = min((until for until in (_stale_at(state) for state in self._states.values()
                                              if state.quality is Quality.GOOD)
                          if until is not None and until >= now), default=float("inf"))
        self._listings[role] = (revisions, good_until, body)
        return body

    def describe(self, state: ControlState, user: str, roles: RolePolicy) -> dict[str, object]:
        """One control as C{GET /api/controls} shows it to C{user} (DESIGN.md's fields)."""
        spec = state.spec
        writable = spec.type.writable and roles.may_operate(user, spec)
        return {
            "name": spec.name,
            "label": spec.title,
            "type": spec.type.value,
            "unit": spec.unit or None,
            "min": spec.min,
            "max": spec.max,
            "step": spec.step,
            "choices": list(spec.choices) or None,
            "value": state.value,
            "quality": self.quality_of(state).value,
            "error": state.error,
            "changed_at": state.changed_at,
            "changed_by": state.changed_by,
            "writable": writable,
            "role": roles.needed_for(spec).label,
            "confirm": spec.confirm is not None,
            "safe_value": spec.safe_value,
            "poll": spec.poll,
        }

    # ---------------------------------------------------------- lifecycle

    def start(self) -> Deferred[None]:
        """Build the backends (memory ones with their recorded value), read each control once, start polling."""
        d = Deferred.fromCoroutine(self._start())

        def failed(failure: Failure) -> Failure:
            # Whatever was built is all there will be: nobody may wait for the rest forever,
            # and a control left without a backend says why.
            why = f"not started: {failure.getErrorMessage()}"
            for state in self._states.values():
                if isinstance(state.backend, _Starting):
                    state.backend.why = why
                    state.quality, state.error = Quality.ERROR, why
            self._release_waiting()
            return failure

        return d.addErrback(failed)

    async def _start(self) -> None:
        try:
            recorded = await self._store.control_values()
        except Exception as e:
            self._log.error("the recorded control values cannot be read ({error}); memory controls start at "
                            "their initial values", error=e)
            recorded = {}
        await self._build(recorded)

    def _build(self, recorded: Mapping[str, ControlValue]) -> Deferred[None]:
        reads: list[Deferred[None]] = []
        polled: dict[float, list[ControlState]] = {}
        for spec in self._specs:
            last = recorded.get(spec.name)
            restored = last.value if last is not None and isinstance(spec.backend, MemorySpec) else None
            state = self._states[spec.name]
            state.backend = self._backends.build(spec, restored=restored)
            if last is not None and spec.type.has_value:
                # What it was last set to: a first reading that differs was changed outside boatwist.
                state.value, state.changed_at, state.changed_by = last.value, last.changed_at, last.changed_by
            if state.backend.readable and spec.type.has_value:
                reads.append(self.refresh(state))
            else:
                # A button, or a command that cannot be read: its value is the last one set.
                state.value = last.value if last is not None and spec.type.has_value else None
                state.quality = Quality.GOOD
            if spec.poll is not None and state.backend.readable:
                polled.setdefault(spec.poll, []).append(state)
        for interval, states in polled.items():
            # The controls polled at one interval are due at the same tick: one timer, one batch of file reads.
            poller = LoopingCall(self._poll, tuple(states))
            poller.clock = self._clock
            poller.start(interval, now=False)
            self._pollers.append(poller)
        self._release_waiting()
        return defer.gatherResults(reads).addCallback(lambda _: None)

    def _release_waiting(self) -> None:
        self._built = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def stop(self) -> Deferred[None]:
        for poller in self._pollers:
            if poller.running:
                poller.stop()
        self._pollers.clear()
        return self._backends.close()

    # ------------------------------------------------------------ reading

    def _poll(self, states: Sequence[ControlState]) -> None:
        """
        One tick of the controls polled at one interval: the C{file} ones
        read together, the others one by one.  A control whose lock is held
        (an operation or a read under way) is skipped -- the next poll comes
        soon -- but its reading may have become overdue, which everyone must
        be told.  Never raises: a LoopingCall stops at its first exception.
        """
        files: dict[float, list[ControlState]] = {}
        for state in states:
            if not state.lock.try_acquire():
                try:
                    self._check_stale(state)
                except Exception:
                    self._log.failure("polling control {name} failed", name=state.name)
                continue
            backend = state.backend
            if isinstance(backend, FileBackend) and not backend.alone:
                files.setdefault(state.spec.timeout, []).append(state)
                continue
            try:
                self.read_locked(state).addBoth(self._unlock, state)
            except Exception:
                self._log.failure("polling control {name} failed", name=state.name)
                state.lock.release()
        for timeout, group in files.items():
            try:
                self._read_files(group, timeout)
            except Exception:
                self._log.failure("polling the file controls failed")
                for state in group:
                    state.lock.release()

    def _unlock(self, outcome: object, state: ControlState) -> None:
        state.lock.release()
        if isinstance(outcome, Failure):
            self._log.failure("polling control {name} failed", outcome, name=state.name)

    def _read_files(self, states: list[ControlState], timeout: float) -> None:
        """Poll file controls (their locks held) in one batch; each gets its reading, then its lock back."""
        backends = [cast(FileBackend, state.backend) for state in states]

        def read(readings: list[FileReading | None]) -> None:
            for index, state in enumerate(states):
                reading = readings[index] if index < len(readings) else None
                try:
                    if reading is not None:  # None: not reached this time (a hung file before it)
                        self._observe(state.name, "read", reading.seconds, reading.error is None)
                        if reading.error is None:
                            self.note_reading(state, reading.value)
                        else:
                            self.note_failure(state, describe_error(reading.error))
                finally:
                    state.lock.release()

        def failed(failure: Failure) -> None:
            self._log.failure("polling the file controls failed", failure)
            for state in states:
                if state.lock.locked:
                    state.lock.release()

        self._backends.file_reads().read(backends, timeout).addCallbacks(read, failed)

    def _check_stale(self, state: ControlState) -> None:
        """A good reading that became overdue turns C{stale}, published once (the next good one turns it back)."""
        if state.quality is Quality.GOOD and self._overdue(state):
            state.quality = Quality.STALE
            self._publish_value(state)

    def refresh(self, state: ControlState) -> Deferred[None]:
        """Read the control now (under its lock); publish a C{value} event if what people see changed."""
        return state.lock.run(self.read_locked, state)

    def read_locked(self, state: ControlState) -> Deferred[None]:
        """Read the control; the caller holds its lock."""
        started = self._clock.seconds()
        d = with_timeout(state.backend.read(), state.spec.timeout, self._clock)

        def read(value: Value) -> None:
            self._observe(state.name, "read", self._clock.seconds() - started, True)
            self.note_reading(state, value)

        def failed(failure: Failure) -> None:
            self._observe(state.name, "read", self._clock.seconds() - started, False)
            self.note_failure(state, describe_failure(failure))

        return d.addCallbacks(read, failed)

    def note_reading(self, state: ControlState, value: Value) -> None:
        """A successful read gave C{value}: a change made outside boatwist is everyone's news."""
        before = (state.value, self.quality_of(state))
        # The first reading of a control nobody is recorded as having set is not a change.
        first = state.seen_at is None and state.changed_at is None
        state.seen_at = self._clock.seconds()
        state.quality, state.error = Quality.GOOD, None
        if value != state.value or type(value) is not type(state.value):
            state.value = value
            if state.spec.type is not ControlType.SENSOR and not first:
                # Someone changed it by hand or another program did: not one of us.
                state.changed_at, state.changed_by = self._wall(), None
        if (state.value, state.quality) != before:
            self._publish_value(state)

    def note_failure(self, state: ControlState, error: str) -> None:
        """The backend failed: quality C{error}, with its line; published when that is news."""
        news = state.quality is not Quality.ERROR or state.error != error
        if news:
            self._log.warn("control {name}: {error}", name=state.name, error=error)
        state.quality, state.error = Quality.ERROR, error
        if news:
            self._publish_value(state)

    def note_written(self, state: ControlState, value: Value, user: str, at: float) -> None:
        """
        An operation set C{value} (published by the pipeline as a C{control}
        event, not here).  A control everyone was told is stale (its polls
        waited for this operation) is good again: that is published here, as
        a change of quality.
        """
        told_stale = state.quality is Quality.STALE and state.seen_at is not None
        state.value = value
        state.quality, state.error = Quality.GOOD, None
        state.seen_at = self._clock.seconds()
        state.changed_at, state.changed_by = at, user
        if told_stale:
            self._publish_value(state)

    def _publish_value(self, state: ControlState) -> None:
        self._hub.publish("value", {"control": state.name, "value": state.value,
                                    "quality": self.quality_of(state).value, "error": state.error,
                                    "changed_at": state.changed_at, "changed_by": state.changed_by,
                                    "at": self._wall()})


class _Starting:
    """A control's backend until the real one is built: nothing is read or written before that."""

    readable = False

    def __init__(self, spec: ControlSpec) -> None:
        self._spec = spec
        #: Why the control has no backend: still starting, or what went wrong.
        self.why = "boatwist is starting"

    def read(self) -> Deferred[Value]:
        return defer.fail(BackendError(f"{self._spec.name}: {self.why}"))

    def write(self, value: Value) -> Deferred[None]:
        return defer.fail(BackendError(f"{self._spec.name}: {self.why}"))

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


class ControlsService(Service):
    """Starts the controls once the store is open; stops them (and every backend) at shutdown."""

    _log = Logger()

    def __init__(self, controls: Controls) -> None:
        self.controls = controls
        #: Fires once every control was read for the first time.
        self.started: Deferred[None] = Deferred()

    def startService(self) -> None:
        super().startService()
        d = self.controls.start()
        d.addErrback(lambda f: self._log.failure("the controls did not start", f))
        d.chainDeferred(self.started)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.controls.stop()
