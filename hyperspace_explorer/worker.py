"""The worker daemon: claim runs of one Study, execute them, record the outcome.

Started from a Study directory (the one holding `scenarios.py`)::

    hyperspace_worker TASKS_DIR DB_NAME [--mongo-uri URI] [--interval S]

(its command line is in `cli/worker.py`; `python -m hyperspace_explorer.worker` runs it).

Any number of workers on any number of machines can share a database: claims are
atomic, each attempt holds a lease its worker renews, and runs whose worker died are
requeued by whichever worker (or `hse recover`) notices the expired lease first.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bson

from .configurable import resolve_class
from .errors import HSEError, StoreUnavailable, bounded_int, positive_int, seconds
from .sacred_compat import check_worker_imports
from .scenario import Scenario
from .status import FAILED, QUEUED, RUNNING, Reason, Status
from .storage import (
    DEFAULT_MAX_ATTEMPTS,
    Storage,
    connect,
    new_token,
    now_ts,
    queue_document_problem,
    redact_uri,
)
from .study import load_scenarios, source_digest, source_stamp, study_root
from .task import Task, load_task, tag_names, task_names

if TYPE_CHECKING:  # Sacred is imported by running workers only
    from .execution import RunSpec

log = logging.getLogger("hyperspace_explorer.worker")

DEFAULT_INTERVAL_S = 0.5   # idle polling: a new run is picked up within half a second
DEFAULT_HEARTBEAT_S = 5.0  # lease renewal and cancellation check while a run executes
DEFAULT_LEASE_S = 60.0     # a worker silent this long is presumed dead
SACRED_ID_BLOCK = 8        # Sacred ids reserved per round trip
MAX_RESULT_BYTES = 8 << 20  # what a run may add to its queue document
STUDY_CHECK_S = 1.0        # how often an idle worker looks for edited Study sources
DEFAULT_RUNS_PER_PROCESS = 100  # runs one forked child executes before a fresh fork
AHEAD_S = 1.0  # after a run shorter than this, a slot claims its next one during the next
AHEAD_HOLD_S = 2.0  # a run claimed ahead goes back if the current one lasts this long


#: What sizes the thread pools of a run's numeric libraries: OpenMP (and so PyTorch's CPU
#: operations), OpenBLAS, MKL, Apple's Accelerate and numexpr (the variables joblib's
#: worker processes set).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


#: How long an idle OpenBLAS thread of a run spins before it sleeps, as OpenBLAS reads it
#: (`OPENBLAS_THREAD_TIMEOUT`: 2**N CPU cycles): 2**22, 1-2 ms, instead of OpenBLAS's
#: 2**28, about 0.1 s after every call (see `limit_run_threads`).
OPENBLAS_SPIN = ("OPENBLAS_THREAD_TIMEOUT", "22")
_GPU_ID = re.compile(r"\d+|(GPU|MIG)-[\w/-]+")  # what CUDA_VISIBLE_DEVICES accepts


MAX_CONCURRENCY = 1024  # slots of one worker: each keeps a forked process and a thread


def check_concurrency(concurrency: object) -> int:
    """`concurrency` when it is a number of slots one worker can hold, else an HSEError:
    a slot is a thread with a forked process ready, all started with the worker (1,024
    take 20 s to start on 2 cores; 100,000 never got to a first claim)."""
    positive_int(concurrency, "--concurrency")
    return bounded_int(concurrency, "--concurrency", 1, MAX_CONCURRENCY)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm or taskset share of the
    machine), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def limit_run_threads(concurrency: int, threads_per_run: int | None = None,
                      environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Size the thread pools of the runs (`THREAD_VARIABLES` in `environ`) so that the
    runs a worker executes at once do not oversubscribe the CPUs, and keep their idle
    OpenBLAS threads from spinning long (`OPENBLAS_SPIN`); returns what it set.

    Each numeric library starts as many threads as the machine has cores, and OpenBLAS
    and OpenMP keep them spinning after each call: N runs at once would each start that
    many, and spend their time preempting each other. So with `concurrency` > 1 every
    variable the environment leaves unset becomes usable CPUs // concurrency (at least
    1); `threads_per_run` sets them all, whatever the environment says. One run at a
    time keeps the libraries' pool sizes.

    OpenBLAS's helper threads spin for about 0.1 s after every call. A run shares its
    machine with its worker (and, with the embedded server, the database), whose
    bookkeeping of each run then takes the CPU from the run's own thread rather than
    from a spinning one: on 2 cores the example Study's short runs waited 6.0-7.5 ms
    each for a CPU, against 0.5-0.9 ms with a spin of 2**22 cycles
    (`benchmarks/digits.py --cpu`). A BLAS call that comes more than that after the
    last one wakes the pool (tens of microseconds). The spin is set only where the
    environment leaves it unset.

    The libraries read the variables once, when they are loaded: the command-line
    worker calls this before it imports anything of the Study's (and its children
    inherit the pools); in a notebook, call it before importing NumPy."""
    concurrency = check_concurrency(concurrency)
    if threads_per_run is not None:
        value = str(positive_int(threads_per_run, "--threads-per-run"))
        chosen = dict.fromkeys(THREAD_VARIABLES, value)
    elif concurrency > 1:
        value = str(max(1, usable_cpus() // concurrency))
        chosen = {name: value for name in THREAD_VARIABLES if not environ.get(name)}
    else:
        chosen = {}
    spin, cycles = OPENBLAS_SPIN
    if not environ.get(spin):
        chosen[spin] = cycles
    environ.update(chosen)
    return chosen


def recover_expired(store: Storage) -> int:
    """Requeue runs whose worker stopped renewing its lease; after `max_attempts`
    end them as FAILED ("worker lost"). Their Sacred records are closed as superseded,
    whatever state the lost worker left them in."""
    handled = 0
    for doc in store.expired_leases():
        if doc.get("ahead") and not store.attempt_started(doc["_id"], doc["token"]):
            # Claimed ahead by a worker that stopped before starting it: as it was.
            if store.expire(doc["_id"], doc["token"], uncounted(doc)):
                handled += 1
                log.warning("run %s: claimed ahead by worker %s, which stopped renewing its "
                            "lease before starting it; %s", doc["_id"], doc.get("worker", "?"),
                            "cancelled" if doc.get("cancel_requested") else "requeued")
            continue
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
                        "failed" if attempt >= limit else
                        "cancelled" if doc.get("cancel_requested") else "requeued")
    return handled


class Worker:
    """One worker process. `run()` returns the number of runs it executed.

    It runs `concurrency` runs at once, each in its own slot (a thread supervising one
    forked child at a time); the process owns the leases of all of them. `gpus` are
    the GPU ids this worker may hand out: a run that requires k GPUs is claimed only
    when k of them are free, and its child sees just those (CUDA_VISIBLE_DEVICES).
    `tags` are what this worker offers (e.g. "big-mem"): it claims only runs whose
    required tags it has; untagged runs go to any worker. Either may be one
    comma-separated string, as `--gpus` and `--tags` take them. A slot's child
    executes up to `runs_per_process` runs in turn, as long as each leaves no process
    or thread behind (1: a fresh process for every run; see `execution.child`).

    Between runs it notices edits of the Study's sources; it then stops with
    `reload_requested` set, and the command-line entry point re-executes itself so
    that the next run uses the new code.
    """

    def __init__(self, tasks_dir: str | Path, db_name: str, mongo_uri: str | None = None, *,
                 study_dir: str | Path | None = None, study: str | None = None,
                 interval: float = DEFAULT_INTERVAL_S, heartbeat: float = DEFAULT_HEARTBEAT_S,
                 lease: float = DEFAULT_LEASE_S, max_runs: int | None = None,
                 idle_exit: float | None = None, log_dir: str | Path | None = None,
                 concurrency: int = 1, gpus: Sequence[str] = (), tags: Iterable[str] = (),
                 runs_per_process: int = DEFAULT_RUNS_PER_PROCESS):
        from .server import home_dir, resolve_uri

        check_worker_imports()  # Sacred & co. importable, or one clear line, before any claim
        for value, option in ((interval, "--interval"), (heartbeat, "--heartbeat"),
                              (lease, "--lease")):
            seconds(value, option)
        if lease <= 2 * heartbeat:
            raise HSEError(f"--lease ({lease}s) must be more than twice --heartbeat "
                           f"({heartbeat}s), or live runs would look dead")
        if idle_exit is not None:
            seconds(idle_exit, "--idle-exit", zero=True)
        if max_runs is not None:
            positive_int(max_runs, "--max-runs")
        check_concurrency(concurrency)
        positive_int(runs_per_process, "--runs-per-process")
        # A string from Python is what --gpus / --tags take: comma-separated.
        gpus = gpus.split(",") if isinstance(gpus, str) else gpus
        tags = tags.split(",") if isinstance(tags, str) else tags
        self.gpus = [str(g).strip() for g in gpus]
        if len(set(self.gpus)) != len(self.gpus) or not all(map(_GPU_ID.fullmatch, self.gpus)):
            raise HSEError(f"--gpus must list distinct GPU ids: indices (0,1) or UUIDs "
                           f"(GPU-..., MIG-...) as CUDA_VISIBLE_DEVICES takes them, got "
                           f"{list(gpus)}")
        self.tags = frozenset(tag_names((t.strip() for t in tags), "--tags"))
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

        experiments: dict[str, Any] = {}  # shared: building one is slow
        sources: dict[tuple[str, str], Any] = {}  # shared: uploaded once
        self.slots = [_Slot(i, Executor(self.store, self.module, self.log_dir, heartbeat,
                                        lease, interrupt=self._interrupt_request,
                                        on_beat=self._beat, experiments=experiments,
                                        sources=sources, runs_per_process=runs_per_process))
                      for i in range(concurrency)]
        self._signals = 0
        self._wake = threading.Event()
        self._lock = threading.Lock()        # claims, counters, GPUs, maintenance
        self._free_gpus = list(self.gpus)
        self._next_maintenance = 0.0
        self._claimed = 0
        self._polled: tuple[float, _Slot] | None = None  # the last poll that found nothing
        self._sacred_ids: list[int] = []
        self._cannot_run: dict[str, str] = {}  # run id -> why this worker's code refused it
        self._outcomes = ThreadPoolExecutor(1, thread_name_prefix="hse-outcomes")  # `_record`
        self.executed = 0

    # -------------------------------------------------------------- signals
    def _on_signal(self, signum, _frame) -> None:
        self._signals += 1
        self._wake.set()
        if self._signals == 1:
            log.warning("%s: finishing the current run(s), then stopping (signal again to "
                        "interrupt them and put them back in the queue)",
                        signal.Signals(signum).name)
        else:
            log.warning("interrupting the current run(s); they go back to the queue")

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
            "current_runs": [], "executed": 0, "stopping": False,
            "heartbeat_s": self.heartbeat, "lease_s": self.lease,
            "code_digest": self.code_digest, "concurrency": len(self.slots),
            "gpus": self.gpus, "tags": sorted(self.tags)}))
        log.info("worker %s: study '%s', db '%s' at %s, tasks in %s%s", self.id, self.study,
                 self.store.db_name, redact_uri(self.store.uri), self.tasks_dir,
                 "".join(f", {k} {v}" for k, v in (
                     ("concurrency", len(self.slots) if len(self.slots) > 1 else None),
                     ("GPUs", ",".join(self.gpus) or None),
                     ("tags", ",".join(sorted(self.tags)) or None)) if v))
        # Once per start (they scan the queue on nx-27017): documents no worker could
        # ever claim, and Sacred records left open by a worker that lost its run.
        self._quietly(lambda: self.store.quarantine_orphans())
        self._quietly(lambda: self.store.close_orphan_sacred_runs())
        self._warm_up()
        try:
            if len(self.slots) == 1:
                self._serve(self.slots[0])
            else:
                threads = [threading.Thread(target=self._serve, args=(slot,),
                                            name=f"hse-slot-{slot.index}", daemon=True)
                           for slot in self.slots]
                for thread in threads:
                    thread.start()
                for thread in threads:  # short joins: signals reach the main thread
                    while thread.is_alive():
                        thread.join(0.2)
        finally:
            for slot in self.slots:
                slot.executor.release_spare()
            self._outcomes.shutdown(wait=True)  # every ended run recorded before leaving
            self._quietly(lambda: self.store.sweep_finished())
            self._quietly(lambda: self.store.remove_worker(self.id))
        return self.executed

    def _serve(self, slot: _Slot) -> None:
        """One slot's loop: claim, execute, record; until asked to stop, idle too long,
        --max-runs reached or the Study's code changed. A run claimed ahead and not
        started then goes back to the queue."""
        try:
            self._serve_runs(slot)
        finally:
            self._write_outcome(slot)
            if slot.ahead_started is not None:  # the loop failed: stop that attempt first
                slot.executor.release_spare()
            self._give_back(slot)

    def _serve_runs(self, slot: _Slot) -> None:
        idle_since = time.monotonic()
        while ((self._signals == 0 and not self.reload_requested)
               or slot.ahead_started is not None):
            if slot.ahead_started is None:  # else its child already runs it: finish it
                if (self.max_runs is not None and self._claimed >= self.max_runs
                        and slot.ahead is None):
                    log.info("claimed %d run(s): --max-runs reached", self._claimed)
                    break
                if self._study_changed():
                    break
                self._maybe_maintain()
            ahead, started = slot.ahead, slot.ahead_started
            slot.ahead, slot.ahead_started = None, None
            try:
                doc, spec = ahead if ahead is not None else (self._claim(slot), None)
            finally:
                self._write_outcome(slot)  # the last run's, held during that claim
            slot.current = None if doc is None else doc["_id"]
            if doc is None:
                slot.executor.fresh_spare()
                if self.idle_exit is not None and time.monotonic() - idle_since >= self.idle_exit:
                    log.info("idle for %.0fs: --idle-exit reached", self.idle_exit)
                    break
                self._wake.wait(self._held_for(slot) or self.interval)
                continue
            try:
                self._process(slot, doc, spec, started=started)
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
            finally:
                self._release(slot)
            idle_since = time.monotonic()

    def _warm_up(self) -> None:
        """Build the Sacred Experiment of each task, store its sources and the Study's
        code version, and reserve Sacred ids, before the first claim rather than inside
        the first runs: source, package and git discovery take about half a second on a
        small machine, which would otherwise delay the first run and hold its lease, the
        uploads slowed the first runs beside them, and the first run waited for the ids'
        round trip (beside the submits that woke the worker, often the slowest)."""
        executor, task = self.slots[0].executor, None
        for name in task_names(self.tasks_dir):
            try:
                task = load_task(self.tasks_dir, name)
                resolve_class(Scenario, task.scenario_class_name,
                              "Scenario").complete_config(task.scenario, "Scenario")
                executor.store_sources(task)
            except Exception as exc:  # noqa: BLE001 - a run of that task reports it
                log.warning("task %s: not prepared ahead (%s)", name, str(exc)[:200])
        if task is not None:
            self._quietly(lambda: executor.code_version(task))
        self._quietly(self._reserve_sacred_ids)
        for slot in self.slots:  # children forked now inherit those Experiments
            slot.executor.fresh_spare()

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

    def _claim(self, slot: _Slot, *, ahead: bool = False) -> dict[str, Any] | None:
        """The next run this worker may execute, leased to it, with the GPUs it needs
        handed to `slot`; None when there is none. Ahead of need (`_Ahead`), one try:
        the slot's running run waits for it.

        Idle, a worker polls the queue once per `interval`, not once per slot: a slot
        takes None without asking while another slot's poll found the queue empty
        less than an interval ago (`_held_for`). Each poll costs the database a few
        reads, and a worker with `--concurrency 8` polling from every slot sent 8
        times as many."""
        with self._lock:  # slots claim one at a time: GPUs are handed out here
            if self.max_runs is not None and self._claimed >= self.max_runs:
                return None
            if not ahead and self._held_for(slot) > 0:
                return None  # before reading the tasks directory: held slots read nothing
            try:
                names = task_names(self.tasks_dir)
            except HSEError as exc:
                log.error("%s", exc)
                return None

            def claim() -> dict[str, Any] | None:
                return self.store.claim(self.study, names, self.id, self.lease,
                                        exclude=self._cannot_run,
                                        gpus=len(self._free_gpus), tags=self.tags,
                                        ahead=ahead, token=slot.claim_token)
            try:
                doc = claim() if ahead else self.store.retry(
                    claim, give_up=lambda: self._signals > 0)
            except StoreUnavailable:
                if self._signals or ahead:
                    return None  # asked to stop while the database was away
                raise
            # The slot's next claim gets a fresh token. One that raised keeps its token:
            # its next try then finds the run it leased if only the answer was lost.
            slot.claim_token = new_token()
            if not ahead:
                self._polled = (time.monotonic(), slot) if doc is None else None
            if doc is not None:
                self._claimed += 1
                if not ahead:
                    wanted = doc.get("gpus") or 0
                    slot.gpus, self._free_gpus = (self._free_gpus[:wanted],
                                                  self._free_gpus[wanted:])
            return doc

    def _held_for(self, slot: _Slot) -> float:
        """Seconds until `slot` may poll an empty-looking queue again: 0, or what is
        left of the interval since another slot's poll found nothing. An idle slot
        sleeps that long (else an interval), so that the others follow the poller's
        pace: once it claims a run, they claim too, within an interval."""
        polled = self._polled
        if polled is None or polled[1] is slot:
            return 0.0
        return max(0.0, polled[0] + self.interval - time.monotonic())

    def _give_back(self, slot: _Slot) -> None:
        """Put the run the slot claimed ahead back in the queue, as it was."""
        ahead, slot.ahead = slot.ahead, None
        if ahead is None:
            return
        doc = ahead[0]
        with self._lock:
            self._claimed -= 1
        fields = uncounted(doc)
        try:  # for a heartbeat at most: the slot's running run waits
            self.store.retry(lambda: self.store.requeue(doc["_id"], doc["token"], fields),
                             patience_s=self.heartbeat)
        except StoreUnavailable as exc:  # its lease expires and recovery requeues it
            log.warning("run %s: claimed ahead, not given back (%s)", doc["_id"], str(exc)[:200])

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            self._free_gpus += slot.gpus
            slot.gpus, slot.current = [], None
            self._polled = None  # with its GPUs free, a run found unclaimable may not be

    def _maybe_maintain(self) -> None:
        with self._lock:
            if time.monotonic() < self._next_maintenance:
                return
            self._next_maintenance = time.monotonic() + self.heartbeat
        self._maintenance()

    def _maintenance(self) -> None:
        self._quietly(lambda: recover_expired(self.store))
        self._quietly(lambda: self.store.sweep_finished())
        self._beat()

    def _beat(self) -> None:
        current = [slot.current for slot in self.slots if slot.current]
        fields: dict[str, Any] = {"current_run": current[0] if current else None,
                                  "current_runs": current, "executed": self.executed,
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

    def _process(self, slot: _Slot, doc: dict[str, Any], spec: RunSpec | None = None, *,
                 started: float | None = None) -> None:
        """Execute a claimed run (its `spec` when it was prepared ahead; `started`: when
        its child was given it, if that happened already) and record how it ended."""
        run_id, token = doc["_id"], doc["token"]
        started = started or time.time()
        spec = spec or self._prepare(slot, doc)
        if spec is None:
            return
        log.info("run %s (task %s, seed %s, sacred id %s) started", run_id, spec.task.name,
                 doc["seed"], spec.sacred_id)
        # Short runs: the next one is claimed while this one executes (not with GPUs to
        # hand out: its GPUs would have to be free already).
        ahead = (_Ahead(self, slot) if slot.last_s < AHEAD_S and not self.gpus
                 and self._signals == 0 else None)
        outcome = slot.executor.execute(spec, ahead)
        slot.last_s = time.time() - started
        if outcome.fenced:
            log.warning("run %s: lease lost to a newer attempt; result discarded", run_id)
            return
        status, fields = final_fields(outcome, spec, doc,
                                      slot.executor.code_version(spec.task), started)
        if status == QUEUED:
            fields.update(uncounted(doc))
            self._requeue(run_id, token, fields)
        else:
            if doc.get("ahead"):  # its claim said when the run before it started
                fields["started_at"] = started
            self._record(slot, run_id, token, status, fields, outcome.close_record)
            if ahead is not None and ahead.found_none:  # see _record
                self._write_outcome(slot, wait=True)
        with self._lock:
            self.executed += 1
        log.info("run %s %s%s", run_id, outcome.status.lower(),
                 f": {outcome.metrics}" if outcome.metrics else
                 f" ({outcome.reason})" if outcome.reason else "")

    def _prepare(self, slot: _Slot, doc: dict[str, Any]) -> RunSpec | None:
        """What the run's child needs (its config completed, a Sacred id, the
        checkpoint it resumes from); None when the run was refused (and recorded so)."""
        run_id, token = doc["_id"], doc["token"]
        problem = queue_document_problem(doc)
        if problem is not None:
            log.error("run %s quarantined: %s", run_id, problem)
            self._finish(run_id, token, FAILED, {"reason": Reason.INVALID.value,
                                                 "error": problem})
            return None
        try:
            task = Task.from_doc(doc["task_spec"])
            scenario_cls = resolve_class(Scenario, task.scenario_class_name, "Scenario")
            scenario_cls.complete_config(task.scenario, "Scenario")
            config = scenario_cls.complete_run_config(doc.get("config"))
        except (HSEError, TypeError, KeyError) as exc:
            self._reject(doc, exc)
            return None
        sacred_id = self._next_sacred_id()
        max_runtime = doc.get("max_runtime") or task.max_runtime
        from .execution import RunSpec

        checkpoint, resume_points = self._checkpoint(doc)
        return RunSpec(run_id=run_id, task=task, config=config, seed=doc["seed"],
                       sacred_id=sacred_id, attempt=doc.get("attempt", 1), token=token,
                       max_runtime=max_runtime, log_path=self.log_dir / f"{run_id}.log",
                       env={"CUDA_VISIBLE_DEVICES": ",".join(slot.gpus)} if self.gpus else {},
                       tuning=doc.get("tuning") if isinstance(doc.get("tuning"), dict) else None,
                       checkpoint=checkpoint, resume_points=resume_points)

    def _checkpoint(self, doc: Mapping[str, Any]
                    ) -> tuple[tuple[bytes, str] | None, dict[str, dict[str, list[Any]]] | None]:
        """The latest checkpoint of an earlier attempt of the run, and the metric points
        it covers (read from that attempt's series), to resume from; (None, None)."""
        if not isinstance(doc.get("checkpoint"), Mapping):
            return None, None
        found = self.store.retry(lambda: self.store.load_checkpoint(doc["_id"]))
        if found is None:
            return None, None
        data, meta = found
        counts = meta.get("points") if isinstance(meta.get("points"), Mapping) else {}
        points: dict[str, dict[str, list[Any]]] = {}
        if isinstance(meta.get("sacred_id"), int) and counts:
            for series in self.store.retry(lambda: self.store.metric_series([meta["sacred_id"]])):
                n = counts.get(series.get("name"))
                if isinstance(n, int) and n > 0:
                    points[series["name"]] = {key: list(series.get(key) or [])[:n] for key in
                                              ("steps", "values", "timestamps")}
        log.info("run %s resumes from the checkpoint of its attempt %s", doc["_id"],
                 meta.get("attempt"))
        return (data, str(meta.get("content_type") or "")), points

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
                **uncounted(doc),
                "last_rejection": {"worker": self.id, "host": socket.gethostname(),
                                   "code_digest": self.code_digest, "error": str(exc),
                                   "at": now_ts()}})
            self._beat()
            return
        log.error("run %s rejected: %s", run_id, exc)
        self._finish(run_id, token, FAILED, {"reason": Reason.INVALID.value, "error": str(exc)})

    def _next_sacred_id(self) -> int:
        with self._lock:
            if not self._sacred_ids:
                self.store.retry(self._reserve_sacred_ids)
            return self._sacred_ids.pop(0)

    def _reserve_sacred_ids(self) -> None:
        self._sacred_ids = list(self.store.reserve_sacred_ids(SACRED_ID_BLOCK))

    def _requeue(self, run_id: str, token: str, fields: dict[str, Any]) -> None:
        if self.store.retry(lambda: self.store.requeue(run_id, token, fields)):
            return
        # Not this attempt's to requeue: say what became of the run (one read, only
        # here), since "a newer attempt owns it" is not the only way to get here.
        try:
            doc = self.store.get_run(run_id)
        except HSEError:  # gone from the store, or the store out of reach again
            doc = {}
        status = doc.get("status")
        if status == QUEUED.value:
            why = ("it is back in the queue already (an earlier try of this requeue "
                   "landed though its answer was lost, or recovery requeued it)")
        elif status == RUNNING.value and doc.get("token") != token:
            why = "a newer attempt owns it"
        else:
            why = f"it is {status} now" if status else "it is no longer in the store"
        log.warning("run %s not requeued by this worker: %s", run_id, why)

    def _record(self, slot: _Slot, run_id: str, token: str, status: Status,
                fields: dict[str, Any], close_record: Callable[[], bool] | None = None) -> None:
        """`_finish` an attempt by the outcome thread, after `close_record` (the Sacred
        record's final event, fenced), while its slot starts the next run: on short runs
        the final writes (the record, the queue document, the lease) would otherwise
        sit between two runs. The writes are fenced by the attempt's token wherever
        they run, and the lease holds until they land (if the worker dies first,
        recovery requeues the run as for any lost attempt). Outcomes are written one at a
        time, each slot's in the order its runs ended; the worker waits for all before
        it exits.

        The writes are handed to that thread (`_write_outcome`) once the slot's next run
        is under way: at once when it was claimed ahead and started, else after the
        slot's next claim has answered. That claim is on the path to the next run, the
        writes are not; sent together to a database with one lock (nx-27017), the
        claim's round trips queued behind theirs, and the first gap between two short
        digits runs took 33 ms instead of 16-20. When the claim ahead found no run, the
        next claim will most likely find none either: the slot waits for the writes
        before it claims again, rather than delay them (the last run of a digits batch
        was recorded 20-26 ms after its end, now 8-10 ms)."""
        def write() -> None:
            try:
                if close_record is not None and not close_record():
                    log.warning("run %s: lease lost to a newer attempt; result discarded",
                                run_id)
                    return
                self._finish(run_id, token, status, fields)
            except Exception as exc:  # StoreUnavailable after retrying, or a bug
                log.error("run %s: its outcome could not be recorded (%s); its lease will "
                          "expire and the run be requeued", run_id, str(exc)[:200])

        slot.outcome = write

    def _write_outcome(self, slot: _Slot, *, wait: bool = False) -> None:
        """Hand the slot's held outcome (see `_record`) to the outcome thread; `wait`:
        until it is written (after the outcomes handed over before it)."""
        write, slot.outcome = slot.outcome, None
        if write is not None:
            written = self._outcomes.submit(write)
            if wait:
                written.result()

    def _finish(self, run_id: str, token: str, status: Status, fields: dict[str, Any]) -> None:
        """Record our attempt's outcome. When a newer attempt owns the run, our Sacred
        record (possibly already COMPLETED) is closed as superseded, so exactly one
        record agrees with the queue."""
        from .execution import SUPERSEDED

        if not self.store.retry(lambda: self.store.finish(run_id, token, status, fields)):
            self.store.retry(lambda: self.store.supersede_sacred_runs(run_id, token, SUPERSEDED))
            log.warning("run %s: a newer attempt owns it; this attempt's outcome is dropped",
                        run_id)


