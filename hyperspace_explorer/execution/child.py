"""The forked child that runs user code: attempts of runs, one at a time, under Sacred.

A child (a *runner*) is a fork of the warmed-up worker, so no import is repeated. A
segfault, `os._exit`, an out-of-memory kill or a hang here ends only the child. It
never talks to the database: its Sacred observer (`PipeObserver`) forwards every event
over a pipe to the worker, which writes the record (`records.RecordWriter`), and each
metric point goes to the worker as soon as it is logged (`StreamedMetrics`), so that a
run stopped from outside keeps its points.

A runner executes the next run the worker sends it when the last one left nothing
behind (no process, no thread): forking a worker and the copy-on-write faults of the
fresh process cost 20-50 ms a run on small virtual machines, as much as a short run
itself. What a run leaves in the interpreter (module globals, caches) is seen by the
next runs of the same runner; the worker's `--runs-per-process 1` gives each run a
fresh process.

Each child leads its own process group and adopts the orphans of its descendants, so
that whatever user code starts (a subprocess, DataLoader workers, a shell) is seen when
the run ends, and killed with the runner (see `supervisor.kill_run_group`). Its runs'
Sacred heartbeats come from one thread of its own (`Heartbeats`), not from a thread
per run.
"""
from __future__ import annotations

import copy
import dataclasses
import faulthandler
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..configurable import resolve_class
from ..errors import Pruned
from ..scenario import (
    _CHECKPOINTS,
    _SACRED_RUN,
    _TUNING,
    Scenario,
    normalize_metrics,
    seed_everything,
)
from ..task import Task
from .sacred_settings import (
    Experiment,
    MetricsLogger,
    RunObserver,
    SacredInterrupt,
)


@dataclasses.dataclass
class RunSpec:
    """What a child needs to execute one attempt of a queued run."""

    run_id: str
    task: Task
    config: dict[str, Any]  # complete: every default filled
    seed: int
    sacred_id: int
    attempt: int
    token: str              # the attempt's fencing token, kept in the record's meta
    max_runtime: float | None
    log_path: Path
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. the run's GPUs
    tuning: dict[str, Any] | None = None  # {"study", "trial"}: the Optuna trial it answers
    # The latest checkpoint of an earlier attempt (data, content type), and the metric
    # points it covers ({name: {"steps", "values", "timestamps"}}), to resume from.
    checkpoint: tuple[bytes, str] | None = None
    resume_points: dict[str, dict[str, list[Any]]] | None = None


class PrunedInterrupt(SacredInterrupt):
    """A pruned run, as Sacred sees it: its record ends with status PRUNED."""

    STATUS = "PRUNED"


def _is_pruned(exc: BaseException) -> bool:
    # optuna.TrialPruned by name: the child never imports Optuna for this
    return isinstance(exc, Pruned) or type(exc).__name__ == "TrialPruned"


@dataclasses.dataclass
class NextRun:
    """The run a worker claimed ahead, sent while the current one executes: the child
    prepares it once the current run is over, while the worker decides, and starts it
    only when the worker then says "go" ("withdraw": it was not started)."""

    spec: RunSpec


class Pipe:
    """The child's end of the pipe to its worker. The run's thread and Sacred's
    heartbeat thread both send: one message at a time, or the bytes of two large
    messages could interleave. Only the run's thread reads: answers during a run, the
    next run between runs (a `NextRun` that arrives while a run waits for an answer is
    kept for then)."""

    def __init__(self, conn: multiprocessing.connection.Connection):
        self.conn = conn
        self._lock = threading.Lock()
        self._held: list[NextRun] = []

    def send(self, *event: Any) -> None:
        with self._lock:
            self.conn.send(event)

    def ask(self, *event: Any) -> Any:
        """Send, then wait for the worker's answer."""
        self.send(*event)
        while isinstance(answer := self.conn.recv(), NextRun):
            self._held.append(answer)
        return answer

    def recv(self) -> Any:
        """The worker's next word between runs."""
        return self._held.pop(0) if self._held else self.conn.recv()


class PipeTuning:
    """`Scenario.report` / `should_prune` in the child: events to the worker, which
    talks to the Optuna study (the child never talks to the database)."""

    def __init__(self, pipe: Pipe, metric: str):
        self.pipe, self.metric = pipe, metric

    def report(self, value: float, step: int) -> None:
        self.pipe.send("report", value, step)

    def should_prune(self) -> bool:
        return bool(self.pipe.ask("should_prune"))


