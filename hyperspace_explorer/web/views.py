"""What each page of `hse ui` shows, read from a `RunQueue`.

Every function returns plain data for a template: among it `fields` (text of the
values that change while runs progress, by a key the page marks with `data-field`)
and `figures` (Plotly figures as plain dicts, by id). A page's JSON twin answers
those two, so the browser updates the page without reloading and without a second
version of any number. Nothing here escapes text: the templates do (autoescape), and
the browser's script only ever sets `textContent`.
"""
from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..cli.render import duration, json_ready, mean_std, seconds, when
from ..configurable import flatten
from ..errors import HSEError
from ..queue import RunQueue
from ..status import ACTIVE, COMPLETED, FAILED, FINAL, STATUSES, TIMEOUT
from ..storage import KEYSET_SORTS

#: Runs per page of the runs list.
PAGE_SIZE = 50
#: The window over which throughput (and so the ETA) is measured.
THROUGHPUT_WINDOW_S = 600.0
#: How much of a run's captured output the run page shows (its end).
OUTPUT_TAIL_CHARS = 20_000
#: What the runs list reads of each run.
LIST_FIELDS = ["task", "status", "seed", "metrics", "duration", "host", "worker", "order",
               "started_at", "ended_at", "attempt", "task_spec", "sacred_id"]
SORTS = {"queued": "order", "started": "started_at", "ended": "ended_at",
         "duration": "duration", "seed": "seed", "status": "status", "task": "task"}


