"""Results: every run of a Study as one pandas DataFrame row.

Columns: `run_id`, `sacred_id`, `task`, `status`, `reason`, `seed`, `config.<dotted>`
(the full config, lists as tuples), `metrics.<name>`, `queued_at`, `start_time`,
`stop_time`, `duration` (s), `host`, `code_version` (commit, "+dirty" when the work
tree had changes), `attempt`, `error`. The analysis functions (`analysis.py`) take it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .configurable import flatten, registered_classes, resolve_class
from .errors import HSEError
from .scenario import Scenario
from .store import Store

_FIXED = ["run_id", "sacred_id", "task", "status", "reason", "seed", "queued_at",
          "start_time", "stop_time", "duration", "host", "code_version", "attempt", "error"]


def results_frame(store: Store, *, study: str | None = None, task: str | None = None,
                  filter: Mapping[str, Any] | None = None,
                  statuses: Sequence[str] | None = None):
    """Build the results DataFrame (see the module docstring) from the store.

    When the Study's code is imported, stored configs are completed with today's
    defaults, so runs from before a parameter existed show its default, not NaN.
    """
    import pandas as pd

    match: dict[str, Any] = dict(filter or {})
    if study is not None:
        match["study"] = study
    if task is not None:
        match["task"] = task
    if statuses is not None:
        match["status"] = {"$in": list(statuses)}
    rows = []
    completers: dict[str, Any] = {}
    for doc in store.find_runs(match):
        rows.append(_row(doc, completers))
    if not rows:
        return pd.DataFrame(columns=_FIXED)
    frame = pd.DataFrame.from_records(rows)
    _keep_stored_config_values(frame, rows)
    for col in ("queued_at", "start_time", "stop_time"):
        frame[col] = pd.to_datetime(pd.to_numeric(frame[col]), unit="s", utc=True)
    fixed = [c for c in _FIXED if c in frame.columns]
    config_cols = sorted(c for c in frame.columns if c.startswith("config."))
    metric_cols = sorted(c for c in frame.columns if c.startswith("metrics."))
    return frame[fixed + config_cols + metric_cols].reset_index(drop=True)


def _keep_stored_config_values(frame, rows: list[dict[str, Any]]) -> None:
    """Config columns hold the values as stored. pandas turns an explicit None into NaN
    (the mark of a parameter the config does not have) and ints next to missing values
    into floats (20 -> 20.0); such columns are rebuilt as object columns: None stays
    None, ints stay ints, NaN only where the config lacks the key."""
    import numpy as np
    import pandas as pd

    for col in [c for c in frame.columns if c.startswith("config.")]:
        present = [r[col] for r in rows if col in r]
        has_none = any(v is None for v in present)
        has_int = frame[col].dtype.kind == "f" and any(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present)
        if has_none or has_int:
            frame[col] = pd.Series([r.get(col, np.nan) for r in rows], index=frame.index,
                                   dtype=object)


def _row(doc: dict[str, Any], completers: dict[str, Any]) -> dict[str, Any]:
    config = doc.get("config") or {}
    scenario = (doc.get("task_spec") or {}).get("scenario", {}).get("className")
    complete = _completer(scenario, completers)
    if complete is not None:
        try:
            config = complete(config)
        except HSEError:
            pass  # a config the current code rejects is shown as stored
    version = doc.get("code_version") or {}
    commit = version.get("commit")
    row = {
        "run_id": doc["_id"], "sacred_id": doc.get("sacred_id"), "task": doc.get("task"),
        "status": doc.get("status"), "reason": doc.get("reason"), "seed": doc.get("seed"),
        "queued_at": doc.get("queued_at"), "start_time": doc.get("started_at"),
        "stop_time": doc.get("ended_at"), "duration": doc.get("duration"),
        "host": doc.get("host"), "attempt": doc.get("attempt"), "error": doc.get("error"),
        "code_version": f"{commit}{'+dirty' if version.get('dirty') else ''}" if commit else None,
    }
    row.update({f"config.{k}": v for k, v in flatten(config).items()})
    row.update({f"metrics.{k}": v for k, v in (doc.get("metrics") or {}).items()})
    return row


def _completer(class_name: str | None, cache: dict[str, Any]):
    if class_name is None:
        return None
    if class_name not in cache:
        cache[class_name] = (resolve_class(Scenario, class_name).complete_run_config
                             if class_name in registered_classes(Scenario) else None)
    return cache[class_name]


def load_results(mongo_uri: str | None, db_name: str, task: str | None = None,
            filter: Mapping[str, Any] | None = None, *, study: str | None = None,
            statuses: Sequence[str] | None = None):
    """Standalone form of `RunQueue.results`, without a tasks directory."""
    from .server import resolve_uri

    store = Store.connect(resolve_uri(mongo_uri), db_name)
    try:
        return results_frame(store, study=study or db_name, task=task, filter=filter,
                             statuses=statuses)
    finally:
        store.close()


def curves_frame(store: Store, runs, name: str, statuses: Sequence[str] | None = ("COMPLETED",)):
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


def _differ(store: Store, file_a: Any, file_b: Any) -> bool:
    """Two uploads of a source file differ in content (two workers starting at once
    may each upload the same file; one that cannot be read counts as different)."""
    content_a, content_b = store.read_source(file_a), store.read_source(file_b)
    return content_a is None or content_b is None or content_a != content_b


def run_diff(store: Store, run_a: str | int, run_b: str | int) -> dict[str, Any]:
    """What differs between two runs: config values, seed, task, code version
    (commit, dirty flag) and which recorded source files changed."""
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
        "sources": sources,
    }
