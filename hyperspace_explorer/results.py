"""Results: every run of a Study as one pandas DataFrame row.

Columns: `run_id`, `sacred_id`, `task`, `status`, `reason`, `seed`, `config.<dotted>`
(the full config, lists as tuples), `metrics.<name>`, `queued_at`, `start_time`,
`stop_time`, `duration` (s), `host`, `code_version` (commit, "+dirty" when the work
tree had changes), `attempt`, `error`. The analysis functions (`analysis.py`) take it.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .configurable import flatten, registered_classes, registry_state, resolve_class
from .errors import HSEError, StudyError
from .scenario import Scenario
from .storage import RunFilter, Storage, bulk_objects, queue_document_problem
from .study import find_study, study_candidates

_FIXED = ["run_id", "sacred_id", "task", "status", "reason", "seed", "queued_at",
          "start_time", "stop_time", "duration", "host", "code_version", "attempt", "error"]


# One encoder for every run's config key (json.dumps with options builds one per call).
_CONFIG_KEY = json.JSONEncoder(sort_keys=True, default=repr).encode


def results_frame(store: Storage, runs: RunFilter, *, study_dir: str | Path | None = None,
                  tasks_dir: str | Path | None = None,
                  docs: Iterable[dict[str, Any]] | None = None, memo: RowMemo | None = None):
    """Build the results DataFrame (see the module docstring) of the runs `runs` selects.

    Stored configs are completed with today's defaults, so runs from before a parameter
    existed show its default, not NaN. The Study's code for that is imported when a
    run needs it (`study.find_study`: `study_dir`, else the tasks directory's parent,
    then the current directory). Where it cannot be, one warning says so: those
    configs are shown as stored, and identical configs stored by different code
    versions may then appear as different rows.

    A document whose `config` or `task_spec` is not an object (written by hand or by
    another client) is left out: its config cannot be read or completed, and a row
    without one would stand as a config of its own in summaries and rankings. One
    warning names those runs and their problem (`storage.queue_document_problem`);
    `RunQueue.get(run_id)` shows them as stored.

    `docs`: what `store.find_results(runs)` answers, when the caller has it; `memo`:
    the rows already built from those very documents (`RowMemo`), to reuse.
    """
    import pandas as pd

    if memo is None:
        completers = _Completers(study_dir, tasks_dir)
        built: dict[int, dict[str, Any]] = {}
    else:
        if memo.completers is None or memo.classes != registry_state():  # Study reloaded
            memo.completers, memo.rows = _Completers(study_dir, tasks_dir), {}
        completers, built = memo.completers, memo.rows
        completers.missing = {}  # counted again for this frame's runs
    rows, malformed = [], []
    with bulk_objects():
        for doc in store.find_results(runs) if docs is None else docs:
            if _unreadable(doc):
                whole = store.get_run(doc["_id"])  # rare: read it all to name the problem
                malformed.append(f"{doc['_id']} ({queue_document_problem(whole)})")
                continue
            row = built.get(id(doc))
            if row is None:
                row = built[id(doc)] = _row(doc, completers)
            else:  # counted as `_Completers.columns` counts a config it cannot complete
                completers.shown_as_stored(row["_class"])
            rows.append(row)
    if memo is not None:
        memo.classes = registry_state()  # after any import of the Study the rows caused
    for message in (completers.warning(), _malformed_warning(malformed)):
        if message:
            warnings.warn(message, stacklevel=2)
    if not rows:
        return pd.DataFrame(columns=_FIXED)
    frame = pd.DataFrame.from_records(rows, exclude=["_class", "_config"])
    _keep_stored_config_values(frame, rows)
    for col in ("queued_at", "start_time", "stop_time"):
        frame[col] = pd.to_datetime(pd.to_numeric(frame[col], errors="coerce"), unit="s",
                                    utc=True)
    fixed = [c for c in _FIXED if c in frame.columns]
    config_cols = sorted(c for c in frame.columns if c.startswith("config."))
    metric_cols = sorted(c for c in frame.columns if c.startswith("metrics."))
    return frame[fixed + config_cols + metric_cols].reset_index(drop=True)


def _keep_stored_config_values(frame, rows: list[dict[str, Any]]) -> None:
    """Config columns hold the values as stored. pandas turns an explicit None into NaN
    (the mark of a parameter the config does not have) and ints next to missing values
    into floats (20 -> 20.0); such columns are rebuilt as object columns: None stays
    None, ints stay ints, NaN only where the config lacks the key. The values are
    looked at once per distinct config (the rows' `_config`), not once per run."""
    import numpy as np
    import pandas as pd

    configs = list({id(r["_config"]): r["_config"] for r in rows}.values())
    for col in [c for c in frame.columns if c.startswith("config.")]:
        present = [config[col] for config in configs if col in config]
        has_none = any(v is None for v in present)
        has_int = frame[col].dtype.kind == "f" and any(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present)
        if has_none or has_int:
            frame[col] = pd.Series([r.get(col, np.nan) for r in rows], index=frame.index,
                                   dtype=object)


def _unreadable(doc: dict[str, Any]) -> bool:
    """Whether a document's config cannot be read (so neither shown nor completed)."""
    config = doc.get("config")
    return not isinstance(doc.get("task_spec"), dict) or not (config is None
                                                              or isinstance(config, dict))


def _row(doc: dict[str, Any], completers: _Completers) -> dict[str, Any]:
    scenario = doc["task_spec"].get("scenario")
    class_name = scenario.get("className") if isinstance(scenario, dict) else None
    version = doc.get("code_version")
    version = version if isinstance(version, dict) else {}
    commit = version.get("commit")
    row = {
        "run_id": doc["_id"], "sacred_id": doc.get("sacred_id"), "task": doc.get("task"),
        "status": doc.get("status"), "reason": doc.get("reason"), "seed": doc.get("seed"),
        "queued_at": doc.get("queued_at"), "start_time": doc.get("started_at"),
        "stop_time": doc.get("ended_at"), "duration": doc.get("duration"),
        "host": doc.get("host"), "attempt": doc.get("attempt"), "error": doc.get("error"),
        "code_version": f"{commit}{'+dirty' if version.get('dirty') else ''}" if commit else None,
        "_class": class_name,  # for `RowMemo` reuse; not a column (nor is `_config`)
    }
    row["_config"] = columns = completers.columns(class_name, doc.get("config") or {})
    row.update(columns)
    metrics = doc.get("metrics")
    if isinstance(metrics, dict):
        row.update({f"metrics.{k}": v for k, v in metrics.items()})
    return row


class RowMemo:
    """The rows `results_frame` built from the documents of one read, by document, and
    the completers it used: `RunQueue` keeps one with the documents it keeps, so a
    frame of some of them (`summary` after `results`) reuses their rows instead of
    building them again; the warnings are those of a frame built afresh."""

    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}  # id(document) -> row
        self.completers: _Completers | None = None
        self.classes: tuple[tuple[str, int], ...] = ()  # `registry_state` they were built with


