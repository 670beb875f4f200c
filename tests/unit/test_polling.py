"""
Polling on the reactor's clock (boatwist.controls.registry), on the real core
of tests/core_rig.py and a C{Clock}: no threads, no sleeps.

Pinned here: a polled control whose reading becomes overdue is *told* to
everyone as C{stale} -- a C{value} event, the moment the poll loop finds it
overdue, once -- and C{good} again with its next good reading (a poll, or
an operation's read back); the MQTT bridge passes that on, the metrics do
not count it as an operation or a poll error, and the chat port's
C{/controls} shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar, cast

from mqtt_memory import CONNACK, MemoryEndpoint
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from boatwist.chat.device import device_commands
from boatwist.chat.lines import format_event
from boatwist.config import parse_config
from boatwist.controls.backends.factory import POLL_THREAD
from boatwist.controls.backends.file import SLOW_READ, SLOW_TIMES, FileBackend, FileReads
from boatwist.controls.registry import ControlState
from boatwist.controls.spec import ControlSpec, Value
from boatwist.mqtt.bridge import MqttBridgeService
from boatwist.mqtt.device import CoreDevice
from boatwist.mqtt.outbox import Backoff
from boatwist.mqtt.settings import MqttSettings
from boatwist.workers import Runner, SynchronousRunner
from core_rig import Rig

_T = TypeVar("_T")

DEVICE = """
[floor]
mode = off
[control:valve]
type = switch
backend = file
path = /nonexistent/valve
poll = 0.5
timeout = 3
[control:temp]
type = sensor
backend = file
path = {temp}
unit = °C
poll = 1
"""


class SlowBackend:
    """A device whose reads and writes answer when the test says (while C{hold} is set)."""

    readable = True

    def __init__(self) -> None:
        self.value: Value = False
        self.hold = False
        self.pending: list[Deferred[Any]] = []

    def _answer(self, result: Any) -> Deferred[Any]:
        if not self.hold:
            return defer.succeed(result)
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d

    def read(self) -> Deferred[Value]:
        return self._answer(self.value)

    def write(self, value: Value) -> Deferred[None]:
        d = self._answer(None)
        d.addCallback(lambda _: setattr(self, "value", value))
        return d

    def close(self) -> Deferred[None]:
        return defer.succeed(None)


class Device(Rig):
    def __init__(self, tmp_path: Path) -> None:
        self.temp = tmp_path / "temp"
        self.temp.write_text("21.5\n")
        super().__init__(parse_config(DEVICE.format(temp=self.temp)))
        self.valve = SlowBackend()
        real_build = self.backends.build

        def build(control: ControlSpec, restored: Value = None) -> Any:
            return self.valve if control.name == "valve" else real_build(control, restored)

        self.backends.build = build  # type: ignore[method-assign]
        self.core.controls.start()
        self.t0 = self.clock.seconds()

    def state(self, name: str) -> ControlState:
        state = self.core.controls.get(name)
        assert state is not None
        return state

    def values(self, name: str, since: int = 0) -> list[dict[str, Any]]:
        return [e.data for e in self.events[since:] if e.kind == "value" and e.data["control"] == name]

    def until(self, t: float) -> None:
        """Advance the Clock to C{t0 + t}, stopping at every timer due on the way, as the reactor would."""
        end = self.t0 + t
        while self.clock.seconds() < end:
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
            self.clock.advance(min([end, *due]) - self.clock.seconds())

    def quality(self, name: str) -> str:
        return str(self.core.controls.describe(self.state(name), "alice", self.core.roles)["quality"])


def test_an_overdue_reading_is_published_stale_once_then_good_when_the_operation_ends(tmp_path: Path) -> None:
    """
    The valve (poll 0.5 s, timeout 3 s: overdue after 2 × 0.5 + 3 = 4 s)
    is being operated and the device is slow: the write takes 2.9 s and the
    read back 2.9 s, and its polls wait for the operation.  At the first
    poll past 4 s (4.5 s) everyone gets a C{value} event, quality C{stale},
    with the value as it was -- once, not at every later poll.  When the
    read back answers, a C{value} event says C{good} (with the new value and
    who set it) before the operation's C{control} event.
    """
    d = Device(tmp_path)
    assert d.quality("valve") == "good"
    mark = len(d.events)
    d.valve.hold = True
    done: list[Any] = []
    d.core.operations.operate("alice", "valve", True, "api").addCallback(done.append)
    d.until(2.9)
    d.valve.pending.pop(0).callback(None)  # the write answers; the read back starts
    d.until(4.25)
    assert d.values("valve", mark) == [], "not overdue yet: nothing to tell"
    d.until(4.5)
    [stale] = d.values("valve", mark)
    assert (stale["value"], stale["quality"], stale["error"]) == (False, "stale", None), stale
    assert d.quality("valve") == "stale"
    d.until(5.75)
    assert len(d.values("valve", mark)) == 1, "published once, not at every poll"
    assert done == []
    d.clock.advance(0.05)
    d.valve.pending.pop(0).callback(True)  # the read back answers at 5.8 s
    assert [o.status for o in done] == [200]
    after = [(e.kind, e.data.get("quality") or e.data.get("result")) for e in d.events[mark:]
             if e.data.get("control") == "valve"]
    assert after == [("value", "stale"), ("value", "good"), ("control", "ok")], after
    good = d.values("valve", mark)[-1]
    assert (good["value"], good["changed_by"]) == (True, "alice"), good
    assert d.quality("valve") == "good"


def hold(state: ControlState) -> None:
    """Whatever holds the control (an operation, a read) holds its lock; the poll skips it."""
    state.lock.acquire()


def test_a_stale_sensor_turns_good_with_its_next_poll(tmp_path: Path) -> None:
    """
    The temperature (a file, poll 1 s, timeout 2 s: overdue 4 s after its
    last reading) is polled at 1, 2 and 3 s, unchanged: nothing is
    published.  Then something holds it: the poll at 8 s finds the reading
    of 3 s overdue and publishes C{stale}; once it is free, the next poll
    (9 s) reads it and publishes C{good} with the same value.
    """
    d = Device(tmp_path)
    temp = d.state("temp")
    assert (temp.value, d.quality("temp")) == (21.5, "good")
    mark = len(d.events)
    d.until(3)
    assert d.values("temp", mark) == [], "an unchanged reading is not news"
    assert temp.seen_at == d.t0 + 3
    hold(temp)
    d.until(7)
    assert d.values("temp", mark) == [] and d.quality("temp") == "good"
    d.until(8)
    [stale] = d.values("temp", mark)
    assert (stale["value"], stale["quality"]) == (21.5, "stale")
    d.until(8.5)
    assert len(d.values("temp", mark)) == 1
    temp.lock.release()
    d.until(9)
    assert [(e["value"], e["quality"]) for e in d.values("temp", mark)] == [(21.5, "stale"), (21.5, "good")]
    d.until(12)
    assert len(d.values("temp", mark)) == 2


def test_stale_reaches_mqtt_and_the_chat_port_and_counts_as_nothing(tmp_path: Path) -> None:
    """
    The MQTT bridge publishes the C{value} event on C{P/events/value} and
    re-publishes the control's retained state with quality C{stale}, then
    C{good}; the chat port shows no line for it but C{/controls} says
    C{stale}; C{/metrics} counts no operation and no poll error.
    """
    d = Device(tmp_path)
    endpoint = MemoryEndpoint()
    bridge = MqttBridgeService(MqttSettings(broker="tcp:127.0.0.1:1883", topic="dev"), d.core.hub,
                               CoreDevice(d.core, "mqtt"), None, d.clock, tmp_path, endpoint=endpoint,
                               backoff=Backoff(1.0, 4.0, chance=lambda: 0.999), wall_clock=d.clock.seconds)
    bridge.startService()
    d.clock.advance(0)
    conn = endpoint.last
    conn.read()
    conn.send(CONNACK)
    d.clock.advance(0)
    conn.read()
    temp = d.state("temp")
    hold(temp)
    d.until(5)
    temp.lock.release()
    d.until(6)
    sent = [p.publish for p in conn.read() if p.kind == 3]
    events = [json.loads(payload) for topic, payload, *_ in sent if topic == "dev/events/value"]
    assert [(e["control"], e["quality"]) for e in events] == [("temp", "stale"), ("temp", "good")]
    retained = [json.loads(payload)["quality"] for topic, payload, _, retain, _ in sent
                if topic == "dev/controls/temp" and retain]
    assert retained[:1] == ["stale"] and retained[-1] == "good", retained
    bridge.stopService()

    hold(temp)
    d.until(12)
    [event] = [e for e in d.events if e.kind == "value" and e.data["quality"] == "stale"][-1:]
    assert format_event(event) is None, "a value event is no chat line"
    lines: list[str] = []

    class Typist:
        user = "alice"

        def reply(self, line: str) -> None:
            lines.append(line)

    device_commands(d.core)["controls"].handler(Typist(), "")  # type: ignore[arg-type]
    [line] = [line for line in lines if line.strip().startswith("temp")]
    assert "stale" in line, line
    metrics = d.core.metrics.render().decode()
    assert "boatwist_operations_total{" not in metrics
    assert "boatwist_poll_errors_total{" not in metrics


# ------------------------------------------------------------- file polls in batches

FILES = """
[floor]
mode = off
[control:a]
type = sensor
backend = file
path = {dir}/a
unit = °C
poll = 1
[control:b]
type = sensor
backend = file
path = {dir}/b
unit = °C
poll = 1
[control:c]
type = sensor
backend = file
path = {dir}/c
unit = °C
poll = 1
"""


class ManualRunner:
    """A thread that runs its work only when the test says: busy, or stuck."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[[], Any], Deferred[Any]]] = []
        self.runs = 0
        self.stopped = False

    def start(self) -> None:
        pass

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        self.runs += 1
        d: Deferred[_T] = Deferred()
        self.queue.append((work, d))
        return d

    def run_next(self) -> None:
        work, d = self.queue.pop(0)
        try:
            result = work()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)

    def stop(self) -> None:
        self.stopped = True


