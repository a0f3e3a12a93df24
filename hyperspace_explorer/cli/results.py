"""`hse results`, `hse best`, `hse diff`, `hse plot`: rank, pick, compare and draw
the runs of a task (`RunQueue.summary`, `best`, `diff`, `results`, `curves`)."""
from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import HSEError
from ..status import COMPLETED, STATUSES
from . import render
from .common import PROG, Session, SubParsers, command

RESULT_FORMATS = ("table", "md", "latex", "csv", "html", "json")
PLOT_KINDS = ("box", "curve", "param")
# plots.SAVE_FORMATS, written out so that building the parser does not import
# matplotlib (a test checks that the two agree; `hse plot` checks against plots').
PLOT_FORMATS = (".png", ".svg", ".pdf")


def register(sub: SubParsers) -> None:
    p = command(sub, "results", cmd_results,
                "rank the configs of a task by its metric (mean over seeds, tests vs. best)",
                "examples:\n  hse results digits\n"
                "  hse results digits --format md > results.md\n"
                "  hse results digits --by model.className   # one row per model family\n\n"
                "Only COMPLETED runs count. Rows are the configs that differ by more than "
                "their seed;\n'p (Holm)' is Welch's test against the best row, Holm-corrected.")
    p.add_argument("task", help="task name")
    p.add_argument("--format", choices=RESULT_FORMATS, default="table",
                   help="output format (default %(default)s)")
    p.add_argument("--by", action="extend", nargs="+", metavar="PATH",
                   help="group by these config paths only (default: every config value "
                        "but the seed)")

    p = command(sub, "best", cmd_best,
                "the best completed run of a task, its full config and how to run it again",
                "examples:\n  hse best digits\n"
                "  hse best digits --save best.json\n"
                "  hse submit digits --config best.json --seed 3 --force   # run it again\n"
                "  hse best digits --json | jq .config\n\n"
                "Best by the task's metric and direction (a single run, not a mean over "
                "seeds: see\n`hse results` for that). The config is the run's complete "
                "stored config, defaults\nincluded, so submitting it reproduces the run "
                "exactly. --json prints run_id,\nsacred_id, task, seed, metric, direction, "
                "value, metrics, config and resubmit\n(the Python call that runs it again), "
                "as RunQueue.best returns them.")
    p.add_argument("task", help="task name")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--save", metavar="FILE.json",
                   help="also write the run's full config there, for `hse submit --config`")

    p = command(sub, "diff", cmd_diff,
                "what differs between two runs: config, seed, metrics, code version, sources",
                "examples:\n  hse diff 3f9a0c1b2d4e 9d0e1f2a3b4c\n"
                "  hse diff 12 17            # Sacred ids\n\n"
                "Configs are compared in full (defaults included), path by path; source "
                "files are\nthe ones Sacred recorded for each run, compared by content.")
    p.add_argument("run_a", metavar="RUN_A", help="queue id or Sacred id")
    p.add_argument("run_b", metavar="RUN_B", help="queue id or Sacred id")

    p = command(sub, "plot", cmd_plot,
                "draw a figure of a task's completed runs into a PNG, SVG or PDF file",
                "examples:\n"
                "  hse plot digits box -o accuracy.png        # main metric per config, "
                "across seeds\n"
                "  hse plot digits box --metric fit_time --by model.className -o t.svg\n"
                "  hse plot digits curve --curve loss -o loss.png   # a log_scalar series "
                "over steps\n"
                "  hse plot digits param --param model.C --logx -o C.png\n\n"
                "kinds:\n"
                "  box    the metric (default: the task's) per configuration group: box "
                "plus one\n         point per seed; --by groups by these config paths only\n"
                "  curve  the series named by --curve, mean over seeds with a ± std band, "
                "one line\n         per configuration (the config paths that vary, or "
                "--by)\n"
                "  param  a numeric config path (--param) against the metric; --by PATH "
                "draws one\n         line per value of PATH; --logx for a log axis\n\n"
                f"The format follows the file name ({', '.join(PLOT_FORMATS)}). Only "
                "COMPLETED runs are drawn.")
    p.add_argument("task", help="task name")
    p.add_argument("kind", help=f"one of {', '.join(PLOT_KINDS)}")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help=f"file to write ({', '.join(PLOT_FORMATS)})")
    p.add_argument("--metric", metavar="NAME",
                   help="metric for box/param (default: the task's main metric)")
    p.add_argument("--param", metavar="PATH", help="config path on the x axis (param)")
    p.add_argument("--curve", metavar="NAME", help="logged series to draw (curve)")
    p.add_argument("--by", action="extend", nargs="+", metavar="PATH",
                   help="config paths to group by (box, curve) or one path for the lines "
                        "(param)")
    p.add_argument("--logx", action="store_true", help="log-scaled x axis (param)")
    p.add_argument("--title", help="figure title (default: one saying what is drawn)")