class _Completers:
    """Each Scenario's `complete_run_config` by class name. The Study's code is imported
    (once) when a run names a class not registered yet; what stays unknown is noted."""

    def __init__(self, study_dir: str | Path | None, tasks_dir: str | Path | None):
        self.study_dir, self.tasks_dir = study_dir, tasks_dir
        self.cache: dict[str, Any] = {}
        self.tried = False
        self.import_problem: str | None = None
        self.missing: dict[str, int] = {}  # class name -> runs shown as stored
        self.seen: dict[tuple[Any, str], dict[str, Any]] = {}  # config -> its columns
        # config object -> (it, its class, its `seen` key): the runs of a results pack
        # share their config objects, so each is encoded once, not once per run
        self.keys: dict[int, tuple[dict[str, Any], Any, tuple[Any, str]]] = {}

    def columns(self, class_name: Any, config: dict[str, Any]) -> dict[str, Any]:
        """The `config.*` columns of a stored config, completed with today's defaults:
        worked out once per distinct config (a task has thousands of runs and a few
        dozen configs)."""
        known = self.keys.get(id(config))
        if known is not None and known[0] is config and known[1] == class_name:
            key = known[2]
        else:
            key = (class_name, _CONFIG_KEY(config))
            self.keys[id(config)] = (config, class_name, key)
        columns = self.seen.get(key)
        if columns is None:
            complete = self(class_name) if isinstance(class_name, str) else None
            if complete is not None:
                try:
                    config = complete(config)
                except HSEError:
                    pass  # a config the current code rejects is shown as stored
            columns = self.seen[key] = {f"config.{k}": v for k, v in flatten(config).items()}
        else:
            self.shown_as_stored(class_name)
        return columns

    def shown_as_stored(self, class_name: Any) -> None:
        """Count one more run of a Scenario whose configs cannot be completed here."""
        if isinstance(class_name, str) and self.cache.get(class_name, True) is None:
            self.missing[class_name] = self.missing.get(class_name, 0) + 1

    def __call__(self, class_name: str):
        if class_name not in self.cache:
            if class_name not in registered_classes(Scenario) and not self.tried:
                self.tried = True
                self.import_problem = self._import_study()
            self.cache[class_name] = (resolve_class(Scenario, class_name).complete_run_config
                                      if class_name in registered_classes(Scenario) else None)
        if self.cache[class_name] is None:
            self.missing[class_name] = self.missing.get(class_name, 0) + 1
        return self.cache[class_name]

    def _import_study(self) -> str | None:
        try:
            if find_study(self.study_dir, self.tasks_dir) is None:
                where = study_candidates(self.study_dir, self.tasks_dir)
                return f"no scenarios.py in {', '.join(str(p.resolve()) for p in where)}"
        except StudyError as exc:
            lines = str(exc).strip().splitlines() or ["cannot import the Study"]
            return lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1].strip()}"
        return None

    def warning(self) -> str | None:
        if not self.missing:
            return None
        names = ", ".join(sorted(self.missing))
        why = self.import_problem or f"its scenarios module does not define {names}"
        return (f"the Study's code is not importable here ({why}): {sum(self.missing.values())} "
                f"run(s) of Scenario {names} show their configs as stored, without today's "
                f"defaults, so identical configs run by different code versions may appear "
                f"as different rows; pass study_dir= (hse: --study-dir) to point at the Study")


