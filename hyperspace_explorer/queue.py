"""RunQueue: submit, watch, cancel and collect runs from a notebook (or the CLI).

    from hyperspace_explorer import RunQueue
    q = RunQueue(None, "digits", "tasks")          # None: $HSE_MONGO_URI or embedded
    ids = q.submit("digits_small", {"model": {"className": "LogisticModel", "C": 0.5}},
                   seeds=3)
    q.wait(ids)
    q.results("digits_small")

Configs are validated against the Study's Configurable classes at submit time whenever
the Study's code is importable, so a typo fails here and not hours later on a worker.
A submit skips runs that are already queued, running or completed (same task, complete
config and seed; `force=True` queues them anyway), and finished runs can be requeued
with their earlier outcome kept (`requeue`).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .configurable import json_like, registered_classes, resolve_class, set_dotted, validate_config
from .errors import (
    MAX_INT,
    ConfigError,
    HSEError,
    RunNotFound,
    StudyError,
    TaskError,
    bounded_int,
    positive_int,
    seconds,
)
from .scenario import Scenario
from .status import (
    ACTIVE,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINAL,
    QUEUED,
    RUNNING,
    TIMEOUT,
    Reason,
    Status,
    parse_statuses,
)
from .storage import DEFAULT_MAX_ATTEMPTS, RunFilter, bulk_objects, connect, new_run_id, now_ts
from .study import find_study, source_digest, study_root
from .task import MAX_SEED, Task, load_task, tag_names, task_names


class RunQueue:
    """The queue of one Study: `RunQueue(mongo_uri, db_name, tasks_dir)`.

    `mongo_uri=None` uses `$HSE_MONGO_URI`, else the machine's embedded server.
    `study` names the Study in the queue (default: `db_name`); workers started with
    the same database and study name execute the runs. `study_dir` is where the
    Study's `scenarios.py` lives, to validate configs (default: the tasks directory's
    parent, then the current directory; already imported scenarios are used as is).
    """

    def __init__(self, mongo_uri: str | None, db_name: str, tasks_dir: str | Path | None = None,
                 *, study: str | None = None, study_dir: str | Path | None = None):
        from .server import resolve_uri

        self.tasks_dir = Path(tasks_dir) if tasks_dir is not None else None
        if self.tasks_dir is not None:
            task_names(self.tasks_dir)  # clear error now if the directory is wrong
        self.store = connect(resolve_uri(mongo_uri), db_name)
        self.study = study or db_name
        self.study_dir = Path(study_dir) if study_dir is not None else None
        self._warned = False
        #: Run ids of the existing runs that the last successful submit skipped as
        #: duplicates (one per skipped run: the run it duplicates); empty after force=True.
        self.last_skipped: list[str] = []
        self._results_cache: tuple[RunFilter, Any, list[dict[str, Any]], Any] | None = None
        #: How today's Study code differs from the code the last `rerun`'s run ran with.
        self.last_code_changes: list[str] = []

    def close(self) -> None:
        """Close the database connection (also done when the object is collected)."""
        self.store.close()

    def __enter__(self) -> RunQueue:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ submitting
    def submit(self, task_name: str, conf: Mapping[str, Any] | None = None, *,
               seeds: int | Sequence[int] | None = None, priority: int = 0,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               max_runtime: float | None = None, force: bool = False,
               gpus: int | None = None, tags: Sequence[str] | None = None,
               tuning: Mapping[str, Any] | None = None) -> list[str]:
        """Queue `conf` for `task_name`; returns the new run ids (one per seed).

        `seeds=n` runs the config under n seeds (the task's seed, +1, ... +n-1), so
        re-submitting gives the same seeds; a list gives them explicitly.

        `gpus` (how many GPUs a run needs) and `tags` (what a worker must offer, e.g.
        ["big-mem"]) default to the task file's; only workers started with that many
        `--gpus` and those `--tags` claim such runs.

        A run whose task, complete config (defaults filled when the Study's code is
        importable) and seed are already QUEUED, RUNNING or COMPLETED in the Study, or
        earlier in the same submit, is skipped: `last_skipped` then lists the run ids
        it duplicates (`len(q.last_skipped)` runs were skipped). FAILED, TIMEOUT and
        CANCELLED runs do not count (or `requeue` them). `force=True` queues anyway.

        `tuning` ({"study": name, "trial": number}, set by `tuning.Tuner`) is stored
        in the run's document: the Optuna trial the run answers (its worker then
        reports intermediate values and asks the pruner there).
        """
        return self._enqueue(task_name, [{} if conf is None else conf], seeds=seeds,
                             priority=priority, max_attempts=max_attempts,
                             max_runtime=max_runtime, force=force, gpus=gpus, tags=tags,
                             tuning=tuning)

    def submit_grid(self, task_name: str, base_conf: Mapping[str, Any] | None,
                    grid: Mapping[str, Sequence[Any]], *, progress: bool | None = None,
                    **kwargs: Any) -> list[str]:
        """Queue the cartesian product of `grid` ({"model.C": [0.1, 1], ...}) applied
        on top of `base_conf`. All configs are validated before any is queued; as
        in `submit`, duplicates are skipped (`last_skipped`) unless `force=True`.
        `progress` shows a progress bar (default: for grids of 1,000 runs or more,
        which take seconds)."""
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError("", "grid must be a non-empty dict of dotted path -> list of values")
        for path, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ConfigError(path, f"grid values must be a non-empty list, got {values!r}")
        base = validate_config({} if base_conf is None else base_conf)  # before copying it
        # Each value is checked once, not once per combination; every combination is
        # still validated whole (check_run_config copies it) before any is queued.
        checked = [[json_like(value, path) for value in values] for path, values in grid.items()]

        def combinations() -> Iterator[dict[str, Any]]:
            for combo in itertools.product(*checked):
                conf = copy.deepcopy(base)
                for path, value in zip(grid, combo):  # containers copied: paths may nest
                    set_dotted(conf, path, copy.deepcopy(value)
                               if isinstance(value, (dict, list)) else value)
                yield conf

        return self._enqueue(task_name, combinations(), configs=math.prod(map(len, checked)),
                             progress=progress, **kwargs)

    def _enqueue(self, task_name: str | Task, confs: Iterable[Any], *, configs: int = 1,
                 progress: bool | None = None, seeds: int | Sequence[int] | None = None,
                 priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_runtime: float | None = None, force: bool = False,
                 gpus: int | None = None, tags: Sequence[str] | None = None,
                 tuning: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None) -> list[str]:
        """Validate `confs` (`configs` of them) x seeds, leave out duplicates and queue
        the rest in batches, with a progress bar when asked (by default from 1,000
        runs on: a grid that size takes seconds)."""
        from concurrent.futures import Future, ThreadPoolExecutor

        from tqdm.auto import tqdm

        task = self._submit_task(task_name)
        runs = configs * len(_seed_list(task, seeds))
        show = runs >= _PROGRESS_RUNS if progress is None else bool(progress)
        docs: list[dict[str, Any]] = []
        keys: list[tuple[str, ...]] = []
        with bulk_objects(), ThreadPoolExecutor(1, thread_name_prefix="hse-submit") as pool, \
                tqdm(total=runs, disable=not show, desc="checking configs", unit="run") as bar:
            # Runs stored already: when the task has no more of them than this submit
            # has fingerprints, theirs are read whole in one query (a first grid of a
            # task costs next to nothing); otherwise they are looked up a batch at a
            # time. Either way the server works while the next configs are checked,
            # and nothing is written until every config is valid.
            lookups: list[Future[dict[str, str] | None]] = [] if force else [pool.submit(
                self.store.task_fingerprints, self.study, task.name, _DUPLICATE_OF, 2 * runs)]

            def existing(batch: list[tuple[str, ...]]) -> dict[str, str] | None:
                # after the whole read (one thread runs them in turn): None, too many
                return self._existing(batch) if lookups[0].result() is None else {}

            looked_up = 0
            for doc, doc_keys, _ in self._documents(
                    task, confs, seeds=seeds, priority=priority, max_attempts=max_attempts,
                    max_runtime=max_runtime, gpus=gpus, tags=tags, tuning=tuning, extra=extra):
                docs.append(doc)
                keys.append(doc_keys)
                bar.update(1)
                if not force and len(keys) - looked_up >= _SUBMIT_BATCH:
                    lookups.append(pool.submit(existing, keys[looked_up:]))
                    looked_up = len(keys)
            if not force and len(keys) > looked_up:
                lookups.append(pool.submit(existing, keys[looked_up:]))
            known: dict[str, str] = {}
            for lookup in lookups:
                known.update(lookup.result() or {})
            kept = self._skip_duplicates(docs, keys, None if force else known)
            del docs, keys
            bar.reset(total=len(kept))
            bar.set_description("queueing")
            ids: list[str] = []
            for start in range(0, len(kept), _SUBMIT_BATCH):
                batch = kept[start:start + _SUBMIT_BATCH]
                ids += self.store.enqueue(batch)
                bar.update(len(batch))
            return ids

    def _documents(self, task_name: str | Task, confs: Iterable[Any], *,
                   seeds: int | Sequence[int] | None, priority: int, max_attempts: int,
                   max_runtime: float | None, gpus: int | None, tags: Sequence[str] | None,
                   tuning: Mapping[str, Any] | None, extra: Mapping[str, Any] | None
                   ) -> Iterator[tuple[dict[str, Any], tuple[str, ...], dict[str, Any]]]:
        """The queue documents of `confs` x seeds, each validated (its config and the
        arguments), with its `_id` and `fingerprint` (task, complete config, seed);
        beside each, the fingerprints it is looked up by (the complete config's, and
        that of the config as given: a run submitted without the Study's code carries
        that one) and its complete config. A generator: a grid's complete configs are
        not held, and the caller stores nothing before the last one is checked."""
        task = self._submit_task(task_name)
        seed_list = _seed_list(task, seeds)
        bounded_int(priority, "priority", -MAX_INT)
        positive_int(max_attempts, "max_attempts")
        if max_runtime is not None:
            seconds(max_runtime, "max_runtime")
        gpus = bounded_int(task.gpus if gpus is None else gpus, "gpus", 0)
        tags = list(tag_names(task.tags if tags is None else
                              ([tags] if isinstance(tags, str) else tags), "tags"))
        if tuning is not None:
            tuning = dict(tuning)
            if not isinstance(tuning.get("study"), str) or isinstance(tuning.get("trial"), bool) \
                    or not isinstance(tuning.get("trial"), int):
                raise HSEError(f"tuning must be {{'study': name, 'trial': number}}, got {tuning!r}")
        scenario_cls = self.scenario_class(task)
        # The Study code the configs were validated against: a worker whose code
        # differs and refuses a config leaves the run to another worker.
        validated_with = None if scenario_cls is None else \
            source_digest(study_root(sys.modules[scenario_cls.__module__]))
        now, host, task_doc = now_ts(), socket.gethostname(), task.to_doc()
        for conf in confs:
            # storable (keys, nesting, size, a dict at all), then valid for the Scenario;
            # a fresh copy of the given config (documents may share it), and complete
            given, complete = (validate_config(conf),) * 2 if scenario_cls is None else \
                scenario_cls.check_run_config(conf)  # raises ConfigError naming the path
            fingerprints = run_fingerprints(task.name, complete, seed_list)
            as_given = fingerprints if given == complete else \
                run_fingerprints(task.name, given, seed_list)
            for seed, fingerprint, given_fingerprint in zip(seed_list, fingerprints, as_given):
                doc = {"_id": new_run_id(), "study": self.study, "task": task.name,
                       "task_spec": task_doc, "config": given, "seed": seed,
                       "priority": priority, "max_attempts": max_attempts,
                       "max_runtime": max_runtime, "queued_at": now, "submitted_from": host,
                       "validated_with": validated_with, "gpus": gpus, "tags": tags,
                       "fingerprint": fingerprint}
                if tuning is not None:
                    doc["tuning"] = dict(tuning)
                doc.update(extra or {})
                yield doc, tuple(dict.fromkeys((fingerprint, given_fingerprint))), complete

    def _submit_task(self, task_name: str | Task) -> Task:
        """The task runs are submitted to: given, or read from the tasks directory."""
        if isinstance(task_name, Task):
            return task_name
        if self.tasks_dir is None:
            raise HSEError("this RunQueue has no tasks directory: pass tasks_dir= to submit")
        return load_task(self.tasks_dir, task_name)

    def _existing(self, keys: Sequence[tuple[str, ...]]) -> dict[str, str]:
        """Which of the fingerprints in `keys` belong to runs QUEUED, RUNNING or
        COMPLETED in the Study: fingerprint -> run id."""
        return self.store.find_fingerprints(self.study, (k for ks in keys for k in ks),
                                            _DUPLICATE_OF)

    def _skip_duplicates(self, docs: list[dict[str, Any]], keys: list[tuple[str, ...]],
                         known: dict[str, str] | None) -> list[dict[str, Any]]:
        """Leave out the runs whose fingerprints (`keys`, a tuple per document) are
        `known` (fingerprint -> id of a run stored already: `_existing`) or come earlier
        in `docs`, noting the runs they duplicate in `last_skipped`; `known=None`
        (force) keeps them all."""
        self.last_skipped = []
        if known is None:
            return docs
        kept = []
        for doc, doc_keys in zip(docs, keys):
            existing = next((known[k] for k in doc_keys if k in known), None)
            if existing is not None:
                self.last_skipped.append(existing)
                continue
            kept.append(doc)
            for key in doc_keys:
                known[key] = doc["_id"]
        return kept

    def scenario_class(self, task: Task) -> type[Scenario] | None:
        """The task's Scenario class when the Study's code is importable, else None
        (then only the worker validates the config)."""
        name = task.scenario_class_name
        if name not in registered_classes(Scenario):
            try:
                find_study(self.study_dir, self.tasks_dir)
            except StudyError as exc:
                raise StudyError(f"cannot validate the config: {exc}") from None
        if name not in registered_classes(Scenario):
            if self.study_dir is not None or registered_classes(Scenario):
                resolve_class(Scenario, name, "Scenario")  # raises, listing valid ones
            if not self._warned:
                warnings.warn("the Study's scenarios module is not importable here: configs "
                              "are queued unvalidated (pass study_dir= to validate them)",
                              stacklevel=3)
                self._warned = True
            return None
        cls = resolve_class(Scenario, name, "Scenario")
        cls.complete_config(task.scenario, "Scenario")
        return cls

    # ------------------------------------------------------------------ watching
    def status(self, task: str | None = None) -> dict[Status, int]:
        """Number of runs of this Study (or one task) in each status."""
        return self.store.count_by_status(self.runs(task=task))

    def runs(self, task: str | None = None, *, status: str | Sequence[str] | None = None,
             config: Mapping[str, Any] | None = None,
             ids: str | Iterable[str] | None = None) -> RunFilter:
        """The runs of this Study that match every criterion given: a `task`, a
        `status` ("FAILED", ["FAILED", "TIMEOUT"] or "FAILED,TIMEOUT"), `config` values
        by dotted path ({"model.className": "ForestModel"}) and run `ids`."""
        return RunFilter(study=self.study, task=task, status=status, config=config or {},
                         ids=None if ids is None else
                         ((ids,) if isinstance(ids, str) else tuple(ids)))

    def unclaimable(self) -> list[dict[str, Any]]:
        """Queued runs that no live worker of the Study can ever take (they need more
        GPUs or tags than any live worker offers): `task`, `gpus`, `tags`, `queued`.
        Without this a run waits silently for a worker that does not exist."""
        now = time.time()
        live = [w for w in self.store.list_workers()
                if w.get("study") == self.study and isinstance(w.get("heartbeat"), (int, float))
                and now - w["heartbeat"] <= (w.get("lease_s") or 60)]
        return [group for group in self.store.queued_groups(self.study)
                if not any(len(w.get("gpus") or ()) >= group["gpus"]
                           and set(group["tags"]) <= set(w.get("tags") or ()) for w in live)]

    def get(self, run_id: str | int) -> dict[str, Any]:
        """The queue document of one run (by run id or Sacred id)."""
        return self.store.get_run(run_id)

    def cancel(self, ids: str | Iterable[str] | None = None, *, task: str | None = None,
               status: str | Sequence[str] | None = None,
               config: Mapping[str, Any] | None = None, all: bool = False) -> dict[str, int]:
        """Cancel queued runs (they never start) and stop running ones (within a few
        seconds, status CANCELLED): by ids, or by task / status / config values, or
        every active run of the Study with `all=True`."""
        if ids is None and task is None and status is None and not config and not all:
            raise HSEError("cancel() needs ids, task=, status=, config= or all=True "
                           "(refusing to cancel everything implicitly)")
        cancelled, flagged = self.store.request_cancel(
            self.runs(task, status=status, config=config, ids=ids))
        return {"cancelled": cancelled, "stopping": flagged}

    def requeue(self, ids: str | Iterable[str] | None = None, *, task: str | None = None,
                status: str | Sequence[str] | None = None,
                config: Mapping[str, Any] | None = None) -> int:
        """Put finished runs back in the queue with a fresh attempt count; returns how
        many were requeued.

        By `ids` (any finished status), or by `task` / `config` values (FAILED, TIMEOUT
        and CANCELLED runs), narrowed by `status` (COMPLETED runs are requeued only when
        named by id or by status). Each run keeps its earlier outcome (status, reason,
        error, metrics, sacred_id, times, attempt, worker, host) in its
        `previous_attempts` list, and its Sacred record as it is. Asking for an active
        (QUEUED or RUNNING) run by id, or for an active status, is an HSEError naming
        them; unknown ids are a RunNotFound; nothing is requeued then.
        """
        if ids is None and task is None and status is None and not config:
            raise HSEError("requeue() needs ids, task=, status= or config= (refusing to "
                           "requeue every finished run implicitly)")
        statuses = parse_statuses(status)
        if statuses is None:
            statuses = FINAL if ids is not None else (FAILED, TIMEOUT, CANCELLED)
        active = [s for s in statuses if s in ACTIVE]
        if active:
            raise HSEError(f"cannot requeue {', '.join(map(str, active))} runs: only finished "
                           f"runs ({', '.join(map(str, FINAL))}) can be requeued")
        runs = self.runs(task, status=statuses, config=config, ids=ids)
        if runs.ids is not None:
            found = {d["_id"]: d.get("status") for d in self.store.find_runs(
                self.runs(ids=runs.ids), fields=["status"])}
            missing = [i for i in runs.ids if i not in found]
            if missing:
                raise RunNotFound(f"no run {', '.join(missing)} in Study '{self.study}'")
            running = [f"{i} ({found[i]})" for i in runs.ids if found[i] in ACTIVE]
            if running:
                raise HSEError(f"cannot requeue active run(s) {', '.join(running)}: they are "
                               f"still queued or running (wait, or cancel them first)")
        return self.store.requeue_finished(runs)

    def status_by_task(self) -> dict[str, dict[Status, int]]:
        """Number of runs of this Study per task and status, counted by the server:
        {task: {status: n}}, statuses without runs left out."""
        counts: dict[str, dict[Status, int]] = {}
        for (task, status), n in self.store.count_by_task_status(self.runs()).items():
            per_task = counts.setdefault(task or "?", {})
            per_task[status] = per_task.get(status, 0) + n
        return counts

    def recent(self, task: str | None = None, *, status: str | Sequence[str] | None = None,
               limit: int = 20) -> list[dict[str, Any]]:
        """The `limit` most recently queued runs of this Study matching `task` and
        `status` (as in `runs()`), newest first: their queue documents, limited to
        what `hse ls` shows (`task`, `status`, `seed`, `metrics`, `duration`, `host`,
        `sacred_id`, `task_spec`, `order`, `reason`, `started_at`, `worker`).

        `host` is also given for a RUNNING run, whose worker records the host only
        when the run ends: the host part of its worker id (`host:pid:hex`).
        """
        positive_int(limit, "limit")
        fields = ["task", "status", "seed", "metrics", "duration", "host", "sacred_id",
                  "task_spec", "order", "reason", "started_at", "worker"]
        found = self.store.find_runs(self.runs(task, status=status), fields=fields,
                                     newest_first=True, limit=limit)
        docs = sorted(found, key=lambda d: d.get("order", 0), reverse=True)[:limit]
        return [_with_host(doc) for doc in docs]

    def record(self, run_id: str | int) -> dict[str, Any]:
        """Everything recorded about one run (by run id or Sacred id), as `hse show`
        prints it:

        - `run`: its queue document (`host` filled in while it runs, as in `recent`);
        - `sacred`: its Sacred record, None when it never started;
        - `series`: the series it logged (`name`, `steps`, `values`), by name;
        - `error`: why it did not complete: the queue's `error`, else the Sacred
          record's `fail_trace`, else what its `reason` means (a TIMEOUT, a cancel, a
          lost worker, ...); for a run that is active or completed, an earlier
          attempt's `last_error`; None when there is nothing to say;
        - `output`: the output it printed, as Sacred captured it ("" when none).
        """
        doc = _with_host(self.get(run_id))
        sacred_id = doc.get("sacred_id")
        sacred = self.store.sacred_run(sacred_id) if sacred_id is not None else None
        series = self.store.metric_series([sacred_id]) if sacred_id is not None else []
        return {"run": doc, "sacred": sacred,
                "series": sorted(series, key=lambda s: str(s.get("name", ""))),
                "error": _run_error(doc, sacred),
                "output": (sacred or {}).get("captured_out") or ""}

    def workers(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """The workers registered in this database, by host and pid: their documents
        (`host`, `pid`, `study`, `current_run`, `executed`, `heartbeat`, `stopping`, and
        `cannot_run` / `last_rejection` when their Study code refused runs that another
        worker may run) with three fields added:

        - `state`: "DEAD" when its last heartbeat is older than its own lease (it was
          killed without cleaning up; its run is requeued once the run's lease expires),
          else "stopping" when asked to stop (it finishes its run, then exits), else
          "alive";
        - `lease`: that lease in seconds (the worker's `--lease`, or 3x the default
          heartbeat interval for workers that did not record one);
        - `heartbeat_age`: seconds since its last heartbeat (None: never).
        """
        from .worker import worker_state

        now = time.time() if now is None else now
        out = []
        for doc in self.store.list_workers():
            state, lease, age = worker_state(doc, now)
            out.append({**doc, "state": state, "lease": lease, "heartbeat_age": age})
        return sorted(out, key=lambda w: (str(w.get("host", "")), w.get("pid") if isinstance(
            w.get("pid"), int) else -1))

    def recover(self) -> dict[str, int]:
        """Do now what workers do on their own every few seconds (run it when no worker
        is running): requeue runs whose worker stopped renewing its lease (FAILED,
        "worker lost", after `max_attempts`), quarantine queue documents no worker
        could ever claim, close Sacred records left open by workers that lost their
        run, and archive every finished run. Returns {"recovered": runs requeued or
        failed, "archived": finished runs archived}. Covers the whole database.
        """
        from .worker import recover_expired

        recovered = recover_expired(self.store)
        self.store.quarantine_orphans()
        self.store.close_orphan_sacred_runs()
        archived = 0
        while batch := self.store.sweep_finished(everything=True):
            archived += batch
        return {"recovered": recovered, "archived": archived}

    def wait(self, ids: Iterable[str] | None = None, *, timeout: float | None = None,
             poll: float = 0.5, progress: bool = True) -> dict[str, int]:
        """Block until the given runs (default: every run of the Study active now)
        have finished; shows a progress bar. Returns their count per status."""
        from tqdm.auto import tqdm

        if ids is None:
            ids = [d["_id"] for d in self.store.find_runs(
                self.runs(status=ACTIVE), fields=["_id"])]
        ids = list(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=len(ids), disable=not progress, desc="runs", unit="run") as bar:
            while True:
                docs = list(self.store.find_runs(RunFilter(ids=tuple(ids)),
                                                 fields=["status"]))
                counts: dict[str, int] = {}
                for doc in docs:
                    counts[doc["status"]] = counts.get(doc["status"], 0) + 1
                finished = sum(n for s, n in counts.items() if s in FINAL)
                bar.n = finished
                bar.set_postfix({s.lower(): n for s, n in sorted(counts.items())}, refresh=True)
                if finished >= len(set(ids)):
                    return counts
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"{len(set(ids)) - finished} of {len(set(ids))} runs "
                                       f"still unfinished after {timeout}s: {counts}")
                time.sleep(poll)

    def results(self, task: str | None = None, *, status: str | Sequence[str] | None = None,
                config: Mapping[str, Any] | None = None):
        """One row per run: flattened full config, metrics, seed, status, timings, host.
        `status` and `config` narrow the runs as in `runs()`."""
        from .results import results_frame

        runs = self.runs(task, status=status, config=config)
        docs, memo = self._results_docs(runs)
        return results_frame(self.store, runs, study_dir=self.study_dir,
                             tasks_dir=self.tasks_dir, docs=docs, memo=memo)

    def _results_docs(self, runs: RunFilter) -> tuple[list[dict[str, Any]], Any]:
        """The documents `results` builds its frame from, and the `RowMemo` of the
        rows built from them. The last read is kept with the store's `change_stamp`
        of its filter: while the stamp is unchanged, the next call for that filter,
        or for it narrowed to some statuses (as `summary` asks after `results`), costs
        one small aggregate instead of reading every run, and reuses its rows."""
        from .results import RowMemo

        broad = dataclasses.replace(runs, status=None)
        cached = self._results_cache
        if cached is not None and cached[0] in (runs, broad) \
                and self.store.change_stamp(cached[0]) == cached[1]:
            docs, memo = cached[2], cached[3]
            if cached[0] == runs:
                return docs, memo
            return [d for d in docs if d.get("status") in (runs.status or ())], memo
        stamp = self.store.change_stamp(runs)  # before reading: a change meanwhile shows
        docs, memo = list(self.store.find_results(runs, stamp=stamp)), RowMemo()
        self._results_cache = (runs, stamp, docs, memo) \
            if len(docs) <= _RESULTS_CACHE_RUNS else None
        return docs, memo

    def task(self, task_name: str, *, require_runs: bool = False) -> Task:
        """The task as its file says now, or as last queued if the file is gone.

        `require_runs=True`: an HSEError naming the tasks that have runs when this one
        has none in the Study (what `summary`, `best` and `hse plot` need first).
        """
        # Whether one run exists, not how many: counting them is a group over every run
        # of the task (a second or more on the embedded server with 100,000 of them).
        if require_runs and next(self.store.find_runs(self.runs(task_name), fields=["_id"],
                                                      limit=1), None) is None:
            known = ", ".join(sorted(self.status_by_task())) or "(none)"
            raise HSEError(f"no runs of task '{task_name}' in study '{self.study}' (database "
                           f"'{self.store.db_name}'); tasks with runs: {known}")
        try:
            if self.tasks_dir is None:
                raise TaskError("no tasks directory")
            return load_task(self.tasks_dir, task_name)
        except TaskError:
            for doc in self.store.find_runs(self.runs(task_name), fields=["task_spec"], limit=1):
                return Task.from_doc(doc["task_spec"])
            raise

    def summary(self, task: str, by: Sequence[str] | None = None, **kwargs: Any):
        """Runs that differ only by seed grouped: n, mean, std, sem, 95% CI of every
        metric, ranked by the task's main metric, with Welch / Mann-Whitney tests
        (Holm-corrected) against the best group. See `analysis.summarize`."""
        from .analysis import summarize

        spec = self.task(task, require_runs=True)
        statuses = kwargs.get("statuses", ("COMPLETED",))  # only those runs are read
        return summarize(self.results(task, status=statuses), spec.metric, spec.direction,
                         by=list(by) if by else None, **kwargs)

    def best(self, task: str) -> dict[str, Any]:
        """The best COMPLETED run of `task` by the task's metric and direction (one run,
        not a mean over seeds: see `summary`), and how to run it again.

        Keys: `run_id`, `sacred_id`, `task`, `seed`, `metric`, `direction`, `value` (of
        the metric), `metrics`, `config` and `resubmit`.

        `config` is the run's complete stored config: what its worker executed, every
        default filled in as it was then. Submitting it with `seeds=[seed]` reproduces
        the run exactly, even after the Study's defaults have changed (the config as
        given at submit would pick up today's defaults instead). `resubmit` is that
        call, `q.submit(...)`, with `force=True`: the run itself is COMPLETED, so a plain
        submit would skip the copy as its duplicate.

        Raises HSEError when the task has no runs (naming the tasks that have some) or
        no COMPLETED run yet (with its number of runs in each status).
        """
        from .analysis import best_run

        spec = self.task(task, require_runs=True)
        frame = self.results(task, status=COMPLETED)
        if len(frame) == 0:
            counts = {s: n for s, n in self.status(task).items() if n}
            raise HSEError(f"no COMPLETED run of task '{task}' yet ("
                           + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())) + ")")
        row = best_run(frame, spec.metric, spec.direction)
        doc = self.get(row["run_id"])
        metrics = doc.get("metrics") or {}
        config = doc.get("config") or {}
        return {"run_id": doc["_id"], "sacred_id": doc.get("sacred_id"), "task": task,
                "seed": doc.get("seed"), "metric": spec.metric, "direction": spec.direction,
                "value": metrics.get(spec.metric), "metrics": metrics, "config": config,
                "resubmit": f"q.submit({task!r}, {config!r}, force=True, "
                            f"seeds=[{doc.get('seed')}])"}

    def curves(self, task: str, name: str, *,
               statuses: Sequence[str] | None = ("COMPLETED",)):
        """A metric logged with `log_scalar`, long format, for `plots.plot_curves`:
        the COMPLETED runs' curves by default, as `hse plot TASK curve` draws them
        (`statuses=None` adds cancelled and failed runs' partial curves)."""
        from .results import curves_frame

        return curves_frame(self.store, self.results(task), name, statuses)
    def series_names(self, task: str | None = None, *,
                     status: str | Sequence[str] | None = None) -> list[str]:
        """Names of the series (`log_scalar`) that the matching runs logged, sorted."""
        ids = [d["sacred_id"] for d in self.store.find_runs(
            self.runs(task, status=status), fields=["sacred_id"])
            if isinstance(d.get("sacred_id"), int)]
        return sorted({str(r.get("name")) for r in self.store.metric_series(ids)}) if ids else []

    def diff(self, run_a: str | int, run_b: str | int) -> dict[str, Any]:
        """Config and code-version differences between two runs."""
        from .results import run_diff

        return run_diff(self.store, run_a, run_b)

    # ------------------------------------------------------------------ browsing
    def runs_page(self, task: str | None = None, *, status: str | Sequence[str] | None = None,
                  config: Mapping[str, Any] | None = None, sort: str = "order",
                  descending: bool = True, offset: int = 0, limit: int = 50,
                  fields: Sequence[str] | None = None, after: Sequence[Any] | None = None,
                  before: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """One page of this Study's runs matching `task`, `status` and `config` (as in
        `runs()`), sorted by `sort` ("order" = when queued, "started_at", "ended_at",
        "duration", "seed", "status", "task" or "metrics.<name>"): the `limit` runs
        after the first `offset`, limited to `fields` (`host` filled in as in
        `recent`). The web page's runs list: it never reads every run.

        `after=[value, run_id]` (a run's `sort` field and id; sorts "order", "seed",
        "status" and "task") continues after that run, `before=` ends before it, at
        the cost of a first page however deep (see `Storage.page_runs`)."""
        docs = self.store.page_runs(self.runs(task, status=status, config=config), sort=sort,
                                    descending=descending, skip=offset, limit=limit,
                                    fields=fields, after=after, before=before)
        return [_with_host(doc) for doc in docs]

    def ended_since(self, since: float, task: str | None = None) -> int:
        """How many runs of this Study (or one task) ended at or after `since` (epoch
        seconds): the throughput behind the web page's ETA."""
        return self.store.count_ended_since(self.runs(task), since)


    # ------------------------------------------------------------------ reproducing
    def code_version(self, task: str) -> dict[str, Any] | None:
        """The code a worker with today's Study code would record for `task` (see
        `versions.code_version`); None when the Study's code is not importable here."""
        from .versions import code_version

        cls = self.scenario_class(self.task(task))
        return None if cls is None else code_version(study_root(sys.modules[cls.__module__]))

    def rerun(self, run_id: str | int, overrides: Mapping[str, Any] | None = None, *,
              seed: int | None = None) -> str:
        """Queue a past run again: its exact stored config (complete, every default as
        it ran) with `overrides` ({"model.C": 2.0}, dotted paths) applied, under its
        task as it was queued, with its seed unless `seed` is given. Returns the new
        run's id; the new run's `reproduces` names the old one (`q.diff` compares them).

        A rerun is an explicit request: it is queued even when an identical run exists.
        When today's Study code differs from the code the run ran with, a
        `CodeChangedWarning` says how (also kept in `last_code_changes`).
        """
        doc = self.get(run_id)
        config = copy.deepcopy(doc.get("config") or {})
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ConfigError("", f"overrides must be a dict of dotted path -> value, "
                                  f"got {overrides!r}")
        for path, value in (overrides or {}).items():
            if not isinstance(path, str) or not path or path.startswith(".") \
                    or path.endswith(".") or ".." in path:
                raise ConfigError(str(path), "not a dotted config path (like 'model.C')")
            set_dotted(config, path, json_like(value, path))
        spec = doc.get("task_spec")
        task = Task.from_doc(dict(spec)) if isinstance(spec, Mapping) else self.task(doc["task"])
        self.last_code_changes = self._code_changes(doc, task)
        if self.last_code_changes:
            warnings.warn(CodeChangedWarning(
                f"run {doc['_id']} ran with other code than today's: "
                + "; ".join(self.last_code_changes)), stacklevel=2)
        return self._enqueue(task, [config], seeds=[doc["seed"] if seed is None else seed],
                             priority=int(doc.get("priority") or 0), force=True,
                             max_runtime=doc.get("max_runtime"), gpus=doc.get("gpus"),
                             tags=doc.get("tags"), extra={"reproduces": doc["_id"]})[0]

    def _code_changes(self, doc: Mapping[str, Any], task: Task) -> list[str]:
        """How today's Study code differs from the code a run recorded (none known:
        nothing to say)."""
        from .versions import differences

        then = doc.get("code_version")
        cls = self.scenario_class(task) if isinstance(then, Mapping) else None
        if cls is None:
            return []
        from .versions import code_version

        now = code_version(study_root(sys.modules[cls.__module__]))
        out = []
        for what, a, b in differences(then, now):
            if what == "changed":
                continue
            out.append(f"{what}: {_short(a)} -> {_short(b)}")
        if now.get("changed"):
            out.append("uncommitted changes today in " + ", ".join(now["changed"][:10])
                       + (" ..." if len(now["changed"]) > 10 else ""))
        return out

    def run_here(self, task: str, conf: Mapping[str, Any] | None = None, *,
                 seed: int | None = None) -> dict[str, Any]:
        """Run one config now, in this process, exactly as a worker would: defaults
        filled, validated, seeded, under Sacred, recorded in this database as a run
        of the Study (`results()` shows it). For trying and debugging a scenario in a
        notebook before queueing a grid: prints appear here, and an exception of the
        scenario is raised here (after the run is recorded FAILED), so `%debug` works.

        Returns `run_id`, `sacred_id`, `status`, `metrics` and `error`.
        """
        from .execution import RunSpec
        from .execution.supervisor import Executor
        from .worker import final_fields

        spec_task = self.task(task)
        cls = self.scenario_class(spec_task)
        if cls is None:
            raise StudyError("run_here needs the Study's code: pass study_dir= to RunQueue")
        doc, _, complete = next(self._documents(
            spec_task, [{} if conf is None else conf], seeds=None if seed is None else [seed],
            priority=0, max_attempts=1, max_runtime=None, gpus=None, tags=None, tuning=None,
            extra={"run_here": socket.gethostname()}))
        worker_id = f"{socket.gethostname()}:{os.getpid()}:here"
        self.store.start_here(doc, worker_id, _HERE_LEASE_S)
        log_dir = Path(tempfile.gettempdir()) / "hse-run-here"
        log_dir.mkdir(exist_ok=True)
        spec = RunSpec(run_id=doc["_id"], task=spec_task, config=complete, seed=doc["seed"],
                       sacred_id=self.store.reserve_sacred_ids(1)[0], attempt=1,
                       token=doc["token"], max_runtime=None,
                       log_path=log_dir / f"{doc['_id']}.log")
        executor = Executor(self.store, sys.modules[cls.__module__], log_dir,
                            heartbeat_s=_HERE_LEASE_S / 6, lease_s=_HERE_LEASE_S,
                            interrupt=lambda: None, on_beat=lambda: None)
        started = time.time()
        outcome, raised = executor.execute_here(spec)
        status: Status = outcome.status
        if not outcome.fenced:
            status, fields = final_fields(outcome, spec, doc, executor.code_version(spec_task),
                                          started)
            self.store.finish(doc["_id"], doc["token"], status, fields)
        if raised is not None and status not in (COMPLETED, Status.PRUNED):
            raise raised
        return {"run_id": doc["_id"], "sacred_id": spec.sacred_id, "status": status,
                "metrics": outcome.metrics, "error": outcome.error}

    def backfill(self, task: str, *, dry_run: bool = False) -> dict[str, Any]:
        """Write today's defaults into the stored configs of the task's finished runs
        (queue documents and Sacred records), so incense, Omniboard or any reader sees
        complete configs without the Study's code. Each run's original config is kept
        in `config_original` (the first time only). A second call changes nothing.

        Runs whose config today's code refuses (a parameter renamed or removed) are
        left as they are and reported. Returns {"runs": finished runs read, "changed":
        runs updated (or that would be, `dry_run=True`), "unchanged", "refused":
        {problem: number of runs}, "dry_run"}.
        """
        cls = self.scenario_class(self.task(task, require_runs=True))
        if cls is None:
            raise StudyError("backfill needs the Study's code (today's defaults): pass "
                             "study_dir= to RunQueue")
        changes: list[dict[str, Any]] = []
        refused: dict[str, int] = {}
        seen = 0
        fields = ["config", "config_original", "sacred_id", "seed"]
        for doc in self.store.find_runs(self.runs(task, status=FINAL), fields=fields):
            seen += 1
            stored = doc.get("config") if isinstance(doc.get("config"), dict) else {}
            try:
                complete = cls.complete_run_config(stored)
            except ConfigError as exc:
                refused[str(exc)] = refused.get(str(exc), 0) + 1
                continue
            if _canonical(complete) == _canonical(stored):
                continue
            changes.append({"run_id": doc["_id"], "sacred_id": doc.get("sacred_id"),
                            "seed": doc.get("seed"), "config": complete,
                            "original": None if "config_original" in doc else stored})
        if changes and not dry_run:
            self.store.replace_configs(changes)
        return {"runs": seen, "changed": len(changes),
                "unchanged": seen - len(changes) - sum(refused.values()),
                "refused": refused, "dry_run": dry_run}


    # ------------------------------------------------------------------ models
    def load_model(self, run_id: str | int, name: str = "model") -> Any:
        """The model a run saved with `Scenario.save_model` (see `models`)."""
        from .models import read_model

        return read_model(self, run_id, name)

    def export(self, run_id: str | int, directory: str | Path) -> Path:
        """Write the run's models, complete config, code version and metrics to a new
        or empty `directory` (see `models.export_run`); returns it."""
        from .models import export_run

        return export_run(self, run_id, directory)


def _seed_list(task: Task, seeds: int | Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [task.seed]
    if isinstance(seeds, bool):
        raise HSEError(f"seeds must be an int or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise HSEError(f"seeds={seeds}: ask for at least one seed")
        if task.seed + seeds - 1 > MAX_SEED:
            raise HSEError(f"seeds={seeds}: from the task's seed {task.seed} that goes past "
                           f"the largest seed, {MAX_SEED} (2**32 - 1)")
        return [task.seed + i for i in range(seeds)]
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED
                      for s in out):
        raise HSEError(f"seeds must be ints from 0 to {MAX_SEED} (2**32 - 1: Sacred seeds "
                       f"NumPy with them), got {seeds!r}")
    if len(set(out)) != len(out):
        raise HSEError(f"seeds contain duplicates: {out}")
    return out


def run_fingerprint(task: str, config: Mapping[str, Any], seed: int) -> str:
    """What identifies a run for duplicate detection: a hash of the task name, the
    config (as canonical JSON: keys sorted, integral floats written as ints, as config
    completion treats them) and the seed. The same in every Python version."""
    return run_fingerprints(task, config, [seed])[0]


def run_fingerprints(task: str, config: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """`run_fingerprint` of `config` under each seed, the config serialised once: the
    text hashed is `{"config": ..., "seed": ..., "task": ..., "v": 1}` with its keys
    sorted, so the config's JSON is the same text for every seed."""
    head = '{"config":' + _dumps(_canonical(config)) + ',"seed":'
    tail = ',"task":' + _dumps(task) + ',"v":1}'
    return [hashlib.sha256((head + _dumps(seed) + tail).encode()).hexdigest()[:32]
            for seed in seeds]


# One encoder for every fingerprint: json.dumps with options builds a new one per call,
# which costs as much as encoding a small config (a grid fingerprints each of its runs).
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_canonical(v) for v in value]
    return value


def _with_host(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with `host` set from its worker id (`host:pid:hex`) when the worker
    has not recorded it yet (it does when the run ends)."""
    worker = doc.get("worker")
    if not doc.get("host") and isinstance(worker, str) and worker.count(":") >= 2:
        doc = {**doc, "host": worker.rsplit(":", 2)[0]}
    return doc


_REASON_TEXT = {
    Reason.TIMEOUT.value: "ran longer than its max_runtime and was stopped",
    Reason.CANCELLED.value: "cancelled",
    Reason.WORKER_LOST.value: "its worker stopped renewing the lease max_attempts times",
    Reason.KILLED.value: "killed by a signal (out of memory?) or exited early",
    Reason.INVALID.value: "the task or config was rejected by the worker's code",
    Reason.ERROR.value: "the run's code raised or returned unusable metrics",
}


def _run_error(doc: Mapping[str, Any], sacred: Mapping[str, Any] | None) -> str | None:
    """The error `RunQueue.record` reports (see there)."""
    if doc.get("status") in (FAILED, TIMEOUT, CANCELLED):
        trace = (sacred or {}).get("fail_trace")
        trace = "".join(trace) if isinstance(trace, list) else trace
        for candidate in (doc.get("error"), trace):
            if isinstance(candidate, str) and candidate.strip():
                return candidate
        reason = doc.get("reason")
        return _REASON_TEXT.get(str(reason),
                                f"{doc.get('status')} ({reason or 'no reason recorded'})")
    last = doc.get("last_error")
    return last if isinstance(last, str) and last.strip() else None


_PROGRESS_RUNS = 1000  # runs from which a submit shows a progress bar by default
_DUPLICATE_OF = (QUEUED, RUNNING, COMPLETED)  # a new run equal to one of these is skipped
_SUBMIT_BATCH = 5000  # runs queued per call of Storage.enqueue (the bar moves between)
_RESULTS_CACHE_RUNS = 200_000  # runs whose documents `results` keeps for the next call
_HERE_LEASE_S = 60.0  # run_here's lease, renewed every 10 s by a thread


class CodeChangedWarning(UserWarning):
    """A rerun's run ran with other Study code than today's."""


def _short(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= 16 else text[:12] + "..."