def uncounted(doc: Mapping[str, Any]) -> dict[str, int]:
    """The fields that give a run back to the queue without counting the attempt it is
    in (a run that never started, or was left for another worker)."""
    return {"attempt": max(0, doc.get("attempt", 1) - 1)}


def final_fields(outcome: Any, spec: Any, doc: Mapping[str, Any],
                 code_version: Mapping[str, Any], started: float
                 ) -> tuple[Status, dict[str, Any]]:
    """The status and fields an attempt's outcome writes to its queue document (a
    worker's, or `RunQueue.run_here`'s): what it returned, the complete config it ran
    with beside the config as given, its Sacred id, code version, host and duration.
    Fields too large for a document fail the run instead of losing the write."""
    from .execution import TOO_LARGE

    fields = {**outcome.fields(), "config": spec.config, "config_given": doc.get("config"),
              "sacred_id": spec.sacred_id, "code_version": dict(code_version),
              "host": socket.gethostname(), "duration": round(time.time() - started, 3),
              "log_file": str(spec.log_path)}
    status = outcome.status
    if status != QUEUED and len(bson.encode(fields)) > MAX_RESULT_BYTES:
        status = FAILED
        fields.update(metrics=None, reason=Reason.ERROR.value, error=TOO_LARGE)
    return status, fields