# --------------------------------------------------------------------------- results
def cmd_results(session: Session) -> int:
    from ..export import export

    args = session.args
    queue = session.queue
    summary = queue.summary(args.task, by=args.by)
    metric, direction = summary.attrs["metric"], summary.attrs["direction"]
    if args.format == "table":
        render.console().print(render.summary_table(
            summary, title=f"task '{args.task}': {counted_runs(queue.status(args.task))}, "
                           f"ranked by {metric} ({direction})"))
    else:
        print(export(summary, args.format, metric, direction))
    return 0


def counted_runs(counts: Mapping[Any, int]) -> str:
    """What a results table summarises, its COMPLETED runs, and what it leaves out:
    "12 completed run(s) (3 failed, 2 cancelled not shown)"."""
    others = [f"{counts[s]} {s.lower()}" for s in STATUSES if s != COMPLETED and counts.get(s)]
    left_out = f" ({', '.join(others)} not shown)" if others else ""
    return f"{counts.get(COMPLETED, 0)} completed run(s){left_out}"


# --------------------------------------------------------------------------- best
def cmd_best(session: Session) -> int:
    from rich.json import JSON
    from rich.table import Table

    args = session.args
    best = session.queue.best(args.task)
    if args.save:
        path = Path(args.save)
        try:
            path.write_text(json.dumps(best["config"], indent=2, default=str) + "\n",
                            encoding="utf-8")
        except OSError as exc:
            raise HSEError(f"--save {path}: cannot write it: {exc.strerror}") from None
    if args.json:
        print(json.dumps(render.json_ready(best), allow_nan=False, default=str))
        return 0
    console = render.console()
    console.print(render.text(f"best run of task '{args.task}' by {best['metric']} "
                              f"({best['direction']})", "bold"))
    info = Table.grid(padding=(0, 2))
    for key, value in (("run id", best["run_id"]), ("sacred id", best["sacred_id"]),
                       ("seed", best["seed"]), (best["metric"], best["value"])):
        info.add_row(render.text(key, "dim"), render.text(value))
    for name, value in sorted(best["metrics"].items()):
        if name != best["metric"]:
            info.add_row(render.text(name, "dim"), render.text(value))
    console.print(info)
    console.print(render.text("\nconfig", "bold"))
    console.print(JSON.from_data(best["config"], default=str))
    config_file = shlex.quote(args.save or "best.json")
    options = session.global_options()
    saved = (f"(config saved to {args.save})" if args.save
             else f"(first: {PROG} best {args.task} --save {config_file} {options})")
    # --force: the run itself is COMPLETED, so its copy would be skipped as a duplicate
    console.print(render.text("\nto run it again (the complete config reproduces it)", "bold"))
    for line in (f"  {PROG} submit {args.task} --config {config_file} --seed {best['seed']} "
                 f"--force {options}", f"    {saved}", "  or in Python, with q = RunQueue("
                 f"{_uri_literal(session)}, {session.db!r}, {_tasks_literal(session)}):",
                 f"  {best['resubmit']}"):
        console.print(render.text(line), soft_wrap=True)  # never wrapped: copied as is
    return 0


def _uri_literal(session: Session) -> str:
    from ..storage import redact_uri

    uri = session.args.mongo_uri
    return repr(None if uri is None else redact_uri(uri))


def _tasks_literal(session: Session) -> str:
    tasks = session.queue.tasks_dir
    return repr(None if tasks is None else str(tasks))


# --------------------------------------------------------------------------- diff
_ABSENT = "<absent>"  # what results.run_diff puts for a path one config lacks


