"""The supervisor of an attempt: forks the child, applies its Sacred events, keeps the
lease, enforces timeout and cancellation, and says how the attempt ended.

The parent, not user code, renews the run's lease, so a run holding the GIL or
sitting in a C call is never mistaken for a dead one.

Exactly one record per run ends COMPLETED, whatever the faults: the record is fenced
(see `records`), a final event is applied only after the lease was confirmed, and a
worker whose final queue write is refused closes its own record as superseded
(`Worker._finish`). When the attempt ends, every process of its group is killed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Protocol

from .. import logs
from ..errors import StoreUnavailable
from ..status import (
    CANCELLED,
    CANCELLED_RUNNING,
    COMPLETED,
    FAILED,
    PRUNED,
    QUEUED,
    TIMEOUT,
    Reason,
    Status,
)
from ..storage import Storage, now_utc
from ..study import study_root
from ..task import Task
from ..versions import code_version
from .child import NextRun, RunSpec, child_main, run_attempt
from .records import OUTPUT_LIMIT, RecordWriter, output_filter, stored_sources
from .sacred_settings import Experiment, host_facts

log = logging.getLogger("hyperspace_explorer.worker")

_FORK = multiprocessing.get_context("fork")
SUPERSEDED = "superseded: this worker lost its lease and the run went to a newer attempt"
_FINAL_EVENTS = ("completed_event", "failed_event", "interrupted_event")
# The largest run sent ahead to a busy child (`_Runner.offer`): it waits in the pipe's
# buffer until the child's current run is over (8 KiB on macOS, more on Linux), and a
# send into a full buffer would block the worker's supervision of that run.
OFFER_BYTES = 4096


@dataclasses.dataclass
class _Runner:
    """A forked child and what decides whether it may take a run: the tasks whose
    Experiments it inherited, the environment its first run set (CUDA_VISIBLE_DEVICES
    cannot change once CUDA is initialised) and the runs it executed."""

    proc: Any
    conn: Any  # the worker's end of the pipe
    tasks: frozenset[str]
    env: dict[str, str] | None = None
    runs: int = 0
    reusable: bool = False  # it said so after its last run
    sent: str | None = None  # the run it was given before its last one was recorded
    offered: str | None = None  # the run sent ahead (`offer`), neither started nor withdrawn

    def give(self, spec: RunSpec) -> None:
        """Start `spec` in the child: "go" when the child was offered it, else the spec."""
        self.conn.send("go" if self.offered == spec.run_id else spec)
        self.offered = None
        self.env, self.runs = dict(spec.env), self.runs + 1

    def offer(self, spec: RunSpec, limit: int) -> None:
        """Send `spec` ahead while the child executes a run (`child.NextRun`): once
        that run is over the child prepares it, and starts it only when `give` says
        so. Only a small spec that the child `fits`: it waits in the pipe's buffer."""
        if self.fits(spec, limit):
            data = ForkingPickler.dumps(NextRun(spec))
            if len(data) <= OFFER_BYTES:
                with contextlib.suppress(OSError):  # it ended: its supervision sees it
                    self.conn.send_bytes(data)
                    self.offered = spec.run_id

    def withdraw(self) -> None:
        """The child goes on without the run it was offered (and prepared)."""
        if self.offered is not None:
            self.offered = None
            with contextlib.suppress(OSError):  # it ended: it is not reused
                self.conn.send("withdraw")

    def fits(self, spec: RunSpec, limit: int) -> bool:
        return (self.proc.is_alive() and spec.task.name in self.tasks and self.runs < limit
                and (self.env is None or self.env == spec.env))


@dataclasses.dataclass
class Outcome:
    """How an attempt ended, as the worker records it in the queue document."""

    status: Status
    reason: Reason | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    fenced: bool = False  # our lease was taken over: record nothing
    # The Sacred record's final event, left to whoever records the outcome (so that the
    # child starts its next run meanwhile); False when the run is no longer ours.
    close_record: Callable[[], bool] | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": None if self.reason is None else self.reason.value,
                               "error": self.error}
        if self.metrics is not None:
            out["metrics"] = self.metrics
        return out