@dataclasses.dataclass
class _Slot:
    """One run at a time of a worker: its executor, its run, the GPUs it holds, the run
    it claimed ahead (leased, not started) and how long its last run took."""

    index: int
    executor: Any
    current: str | None = None
    gpus: list[str] = dataclasses.field(default_factory=list)
    ahead: tuple[dict[str, Any], RunSpec | None] | None = None  # its queue document, spec
    ahead_started: float | None = None  # when it was handed to the child: it now runs
    outcome: Callable[[], None] | None = None  # its last run's writes, held (`_record`)
    last_s: float = math.inf
    claim_token: str = dataclasses.field(default_factory=new_token)  # its next claim's


class _Ahead:
    """Claims a slot's next run while its current one executes (`execution.Ahead`): on
    short runs the claim's round trips would otherwise sit between two runs. A run
    claimed ahead shows RUNNING from its claim, at most one short run early; one not
    started after all (the current run lasted `AHEAD_HOLD_S`, or the worker stops) goes
    back to the queue with its attempt count as it was."""

    hold_s = AHEAD_HOLD_S

    def __init__(self, worker: Worker, slot: _Slot):
        self.worker, self.slot = worker, slot
        self.found_none = False  # the claim found no run (or the worker may claim no more)

    def claim(self) -> RunSpec | None:
        doc = self.worker._claim(self.slot, ahead=True)
        if doc is None:
            self.found_none = True
            return None
        try:
            spec = self.worker._prepare(self.slot, doc)
        except Exception as exc:  # noqa: BLE001 - the slot's loop prepares it again
            log.warning("run %s: not prepared ahead (%s)", doc["_id"], str(exc)[:200])
            self.slot.ahead = (doc, None)
            return None
        if spec is not None:  # else refused, and recorded so
            self.slot.ahead = (doc, spec)
        return spec

    def start(self, fits: Callable[[RunSpec], bool]) -> RunSpec | None:
        if (self.slot.ahead is None or self.worker._signals
                or self.worker.reload_requested):
            return None
        spec = self.slot.ahead[1]
        if spec is None or not fits(spec):  # the slot's loop starts it, in a fresh child
            return None
        self.slot.ahead_started = time.time()  # its child runs it from now
        return spec

    def give_back(self) -> None:
        if self.slot.ahead is not None:
            log.info("run %s, claimed ahead, goes back to the queue: the current run is "
                     "long", self.slot.ahead[0]["_id"])
        self.worker._give_back(self.slot)


def worker_state(doc: dict[str, Any], now: float) -> tuple[str, float, float | None]:
    """What a worker document says about its worker at time `now` (epoch seconds):
    (state, lease, heartbeat age). The state is "DEAD" when its last heartbeat is
    older than its own `lease_s` (3x `DEFAULT_HEARTBEAT_S` for workers that did not
    record one), else "stopping" when it was asked to stop, else "alive"."""
    lease = doc.get("lease_s")
    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or lease <= 0:
        lease = 3 * DEFAULT_HEARTBEAT_S
    beat = doc.get("heartbeat")  # epoch seconds, as Storage writes it
    beat = float(beat) if isinstance(beat, (int, float)) and not isinstance(beat, bool) else None
    age = None if beat is None else max(0.0, now - beat)
    if beat is None or now - beat > lease:
        return "DEAD", float(lease), age
    return ("stopping" if doc.get("stopping") else "alive"), float(lease), age


if __name__ == "__main__":  # `python -m hyperspace_explorer.worker`: the hyperspace_worker command
    from hyperspace_explorer.cli.worker import main

    sys.exit(main())
