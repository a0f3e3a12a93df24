"""Execution of one run: user code in a forked child, its Sacred record written by the parent.

Why this split:

- The child (a fork of the warmed-up worker, so no imports are repeated) runs
  `Scenario.single_run` under Sacred. A segfault, `os._exit`, an out-of-memory kill or
  a hang there ends only the child; the worker reports it and goes on.
- The child never talks to MongoDB. Its Sacred observer (`PipeObserver`) forwards every
  event over a pipe, and the parent applies them with Sacred's own `MongoObserver`
  (`RecordWriter`), retrying through database outages. Records are written with
  idempotent upserts, so a retried write never stores anything twice.
- The parent, not user code, renews the run's lease, so a run holding the GIL or
  sitting in a C call is never mistaken for a dead one; it also enforces the
  timeout and cancellation by killing the child.
"""
from __future__ import annotations

import copy
import dataclasses
import faulthandler
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gridfs
import pymongo.errors

from .sacred_compat import import_sacred

import_sacred()  # before any `from sacred import`: works without pkg_resources too
from sacred import Experiment, SETTINGS  # noqa: E402
from sacred.host_info import get_host_info  # noqa: E402
from sacred.observers import MongoObserver, RunObserver  # noqa: E402
from sacred.utils import apply_backspaces_and_linefeeds  # noqa: E402

from .configurable import resolve_class
from .scenario import Scenario, _SACRED_RUN, normalize_metrics, seed_everything
from .store import (CANCELLED, COMPLETED, FAILED, QUEUED, REASON_CANCELLED, REASON_ERROR,
                    REASON_KILLED, REASON_TIMEOUT, TIMEOUT, Store, now_utc)
from .task import Task

log = logging.getLogger("hyperspace_explorer.worker")

TOO_LARGE = ("the run's result or info is too large for a MongoDB document (16 MB): return "
             "a few summary metrics and store large outputs with add_artifact()")
OUTPUT_LIMIT = 1 << 20  # characters of captured output kept per run (its tail)
_CUT_NOTE = "[hyperspace_explorer: output longer than {} characters; only its tail is kept]\n"
_FORK = multiprocessing.get_context("fork")
_SUPERSEDED = "superseded: this worker lost its lease and the run went to a newer attempt"
_FINAL_EVENTS = ("completed_event", "failed_event", "interrupted_event")

SETTINGS.CAPTURE_MODE = "sys"  # "fd" spawns a `tee` process per run; the child's fds
# go to a per-run log file anyway (see _child_main), which keeps C-level output too.


def cut_output(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the tail of a run's output so its record stays far below 16 MB."""
    if len(text) <= limit:
        return text
    note = _CUT_NOTE.format(limit)
    return note + text[len(text) - limit + len(note):]


def _output_filter(text: str) -> str:
    return apply_backspaces_and_linefeeds(cut_output(text))


@dataclasses.dataclass
class RunSpec:
    """What a child needs to execute one attempt of a queued run."""

    run_id: str
    task: Task
    config: dict[str, Any]  # complete: every default filled
    seed: int
    sacred_id: int
    attempt: int
    max_runtime: float | None
    log_path: Path


@dataclasses.dataclass
class Outcome:
    """How an attempt ended, as the worker records it in the queue document."""

    status: str
    reason: str | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    fenced: bool = False  # our lease was taken over: record nothing

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "error": self.error}
        if self.metrics is not None:
            out["metrics"] = self.metrics
        return out


# ---------------------------------------------------------------------------- child side
class PipeObserver(RunObserver):
    """Sacred observer in the child: forwards events to the parent's RecordWriter."""

    priority = 30

    def __init__(self, conn: multiprocessing.connection.Connection, sacred_id: int):
        self.conn = conn
        self.sacred_id = sacred_id

    def _send(self, *event: Any, ack: bool = False) -> None:
        self.conn.send(event)
        if ack:  # the parent must read the file before user code may delete it
            self.conn.recv()

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

    def log_metrics(self, metrics_by_name, info):
        self._send("log_metrics", metrics_by_name, _plain(info))


def _plain(value: Any) -> Any:
    """Sacred's read-only containers pickle poorly; send plain copies."""
    try:
        return copy.deepcopy(dict(value)) if isinstance(value, dict) else copy.deepcopy(value)
    except Exception:
        return repr(value)