class Ahead(Protocol):
    """A slot's next run, claimed while the current one executes (`Worker._serve`):
    `claim()`, called once the run was handed to its child, claims and prepares it (and
    the child is offered it: `_Runner.offer`); `start(fits)`, when the run ended and its
    child can take another, gives the spec if the worker goes on with it and the child
    `fits` it (the child is then told at once: it starts it while the worker records
    the run that ended); else the slot starts it as any claimed run. `give_back()`,
    once the run has lasted `hold_s`, returns it to the queue (a run that long no
    longer hides a claim, and another worker may be idle)."""

    hold_s: float

    def claim(self) -> RunSpec | None: ...

    def start(self, fits: Callable[[RunSpec], bool]) -> RunSpec | None: ...

    def give_back(self) -> None: ...


_BUILDING = threading.Lock()  # one Sacred Experiment built at a time (slots share them)
_LOST = Outcome(status=FAILED, fenced=True, error="lease lost to another attempt")


class Executor:
    """Runs attempts in forked children, one attempt at a time; one per worker slot.
    A child runs up to `runs_per_process` attempts in turn (see `child`).

    `experiment_for(task)` builds the Sacred Experiment of a task once (source and
    git discovery is slow), in the Study's namespace so that Sacred records the
    Study's sources and repository, not the worker's; `store_sources(task)` uploads
    those sources ahead of its first run. `interrupt()` says whether the worker wants
    the running attempt stopped ("requeue") and `on_beat()` is called at every lease
    renewal.
    """

    def __init__(self, store: Storage, study_module: Any, log_dir: Path,
                 heartbeat_s: float, lease_s: float, *,
                 interrupt: Callable[[], str | None], on_beat: Callable[[], None],
                 experiments: dict[str, Experiment] | None = None,
                 sources: dict[tuple[str, str], Any] | None = None,
                 runs_per_process: int = 1):
        self.store = store
        self.study_module = study_module
        self.log_dir = log_dir
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.interrupt = interrupt
        self.on_beat = on_beat
        self.runs_per_process = runs_per_process
        # Shared by the executors of a worker's slots (building one is slow), as are
        # the file ids of the sources uploaded ({(path, md5): file id}).
        self._experiments: dict[str, Experiment] = {} if experiments is None else experiments
        self._source_cache: dict[tuple[str, str], Any] = {} if sources is None else sources
        self._host_facts = host_facts()
        self._spare: _Runner | None = None  # idle, waiting for its next run
        self._trials: Any = None  # tuning.link.TrialLinks, once a tuned run reports

    def experiment_for(self, task: Task) -> Experiment:
        with _BUILDING:
            return self._experiment_for(task)

    def _experiment_for(self, task: Task) -> Experiment:
        ex = self._experiments.get(task.name)
        if ex is None:
            module_dir = os.path.dirname(os.path.abspath(self.study_module.__file__))
            namespace = {"_Experiment": Experiment, "_name": task.name, "_base": module_dir}
            try:
                ex = eval("_Experiment(_name, base_dir=_base)", self.study_module.__dict__,
                          namespace)
            except Exception as exc:  # e.g. a git repository without commits yet
                log.warning("no git info for the Study's sources (%s); runs record none", exc)
                ex = eval("_Experiment(_name, base_dir=_base, save_git_info=False)",
                          self.study_module.__dict__, namespace)
            ex.captured_out_filter = output_filter
            ex.logger = _quiet_logger()
            # What every run asks Sacred for, read once here: children forked from
            # this process inherit it (the versions of installed packages, from
            # their metadata, cost ~80 ms a run when read in each child; listing the
            # sources and dependencies again, 0.4 ms a run). It cannot change while
            # this process lives: a worker restarts when the Study's sources change.
            try:
                info = ex.get_experiment_info()
            except Exception as exc:  # the run reports it, as it would without this
                log.warning("reading the Study's experiment info failed: %s", exc)
            else:
                ex.get_experiment_info = lambda: dict(info)  # Sacred replaces keys of it
            self._experiments[task.name] = ex
        return ex

    def store_sources(self, task: Task) -> None:
        """Upload the sources of `task`'s Experiment, if not stored yet, before its first
        run: otherwise the first record's write does it (about ten round trips for
        GridFS's files, chunks and indexes), beside the first runs, which it slowed by
        a few percent on 2 cores. One try (StoreUnavailable): the first record's write
        uploads what is missing then."""
        stored_sources(self.store, self._source_cache,
                       self.experiment_for(task).get_experiment_info(), patience_s=0)

    def code_version(self, task: Task) -> dict[str, Any]:
        """The Study's code version now (see `versions.code_version`; computed again
        only when the sources or the git state changed), its diff stored once."""
        return code_version(study_root(self.study_module), self.store.store_blob)

    def execute(self, spec: RunSpec, ahead: Ahead | None = None) -> Outcome:
        """Run one attempt to its end; never raises for anything the user code did.
        `ahead`: the slot's next run is claimed while this one executes (see `Ahead`)."""
        self.experiment_for(spec.task)
        runner = self._take_runner(spec)
        sent, runner.sent, runner.reusable = runner.sent == spec.run_id, None, False
        try:
            if not sent:
                runner.give(spec)
            return self._supervise(runner, spec, ahead)
        finally:
            if runner.reusable and runner.proc.is_alive():
                self._spare = runner
            else:
                _discard(runner)
            logs.trim(spec.log_path, OUTPUT_LIMIT)

    def execute_here(self, spec: RunSpec) -> tuple[Outcome, BaseException | None]:
        """Run one attempt in this very process (`RunQueue.run_here`, for debugging in
        a notebook): the same Sacred run, events and fenced record as in a child, the
        lease renewed by a thread. Returns the outcome and what the run raised, which
        the caller raises again once the run is recorded."""
        ex = self.experiment_for(spec.task)
        pipe = _LocalPipe(self, RecordWriter(self.store, self._source_cache,
                                             self._host_facts, spec.log_path), spec)
        pipe.writer.carry_over(spec.resume_points or {})
        stop, lost = threading.Event(), threading.Event()

        def keep_lease() -> None:
            while not stop.wait(self.heartbeat_s):
                try:
                    if self._renew(spec) is None:
                        lost.set()
                        return
                except StoreUnavailable:
                    continue  # the final write decides
                with pipe.lock:
                    pipe.writer.push_metrics()

        renewer = threading.Thread(target=keep_lease, name="hse-lease", daemon=True)
        renewer.start()
        try:
            raised = run_attempt(spec, ex, pipe)
        finally:
            stop.set()
            renewer.join()
        if lost.is_set() or pipe.writer.superseded or (pipe.outcome is not None
                                                       and pipe.outcome.fenced):
            if not pipe.writer.superseded:
                pipe.writer.close("FAILED", SUPERSEDED, now_utc())
            return _LOST, raised
        return pipe.outcome or Outcome(status=FAILED, reason=Reason.ERROR,
                                       error="the run ended without a result"), raised

    def _fork(self) -> _Runner:
        parent_conn, child_conn = _FORK.Pipe()
        proc = _FORK.Process(target=child_main,
                             args=(child_conn, dict(self._experiments), parent_conn),
                             name="hse-run", daemon=True)
        proc.start()
        child_conn.close()
        return _Runner(proc, parent_conn, frozenset(self._experiments))

    def _take_runner(self, spec: RunSpec) -> _Runner:
        """The child that already has `spec`, or the idle one if it can run it, else a
        fresh one."""
        spare, self._spare = self._spare, None
        if spare is not None and (spare.sent == spec.run_id or (
                spare.sent is None and spare.fits(spec, self.runs_per_process))):
            return spare
        if spare is not None:
            _discard(spare)
        return self._fork()

    def release_spare(self) -> None:
        """Let the idle child go."""
        spare, self._spare = self._spare, None
        if spare is not None:
            _discard(spare)

    def fresh_spare(self) -> None:
        """Keep a child that never ran anything ready for the next run (an idle worker):
        a child that ran runs goes, with what they left in its memory (datasets, a CUDA
        context); a fresh one shares the worker's memory until it runs one, and spares
        the next run the fork."""
        if self._spare is not None and (self._spare.runs > 0 or not self._spare.proc.is_alive()):
            self.release_spare()
        if self._spare is None:
            self._spare = self._fork()

    def _supervise(self, runner: _Runner, spec: RunSpec, ahead: Ahead | None) -> Outcome:
        """Serve the attempt's events and keep its lease until the child says the run
        is over ("idle") or ends; `runner.reusable` then says whether it may run more."""
        proc, conn = runner.proc, runner.conn
        writer = RecordWriter(self.store, self._source_cache, self._host_facts,
                              spec.log_path)
        writer.carry_over(spec.resume_points or {})
        started = time.monotonic()
        next_beat = started + self.heartbeat_s
        deadline = started + spec.max_runtime if spec.max_runtime else None
        outcome: Outcome | None = None
        stop: tuple[Status, Reason | None, str] | None = None  # what we imposed
        conn_open = True
        final: tuple | None = None  # the record's final event, not yet applied
        following = ahead.claim() if ahead is not None else None  # while the child starts
        if following is not None:
            runner.offer(following, self.runs_per_process)
        hold_until = None if ahead is None else started + ahead.hold_s
        while True:
            now = time.monotonic()
            due = min([next_beat] + [t for t in (deadline, hold_until) if t is not None])
            if conn_open and conn.poll():  # events queued (metric points): no selector
                ready = [conn]
            else:
                ready = multiprocessing.connection.wait(
                    ([conn] if conn_open else []) + [proc.sentinel],
                    timeout=max(0.0, due - now))
            if conn in ready:
                try:
                    event = conn.recv()
                except (EOFError, OSError):
                    conn_open = False
                else:
                    if event[0] == "idle":  # the attempt's last event
                        runner.reusable = bool(event[1]) and stop is None and (
                            outcome is not None)
                        if event[1] and not runner.reusable:
                            _terminate(proc)  # else it would wait for another run
                        if runner.reusable and following is not None and ahead is not None:
                            following = ahead.start(
                                lambda spec: runner.fits(spec, self.runs_per_process))
                            if following is not None:
                                runner.give(following)
                                runner.sent = following.run_id
                        if runner.reusable:  # an offer not taken up (given back, stopping)
                            runner.withdraw()
                        break
                    if event[0] in _FINAL_EVENTS and final is None:
                        final = event  # applied once the run is over (below)
                        continue
                    outcome = self._handle(event, writer, conn.send, spec) or outcome
                    if writer.superseded or (outcome is not None and outcome.fenced):
                        _terminate(proc)
                        return _LOST
                    if time.monotonic() < due:
                        continue  # drain events before looking at the process, unless a
                        # beat, the deadline or the hold is due: a run streaming metric
                        # points without pause must not starve the lease, cancel and timeout
            if proc.sentinel in ready and not (conn_open and conn.poll()):
                break
            now = time.monotonic()
            if self.interrupt() == "requeue" and stop is None:
                stop = (QUEUED, None, "interrupted by worker shutdown; requeued")
                _terminate(proc)
            if deadline is not None and now >= deadline and stop is None:
                stop = (TIMEOUT, Reason.TIMEOUT,
                        f"ran longer than max_runtime={spec.max_runtime:g}s and was stopped")
                _terminate(proc)
            if hold_until is not None and now >= hold_until and ahead is not None:
                ahead.give_back()
                ahead = following = hold_until = None
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.on_beat()
                try:
                    doc = self._renew(spec)
                except StoreUnavailable as exc:  # maybe still ours: the final write decides
                    log.warning("run %s: cannot renew its lease (%s); the run goes on",
                                spec.run_id, exc)
                    continue
                if doc is None:
                    _terminate(proc)
                    writer.close("FAILED", SUPERSEDED, now_utc())
                    return _LOST
                if doc.get("cancel_requested") and stop is None:
                    stop = (CANCELLED, Reason.CANCELLED, CANCELLED_RUNNING)
                    _terminate(proc)
                writer.push_metrics()  # points logged since the last write, at least once a beat
        if not runner.reusable:
            proc.join()
        if final is not None:
            if runner.reusable and stop is None and outcome is not None:
                outcome = dataclasses.replace(outcome, close_record=lambda: self._close_record(
                    final, writer, spec))
            elif not self._close_record(final, writer, spec):
                return _LOST
        if stop is not None:
            status, reason, message = stop
            writer.close("TIMEOUT" if status == TIMEOUT else "INTERRUPTED", message, now_utc())
            return _LOST if writer.superseded else Outcome(status=status, reason=reason,
                                                           error=message)
        if outcome is not None:
            return outcome
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = f"killed by signal {name}" + (
                " (out of memory?)" if -code == signal.SIGKILL else "")
        else:
            why = f"the run's process exited with code {code} before finishing"
        last = logs.tail(spec.log_path)
        why += f"\n--- last output ---\n{last}" if last else ""
        writer.close("FAILED", why, now_utc())
        return _LOST if writer.superseded else Outcome(status=FAILED, reason=Reason.KILLED,
                                                       error=why)

    def _handle(self, event: tuple, writer: RecordWriter, reply: Callable[[Any], None],
                spec: RunSpec) -> Outcome | None:
        """One event of the run: written to its record, or answered with `reply`."""
        kind, *args = event
        if kind == "done":
            return Outcome(status=COMPLETED, metrics=args[0])
        if kind == "error":
            return Outcome(status=FAILED, reason=Reason.ERROR, error=args[0])
        if kind == "pruned":
            return Outcome(status=PRUNED, reason=Reason.PRUNED, error=args[0])
        if kind == "checkpoint":  # Scenario.save_checkpoint: kept only while ours
            data, content_type = args
            writer.push_metrics()  # the points it covers are stored before it is
            meta = {"content_type": content_type, "sacred_id": spec.sacred_id,
                    "attempt": spec.attempt, "points": writer.point_counts()}
            reply(bool(self.store.retry(lambda: self.store.save_checkpoint(
                spec.run_id, spec.token, data, meta))))
            return None
        if kind in ("report", "should_prune"):
            # Scenario.report / should_prune: the run's Optuna trial, if it has one
            # (Optuna is imported only then); a plain run logs and never prunes.
            if spec.tuning is None:
                answer = False
            else:
                if self._trials is None:
                    from ..tuning.link import TrialLinks

                    self._trials = TrialLinks(self.store)
                answer = self._trials.handle(spec.tuning, kind, *args)
            if kind == "should_prune":
                reply(bool(answer))
            return None
        if kind in _FINAL_EVENTS:
            # A final state only while the run is ours: wait for the store to say so
            # (writing the record needs it anyway), however long it is away.
            owned = self.store.retry(lambda: self.store.owns(spec.run_id, spec.token))
            if not owned:
                writer.close("FAILED", SUPERSEDED, now_utc())
                return _LOST
        getattr(writer, kind)(*args)
        if kind in ("artifact_event", "resource_event"):
            reply("ok")
        return None

    def _close_record(self, event: tuple, writer: RecordWriter, spec: RunSpec) -> bool:
        """Apply the record's final event; False (the record closed as superseded) when
        a newer attempt owns the run."""
        outcome = self._handle(event, writer, lambda _: None, spec)
        return outcome is None or not outcome.fenced

    def _renew(self, spec: RunSpec) -> dict[str, Any] | None:
        """Our lease renewed (the queue document's cancel flag and attempt), or None
        when a newer attempt owns the run; StoreUnavailable after a lease of trying."""
        return self.store.retry(lambda: self.store.renew_lease(
            spec.run_id, spec.token, self.lease_s), patience_s=self.lease_s)


