"""RunQueue: submit, watch, cancel and collect runs from a notebook (or the CLI).

    from hyperspace_explorer import RunQueue
    q = RunQueue(None, "digits", "tasks")          # None: $HSE_MONGO_URI or embedded
    ids = q.submit("digits_small", {"model": {"className": "LogisticModel", "C": 0.5}},
                   seeds=3)
    q.wait(ids)
    q.results("digits_small")

Configs are validated against the Study's Configurable classes at submit time whenever
the Study's code is importable, so a typo fails here and not hours later on a worker.
"""
from __future__ import annotations

import copy
import itertools
import socket
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .configurable import json_like, registered_classes, resolve_class, set_dotted
from .errors import ConfigError, HSEError, StudyError, TaskError
from .scenario import Scenario
from .store import ACTIVE, DEFAULT_MAX_ATTEMPTS, FINAL, Store, now_ts
from .study import load_scenarios, scenarios_file
from .task import Task, load_task, task_names


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
        self.store = Store.connect(resolve_uri(mongo_uri), db_name)
        self.study = study or db_name
        self.study_dir = Path(study_dir) if study_dir is not None else None
        self._warned = False

    def close(self) -> None:
        """Close the database connection (also done when the object is collected)."""
        self.store.close()

    def __enter__(self) -> "RunQueue":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ submitting
    def submit(self, task_name: str, conf: Mapping[str, Any] | None = None, *,
               seeds: int | Sequence[int] | None = None, priority: int = 0,
               max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               max_runtime: float | None = None) -> list[str]:
        """Queue `conf` for `task_name`; returns the new run ids (one per seed).

        `seeds=n` runs the config under n seeds (the task's seed, +1, ... +n-1), so
        re-submitting gives the same seeds; a list gives them explicitly.
        """
        return self._enqueue(task_name, [dict(conf or {})], seeds=seeds, priority=priority,
                             max_attempts=max_attempts, max_runtime=max_runtime)

    def submit_grid(self, task_name: str, base_conf: Mapping[str, Any] | None,
                    grid: Mapping[str, Sequence[Any]], **kwargs: Any) -> list[str]:
        """Queue the cartesian product of `grid` ({"model.C": [0.1, 1], ...}) applied
        on top of `base_conf`. All configs are validated before any is queued."""
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError("", "grid must be a non-empty dict of dotted path -> list of values")
        for path, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ConfigError(path, f"grid values must be a non-empty list, got {values!r}")
        confs = []
        for combo in itertools.product(*grid.values()):
            conf = copy.deepcopy(dict(base_conf or {}))
            for path, value in zip(grid, combo):
                set_dotted(conf, path, copy.deepcopy(value))
            confs.append(conf)
        return self._enqueue(task_name, confs, **kwargs)

    def _enqueue(self, task_name: str, confs: list[dict[str, Any]], *,
                 seeds: int | Sequence[int] | None = None, priority: int = 0,
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_runtime: float | None = None) -> list[str]:
        if self.tasks_dir is None:
            raise HSEError("this RunQueue has no tasks directory: pass tasks_dir= to submit")
        task = load_task(self.tasks_dir, task_name)
        seed_list = _seed_list(task, seeds)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise HSEError(f"priority must be an int, got {priority!r}")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise HSEError(f"max_attempts must be a positive int, got {max_attempts!r}")
        if max_runtime is not None and (isinstance(max_runtime, bool)
                                        or not isinstance(max_runtime, (int, float))
                                        or max_runtime <= 0):
            raise HSEError(f"max_runtime must be a positive number of seconds, got {max_runtime!r}")
        scenario_cls = self.scenario_class(task)
        docs = []
        now, host = now_ts(), socket.gethostname()
        for conf in confs:
            conf = json_like(conf, "")
            if scenario_cls is not None:
                scenario_cls.complete_run_config(conf)  # raises ConfigError naming the path
            for seed in seed_list:
                docs.append({"study": self.study, "task": task.name, "task_spec": task.to_doc(),
                             "config": copy.deepcopy(conf), "seed": seed, "priority": priority,
                             "max_attempts": max_attempts, "max_runtime": max_runtime,
                             "queued_at": now, "submitted_from": host})
        return self.store.enqueue(docs)

    def scenario_class(self, task: Task) -> type[Scenario] | None:
        """The task's Scenario class when the Study's code is importable, else None
        (then only the worker validates the config)."""
        name = task.scenario_class_name
        if name not in registered_classes(Scenario):
            for candidate in ([self.study_dir] if self.study_dir else
                              [self.tasks_dir.resolve().parent, Path.cwd()]):  # type: ignore[union-attr]
                if scenarios_file(candidate) is not None:
                    try:
                        load_scenarios(candidate)
                    except StudyError as exc:
                        raise StudyError(f"cannot validate the config: {exc}") from None
                    break
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
    def status(self, task: str | None = None) -> dict[str, int]:
        """Number of runs of this Study (or one task) in each status."""
        return self.store.count_by_status(self._match(task=task))

    def get(self, run_id: str | int) -> dict[str, Any]:
        """The queue document of one run (by run id or Sacred id)."""
        return self.store.get_run(run_id)

    def cancel(self, ids: str | Iterable[str] | None = None, *, task: str | None = None,
               filter: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Cancel queued runs (they never start) and stop running ones (within a few
        seconds, status CANCELLED), by ids, by task, or by a MongoDB filter."""
        if ids is None and task is None and filter is None:
            raise HSEError("cancel() needs ids, task= or filter= (refusing to cancel everything "
                           "implicitly; pass filter={} to mean all runs of the Study)")
        match = self._match(task=task, filter=filter)
        if ids is not None:
            match["_id"] = {"$in": [ids] if isinstance(ids, str) else list(ids)}
        cancelled, flagged = self.store.request_cancel(match)
        return {"cancelled": cancelled, "stopping": flagged}

    def wait(self, ids: Iterable[str] | None = None, *, timeout: float | None = None,
             poll: float = 0.5, progress: bool = True) -> dict[str, int]:
        """Block until the given runs (default: every run of the Study active now)
        have finished; shows a progress bar. Returns their count per status."""
        from tqdm.auto import tqdm

        if ids is None:
            ids = [d["_id"] for d in self.store.find_runs(
                {**self._match(), "status": {"$in": list(ACTIVE)}}, projection={"_id": 1})]
        ids = list(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=len(ids), disable=not progress, desc="runs", unit="run") as bar:
            while True:
                docs = list(self.store.find_runs({"_id": {"$in": ids}},
                                                 projection={"status": 1}))
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

    def results(self, task: str | None = None, filter: Mapping[str, Any] | None = None, *,
                statuses: Sequence[str] | None = None):
        """One row per run: flattened full config, metrics, seed, status, timings, host."""
        from .results import results_frame

        return results_frame(self.store, study=self.study, task=task, filter=filter,
                             statuses=statuses)

    def task(self, task_name: str) -> Task:
        """The task as its file says now, or as last queued if the file is gone."""
        try:
            if self.tasks_dir is None:
                raise TaskError("no tasks directory")
            return load_task(self.tasks_dir, task_name)
        except TaskError:
            for doc in self.store.find_runs(self._match(task=task_name), limit=1):
                return Task.from_doc(doc["task_spec"])
            raise

    def summary(self, task: str, by: Sequence[str] | None = None, **kwargs: Any):
        """Runs that differ only by seed grouped: n, mean, std, sem, 95% CI of every
        metric, ranked by the task's main metric, with Welch / Mann-Whitney tests
        (Holm-corrected) against the best group. See `analysis.summarize`."""
        from .analysis import summarize

        spec = self.task(task)
        return summarize(self.results(task), spec.metric, spec.direction,
                         by=list(by) if by else None, **kwargs)

    def best(self, task: str) -> dict[str, Any]:
        """The best completed run of `task`, with what it takes to run it again."""
        from .analysis import best_run

        spec = self.task(task)
        row = best_run(self.results(task), spec.metric, spec.direction)
        doc = self.get(row["run_id"])
        config = doc.get("config_given") if doc.get("config_given") is not None else doc["config"]
        return {"run_id": doc["_id"], "sacred_id": doc.get("sacred_id"), "task": task,
                "seed": doc["seed"], "metric": spec.metric, "value": doc["metrics"][spec.metric],
                "metrics": doc["metrics"], "config": doc["config"],
                "resubmit": f"q.submit({task!r}, {config!r}, seeds=[{doc['seed']}])"}

    def curves(self, task: str, name: str, *,
               statuses: Sequence[str] | None = ("COMPLETED",)):
        """A metric logged with `log_scalar`, long format, for `plots.plot_curves`:
        the COMPLETED runs' curves by default, as `hse plot TASK curve` draws them
        (`statuses=None` adds cancelled and failed runs' partial curves)."""
        from .results import curves_frame

        return curves_frame(self.store, self.results(task), name, statuses)

    def diff(self, run_a: str | int, run_b: str | int) -> dict[str, Any]:
        """Config and code-version differences between two runs."""
        from .results import run_diff

        return run_diff(self.store, run_a, run_b)

    def _match(self, task: str | None = None,
               filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
        match: dict[str, Any] = {**dict(filter or {}), "study": self.study}
        if task is not None:
            match["task"] = task
        return match


def _seed_list(task: Task, seeds: int | Sequence[int] | None) -> list[int]:
    if seeds is None:
        return [task.seed]
    if isinstance(seeds, bool):
        raise HSEError(f"seeds must be an int or a list of ints, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise HSEError(f"seeds={seeds}: ask for at least one seed")
        return [task.seed + i for i in range(seeds)]
    out = list(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in out):
        raise HSEError(f"seeds must be non-negative ints, got {seeds!r}")
    if len(set(out)) != len(out):
        raise HSEError(f"seeds contain duplicates: {out}")
    return out