class CountingRunner(SynchronousRunner):
    """Runs work at once, and counts the hand-offs."""

    def __init__(self) -> None:
        self.runs = 0
        self.stopped = False

    def run(self, work: Callable[[], _T]) -> Deferred[_T]:
        self.runs += 1
        return super().run(work)

    def stop(self) -> None:
        self.stopped = True


class Threads:
    """Every runner the backends asked for, by thread name, oldest first; C{manual}: names whose work waits."""

    def __init__(self, manual: tuple[str, ...] = ()) -> None:
        self.manual = manual
        self.made: dict[str, list[Any]] = {}

    def make(self, name: str) -> Runner:
        runner: Any = ManualRunner() if name in self.manual else CountingRunner()
        self.made.setdefault(name, []).append(runner)
        return cast(Runner, runner)

    def runs(self, name: str) -> int:
        return sum(r.runs for r in self.made.get(name, []))


class Files(Rig):
    def __init__(self, tmp_path: Path, manual: tuple[str, ...] = ()) -> None:
        for name, reading in (("a", "1\n"), ("b", "2\n"), ("c", "3\n")):
            (tmp_path / name).write_text(reading)
        self.dir = tmp_path
        self.threads = Threads(manual)
        super().__init__(parse_config(FILES.format(dir=tmp_path)), runners=self.threads.make)
        self.core.controls.start()

    def state(self, name: str) -> ControlState:
        state = self.core.controls.get(name)
        assert state is not None
        return state

    def file_backend(self, name: str) -> FileBackend:
        backend = self.state(name).backend
        assert isinstance(backend, FileBackend)
        return backend

    def shown(self, name: str) -> tuple[Value, str, str | None]:
        state = self.state(name)
        return state.value, self.core.controls.quality_of(state).value, state.error

    def value_events(self, since: int = 0) -> list[tuple[str, Value, str]]:
        return [(e.data["control"], e.data["value"], e.data["quality"]) for e in self.events[since:]
                if e.kind == "value"]


