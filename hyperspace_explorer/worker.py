"""The worker daemon: claim runs of one Study, execute them, record the outcome.

Started from a Study directory (the one holding `scenarios.py`)::

    hyperspace_worker TASKS_DIR DB_NAME [--mongo-uri URI] [--interval S]

Any number of workers on any number of machines can share a database: claims are
atomic, each attempt holds a lease its worker renews, and runs whose worker died are
requeued by whichever worker (or `hse recover`) notices the expired lease first.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import bson

from .configurable import resolve_class
from .errors import HSEError, StoreUnavailable
from .scenario import Scenario
from .status import FAILED, QUEUED, Reason, Status
from .storage import (DEFAULT_MAX_ATTEMPTS, Storage, connect, now_ts, queue_document_problem,
                      redact_uri)
from .study import load_scenarios, source_digest, source_stamp, study_root
from .task import Task, task_names

log = logging.getLogger("hyperspace_explorer.worker")

DEFAULT_INTERVAL_S = 0.5   # idle polling: a new run is picked up within half a second
DEFAULT_HEARTBEAT_S = 5.0  # lease renewal and cancellation check while a run executes
DEFAULT_LEASE_S = 60.0     # a worker silent this long is presumed dead
SACRED_ID_BLOCK = 8        # Sacred ids reserved per round trip
MAX_RESULT_BYTES = 8 << 20  # what a run may add to its queue document
STUDY_CHECK_S = 1.0        # how often an idle worker looks for edited Study sources


def recover_expired(store: Storage) -> int:
    """Requeue runs whose worker stopped renewing its lease; after `max_attempts`
    end them as FAILED ("worker lost"). Their Sacred records are closed as superseded,
    whatever state the lost worker left them in."""
    handled = 0
    for doc in store.expired_leases():
        attempt = doc.get("attempt", 1)
        limit = doc.get("max_attempts") or DEFAULT_MAX_ATTEMPTS
        note = f"worker {doc.get('worker', '?')} stopped renewing its lease (attempt {attempt})"
        if attempt >= limit:
            ok = store.expire(doc["_id"], doc["token"],
                              {"reason": Reason.WORKER_LOST.value,
                               "error": f"worker lost: {note}; gave up after {attempt} "
                                        f"attempt(s) (max_attempts={limit})"},
                              final_status=FAILED)
        else:
            ok = store.expire(doc["_id"], doc["token"], {"last_error": f"worker lost: {note}"})
        if ok:
            handled += 1
            store.supersede_sacred_runs(doc["_id"], doc["token"],
                                        f"worker lost: {note}; see the queue document")
            log.warning("run %s: %s; %s", doc["_id"], note,
                        "failed" if attempt >= limit else "requeued")
    return handled


class Worker:
    """One worker process. `run()` returns the number of runs it executed.

    Between runs it notices edits of the Study's sources; it then stops with
    `reload_requested` set, and the command-line entry point re-executes itself so
    that the next run uses the new code.
    """

    def __init__(self, tasks_dir: str | Path, db_name: str, mongo_uri: str | None = None, *,
                 study_dir: str | Path | None = None, study: str | None = None,
                 interval: float = DEFAULT_INTERVAL_S, heartbeat: float = DEFAULT_HEARTBEAT_S,
                 lease: float = DEFAULT_LEASE_S, max_runs: int | None = None,
                 idle_exit: float | None = None, log_dir: str | Path | None = None):
        from .server import home_dir, resolve_uri

        if lease <= 2 * heartbeat:
            raise HSEError(f"--lease ({lease}s) must be more than twice --heartbeat "
                           f"({heartbeat}s), or live runs would look dead")
        self.tasks_dir = Path(tasks_dir)
        task_names(self.tasks_dir)  # fails early with a clear message if missing
        self.module = load_scenarios(study_dir)
        self.study_root = study_root(self.module)
        self.code_digest = source_digest(self.study_root)
        self._stamp = source_stamp(self.study_root)
        self._next_study_check = 0.0
        self.reload_requested = False
        self.store = connect(resolve_uri(mongo_uri), db_name)
        self.study = study or db_name
        self.interval, self.heartbeat, self.lease = interval, heartbeat, lease
        self.max_runs, self.idle_exit = max_runs, idle_exit
        self.id = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.log_dir = Path(log_dir) if log_dir else home_dir() / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        from .execution import Executor  # Sacred: imported by workers only

        self.executor = Executor(self.store, self.module, self.log_dir, heartbeat, lease,
                                 interrupt=self._interrupt_request, on_beat=self._beat)
        self._signals = 0
        self._wake = threading.Event()
        self._current: str | None = None
        self._sacred_ids: list[int] = []
        self._cannot_run: dict[str, str] = {}  # run id -> why this worker's code refused it
        self.executed = 0

    # -------------------------------------------------------------- signals
    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        self._wake.set()
        if self._signals == 1:
            log.warning("%s: finishing the current run, then stopping (signal again to "
                        "interrupt it and put it back in the queue)", signal.Signals(signum).name)
        else:
            log.warning("interrupting the current run; it goes back to the queue")

    def _interrupt_request(self) -> str | None:
        return "requeue" if self._signals >= 2 else None

    # -------------------------------------------------------------- loop
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self.store.retry(lambda: self.store.register_worker({
            "_id": self.id, "host": socket.gethostname(), "pid": os.getpid(),
            "study": self.study, "db": self.store.db_name, "tasks_dir": str(self.tasks_dir.resolve()),
            "started_at": now_ts(), "heartbeat": now_ts(), "current_run": None,
            "executed": 0, "stopping": False, "heartbeat_s": self.heartbeat,
            "lease_s": self.lease, "code_digest": self.code_digest}))
        log.info("worker %s: study '%s', db '%s' at %s, tasks in %s", self.id, self.study,
                 self.store.db_name, redact_uri(self.store.uri), self.tasks_dir)
        # Once per start (they scan the queue on nx-27017): documents no worker could
        # ever claim, and Sacred records left open by a worker that lost its run.
        self._quietly(lambda: self.store.quarantine_orphans())
        self._quietly(lambda: self.store.close_orphan_sacred_runs())
        idle_since = time.monotonic()
        next_maintenance = 0.0
        try:
            while self._signals == 0:
                if self.max_runs is not None and self.executed >= self.max_runs:
                    log.info("executed %d run(s): --max-runs reached", self.executed)
                    break
                if self._study_changed():
                    break
                if time.monotonic() >= next_maintenance:
                    self._maintenance()
                    next_maintenance = time.monotonic() + self.heartbeat
                doc = self._claim()
                if doc is None:
                    self.executor.release_spare()
                    if self.idle_exit is not None and time.monotonic() - idle_since >= self.idle_exit:
                        log.info("idle for %.0fs: --idle-exit reached", self.idle_exit)
                        break
                    self._wake.wait(self.interval)
                    continue
                try:
                    self._process(doc)
                except StoreUnavailable as exc:
                    # The run stays leased to us; once the lease expires, recovery
                    # requeues it. The worker itself keeps going.
                    log.warning("run %s: database lost mid-run (%s); it will be requeued",
                                doc["_id"], str(exc)[:200])
                except Exception:  # a worker-side bug must not take the worker down
                    log.exception("run %s: worker error", doc["_id"])
                    self._finish(doc["_id"], doc["token"], FAILED, {
                        "reason": Reason.ERROR.value,
                        "error": "worker error:\n" + traceback.format_exc()})
                self._current = None
                idle_since = time.monotonic()
        finally:
            self.executor.release_spare()
            self._quietly(lambda: self.store.sweep_finished())
            self._quietly(lambda: self.store.remove_worker(self.id))
        return self.executed

    def _study_changed(self) -> bool:
        """Whether the Study's sources were edited since this worker loaded them (then
        `reload_requested` is set and the loop ends)."""
        now = time.monotonic()
        if now < self._next_study_check:
            return False
        self._next_study_check = now + STUDY_CHECK_S
        stamp = source_stamp(self.study_root)
        if stamp == self._stamp:
            return False
        changed = sorted({Path(p).name for p, *_ in set(stamp) ^ set(self._stamp)})
        log.warning("the Study's sources changed (%s): reloading the worker before the "
                    "next run", ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
        self.reload_requested = True
        return True

    def _claim(self) -> dict[str, Any] | None:
        try:
            names = task_names(self.tasks_dir)
        except HSEError as exc:
            log.error("%s", exc)
            return None
        try:
            return self.store.retry(
                lambda: self.store.claim(self.study, names, self.id, self.lease,
                                         exclude=self._cannot_run),
                give_up=lambda: self._signals > 0)
        except StoreUnavailable:
            if self._signals:
                return None  # asked to stop while the database was away
            raise

    def _maintenance(self) -> None:
        self._quietly(lambda: recover_expired(self.store))
        self._quietly(lambda: self.store.sweep_finished())
        self._beat()

    def _beat(self) -> None:
        fields: dict[str, Any] = {"current_run": self._current, "executed": self.executed,
                                  "stopping": self._signals > 0,
                                  "cannot_run": len(self._cannot_run)}
        if self._cannot_run:
            run_id, why = next(reversed(self._cannot_run.items()))
            fields["last_rejection"] = f"run {run_id}: {why}"
        self._quietly(lambda: self.store.worker_heartbeat(self.id, fields))

    def _quietly(self, op) -> None:
        try:
            op()
        except StoreUnavailable as exc:
            log.warning("database unreachable during maintenance: %s", str(exc)[:200])

    def _process(self, doc: dict[str, Any]) -> None:
        run_id, token = doc["_id"], doc["token"]
        self._current = run_id
        started = time.time()
        problem = queue_document_problem(doc)
        if problem is not None:
            log.error("run %s quarantined: %s", run_id, problem)
            self._finish(run_id, token, FAILED, {"reason": Reason.INVALID.value,
                                                 "error": problem})
            return
        try:
            task = Task.from_doc(doc["task_spec"])
            scenario_cls = resolve_class(Scenario, task.scenario_class_name, "Scenario")
            scenario_cls.complete_config(task.scenario, "Scenario")
            config = scenario_cls.complete_run_config(doc.get("config"))
        except (HSEError, TypeError, KeyError) as exc:
            self._reject(doc, exc)
            return
        sacred_id = self._next_sacred_id()
        max_runtime = doc.get("max_runtime") or task.max_runtime
        from .execution import TOO_LARGE, RunSpec

        spec = RunSpec(run_id=run_id, task=task, config=config, seed=doc["seed"],
                       sacred_id=sacred_id, attempt=doc.get("attempt", 1), token=token,
                       max_runtime=max_runtime, log_path=self.log_dir / f"{run_id}.log",
                       tuning=doc.get("tuning") if isinstance(doc.get("tuning"), dict) else None)
        log.info("run %s (task %s, seed %s, sacred id %s) started", run_id, task.name,
                 doc["seed"], sacred_id)
        outcome = self.executor.execute(spec)
        if outcome.fenced:
            log.warning("run %s: lease lost to a newer attempt; result discarded", run_id)
            return
        fields = {**outcome.fields(), "config": config, "config_given": doc.get("config"),
                  "sacred_id": sacred_id, "code_version": self.executor.code_version(task),
                  "host": socket.gethostname(), "duration": round(time.time() - started, 3),
                  "log_file": str(spec.log_path)}
        if outcome.status == QUEUED:
            fields["attempt"] = max(0, doc.get("attempt", 1) - 1)
            self._requeue(run_id, token, fields)
        else:
            status = outcome.status
            if len(bson.encode(fields)) > MAX_RESULT_BYTES:
                status = FAILED
                fields.update(metrics=None, reason=Reason.ERROR.value, error=TOO_LARGE)
            self._finish(run_id, token, status, fields)
        self.executed += 1
        log.info("run %s %s%s", run_id, outcome.status.lower(),
                 f": {outcome.metrics}" if outcome.metrics else
                 f" ({outcome.reason})" if outcome.reason else "")

    def _reject(self, doc: dict[str, Any], exc: Exception) -> None:
        """This worker's code refuses the run's task or config. When the submitter
        validated it against other Study code, another worker (with that code) may run
        it: leave the run in the queue with a note. Otherwise it is invalid."""
        run_id, token = doc["_id"], doc["token"]
        validated = doc.get("validated_with")
        if isinstance(validated, str) and validated != self.code_digest:
            why = (f"{exc} (this worker's Study code {self.code_digest} differs from the "
                   f"code {validated} the run was validated against)")
            log.warning("run %s left for another worker: %s", run_id, why)
            self._cannot_run[run_id] = str(exc)
            self._requeue(run_id, token, {
                "attempt": max(0, doc.get("attempt", 1) - 1),
                "last_rejection": {"worker": self.id, "host": socket.gethostname(),
                                   "code_digest": self.code_digest, "error": str(exc),
                                   "at": now_ts()}})
            self._beat()
            return
        log.error("run %s rejected: %s", run_id, exc)
        self._finish(run_id, token, FAILED, {"reason": Reason.INVALID.value, "error": str(exc)})

    def _next_sacred_id(self) -> int:
        if not self._sacred_ids:
            self._sacred_ids = list(self.store.retry(
                lambda: self.store.reserve_sacred_ids(SACRED_ID_BLOCK)))
        return self._sacred_ids.pop(0)

    def _requeue(self, run_id: str, token: str, fields: dict[str, Any]) -> None:
        if not self.store.retry(lambda: self.store.requeue(run_id, token, fields)):
            log.warning("run %s: a newer attempt owns it; not requeued by this worker", run_id)

    def _finish(self, run_id: str, token: str, status: Status, fields: dict[str, Any]) -> None:
        """Record our attempt's outcome. When a newer attempt owns the run, our Sacred
        record (possibly already COMPLETED) is closed as superseded, so exactly one
        record agrees with the queue."""
        from .execution import SUPERSEDED

        ok = self.store.retry(lambda: self.store.finish(run_id, token, status, fields))
        if not ok:  # our write may have landed before a connection drop: look
            doc = self.store.retry(lambda: self.store.get_run(run_id))
            ok = doc.get("token") == token and doc.get("status") == status
        if not ok:
            self.store.retry(lambda: self.store.supersede_sacred_runs(run_id, token, SUPERSEDED))
            log.warning("run %s: a newer attempt owns it; this attempt's outcome is dropped",
                        run_id)


# ------------------------------------------------------------------ command line
def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Worker options, shared by `hyperspace_worker` and `hse worker`."""
    parser.add_argument("tasks_dir", help="directory with the Study's task .json files")
    parser.add_argument("db_name", help="MongoDB database of the Study (also the queue)")
    parser.add_argument("--mongo-uri", help="MongoDB URI (default: $HSE_MONGO_URI, else the "
                                            "embedded server on this machine)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help="seconds between polls of an empty queue (default %(default)s)")
    parser.add_argument("--study-dir", default=None,
                        help="directory containing scenarios.py (default: current directory)")
    parser.add_argument("--study", default=None,
                        help="Study name in the queue (default: the database name)")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_S,
                        help="seconds between lease renewals (default %(default)s)")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_S,
                        help="seconds without renewal after which a run is presumed lost "
                             "(default %(default)s)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="exit after executing this many runs")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="exit after the queue has been empty this long")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run_worker_from_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    worker = Worker(args.tasks_dir, args.db_name, args.mongo_uri, study_dir=args.study_dir,
                    study=args.study, interval=args.interval, heartbeat=args.heartbeat,
                    lease=args.lease, max_runs=args.max_runs, idle_exit=args.idle_exit)
    worker.run()
    worker.store.close()
    if worker.reload_requested:
        # Start afresh on the edited Study code: same interpreter, same command line.
        log.warning("re-executing the worker to load the edited Study code")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hyperspace_worker",
        description="Execute queued runs of the Study in the current directory.")
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_worker_from_args(args)
    except HSEError as exc:
        print(f"hyperspace_worker: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