class PipeCheckpoints:
    """`Scenario.save_checkpoint` / `load_checkpoint` in a run: the worker stores each
    checkpoint (fenced by the attempt's token); the latest one is kept here too."""

    def __init__(self, pipe: Pipe, latest: tuple[bytes, str] | None):
        self.pipe, self.latest = pipe, latest

    def save(self, data: bytes, content_type: str) -> bool:
        kept = bool(self.pipe.ask("checkpoint", data, content_type))
        if kept:
            self.latest = (data, content_type)
        return kept

    def load(self) -> tuple[bytes, str] | None:
        return self.latest


class StreamedMetrics(MetricsLogger):
    """Sacred's metrics logger (`Run._metrics`: steps, timestamps, NumPy scalars as
    Sacred handles them), except that each point goes to the worker as it is logged
    instead of waiting for Sacred's next heartbeat (every 10 s): points logged before
    a timeout, a cancel or a crash are kept. Heartbeats then find nothing left."""

    def __init__(self, pipe: Pipe):
        super().__init__()
        self.pipe = pipe

    def log_scalar_metric(self, metric_name, value, step=None):
        super().log_scalar_metric(metric_name, value, step)
        for point in super().get_last_metrics():
            self.pipe.send("log_point", point.name, point.step, point.timestamp, point.value)

    def get_last_metrics(self):
        return []  # every point was sent when logged


class PipeObserver(RunObserver):
    """Sacred observer in the child: forwards events to the parent's RecordWriter."""

    priority = 30

    def __init__(self, pipe: Pipe, sacred_id: int):
        self.pipe = pipe
        self.sacred_id = sacred_id

    def _send(self, *event: Any, ack: bool = False) -> None:
        if ack:  # the parent must read the file before user code may delete it
            self.pipe.ask(*event)
        else:
            self.pipe.send(*event)

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        self._send("started_event", ex_info, command, host_info, start_time, config,
                   meta_info, self.sacred_id)
        return self.sacred_id

    def heartbeat_event(self, info, captured_out, beat_time, result):
        self._send("heartbeat_event", _plain(info), captured_out, beat_time, result)

    def completed_event(self, stop_time, result):
        self._send("completed_event", stop_time, result)

    def interrupted_event(self, interrupt_time, status):
        self._send("interrupted_event", interrupt_time, status)

    def failed_event(self, fail_time, fail_trace):
        self._send("failed_event", fail_time, fail_trace)

    def resource_event(self, filename):
        self._send("resource_event", filename, ack=True)

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self._send("artifact_event", name, filename, metadata, content_type, ack=True)


def _plain(value: Any) -> Any:
    """Sacred's read-only containers pickle poorly; send plain copies."""
    try:
        return copy.deepcopy(dict(value)) if isinstance(value, dict) else copy.deepcopy(value)
    except Exception:
        return repr(value)


class Heartbeats:
    """Sacred's heartbeats of the runs of this process, from one thread for all of them.

    Sacred starts a thread per run for its heartbeats (every `beat_interval`, 10 s by
    default) and joins it when the run ends, after that thread sent the last beat (the
    run's captured output and info). The start and the join are two thread switches
    on every run's path; on a small machine whose cores a run's BLAS threads keep busy
    they cost the example Study's runs (40-160 ms each) 2-4 ms a run. Here one
    thread, started with the runner, beats whichever run is current at Sacred's
    interval; the last beat is sent by the run's own thread once any beat in flight
    has ended, as after Sacred's join. A run whose `beat_interval` is not positive gets
    no beats, as in Sacred.
    """

    IDLE_S = 1.0  # the longest a new run's first beat can be late (of 10 s)

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._run: Any = None  # the Sacred Run being beaten
        self._due = 0.0  # time.monotonic() of its next beat
        self.thread = threading.Thread(target=self._beat, name="hse-heartbeat", daemon=True)
        self.thread.start()

    def serve(self, run: Any) -> None:
        """Take over the heartbeats of `run`, a Sacred Run not started yet."""
        run._start_heartbeat = lambda: self._start(run)
        run._stop_heartbeat = lambda: self._stop(run)

    def _start(self, run: Any) -> None:
        # No notify: waking the thread now would cost the run the switches saved. It
        # looks at least every IDLE_S and then sleeps until the beat is due.
        if run.beat_interval > 0:
            with self._cond:
                self._run, self._due = run, time.monotonic() + run.beat_interval

    def _stop(self, run: Any) -> None:
        with self._cond:  # waits for a beat in flight
            if self._run is not run:
                return  # never started: no beats
            self._run = None
        run._emit_heartbeat()

    def _beat(self) -> None:
        with self._cond:
            while True:
                run = self._run
                wait = self.IDLE_S if run is None else self._due - time.monotonic()
                if wait > 0:
                    self._cond.wait(min(wait, self.IDLE_S))
                    continue
                try:
                    run._emit_heartbeat()  # Sacred's observers' failures are caught there
                except Exception:  # noqa: BLE001 - the next beat, or the last one, may pass
                    traceback.print_exc()
                self._due = time.monotonic() + run.beat_interval