def test_file_controls_due_at_one_tick_are_read_in_one_hand_off(tmp_path: Path) -> None:
    """
    Three file sensors polled every second: each tick hands all three reads
    to the shared poll thread at once (one hand-off, not three); their own
    threads are used only for the first read at start.  An unchanged file
    publishes nothing; a changed one a C{value} event for that control only.
    """
    d = Files(tmp_path)
    assert [d.threads.runs(f"boatwist-file-{n}") for n in "abc"] == [1, 1, 1]
    assert d.threads.runs(POLL_THREAD) == 0
    mark = len(d.events)
    d.clock.advance(1)
    d.clock.advance(1)
    assert d.threads.runs(POLL_THREAD) == 2
    assert [d.threads.runs(f"boatwist-file-{n}") for n in "abc"] == [1, 1, 1]
    assert d.value_events(mark) == []
    (tmp_path / "b").write_text("2.5\n")
    d.clock.advance(1)
    assert d.threads.runs(POLL_THREAD) == 3
    assert d.value_events(mark) == [("b", 2.5, "good")]
    assert [d.shown(n) for n in "abc"] == [(1.0, "good", None), (2.5, "good", None), (3.0, "good", None)]
    assert [reads_counted(d, n) for n in "abc"] == [4, 4, 4], "every read of a batch is timed for /metrics"