class _LocalPipe:
    """The child's pipe when the run executes in the caller's process: each event is
    handled at once, as the worker handles what its child sends (one at a time: the
    run's thread, Sacred's heartbeat thread and the lease thread all write)."""

    def __init__(self, executor: Executor, writer: RecordWriter, spec: RunSpec):
        self.executor, self.writer, self.spec = executor, writer, spec
        self.lock = threading.RLock()
        self.outcome: Outcome | None = None
        self._answer: Any = None

    def send(self, *event: Any) -> None:
        with self.lock:
            outcome = self.executor._handle(event, self.writer, self.answer, self.spec)
        if outcome is not None:
            self.outcome = outcome

    def ask(self, *event: Any) -> Any:
        self.send(*event)
        return self._answer

    def answer(self, value: Any) -> None:
        self._answer = value


def kill_run_group(pgid: int) -> None:
    """Kill every process left in a finished attempt's process group (what user code
    started: subprocesses, data-loader workers, shells). Processes that made
    themselves a new session escape it."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _discard(runner: _Runner) -> None:
    """End a child and whatever is left in its process group."""
    proc = runner.proc
    runner.conn.close()  # an idle child reads EOF and exits
    if runner.reusable and runner.sent is None:
        proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()
    kill_run_group(proc.pid)


def _terminate(proc: Any, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL if the run does not stop within `grace_s`."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("hyperspace_explorer.sacred")
    logger.setLevel(logging.WARNING)
    return logger