def child_main(conn: multiprocessing.connection.Connection,
               experiments: dict[str, Experiment],
               worker_end: multiprocessing.connection.Connection) -> None:
    """Body of the forked child: wait for a RunSpec, run its Sacred experiment, report
    ("idle", reusable) and wait for the next, until the worker closes the pipe or a run
    leaves something behind. Children are forked before their first run is known, so
    they get each spec over the pipe rather than at fork time. A `NextRun` is prepared
    before the worker's word on it arrives: between two short runs, the round trip to
    the worker then hides behind the preparation instead of adding to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to decide
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.setpgid(0, 0)  # our own process group: the run's processes die together
    _die_with_parent()
    _adopt_orphans()
    worker_end.close()  # else closing it in the worker would not reach us as EOF
    pipe = Pipe(conn)
    heartbeats = Heartbeats()
    if not conn.poll():  # a spare, forked before its first run is known
        _warm(experiments)

    def prepare(spec: RunSpec) -> Attempt:
        os.environ.update(spec.env)  # before user code can initialise CUDA
        return Attempt(spec, experiments[spec.task.name], pipe, heartbeats)

    while True:
        try:
            word = pipe.recv()
            if isinstance(word, NextRun):  # prepared while the worker decides
                attempt = prepare(word.spec)
                if pipe.recv() != "go":
                    attempt.discard()
                    continue
            else:
                attempt = prepare(word)
        except (EOFError, OSError):
            os._exit(0)  # the worker let this runner go
        reusable = _run_logged(attempt, heartbeats)
        try:
            pipe.send("idle", reusable)
        except OSError:
            os._exit(0)
        if not reusable:
            os._exit(0)


def _warm(experiments: dict[str, Experiment]) -> None:
    """Create and drop a Sacred run of each task while waiting for the first one: in a
    fresh fork, preparing the first run and starting it took 8 ms (the copy-on-write
    faults of Sacred's code and data) against 2 ms for the next ones, on the path of
    the worker's first run. Like preparing an `Attempt`, this runs no user code and
    leaves nothing behind; a failure here is left to the real run to report."""
    def hse_run(_run):  # the name of a real run's main function: no new command
        return None

    for ex in experiments.values():
        added = _additions(ex)
        try:
            _sacred_run(ex, hse_run, {"seed": 0})
        except Exception:  # noqa: BLE001 - see above
            pass
        finally:
            _take_out(ex, added)


def _sacred_run(ex: Experiment, main: Callable[..., Any], config: dict[str, Any],
                meta_info: dict[str, Any] | None = None) -> Any:
    """`Experiment.run` up to the start: `main` and `config` added to `ex`, the Sacred
    Run created (config checks, seeds), nothing run. What it added stays in `ex` until
    `_take_out`: the Experiment serves every run of its task in this process."""
    ex.main(main)
    ex.add_config(config)
    return ex._create_run(meta_info=meta_info)


def _additions(ex: Experiment) -> tuple[int, int]:
    """Where the runs' additions to `ex` (configs, main functions) will start."""
    return len(ex.configurations), len(ex.captured_functions)


def _take_out(ex: Experiment, added: tuple[int, int]) -> None:
    """Remove from `ex` what was added since `_additions` returned `added`."""
    del ex.configurations[added[0]:]
    del ex.captured_functions[added[1]:]


def _run_logged(attempt: Attempt, heartbeats: Heartbeats) -> bool:
    """One attempt, its output in its log file; whether this process may run another
    (the run left no process and no thread behind)."""
    spec = attempt.spec
    try:
        fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    except OSError:
        pass  # keep the worker's streams
    # Python-level streams onto those fds too (the worker's may be wrapped, e.g. by a
    # notebook or pytest), so prints and C-level output share the run's log.
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    faulthandler.enable(file=sys.stderr)  # a segfault leaves a traceback in the log
    try:
        attempt.start()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    # Between runs nothing writes to the log the worker may now trim.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.close(null)
    return not _left_behind(heartbeats.thread)


def _left_behind(ours: threading.Thread) -> bool:
    """Whether the run left a thread (other than `ours`) or a live process (reaping
    the ended ones)."""
    if any(t is not threading.main_thread() and t is not ours for t in threading.enumerate()):
        return True
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False  # no child at all
        if pid == 0:
            return True  # a child still running


def run_attempt(spec: RunSpec, ex: Experiment, pipe: Pipe | Any,
                heartbeats: Heartbeats | None = None) -> BaseException | None:
    """Run one attempt of `spec` under Sacred in this process, every event going to
    `pipe`; returns what the run raised (already reported as an "error"), else None.
    `RunQueue.run_here` calls it in the notebook's own process (Sacred's heartbeat
    thread then); the worker's child runs its `Attempt`s after isolating itself, with
    its `heartbeats`, so the same code runs a run in both places."""
    return Attempt(spec, ex, pipe, heartbeats).start()


class Attempt:
    """One attempt of a run in this process, prepared before it starts: its Sacred run
    created (config checks, seeds: about a millisecond), which the child does while
    its worker decides whether to start it (`NextRun`). Preparing runs no user code
    and sends nothing: a prepared attempt that is discarded leaves no trace. The
    Scenario is built when the attempt starts, with the run's environment and log."""

    _scenario: Scenario  # built by `start`

    def __init__(self, spec: RunSpec, ex: Experiment, pipe: Pipe | Any,
                 heartbeats: Heartbeats | None = None):
        self.spec, self.ex, self.pipe = spec, ex, pipe
        # The Experiment serves every run of its task in this process: what this run
        # adds to it (its config, its main function) is taken out again by `discard`.
        self._added = _additions(ex)
        self.metrics: dict[str, float] = {}  # every metric the run returned
        self._run: Any = None
        self._failed: BaseException | None = None  # raised while preparing: at start
        try:
            self._prepare(heartbeats)
        except BaseException as exc:  # noqa: BLE001 - reported if it is started
            self._failed = exc

    def _prepare(self, heartbeats: Heartbeats | None) -> None:
        spec, ex, pipe, metric = self.spec, self.ex, self.pipe, self.spec.task.metric
        self._scenario_cls = resolve_class(Scenario, spec.task.scenario_class_name,
                                           "Scenario")
        params = copy.deepcopy(spec.config)

        def hse_run(_run):  # Sacred injects the run object
            _run._metrics = StreamedMetrics(pipe)
            _SACRED_RUN.append(_run)
            seed_everything(spec.seed)
            try:
                result = self._scenario.single_run(params)
            except BaseException as exc:
                if _is_pruned(exc):
                    raise PrunedInterrupt(str(exc) or "pruned") from exc
                raise
            finally:
                _SACRED_RUN.remove(_run)
            self.metrics.update(normalize_metrics(result, metric))
            # Sacred's `result` is the main metric, a number that Omniboard sorts and
            # incense projects; the record keeps them all in its info.
            _run.info["metrics_values"] = dict(self.metrics)
            return self.metrics[metric]

        ex.observers[:] = [PipeObserver(pipe, spec.sacred_id)]
        # Experiment.run, with the run's heartbeats handed over before it starts
        self._run = _sacred_run(ex, hse_run, {**copy.deepcopy(spec.config), "seed": spec.seed},
                                {"hse": {"run_id": spec.run_id, "task": spec.task.name,
                                         "attempt": spec.attempt, "token": spec.token,
                                         "scenario": spec.task.scenario}})
        if heartbeats is not None:
            heartbeats.serve(self._run)

    def start(self) -> BaseException | None:
        """Run it to its end; what it raised (already reported as an "error"), else
        None."""
        spec, pipe = self.spec, self.pipe
        try:
            if self._failed is not None:
                raise self._failed
            self._scenario = self._scenario_cls.from_config(spec.task.scenario, "Scenario")
            self._scenario.run_seed = spec.seed
            _TUNING[:] = [PipeTuning(pipe, spec.task.metric)]
            _CHECKPOINTS[:] = [PipeCheckpoints(pipe, spec.checkpoint)]
            self._run()
            pipe.send("done", self.metrics)
            return None
        except PrunedInterrupt as exc:
            pipe.send("pruned", f"pruned by the tuner's pruner: {exc}")
            return exc
        except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            try:
                pipe.send("error", detail)
            except Exception:
                pass
            return exc
        finally:
            self.discard()

    def discard(self) -> None:
        """Take what the attempt added out of the process's shared state."""
        _TUNING[:] = []
        _CHECKPOINTS[:] = []
        _take_out(self.ex, self._added)


def _adopt_orphans() -> None:
    """Linux: what the run's processes start and abandon becomes our child rather than
    init's (PR_SET_CHILD_SUBREAPER), so `_left_behind` sees it."""
    _prctl(36, 1)


def _die_with_parent() -> None:
    """Linux: a run must not go on computing (and writing to a dead pipe) after its
    worker was killed; the kernel sends it SIGKILL when the worker dies."""
    if _prctl(1, signal.SIGKILL) and os.getppid() == 1:  # PR_SET_PDEATHSIG; the worker
        os._exit(0)  # died before it took effect


def _prctl(option: int, value: int) -> bool:
    """Linux's prctl(2); False where there is none (the setting is then skipped)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value)
        return True
    except (OSError, AttributeError):
        return False