def test_a_hung_file_in_a_batch_times_out_and_marks_only_its_control(tmp_path: Path) -> None:
    """
    The poll thread reads a, then b hangs in the kernel for the whole
    timeout (2 s).  At the timeout the batch is answered with what it has:
    a good; b quality error, "timed out after 2 s" (one value event); c --
    behind b, never reached -- simply not read this time, still good and
    unmarked.  The stuck thread is given up (stopped when it comes back) and
    the next tick's batch goes to a fresh thread, without b: b is read on a
    thread of its own from then on, where its reads still time out.
    """
    d = Files(tmp_path, manual=(POLL_THREAD, "boatwist-file-b"))
    b = d.file_backend("b")
    real_read = b.read_blocking

    def hangs_once() -> Value:
        b.read_blocking = real_read  # type: ignore[method-assign]
        d.clock.advance(2)  # stuck in the kernel for the whole timeout, and the reactor goes on meanwhile
        return real_read()

    d.threads.made["boatwist-file-b"][0].run_next()  # b's first read, at start
    assert d.shown("b") == (2.0, "good", None)
    b.read_blocking = hangs_once  # type: ignore[method-assign]
    mark = len(d.events)
    d.clock.advance(1)
    [first] = d.threads.made[POLL_THREAD]
    first.run_next()
    assert d.shown("a") == (1.0, "good", None)
    assert d.shown("b") == (2.0, "error", "timed out after 2 s")
    assert d.shown("c") == (3.0, "good", None)
    assert d.value_events(mark) == [("b", 2.0, "error")]
    assert first.stopped, "the given-up thread came back: stopped"
    assert b.alone and not d.file_backend("a").alone and not d.file_backend("c").alone

    # The next tick's batch goes to a fresh poll thread, without b; b goes to its own thread.
    d.clock.advance(1)
    old, fresh = d.threads.made[POLL_THREAD]
    assert old is first and len(fresh.queue) == 1
    fresh.run_next()
    assert d.state("c").seen_at == d.clock.seconds()
    b_thread = d.threads.made["boatwist-file-b"][0]
    assert len(b_thread.queue) == 1, "b polled alone"
    d.clock.advance(2)
    assert d.shown("b") == (2.0, "error", "timed out after 2 s")
    assert [d.shown(n)[1] for n in "ac"] == ["good", "good"]
    assert d.value_events(mark) == [("b", 2.0, "error")], "the same error again is no news"


