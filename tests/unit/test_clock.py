"""
boatwist.clock: the reactor schedules by the monotonic clock; Date headers and
logs still read the wall clock.

The contract of L{use_monotonic_time} is tested in-process on a stand-in
reactor holding real L{DelayedCall}s, with C{time.monotonic} replaced by a
value the test sets.  Whether that makes a real reactor immune to a wall-clock
step is tested on a real epoll reactor in a subprocess: the system clock
cannot be stepped without root, so the subprocess steps what the reactor would
read as the wall clock (C{ReactorBase.seconds} and C{time.time}) by an hour
right after scheduling a call, and reports how long the call took to fire by
C{time.monotonic}.  A timer never fires early on the clock it is scheduled
by, so "at least the delay" is exact, and "not an hour" has ample margin.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.base import DelayedCall
from twisted.internet.task import Clock

from boatwist.clock import WallClockView, use_monotonic_time

WALL = 1_700_000_000.0
MONO = 5_000.0


class FakeReactor:
    """What use_monotonic_time needs of a reactor: seconds() and getDelayedCalls()."""

    def __init__(self, now: float) -> None:
        self._now = now
        self.calls: list[DelayedCall] = []

    def seconds(self) -> float:
        return self._now

    def callLater(self, delay: float, f: Any) -> DelayedCall:
        call = DelayedCall(self.seconds() + delay, f, (), {}, self.calls.remove, lambda c: None,
                           seconds=self.seconds)
        self.calls.append(call)
        return call

    def getDelayedCalls(self) -> list[DelayedCall]:
        return list(self.calls)


@pytest.fixture
def monotonic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [MONO]

    def fake() -> float:
        return now[0]

    monkeypatch.setattr(time, "monotonic", fake)
    return now


def test_reactor_seconds_becomes_the_monotonic_clock(monotonic: list[float]) -> None:
    """After use_monotonic_time the reactor's seconds is time.monotonic itself."""
    reactor = FakeReactor(WALL)
    assert use_monotonic_time(reactor) is True
    assert reactor.seconds is time.monotonic
    assert reactor.seconds() == MONO


def test_pending_calls_move_by_one_offset_and_keep_their_order(monotonic: list[float]) -> None:
    """
    Calls already scheduled keep their remaining delay, now counted on the
    monotonic clock, and so their order; each call reads that clock too.
    """
    reactor = FakeReactor(WALL)
    late = reactor.callLater(5, lambda: None)
    soon = reactor.callLater(1, lambda: None)
    middle = reactor.callLater(3, lambda: None)
    use_monotonic_time(reactor)
    assert [c.getTime() for c in (soon, middle, late)] == [MONO + 1, MONO + 3, MONO + 5]
    for call in (soon, middle, late):
        assert call.seconds is time.monotonic
    monotonic[0] += 2
    # reset() measures from the call's own clock, now monotonic.
    soon.reset(10)
    assert soon.getTime() == MONO + 2 + 10


def test_new_calls_are_scheduled_on_the_monotonic_clock(monotonic: list[float]) -> None:
    """A callLater after the switch is scheduled from monotonic time, whatever the wall clock says."""
    reactor = FakeReactor(WALL)
    use_monotonic_time(reactor)
    call = reactor.callLater(2, lambda: None)
    assert call.getTime() == MONO + 2


def test_switching_twice_changes_nothing(monotonic: list[float]) -> None:
    """A second call is a no-op: pending calls are not shifted again."""
    reactor = FakeReactor(WALL)
    call = reactor.callLater(4, lambda: None)
    use_monotonic_time(reactor)
    monotonic[0] += 100
    assert use_monotonic_time(reactor) is True
    assert call.getTime() == MONO + 4


def test_reactor_that_does_not_allow_it_is_left_alone() -> None:
    """A reactor without getDelayedCalls, or whose seconds cannot be replaced, is untouched: False."""

    class NoCalls:
        def seconds(self) -> float:
            return WALL

    class Frozen:
        __slots__ = ()

        def seconds(self) -> float:
            return WALL

        def getDelayedCalls(self) -> list[Any]:
            return []

    bare = NoCalls()
    assert use_monotonic_time(bare) is False
    assert bare.seconds() == WALL
    frozen = Frozen()
    assert use_monotonic_time(frozen) is False
    assert frozen.seconds() == WALL


def test_wall_clock_view_reads_wall_time_but_schedules_on_the_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    The view the web site gets: seconds() is the time of day (for Date and
    the access log), while callLater and everything else are the reactor's.
    """
    monkeypatch.setattr(time, "time", lambda: WALL)
    clock = Clock()
    clock.advance(10)
    view = WallClockView(clock)
    assert view.seconds() == WALL
    fired: list[int] = []
    call = view.callLater(5, fired.append, 1)
    assert call.getTime() == 15  # on the reactor's own clock
    assert view.getDelayedCalls() == [call]
    clock.advance(5)
    assert fired == [1]


# ------------------------------------------------- a real reactor, stepped


SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from twisted.internet import epollreactor
    epollreactor.install()
    from twisted.internet import base, reactor
    from twisted.internet.task import LoopingCall
    from boatwist.clock import use_monotonic_time

    mode, steps = sys.argv[1], [float(s) for s in sys.argv[2:]]
    if mode == "monotonic":
        assert use_monotonic_time(reactor)
    # The wall clock as the reactor would read it, made steppable.
    real_time = time.time
    offset = [0.0]
    def wall():
        return real_time() + offset[0]
    base.ReactorBase.seconds = staticmethod(wall)
    time.time = wall

    DELAY = 0.3
    results = []
    ticks = []
    heartbeat = LoopingCall(lambda: ticks.append(time.monotonic()))
    heartbeat.start(0.05, now=False)

    def scenario(remaining):
        if not remaining:
            reactor.stop()
            return
        step = remaining[0]
        started = time.monotonic()
        ticks_before = len(ticks)
        def fired():
            results.append({"step": step, "elapsed": time.monotonic() - started,
                            "ticks": len(ticks) - ticks_before})
            scenario(remaining[1:])
        reactor.callLater(DELAY, fired)
        offset[0] += step  # the wall clock steps right after the call was scheduled

    reactor.callWhenRunning(scenario, steps)
    reactor.run()
    print(json.dumps(results))
    """
)


def run_stepped(mode: str, *steps: float) -> list[dict[str, float]]:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, *map(str, steps)], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll reactor")
def test_wall_clock_steps_neither_stall_nor_speed_a_monotonic_reactor() -> None:
    """
    On a real epoll reactor switched by use_monotonic_time, a 0.3 s timer
    scheduled just before the wall clock steps an hour forward does not fire
    early, one scheduled before a step an hour back does not wait an hour,
    and a LoopingCall heartbeat keeps ticking through both.
    """
    forward, backward = run_stepped("monotonic", 3600.0, -3600.0)
    assert forward["step"] == 3600.0 and backward["step"] == -3600.0
    for result in (forward, backward):
        assert result["elapsed"] >= 0.3 - 1e-6  # never early
        assert result["elapsed"] < 30  # not an hour (generous: a loaded machine is slow, not 1 h slow)
        assert result["ticks"] >= 1  # the heartbeat did not stall


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="epoll reactor")
def test_the_simulated_step_does_bite_a_wall_clock_reactor() -> None:
    """
    Control for the test above: without use_monotonic_time the same forward
    step fires the 0.3 s timer at once, so the test above can fail.
    """
    [forward] = run_stepped("wall", 3600.0)
    assert forward["elapsed"] < 0.3