def _child_main(conn: multiprocessing.connection.Connection,
                experiments: dict[str, Experiment],
                worker_end: multiprocessing.connection.Connection) -> None:
    """Body of the forked child: wait for a RunSpec, run its Sacred experiment,
    report, exit. Children are forked ahead of need (see Executor), so they get
    the spec over the pipe rather than at fork time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the worker to decide
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    worker_end.close()  # else closing it in the worker would not reach us as EOF
    try:
        spec: RunSpec = conn.recv()
    except (EOFError, OSError):
        os._exit(0)  # the worker discarded this spare child
    ex = experiments[spec.task.name]
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
        scenario_cls = resolve_class(Scenario, spec.task.scenario_class_name, "Scenario")
        scenario = scenario_cls.from_config(spec.task.scenario, "Scenario")
        params = copy.deepcopy(spec.config)
        metric = spec.task.metric

        scenario.run_seed = spec.seed

        @ex.main
        def hse_run(_run):  # Sacred injects the run object
            _SACRED_RUN.append(_run)
            seed_everything(spec.seed)
            return normalize_metrics(scenario.single_run(params), metric)

        ex.observers[:] = [PipeObserver(conn, spec.sacred_id)]
        ex.add_config({**copy.deepcopy(spec.config), "seed": spec.seed})
        run = ex.run(meta_info={"hse": {"run_id": spec.run_id, "task": spec.task.name,
                                        "attempt": spec.attempt,
                                        "scenario": spec.task.scenario}})
        conn.send(("done", dict(run.result)))
    except BaseException as exc:  # noqa: BLE001 - everything must reach the parent
        detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            conn.send(("error", detail))
        except Exception:
            pass
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _die_with_parent() -> None:
    """Linux: a run must not go on computing (and writing to a dead pipe) after its
    worker was killed; the kernel sends it SIGKILL when the worker dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the worker died before prctl took effect
            os._exit(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------- parent side
class RecordWriter(MongoObserver):
    """Sacred's MongoObserver, made safe for a worker that must never lose a record:
    every write is an idempotent upsert retried through outages, output is capped,
    and source files are uploaded to GridFS once, not on every run."""

    HEARTBEAT_WRITE_S = 2.0  # a heartbeat right before completion is not worth a write

    def __init__(self, store: Store, source_cache: dict[tuple[str, str], Any],
                 host_facts: dict[str, Any]):
        self.store = store
        self._source_cache = source_cache
        self._host_facts = host_facts
        self._last_write = 0.0
        self._metric_notes: list[dict[str, str]] = []
        self.initialize(store.runs, gridfs.GridFS(store.db), metrics_collection=store.metrics)

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        return super().started_event(ex_info, command, {**host_info, **self._host_facts},
                                     start_time, config, meta_info, _id)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        if time.monotonic() - self._last_write >= self.HEARTBEAT_WRITE_S:
            super().heartbeat_event(info, captured_out, beat_time, result)
        else:  # keep it for the final write
            self.run_entry.update(info=info, captured_out=captured_out, heartbeat=beat_time,
                                  result=result)

    def save_sources(self, ex_info):
        base_dir = ex_info["base_dir"]
        saved = []
        for name, md5 in ex_info["sources"]:
            path = os.path.join(base_dir, name)
            key = (path, md5)
            file_id = self._source_cache.get(key) or self.store.retry(
                lambda: self.store.known_source(path, md5))
            if file_id is None:
                def upload():
                    with open(path, "rb") as f:
                        return self.fs.put(f, filename=path)
                file_id = self.store.retry(upload)
                self.store.retry(lambda: self.store.remember_source(path, md5, file_id))
            self._source_cache[key] = file_id
            saved.append([name, file_id])
        return saved

    def _upsert(self) -> None:
        entry = self.run_entry
        if self._metric_notes:
            entry["info"] = {**(entry.get("info") or {}), "metrics": self._metric_notes}
        if "captured_out" in entry and entry["captured_out"]:
            entry["captured_out"] = cut_output(entry["captured_out"])
        try:
            self.store.retry(lambda: self.runs.replace_one({"_id": entry["_id"]}, entry,
                                                           upsert=True))
        except pymongo.errors.DocumentTooLarge:
            # Keep the record (and the run's status) rather than lose it: drop what
            # made it too large and say so.
            entry.update(result=None, info={}, status="FAILED",
                         captured_out=cut_output(entry.get("captured_out") or "", 100_000),
                         fail_trace=[TOO_LARGE])
            self.store.retry(lambda: self.runs.replace_one({"_id": entry["_id"]}, entry,
                                                           upsert=True))
        self._last_write = time.monotonic()

    def insert(self):
        self._upsert()
        return self.run_entry["_id"]

    def save(self):
        self._upsert()

    def final_save(self, attempts):
        self._upsert()

    def log_metrics(self, metrics_by_name, info):
        # Sacred notes each new series in info["metrics"] (Omniboard finds series
        # through it); the child's info is a copy, so keep the notes here.
        notes = {"metrics": self._metric_notes}
        self.store.retry(lambda: MongoObserver.log_metrics(self, metrics_by_name, notes))

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        self.store.retry(lambda: MongoObserver.artifact_event(
            self, name, filename, metadata, content_type or "application/octet-stream"))


class Executor:
    """Runs attempts in forked children; one per worker process.

    `experiment_for(task)` builds the Sacred Experiment of a task once (source and
    git discovery is slow), in the Study's namespace so that Sacred records the
    Study's sources and repository, not the worker's.
    """

    def __init__(self, store: Store, study_module: Any, log_dir: Path,
                 heartbeat_s: float, lease_s: float):
        self.store = store
        self.study_module = study_module
        self.log_dir = log_dir
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self._experiments: dict[str, Experiment] = {}
        self._source_cache: dict[tuple[str, str], Any] = {}
        self._code_versions: dict[str, dict[str, Any] | None] = {}
        self._host_facts = _slow_host_facts()
        self._spare: tuple[Any, Any, frozenset[str]] | None = None
        self.interrupt: Callable[[], str | None] = lambda: None  # the worker sets these
        self.on_beat: Callable[[], None] = lambda: None

    def experiment_for(self, task: Task) -> Experiment:
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
            ex.captured_out_filter = _output_filter
            ex.logger = _quiet_logger()
            self._experiments[task.name] = ex
        return ex

    def code_version(self, task: Task) -> dict[str, Any] | None:
        """Commit and dirty flag of the Study's repository (None outside git)."""
        if task.name not in self._code_versions:
            info = self.experiment_for(task).get_experiment_info()
            repos = info.get("repositories") or []
            self._code_versions[task.name] = {
                "commit": repos[0].get("commit"), "dirty": bool(repos[0].get("dirty")),
                "url": repos[0].get("url")} if repos else None
        return self._code_versions[task.name]

    def execute(self, spec: RunSpec, token: str) -> Outcome:
        """Run one attempt to its end; never raises for anything the user code did."""
        self.experiment_for(spec.task)
        proc, parent_conn = self._take_child(spec.task.name)
        parent_conn.send(spec)
        # Fork the next run's child now, while this one runs: forking a warmed-up
        # worker costs milliseconds that would otherwise sit between two runs.
        self._spare = self._fork()
        try:
            return self._supervise(proc, parent_conn, spec, token)
        finally:
            parent_conn.close()
            if proc.is_alive():
                proc.kill()
            proc.join()

    def _fork(self) -> tuple[Any, Any, frozenset[str]]:
        parent_conn, child_conn = _FORK.Pipe()
        proc = _FORK.Process(target=_child_main,
                             args=(child_conn, dict(self._experiments), parent_conn),
                             name="hse-run", daemon=True)
        proc.start()
        child_conn.close()
        return proc, parent_conn, frozenset(self._experiments)

    def _take_child(self, task_name: str) -> tuple[Any, Any]:
        spare, self._spare = self._spare, None
        if spare is not None and task_name in spare[2] and spare[0].is_alive():
            return spare[0], spare[1]
        if spare is not None:
            _discard(spare)
        proc, conn, _ = self._fork()
        return proc, conn

    def release_spare(self) -> None:
        """Let the forked-ahead child go (an idle worker should stay small)."""
        spare, self._spare = self._spare, None
        if spare is not None:
            _discard(spare)

    def _supervise(self, proc, conn, spec: RunSpec, token: str) -> Outcome:
        writer = RecordWriter(self.store, self._source_cache, self._host_facts)
        started = time.monotonic()
        next_beat = started + self.heartbeat_s
        deadline = started + spec.max_runtime if spec.max_runtime else None
        outcome: Outcome | None = None
        stop: tuple[str, str, str] | None = None  # (status, reason, message) we imposed
        conn_open = True
        while True:
            now = time.monotonic()
            waits = [next_beat - now] + ([deadline - now] if deadline else [])
            ready = multiprocessing.connection.wait(
                ([conn] if conn_open else []) + [proc.sentinel], timeout=max(0.0, min(waits)))
            if conn in ready:
                try:
                    event = conn.recv()
                except (EOFError, OSError):
                    conn_open = False
                else:
                    outcome = self._handle(event, writer, conn, spec, token) or outcome
                    if outcome is not None and outcome.fenced:
                        _terminate(proc)
                        return outcome
                    continue  # drain events before looking at the process
            if proc.sentinel in ready and not (conn_open and conn.poll()):
                break
            now = time.monotonic()
            request = self.interrupt()
            if request is not None and stop is None:
                stop = (QUEUED, None, "interrupted by worker shutdown; requeued") \
                    if request == "requeue" else stop
                _terminate(proc)
            if deadline is not None and now >= deadline and stop is None:
                stop = (TIMEOUT, REASON_TIMEOUT,
                        f"ran longer than max_runtime={spec.max_runtime:g}s and was stopped")
                _terminate(proc)
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.on_beat()
                doc = self._renew(spec, token)
                if doc is None:
                    _terminate(proc)
                    self._close_record(writer, "FAILED", _SUPERSEDED)
                    return Outcome(status=FAILED, fenced=True,
                                   error="lease lost to another attempt")
                if doc.get("cancel_requested") and stop is None:
                    stop = (CANCELLED, REASON_CANCELLED, "cancelled while running")
                    _terminate(proc)
        proc.join()
        if stop is not None:
            status, reason, message = stop
            self._close_record(writer, "TIMEOUT" if status == TIMEOUT else "INTERRUPTED",
                               message)
            return Outcome(status=status, reason=reason, error=message)
        if outcome is not None:
            return outcome
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            why = f"killed by signal {name}" + (
                " (out of memory?)" if -code == signal.SIGKILL else "")
        else:
            why = f"the run's process exited with code {code} before finishing"
        why += _log_tail(spec.log_path)
        self._close_record(writer, "FAILED", why)
        return Outcome(status=FAILED, reason=REASON_KILLED, error=why)

    def _handle(self, event: tuple, writer: RecordWriter, conn, spec: RunSpec,
                token: str) -> Outcome | None:
        kind, *args = event
        if kind == "done":
            return Outcome(status=COMPLETED, metrics=args[0])
        if kind == "error":
            return Outcome(status=FAILED, reason=REASON_ERROR, error=args[0])
        if kind in _FINAL_EVENTS and self._renew(spec, token) is None:
            # Fencing: a newer attempt owns the run (we were paused past our lease).
            # Our Sacred record must not claim a result: close it as superseded.
            self._close_record(writer, "FAILED", _SUPERSEDED)
            return Outcome(status=FAILED, fenced=True, error="lease lost to another attempt")
        try:
            getattr(writer, kind)(*args)
        except Exception as exc:  # a record we cannot write must not kill the worker
            log.error("run %s: storing Sacred event %s failed: %s", spec.run_id, kind, exc)
        if kind in ("artifact_event", "resource_event"):
            conn.send("ok")
        return None

    def _renew(self, spec: RunSpec, token: str) -> dict[str, Any] | None:
        try:
            return self.store.retry(lambda: self.store.renew_lease(
                spec.run_id, token, self.lease_s), patience_s=self.lease_s)
        except Exception as exc:
            log.warning("run %s: cannot renew lease (%s); the run goes on", spec.run_id, exc)
            return {}

    def _close_record(self, writer: RecordWriter, sacred_status: str, message: str) -> None:
        if writer.run_entry is None:
            return
        if writer.run_entry.get("status") not in ("RUNNING", None):
            return
        writer.run_entry["stop_time"] = now_utc()
        writer.run_entry["status"] = sacred_status
        writer.run_entry["fail_trace"] = [message]
        writer.final_save(attempts=1)


def _discard(spare: tuple[Any, Any, frozenset[str]]) -> None:
    proc, conn, _ = spare
    conn.close()  # the child reads EOF and exits
    proc.join(1.0)
    if proc.is_alive():
        proc.kill()
        proc.join()


def _terminate(proc, grace_s: float = 2.0) -> None:
    """SIGTERM, then SIGKILL if the run does not stop within `grace_s`."""
    if proc.is_alive():
        proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        proc.kill()


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            tail = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"\n--- last output ---\n{tail}" if tail else ""


def _slow_host_facts() -> dict[str, Any]:
    """Host facts Sacred would gather in every run by spawning `cat /proc/cpuinfo` and
    `nvidia-smi`: gathered once per worker here and added to each record by the
    parent, while the children skip them."""
    info = get_host_info()
    SETTINGS.HOST_INFO.INCLUDE_CPU_INFO = False
    SETTINGS.HOST_INFO.INCLUDE_GPU_INFO = False
    return {key: info[key] for key in ("cpu", "gpus") if key in info}


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("hyperspace_explorer.sacred")
    logger.setLevel(logging.WARNING)
    return logger