def _malformed_warning(runs: list[str]) -> str | None:
    if not runs:
        return None
    shown = "; ".join(runs[:10]) + (f"; and {len(runs) - 10} more" if len(runs) > 10 else "")
    return (f"{len(runs)} run(s) left out of the results: their document cannot be read "
            f"as a run: {shown}")


def load_results(mongo_uri: str | None, db_name: str, task: str | None = None, *,
                 study: str | None = None, status: str | Sequence[str] | None = None,
                 config: Mapping[str, Any] | None = None,
                 study_dir: str | Path | None = None):
    """Standalone form of `RunQueue.results`, without a tasks directory. The Study's
    code (to complete old configs) is looked for in `study_dir`, else the current
    directory."""
    from .server import resolve_uri
    from .storage import connect

    store = connect(resolve_uri(mongo_uri), db_name)
    try:
        return results_frame(store, RunFilter(study=study or db_name, task=task,
                                              status=status, config=config or {}),
                             study_dir=study_dir)
    finally:
        store.close()


def curves_frame(store: Storage, runs, name: str, statuses: Sequence[str] | None = ("COMPLETED",)):
    """A logged metric over steps in long format (for `plots.plot_curves`): one row
    per (run, step) with `run_id`, `seed`, `name`, `step`, `value` and the run's
    `config.*` columns to group by. `runs` is a results frame; only its runs with a
    status in `statuses` count (COMPLETED by default, as in summaries and plots: a
    cancelled or failed run's partial curve is left out; None keeps every run)."""
    import pandas as pd

    from .analysis import runs_with_status

    known = runs_with_status(runs, statuses).dropna(subset=["sacred_id"])
    by_sacred = {int(s): i for i, s in zip(known.index, known["sacred_id"])}
    records = store.metric_series(list(by_sacred), name)
    if not records:
        return pd.DataFrame(columns=["run_id", "seed", "name", "step", "value"])
    long = pd.DataFrame({
        "row": [by_sacred[r["run_id"]] for r in records for _ in r["steps"]],
        "step": [s for r in records for s in r["steps"]],
        "value": [v for r in records for v in r["values"]],
    })
    keep = ["run_id", "seed"] + [c for c in runs.columns if c.startswith("config.")]
    out = long.join(runs[keep], on="row").drop(columns="row")
    out["name"] = name
    first = ["run_id", "seed", "name", "step", "value"]
    return out[first + [c for c in out.columns if c not in first]].reset_index(drop=True)


def _differ(store: Storage, file_a: Any, file_b: Any) -> bool:
    """Two uploads of a source file differ in content (two workers starting at once
    may each upload the same file; one that cannot be read counts as different)."""
    content_a, content_b = store.read_file(file_a), store.read_file(file_b)
    return content_a is None or content_b is None or content_a != content_b


def run_diff(store: Storage, run_a: str | int, run_b: str | int) -> dict[str, Any]:
    """What differs between two runs: config values, seed, task, code version
    (commit, dirty flag) and which recorded source files changed."""
    from .versions import differences

    docs = [store.get_run(r) for r in (run_a, run_b)]
    flat = [flatten(d.get("config") or {}) for d in docs]
    config = [(path, flat[0].get(path, "<absent>"), flat[1].get(path, "<absent>"))
              for path in sorted(set(flat[0]) | set(flat[1]))
              if flat[0].get(path, "<absent>") != flat[1].get(path, "<absent>")]
    versions = [d.get("code_version") or {} for d in docs]
    sources = []
    records = [store.sacred_run(d["sacred_id"]) if d.get("sacred_id") is not None else None
               for d in docs]
    files = [dict(map(tuple, (r or {}).get("experiment", {}).get("sources", [])))
             for r in records]
    for name in sorted(set(files[0]) | set(files[1])):
        if name not in files[1]:
            sources.append((name, "only in A"))
        elif name not in files[0]:
            sources.append((name, "only in B"))
        elif files[0][name] != files[1][name] and _differ(store, files[0][name],
                                                          files[1][name]):
            sources.append((name, "changed"))
    return {
        "runs": [d["_id"] for d in docs],
        "task": [d.get("task") for d in docs],
        "seed": [d.get("seed") for d in docs],
        "status": [d.get("status") for d in docs],
        "metrics": [d.get("metrics") for d in docs],
        "config": config,
        "commit": [v.get("commit") for v in versions],
        "dirty": [v.get("dirty") for v in versions],
        "code": differences(versions[0], versions[1]),
        "reproduces": [d.get("reproduces") for d in docs],
        "sources": sources,
    }