def number(value: Any, digits: int = 6) -> str:
    """A metric or config number as text ("-" when absent or not finite)."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:.{digits}g}" if math.isfinite(value) else "-"
    return str(value)


def metrics_text(metrics: Any) -> str:
    if not isinstance(metrics, Mapping) or not metrics:
        return "-"
    return ", ".join(f"{k}={number(v)}" for k, v in sorted(metrics.items()))


def pretty(value: Any) -> str:
    """A config or record as indented JSON text (for a <pre>)."""
    return json.dumps(json_ready(value), indent=2, sort_keys=True, default=str)


# --------------------------------------------------------------------------- overview
def overview(q: RunQueue, now: float | None = None) -> dict[str, Any]:
    """Per task: runs in each status, progress, throughput over the last
    THROUGHPUT_WINDOW_S and the time left at that rate."""
    now = time.time() if now is None else now
    counts = q.status_by_task()
    tasks, fields = [], {}
    for task in sorted(counts):
        per = counts[task]
        total = sum(per.values())
        finished = sum(n for s, n in per.items() if s in FINAL)
        left = sum(n for s, n in per.items() if s in ACTIVE)
        recent = q.ended_since(now - THROUGHPUT_WINDOW_S, task) if left or finished else 0
        rate = recent / THROUGHPUT_WINDOW_S  # runs per second
        for status in STATUSES:
            fields[f"count:{task}:{status}"] = str(per.get(status, 0))
        fields[f"total:{task}"] = str(total)
        fields[f"progress:{task}"] = f"{100.0 * finished / total:.1f}%" if total else "-"
        fields[f"throughput:{task}"] = f"{rate * 60:.2f}/min"
        fields[f"eta:{task}"] = ("done" if not left else
                                 seconds(left / rate) if rate > 0 else "unknown (no run ended "
                                 f"in the last {THROUGHPUT_WINDOW_S / 60:.0f} min)")
        tasks.append({"name": task, "total": total, "finished": finished,
                      "failed": per.get(FAILED, 0) + per.get(TIMEOUT, 0)})
    return {"tasks": tasks, "statuses": list(map(str, STATUSES)), "fields": fields,
            "figures": {}}


# --------------------------------------------------------------------------- workers
def workers(q: RunQueue) -> dict[str, Any]:
    rows, fields = [], {}
    for w in q.workers():
        wid = str(w.get("_id"))
        age = w.get("heartbeat_age")
        fields[f"state:{wid}"] = str(w.get("state"))
        fields[f"run:{wid}"] = ", ".join(map(str, w.get("current_runs") or [])) or str(
            w.get("current_run") or "-")
        fields[f"beat:{wid}"] = "never" if age is None else f"{seconds(age)} ago"
        fields[f"executed:{wid}"] = str(w.get("executed", 0))
        rows.append({"id": wid, "host": w.get("host"), "pid": w.get("pid"),
                     "study": w.get("study"), "code": w.get("code_digest") or "-",
                     "gpus": ",".join(map(str, w.get("gpus") or [])) or "-",
                     "tags": ",".join(map(str, w.get("tags") or [])) or "-",
                     "rejection": w.get("last_rejection")})
    return {"workers": rows, "fields": fields, "figures": {}}


# --------------------------------------------------------------------------- runs list
def parse_config_filter(text: str) -> dict[str, Any]:
    """"model.className=Forest" lines (or ';'-separated) -> {path: value}; values are
    JSON when they parse (0.5, true, null), else the text, as `hse submit --set`."""
    from ..cli.submit import parse_value

    out: dict[str, Any] = {}
    for part in text.replace(";", "\n").splitlines():
        if not part.strip():
            continue
        path, sep, value = part.partition("=")
        if not sep or not path.strip():
            raise HSEError(f"config filter {part.strip()!r}: write PATH=VALUE, e.g. "
                           f"model.className=Forest")
        out[path.strip()] = parse_value(value.strip())
    return out


def runs_list(q: RunQueue, *, task: str | None, status: str | None, config: str,
              sort: str, descending: bool, page: int, after: str | None = None,
              before: str | None = None) -> dict[str, Any]:
    """One page of runs (PAGE_SIZE of them) and the number of matching runs (counted
    by the server). `after`/`before` (JSON [value, run id] of the run a page follows
    or precedes, from the next/previous links) make any page as cheap as the first;
    a page jumped to by number is read from the nearer end of the list."""
    if page < 1:
        raise HSEError(f"page must be 1 or more, got {page}")
    config_filter = parse_config_filter(config)
    if sort in SORTS:
        sort_key = SORTS[sort]
    elif sort.startswith("metric:") and sort[len("metric:"):]:
        sort_key = "metrics." + sort[len("metric:"):]
    else:
        raise HSEError(f"cannot sort by {sort!r}: use one of {', '.join(SORTS)} or "
                       f"metric:NAME")
    runs = q.runs(task, status=status or None, config=config_filter)
    total = sum(q.store.count_by_status(runs).values())
    pages = max(1, math.ceil(total / PAGE_SIZE))
    read = functools.partial(q.runs_page, task, status=status or None, config=config_filter,
                             sort=sort_key, fields=LIST_FIELDS)
    offset = (page - 1) * PAGE_SIZE
    keyset = sort_key in KEYSET_SORTS
    if keyset and (after or before):
        docs = read(descending=descending, limit=PAGE_SIZE, after=_cursor(after),
                    before=_cursor(before))
    elif offset > total / 2:  # from the other end: the last pages cost the first's
        count = min(PAGE_SIZE, total - offset)
        docs = read(descending=not descending, offset=max(0, total - offset - PAGE_SIZE),
                    limit=max(1, count))[::-1] if count > 0 else []
    else:
        docs = read(descending=descending, offset=offset, limit=PAGE_SIZE)
    rows, fields = [], {}
    for doc in docs:
        rid = str(doc["_id"])
        main = (doc.get("task_spec") or {}).get("metric")
        raw = doc.get("metrics")
        metrics: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        fields[f"status:{rid}"] = str(doc.get("status"))
        fields[f"metric:{rid}"] = number(metrics.get(main)) if main else "-"
        fields[f"metrics:{rid}"] = metrics_text(metrics)
        fields[f"duration:{rid}"] = duration(doc)
        rows.append({"id": rid, "task": doc.get("task"), "seed": doc.get("seed"),
                     "main": main, "started": when(doc.get("started_at")),
                     "host": doc.get("host") or "-", "attempt": doc.get("attempt", 0)})
    cursors = {}
    if keyset and docs:
        cursors = {"before": json.dumps([json_ready(docs[0].get(sort_key)), docs[0]["_id"]]),
                   "after": json.dumps([json_ready(docs[-1].get(sort_key)), docs[-1]["_id"]])}
    return {"runs": rows, "total": total, "page": page, "pages": pages, "cursors": cursors,
            "fields": fields, "figures": {}}


def _cursor(text: str | None) -> list[Any] | None:
    """A next/previous link's [value, run id] (HSEError when it is not one)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[1], str)):
        raise HSEError(f"bad page position {text!r}: follow the page's next/previous links")
    return value


