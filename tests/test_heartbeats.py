"""The runner's Sacred heartbeats (`execution.child.Heartbeats`): one thread beats the
current run at Sacred's interval, the last beat comes from the run's own thread once any
beat in flight has ended, and a run without an interval gets none, as in Sacred."""
from __future__ import annotations

import inspect
import sys
import threading

from helpers import wait_for

from hyperspace_explorer.execution.child import Heartbeats

HANG_GUARD_S = 60  # only a broken implementation waits this long


class FakeRun:
    """What Heartbeats uses of a Sacred Run: its interval and its beat."""

    def __init__(self, beat_interval: float):
        self.beat_interval = beat_interval
        self.beats: list[str] = []  # the thread each beat came from
        self.two_beats = threading.Event()
        self.in_beat = threading.Event()
        self.release = threading.Event()
        self.block_first = False

    def _emit_heartbeat(self) -> None:
        self.beats.append(threading.current_thread().name)
        if self.block_first and len(self.beats) == 1:
            self.in_beat.set()
            assert self.release.wait(HANG_GUARD_S)
            self.beats.append("first beat ended")
        if len(self.beats) >= 2:
            self.two_beats.set()


_STOP_LINES, _STOP_FIRST = inspect.getsourcelines(Heartbeats._stop)
#: The line of `Heartbeats._stop` that waits for a beat in flight (its `with` on the lock).
WAIT_LINE = _STOP_FIRST + next(i for i, line in enumerate(_STOP_LINES) if "with self._cond" in line)


def waiting_for_the_beat(thread: threading.Thread) -> bool:
    """Whether `thread` stands at the line of `Heartbeats._stop` that takes the lock."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code is Heartbeats._stop.__code__:
            return frame.f_lineno == WAIT_LINE
        frame = frame.f_back
    return False


def started(beats: Heartbeats, run: FakeRun) -> FakeRun:
    beats.serve(run)
    run._start_heartbeat()
    return run


def test_the_current_run_is_beaten_at_its_interval_then_once_more_by_its_own_thread():
    beats = Heartbeats()
    run = started(beats, FakeRun(beat_interval=0.01))
    assert run.two_beats.wait(HANG_GUARD_S)
    run._stop_heartbeat()
    during = len(run.beats)
    assert set(run.beats[:during - 1]) == {"hse-heartbeat"}
    assert run.beats[-1] == threading.current_thread().name  # the last beat: ours
    # the same thread goes on with the next run, and never beats the ended one again
    following = started(beats, FakeRun(beat_interval=0.01))
    assert following.two_beats.wait(HANG_GUARD_S)
    following._stop_heartbeat()
    assert len(run.beats) == during
    assert beats.thread.is_alive()


def test_a_run_without_an_interval_gets_no_beat_at_all():
    beats = Heartbeats()
    run = started(beats, FakeRun(beat_interval=0))
    run._stop_heartbeat()
    assert run.beats == []


def test_the_last_beat_waits_for_a_beat_in_flight():
    beats = Heartbeats()
    run = FakeRun(beat_interval=0.01)
    run.block_first = True
    started(beats, run)
    assert run.in_beat.wait(HANG_GUARD_S)  # the heartbeat thread is inside a beat
    stopper = threading.Thread(target=run._stop_heartbeat, name="the run's thread")
    stopper.start()
    # until it waits for the lock of the beat in flight, or (wrongly) beat without waiting
    wait_for(lambda: not stopper.is_alive() or waiting_for_the_beat(stopper), HANG_GUARD_S,
             "the run's thread to stop its heartbeats")
    assert stopper.is_alive(), "the last beat must wait for the beat in flight"
    run.release.set()
    stopper.join(HANG_GUARD_S)
    assert run.beats == ["hse-heartbeat", "first beat ended", "the run's thread"]