def test_a_slow_file_is_polled_on_its_own_thread(tmp_path: Path) -> None:
    """
    A file whose reads take longer than SLOW_READ SLOW_TIMES times in a row
    (a driver talking to an I2C sensor) is read correctly, and from then on
    alone, on its own thread, so it holds up no other; the others stay in
    the batch.  One slow read now and then (the thread descheduled on a busy
    machine) is not enough.
    """
    d = Files(tmp_path)
    b, c = d.file_backend("b"), d.file_backend("c")
    slow_ones = {"c"}

    def slowly(backend: FileBackend, name: str) -> None:
        real_read = backend.read_blocking

        def read() -> Value:
            if name in slow_ones:
                d.clock.advance(SLOW_READ * 2)
            return real_read()

        backend.read_blocking = read  # type: ignore[method-assign]

    slowly(b, "b")
    slowly(c, "c")
    for _ in range(SLOW_TIMES - 1):
        d.clock.advance(1)
        assert not c.alone
    slow_ones.add("b")
    d.clock.advance(1)
    assert d.shown("c") == (3.0, "good", None) and c.alone
    assert not b.alone, "one slow read is not a slow file"
    slow_ones.discard("b")
    before = d.threads.runs("boatwist-file-c")
    d.clock.advance(1)
    assert d.threads.runs("boatwist-file-c") == before + 1
    assert d.threads.runs(POLL_THREAD) == SLOW_TIMES + 1
    assert d.shown("c") == (3.0, "good", None)
    assert not d.file_backend("a").alone and not b.alone and b.slow_reads == 0


def test_a_batch_that_never_reached_its_thread_marks_nobody(tmp_path: Path) -> None:
    """
    A batch queued behind work that does not come back (the thread is
    stuck) is answered at its timeout with nothing read -- no control is
    blamed for a thread it never reached -- and the next batch gets a fresh
    thread.
    """
    clock = Clock()
    (tmp_path / "x").write_text("1\n")
    spec = parse_config(f"[control:x]\ntype = sensor\nbackend = file\npath = {tmp_path / 'x'}\n").controls[0]
    backend = FileBackend(spec, SynchronousRunner(), clock, clock.seconds)
    runners: list[ManualRunner] = []

    def make() -> Runner:
        runners.append(ManualRunner())
        return cast(Runner, runners[-1])

    reads = FileReads(make, clock, clock.seconds)
    stuck = reads.read([backend], 2.0)  # its thread never runs it: stuck on something else
    queued = reads.read([backend], 2.0)
    clock.advance(2)
    assert self_result(stuck) == [None] and self_result(queued) == [None]
    assert not backend.alone
    fresh = reads.read([backend], 2.0)
    assert len(runners) == 2
    runners[1].run_next()
    [reading] = self_result(fresh)
    assert reading is not None and (reading.value, reading.error) == (1.0, None)
    runners[0].run_next()
    runners[0].run_next()
    assert runners[0].stopped, "stopped once it came back"
    reads.close()
    assert runners[1].stopped


def reads_counted(d: Rig, control: str) -> float:
    for family in text_string_to_metric_families(d.core.metrics.render().decode("utf-8")):
        for sample in family.samples:
            if sample.name == "boatwist_backend_call_seconds_count" and sample.labels == {
                    "control": control, "call": "read"}:
                return float(sample.value)
    return 0.0


def self_result(d: Deferred[_T]) -> _T:
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "no result yet"
    return cast(_T, got[0])


def test_the_listing_is_kept_while_nothing_changes_and_turns_stale_between_polls(tmp_path: Path) -> None:
    """
    GET /api/controls's listing is made again only when a control changed
    or may have gone stale: asked twice with nothing in between, it is the
    same bytes; the temperature held since its reading at 3 s is shown
    stale at 7.5 s -- past 2 × 1 s + 2 s, between two polls, with nothing
    changed in its state -- as describe() shows it.
    """
    d = Device(tmp_path)
    temp = d.state("temp")
    controls = d.core.controls

    def listing() -> dict[str, Any]:
        return {c["name"]: c for c in json.loads(b"[" + controls.listing_json("alice", d.core.roles) + b"]")}

    d.until(3)
    hold(temp)
    d.valve.hold = True  # the valve's polls wait too: nothing moves but time
    d.until(3.2)
    assert controls.listing_json("alice", d.core.roles) is controls.listing_json("alice", d.core.roles)
    revision = temp.revision
    d.until(7)
    assert listing()["temp"]["quality"] == "good"
    d.clock.advance(0.5)
    assert temp.revision == revision, "nothing changed in the state itself"
    assert d.quality("temp") == "stale"
    assert listing()["temp"] == controls.describe(temp, "alice", d.core.roles)
    assert listing()["temp"]["quality"] == "stale"