# --------------------------------------------------------------------------- one run
def _curves_figure(series: Iterable[Mapping[str, Any]], label: str = "") -> dict[str, Any]:
    data = [{"type": "scatter", "mode": "lines+markers",
             "name": f"{label}{s.get('name')}", "x": json_ready(list(s.get("steps") or [])),
             "y": json_ready(list(s.get("values") or []))} for s in series]
    return {"data": data, "layout": {"margin": {"t": 30}, "xaxis": {"title": {"text": "step"}},
                                     "legend": {"orientation": "h"}}}


def run_detail(q: RunQueue, run_id: str) -> dict[str, Any]:
    record = q.record(run_id)
    doc, sacred = record["run"], record["sacred"] or {}
    output = record["output"]
    tail = output[-OUTPUT_TAIL_CHARS:]
    given = doc.get("config_given") if isinstance(doc.get("config_given"), dict) else \
        doc.get("config")
    artifacts = [{"index": i, "name": str(a.get("name"))}
                 for i, a in enumerate(sacred.get("artifacts") or []) if isinstance(a, Mapping)]
    previous = [{**{k: p.get(k) for k in ("status", "reason", "attempt", "host", "error")},
                 "started": when(p.get("started_at")), "ended": when(p.get("ended_at"))}
                for p in doc.get("previous_attempts") or [] if isinstance(p, Mapping)]
    status = str(doc.get("status"))
    fields = {"status": status, "attempt": f"{doc.get('attempt', 0)} of "
                                           f"{doc.get('max_attempts', '-')}",
              "metrics": metrics_text(doc.get("metrics")), "duration": duration(doc),
              "host": str(doc.get("host") or "-"), "ended": when(doc.get("ended_at")),
              "error": record["error"] or "", "output": tail,
              "output_note": (f"last {len(tail):,} of {len(output):,} characters"
                              if len(output) > len(tail) else f"{len(output):,} characters"),
              "curves_note": "" if record["series"] else "No series logged (log_scalar) yet."}
    return {"run": {"id": str(doc["_id"]), "task": doc.get("task"), "seed": doc.get("seed"),
                    "sacred_id": doc.get("sacred_id"), "queued": when(doc.get("queued_at")),
                    "started": when(doc.get("started_at")), "worker": doc.get("worker"),
                    "active": status in map(str, ACTIVE), "final": status in map(str, FINAL),
                    "main": (doc.get("task_spec") or {}).get("metric")},
            "config_given": pretty(given or {}), "config_complete": pretty(doc.get("config") or {}),
            "result": pretty(sacred.get("result")) if sacred.get("result") is not None else "-",
            "code_version": pretty(doc.get("code_version")) if doc.get("code_version") else "-",
            "artifacts": artifacts, "previous": previous, "fields": fields,
            "live_figures": True,  # curves may appear while the page is open
            "figures": {"curves": _curves_figure(record["series"])} if record["series"] else {}}


def artifact(q: RunQueue, run_id: str, index: int) -> tuple[str, bytes]:
    """(name, content) of a run's `index`-th artifact; HSEError when it is not there."""
    doc = q.get(run_id)
    sacred = q.store.sacred_run(doc["sacred_id"]) if doc.get("sacred_id") is not None else None
    items = (sacred or {}).get("artifacts") or []
    if not 0 <= index < len(items):
        raise HSEError(f"run {run_id} has no artifact number {index}")
    content = q.store.read_file(items[index].get("file_id"))
    if content is None:
        raise HSEError(f"the artifact {items[index].get('name')!r} of run {run_id} is gone")
    return str(items[index].get("name") or "artifact"), content