def cmd_diff(session: Session) -> int:
    from rich.table import Table

    args = session.args
    queue = session.queue
    diff = queue.diff(args.run_a, args.run_b)
    docs = [queue.get(r) for r in diff["runs"]]
    console = render.console()
    console.print(render.text(
        f"A: run {docs[0]['_id']} (sacred id {docs[0].get('sacred_id', '-')})"
        f"\nB: run {docs[1]['_id']} (sacred id {docs[1].get('sacred_id', '-')})", "bold"))
    if diff["config"]:
        console.print(render.text(f"\nconfig: {len(diff['config'])} difference(s)", "bold"))
        table = Table()
        for name in ("path", "A", "B"):
            table.add_column(name)
        for path, a, b in diff["config"]:
            table.add_row(render.text(path), render.text(_config_value(a)),
                          render.text(_config_value(b)))
        console.print(table)
    else:
        console.print(render.text("\nsame config", "green"))

    console.print(render.text("\nruns side by side", "bold"))
    side = Table()
    for name in ("", "A", "B"):
        side.add_column(name)

    def add(label: str, pair: list[Any], style_status: bool = False) -> None:
        cells = [render.status_text(v) if style_status else render.text(v) for v in pair]
        differ = pair[0] != pair[1]
        side.add_row(render.text(label, "bold" if differ else "dim"), *cells)

    add("task", diff["task"])
    add("seed", diff["seed"])
    add("status", diff["status"], style_status=True)
    metrics = [m or {} for m in diff["metrics"]]
    for name in sorted(set(metrics[0]) | set(metrics[1])):
        add(f"metrics.{name}", [m.get(name) for m in metrics])
    add("commit", diff["commit"])
    add("dirty", diff["dirty"])
    add("reproduces", diff["reproduces"])
    for what, a, b in diff["code"]:
        if what not in ("commit", "dirty"):
            add(what, [a, b])
    console.print(side)

    if diff["sources"]:
        console.print(render.text(f"\nsource files: {len(diff['sources'])} differ", "bold"))
        table = Table()
        table.add_column("file")
        table.add_column("change")
        for name, change in diff["sources"]:
            table.add_row(render.text(name), render.text(change))
        console.print(table)
    else:
        note = ("" if diff["commit"][0] == diff["commit"][1]
                else " (the commits differ outside the recorded source files)")
        console.print(render.text(f"\nsame code: no recorded source file differs{note}",
                                  "green"))
    return 0


def _config_value(value: Any) -> str:
    if isinstance(value, str) and value == _ABSENT:
        return value
    return json.dumps(render.json_ready(value), default=str)


# --------------------------------------------------------------------------- plot
def cmd_plot(session: Session) -> int:
    from ..analysis import config_paths, group_runs
    from ..plots import SAVE_FORMATS, plot_curves, plot_metric_by_config, plot_param_vs_metric

    args = session.args
    kind = args.kind.lower()
    if kind not in PLOT_KINDS:
        raise HSEError(f"unknown plot kind {args.kind!r}; valid kinds: {', '.join(PLOT_KINDS)}")
    out = Path(args.output)
    if out.suffix.lower() not in SAVE_FORMATS:
        raise HSEError(f"-o {args.output}: the file name must end in one of "
                       f"{', '.join(SAVE_FORMATS)} (it sets the format)")
    if args.logx and kind != "param":
        raise HSEError("--logx applies to 'param' plots only")
    queue = session.queue
    task = queue.task(args.task, require_runs=True)
    metric = args.metric or task.metric
    direction: str | None = task.direction
    if metric.removeprefix("metrics.") != task.metric:
        direction = None  # only the task's own metric has a known better direction
    frame = queue.results(args.task)
    if not (frame["status"] == COMPLETED).any():
        raise HSEError(f"no COMPLETED run of task '{args.task}' to plot yet")
    if kind == "box":
        plot_metric_by_config(frame, metric, args.by, direction=direction, path=out,
                              title=args.title)
    elif kind == "param":
        if not args.param:
            raise HSEError(f"'param' plots need --param PATH; config paths: "
                           f"{', '.join(config_paths(frame)) or '(none)'}")
        if args.by and len(args.by) > 1:
            raise HSEError(f"'param' plots take one --by path (one line per value), "
                           f"got {len(args.by)}")
        plot_param_vs_metric(frame, args.param, metric, hue=args.by[0] if args.by else None,
                             logx=args.logx, path=out, title=args.title)
    else:
        groups = group_runs(frame, args.by)  # COMPLETED runs, config columns that vary
        if not args.curve:
            names = queue.series_names(args.task, status=COMPLETED)
            raise HSEError(f"'curve' plots need --curve NAME; logged series: "
                           f"{', '.join(names) or '(none: the runs logged no log_scalar)'}")
        curves = queue.curves(args.task, args.curve, statuses=[COMPLETED])
        if len(curves) == 0:
            names = queue.series_names(args.task, status=COMPLETED)
            raise HSEError(f"no run of task '{args.task}' logged a series named "
                           f"{args.curve!r}; logged series: {', '.join(names) or '(none)'}")
        plot_curves(curves, args.curve, groups.shown_columns, path=out, title=args.title)
    print(out)
    return 0