# --------------------------------------------------------------------------- results
def results(q: RunQueue, task: str, param: str | None = None) -> dict[str, Any]:
    """The seed-aggregated table `hse results` prints (the same `q.summary`, the same
    cell text), a box plot over seeds per config group, the main metric against a
    config parameter and a parallel-coordinates view of configs against the metric."""
    from ..analysis import group_runs, short_config_names

    summary = q.summary(task)
    attrs = summary.attrs
    main, direction = attrs["metric"], attrs["direction"]
    metrics = sorted(attrs.get("metrics", []), key=lambda m: m != main)
    config_columns = list(attrs.get("config_columns", []))
    rows = []
    for _, row in summary.iterrows():
        p = row.get("p_welch_holm")
        flag = row.get("not_worse")
        rows.append({
            "rank": int(row["rank"]), "n": int(row["n"]),
            "config": [_config_text(row[c]) for c in config_columns],
            "metrics": [{"name": m, "text": mean_std(row[f"{m}_mean"], row[f"{m}_std"]),
                         "mean": _json_float(row[f"{m}_mean"]),
                         "ci": f"[{number(row[f'{m}_ci_low'], 4)}, {number(row[f'{m}_ci_high'], 4)}]"}
                        for m in metrics],
            "p": "-" if _missing(p) else f"{p:.3g}",
            "not_worse": "-" if _missing(flag) else ("yes" if flag else "no")})
    frame = q.results(task, status=COMPLETED)
    column = f"metrics.{main}"
    groups = group_runs(frame)
    labels = groups.labels()
    values = frame[column].to_numpy(dtype=float, na_value=math.nan) if column in frame else []
    box = {"data": [{"type": "box", "name": labels[g], "boxpoints": "all", "jitter": 0.3,
                     "y": [json_ready(float(v)) for v, c in zip(values, groups.codes) if c == g]}
                    for g in range(groups.count)],
           "layout": {"margin": {"t": 30}, "showlegend": False,
                      "yaxis": {"title": {"text": main}}}}
    shown = short_config_names(groups.shown_columns)
    numeric = [c for c in groups.shown_columns if _is_numeric_column(frame[c])]
    param = param if param in numeric else (numeric[0] if numeric else None)
    figures: dict[str, Any] = {"box": box}
    if param is not None:
        figures["param"] = {
            "data": [{"type": "scatter", "mode": "markers", "name": main,
                      "x": json_ready(frame[param].tolist()),
                      "y": json_ready([float(v) for v in values]),
                      "text": json_ready(frame["run_id"].tolist()) if "run_id" in frame else None}],
            "layout": {"margin": {"t": 30}, "xaxis": {"title": {"text": shown.get(param, param)}},
                       "yaxis": {"title": {"text": main}}}}
    dims = []
    for c in groups.shown_columns:
        col = frame[c]
        if _is_numeric_column(col):
            dims.append({"label": shown.get(c, c), "values": json_ready(
                [float(v) if v is not None else None for v in col.tolist()])})
        else:
            texts = [_config_text(v) for v in col.tolist()]
            choices = sorted(set(texts))
            dims.append({"label": shown.get(c, c), "values": [choices.index(t) for t in texts],
                         "tickvals": list(range(len(choices))), "ticktext": choices})
    if dims and len(values):
        dims.append({"label": main, "values": json_ready([float(v) for v in values])})
        figures["parcoords"] = {
            "data": [{"type": "parcoords", "dimensions": dims,
                      "line": {"color": json_ready([float(v) for v in values]),
                               "colorscale": "Viridis", "showscale": True,
                               "reversescale": direction == "minimize"}}],
            "layout": {"margin": {"t": 40, "l": 60, "r": 60}}}
    counts = q.status(task)
    return {"task": task, "metric": main, "direction": direction, "metrics": metrics,
            "config_columns": config_columns, "rows": rows,
            "params": [(c, shown.get(c, c)) for c in numeric], "param": param,
            "completed": counts.get(COMPLETED, 0),
            "left_out": {str(s): n for s, n in counts.items() if s != COMPLETED and n},
            "fields": {f"count:{s}": str(counts.get(s, 0)) for s in STATUSES},
            "figures": figures}


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _json_float(value: Any) -> float | None:
    return json_ready(float(value)) if not _missing(value) else None


def _config_text(value: Any) -> str:
    from ..analysis import format_value

    return format_value(value)


def _is_numeric_column(col: Any) -> bool:
    present = [v for v in col.tolist() if v is not None and not _missing(v)]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in present)


# --------------------------------------------------------------------------- compare
def compare(q: RunQueue, ids: Sequence[str]) -> dict[str, Any]:
    """Config values that differ between the runs (complete configs, path by path), the
    code differences of each run against the first (`q.diff`), and their curves
    overlaid, one figure per series name."""
    ids = list(dict.fromkeys(i for i in ids if i))
    if len(ids) < 2:
        raise HSEError("pick two or more runs to compare (tick them in the runs list)")
    docs = [q.get(i) for i in ids]
    flat = [flatten(d.get("config") or {}) for d in docs]
    absent = "<absent>"
    paths = sorted(set().union(*flat))
    differ = [{"path": p, "values": [_config_text(f.get(p, absent)) if p in f else absent
                                     for f in flat]}
              for p in paths if len({json.dumps(json_ready(f.get(p, absent)), sort_keys=True,
                                                default=str) for f in flat}) > 1]
    diffs = [q.diff(ids[0], i) for i in ids[1:]]
    code = [{"run": str(d["_id"]), "commit": (d.get("code_version") or {}).get("commit"),
             "dirty": (d.get("code_version") or {}).get("dirty"),
             "metrics": metrics_text(d.get("metrics")), "status": str(d.get("status")),
             "seed": d.get("seed"), "task": d.get("task")} for d in docs]
    sources = [{"against": ids[0], "run": str(d["runs"][1]),
                "changes": [f"{name}: {what}" for name, what in d["sources"]]} for d in diffs]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        if doc.get("sacred_id") is None:
            continue
        for s in q.store.metric_series([doc["sacred_id"]]):
            by_name.setdefault(str(s.get("name")), []).append({**s, "run": str(doc["_id"])})
    figures = {}
    for i, (name, series) in enumerate(sorted(by_name.items())):
        fig = _curves_figure([{**s, "name": s["run"]} for s in series])
        fig["layout"]["title"] = {"text": name}
        figures[f"curve{i}"] = fig
    fields = {f"status:{c['run']}": c["status"] for c in code}
    return {"ids": ids, "differ": differ, "same": len(paths) - len(differ), "code": code,
            "sources": sources, "fields": fields, "figures": figures}


# --------------------------------------------------------------------------- tuning
def tuning(q: RunQueue) -> dict[str, Any]:
    """The Optuna studies kept in the database: trials, best value over trials and
    parameter importances (Optuna's default evaluator)."""
    try:
        import optuna
    except ImportError:
        return {"available": False, "studies": [], "fields": {}, "figures": {}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = q.store.optuna_storage()
    studies, figures = [], {}
    for i, summary in enumerate(storage.get_all_studies()):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                and t.value is not None]
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        best_so_far: list[float] = []
        for t in done:
            value = float(t.value)  # type: ignore[arg-type]  # a COMPLETE trial has one
            best_so_far.append(value if not best_so_far else
                               (max if maximize else min)(best_so_far[-1], value))
        best = best_so_far[-1] if best_so_far else None
        info: dict[str, Any] = {
            "name": summary.study_name, "direction": "maximize" if maximize else "minimize",
            "trials": len(trials), "complete": len(done),
            "states": {s.name: sum(1 for t in trials if t.state == s)
                       for s in optuna.trial.TrialState if any(t.state == s for t in trials)},
            "best_value": number(best) if best is not None else "-",
            "best_params": pretty(study.best_trial.params) if done else "-",
            "importances": None}
        figures[f"best{i}"] = {
            "data": [{"type": "scatter", "mode": "markers", "name": "trial value",
                      "x": [t.number for t in done], "y": json_ready([t.value for t in done])},
                     {"type": "scatter", "mode": "lines", "name": "best so far",
                      "line": {"shape": "hv"}, "x": [t.number for t in done],
                      "y": json_ready(best_so_far)}],
            "layout": {"margin": {"t": 30}, "xaxis": {"title": {"text": "trial"}},
                       "yaxis": {"title": {"text": "value"}}}}
        if len(done) >= 2:
            try:
                importances = optuna.importance.get_param_importances(study)
            except (RuntimeError, ValueError) as exc:  # e.g. a single distinct config
                info["importances"] = f"not available: {exc}"
            else:
                names = list(importances)[::-1]
                figures[f"importance{i}"] = {
                    "data": [{"type": "bar", "orientation": "h", "y": names,
                              "x": json_ready([importances[n] for n in names])}],
                    "layout": {"margin": {"t": 30, "l": 160},
                               "xaxis": {"title": {"text": "importance"}}}}
        info["index"] = i
        studies.append(info)
    return {"available": True, "studies": studies, "fields": {}, "figures": figures}


__all__ = ["PAGE_SIZE", "overview", "workers", "runs_list", "run_detail", "artifact",
           "results", "compare", "tuning", "parse_config_filter"]
