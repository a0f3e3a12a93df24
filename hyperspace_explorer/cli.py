"""`hse`: the command line of hyperspace_explorer.

One subcommand per thing a user does with a Study's queue: start the embedded server,
run a worker, submit configs, watch and inspect runs, cancel them, rank the results.
Everything the commands read or write goes through `Store` / `RunQueue`; this module
only parses arguments and renders tables (with rich).

Global options can be given before or after the subcommand (`hse --db s ls` and
`hse ls --db s` are the same). Every deliberate error (`HSEError`) is printed as
`hse: error: <message>` with exit status 2, never with a traceback, and URIs are
always printed with their password removed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .configurable import set_dotted
from .errors import ConfigError, HSEError
from .status import ACTIVE, FINAL, RUNNING, STATUSES
from .storage import DEFAULT_MAX_ATTEMPTS, RunFilter, Storage, redact_uri

PROG = "hse"
OUTPUT_LINES = 40  # lines of captured output `hse show` prints (the tail)
STATUS_STYLE = {"QUEUED": "cyan", "RUNNING": "yellow", "COMPLETED": "green", "FAILED": "red",
                "TIMEOUT": "magenta", "CANCELLED": "dim"}
RESULT_FORMATS = ("table", "md", "latex", "csv", "html", "json")

Handler = Callable[["Session"], int]


# =========================================================================== entry point
def main(argv: list[str] | None = None) -> int:
    """Run `hse` with `argv` (default: sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    session = Session(args)
    try:
        return handler(session)
    except HSEError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        session.close()
    return 2


def _fail(message: str) -> None:
    print(f"{PROG}: error: {redact_uri(message)}", file=sys.stderr)


# =========================================================================== parser
_EPILOG = """\
examples:
  hse server start                          # the embedded MongoDB-wire server
  cd examples/digits_study && hse worker ../../tasks digits &
  hse --db digits submit digits --set model.className=LogisticModel \\
        --grid model.C=0.1,1,10 --seeds 3
  hse --db digits status
  hse --db digits ls --status FAILED
  hse --db digits show 3f9a0c1b2d4e         # or a Sacred id: hse show 12
  hse --db digits results digits --format md
  hse --db digits best digits               # the best run and how to run it again
  hse --db digits diff 3f9a0c1b2d4e 12      # what differs between two runs
  hse --db digits plot digits box -o accuracy.png
  hse demo                                  # everything above, on a bundled example

environment: HSE_MONGO_URI (server), HSE_DB (database), HSE_TASKS_DIR (tasks),
HSE_HOME (embedded server data, default ~/.hyperspace_explorer).
"""


def build_parser() -> argparse.ArgumentParser:
    """The `hse` parser; defaults are read from the environment at call time."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Queue, execute and analyse the runs of a hyperspace_explorer Study.")
    _add_global_options(parser, top_level=True)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in (_add_server, _add_worker, _add_submit, _add_status, _add_ls, _add_show,
                _add_cancel, _add_results, _add_best, _add_diff, _add_plot, _add_recover,
                _add_workers, _add_demo):
        add(sub)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    """--mongo-uri/--db/--tasks-dir/--study, on the main parser and on each subcommand.

    On subcommands their default is SUPPRESS, so that an option given before the
    subcommand is not overwritten by the subcommand's default.
    """
    def default(value: Any) -> Any:
        return value if top_level else argparse.SUPPRESS

    group = parser.add_argument_group("global options")
    group.add_argument("--mongo-uri", metavar="URI", default=default(None),
                       help="MongoDB URI (default: $HSE_MONGO_URI, else the embedded server "
                            "of this machine, started on demand)")
    group.add_argument("--db", metavar="NAME", default=default(os.environ.get("HSE_DB")),
                       help="database of the Study (default: $HSE_DB)")
    group.add_argument("--tasks-dir", metavar="DIR",
                       default=default(os.environ.get("HSE_TASKS_DIR") or "tasks"),
                       help="directory of the task .json files (default: $HSE_TASKS_DIR, "
                            "else ./tasks)")
    group.add_argument("--study", metavar="NAME", default=default(None),
                       help="Study name in the queue (default: the database name)")


def _command(sub: argparse._SubParsersAction, name: str, handler: Handler, help: str,
             epilog: str, *, global_options: bool = True) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    if global_options:
        _add_global_options(parser, top_level=False)
    return parser


def _add_server(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "server", cmd_server,
                 "start, stop or describe this machine's embedded MongoDB-wire server",
                 "examples:\n  hse server start    # prints the URI workers elsewhere can use\n"
                 "  hse server status   # exit status 1 when it is not running\n"
                 "  hse server stop\n\n"
                 "The server (nx-27017, data in $HSE_HOME/data) is shared by every process on "
                 "this machine\nand is started automatically by any command that needs it, "
                 "unless HSE_MONGO_URI is set.", global_options=False)
    p.add_argument("action", choices=("start", "stop", "status"))


def _add_worker(sub: argparse._SubParsersAction) -> None:
    from .worker import add_worker_arguments

    p = _command(sub, "worker", cmd_worker,
                 "execute queued runs of the Study (same options as hyperspace_worker)",
                 "examples:\n  cd examples/digits_study && hse worker ../../tasks digits\n"
                 "  hse worker tasks mystudy --study-dir src/ --idle-exit 60\n\n"
                 "Start as many as you like, on any machines reaching the database.\n"
                 "Ctrl-C once finishes the current run then stops; twice puts it back in "
                 "the queue.", global_options=False)
    add_worker_arguments(p)
    for action in p._actions:  # let `hse --mongo-uri X worker ...` keep X (see above)
        if action.dest in ("mongo_uri", "study"):
            action.default = argparse.SUPPRESS


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "submit", cmd_submit, "queue runs of a task; prints their ids",
                 "examples:\n"
                 "  hse submit digits --set model.className=LogisticModel --set model.C=0.5\n"
                 "  hse submit digits --set model.className=ForestModel \\\n"
                 "        --grid model.n_estimators=20,50,100 --grid model.max_depth=null,8 "
                 "--seeds 5\n"
                 "  hse submit digits --config base.json --set train_fraction=0.5 "
                 "--priority 10\n\n"
                 "Values are JSON when they parse as JSON (0.5, true, null, [50,10], "
                 "{\"a\":1}),\nelse strings (Forest). Grid values are comma-separated; "
                 "commas inside [...] or\n{...} do not split (--grid model.layers=[50,10],[20]). "
                 "The config is validated\nagainst the Study's classes before anything is "
                 "queued.")
    p.add_argument("task", help="task name (TASKS_DIR/<task>.json)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   type=parse_assignment, metavar="PATH=VALUE",
                   help="set a config value by dotted path (repeatable)")
    p.add_argument("--grid", action="append", default=[], type=parse_grid,
                   metavar="PATH=V1,V2,...",
                   help="one axis of a grid; the cartesian product of all axes is queued")
    p.add_argument("--config", metavar="FILE.json",
                   help="base config (a JSON object); --set and --grid apply on top")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="run each config under N seeds: the task's seed, +1, ... "
                            "(default: just the task's seed)")
    seeds.add_argument("--seed", dest="seed_list", type=int, action="append", metavar="S",
                       help="run each config under this seed (repeatable), e.g. to re-run "
                            "a run found by `hse best`")
    p.add_argument("--priority", type=int, default=0,
                   help="higher runs first (default %(default)s)")
    p.add_argument("--max-runtime", type=float, default=None, metavar="S",
                   help="seconds after which a run is killed as TIMEOUT "
                        "(default: the task's max_runtime)")
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, metavar="N",
                   help="attempts before a run whose worker keeps dying is FAILED "
                        "(default %(default)s)")
    p.add_argument("--study-dir", metavar="DIR",
                   help="directory of the Study's scenarios.py, to validate the config "
                        "(default: the tasks directory's parent, then the current directory)")


def _add_status(sub: argparse._SubParsersAction) -> None:
    _command(sub, "status", cmd_status, "number of runs in each status, per task",
             "example:\n  hse --db digits status")


def _add_ls(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "ls", cmd_ls, "list the most recently queued runs",
                 "examples:\n  hse ls\n  hse ls --task digits --status FAILED -n 100")
    p.add_argument("--task", help="only runs of this task")
    p.add_argument("--status", type=str.upper, choices=STATUSES, metavar="STATUS",
                   help=f"only runs in this status ({', '.join(STATUSES)})")
    p.add_argument("-n", "--limit", type=int, default=20,
                   help="how many runs (default %(default)s)")


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "show", cmd_show,
                 "one run in full: config, metrics, error and the tail of its output",
                 "examples:\n  hse show 3f9a0c1b2d4e   # queue id, as printed by submit/ls\n"
                 "  hse show 12             # Sacred id (as in Omniboard)")
    p.add_argument("run", help="queue id or Sacred id")
    p.add_argument("--lines", type=int, default=OUTPUT_LINES,
                   help="lines of captured output to print (default %(default)s)")


def _add_cancel(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "cancel", cmd_cancel,
                 "cancel queued runs; ask running ones to stop (they end CANCELLED)",
                 "examples:\n  hse cancel 3f9a0c1b2d4e 12\n  hse cancel --task digits\n"
                 "  hse cancel --all          # every queued or running run of the Study")
    p.add_argument("runs", nargs="*", metavar="RUN", help="queue or Sacred ids")
    p.add_argument("--task", help="every active run of this task")
    p.add_argument("--all", action="store_true", help="every active run of the Study")


def _add_results(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "results", cmd_results,
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


def _add_best(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "best", cmd_best,
                 "the best completed run of a task, its full config and how to run it again",
                 "examples:\n  hse best digits\n"
                 "  hse best digits --save best.json\n"
                 "  hse submit digits --config best.json --seed 3   # run it again (its seed)\n"
                 "  hse best digits --json | jq .config\n\n"
                 "Best by the task's metric and direction (a single run, not a mean over "
                 "seeds: see\n`hse results` for that). --json prints run_id, sacred_id, "
                 "task, seed, metric,\ndirection, value, metrics and config.")
    p.add_argument("task", help="task name")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--save", metavar="FILE.json",
                   help="also write the run's full config there, for `hse submit --config`")


def _add_diff(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "diff", cmd_diff,
                 "what differs between two runs: config, seed, metrics, code version, sources",
                 "examples:\n  hse diff 3f9a0c1b2d4e 9d0e1f2a3b4c\n"
                 "  hse diff 12 17            # Sacred ids\n\n"
                 "Configs are compared in full (defaults included), path by path; source "
                 "files are\nthe ones Sacred recorded for each run, compared by content.")
    p.add_argument("run_a", metavar="RUN_A", help="queue id or Sacred id")
    p.add_argument("run_b", metavar="RUN_B", help="queue id or Sacred id")


PLOT_KINDS = ("box", "curve", "param")


def _add_plot(sub: argparse._SubParsersAction) -> None:
    from .plots import SAVE_FORMATS

    p = _command(sub, "plot", cmd_plot,
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
                 f"The format follows the file name ({', '.join(SAVE_FORMATS)}). Only "
                 "COMPLETED runs are drawn.")
    p.add_argument("task", help="task name")
    p.add_argument("kind", help=f"one of {', '.join(PLOT_KINDS)}")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help=f"file to write ({', '.join(SAVE_FORMATS)})")
    p.add_argument("--metric", metavar="NAME",
                   help="metric for box/param (default: the task's main metric)")
    p.add_argument("--param", metavar="PATH", help="config path on the x axis (param)")
    p.add_argument("--curve", metavar="NAME", help="logged series to draw (curve)")
    p.add_argument("--by", action="extend", nargs="+", metavar="PATH",
                   help="config paths to group by (box, curve) or one path for the lines "
                        "(param)")
    p.add_argument("--logx", action="store_true", help="log-scaled x axis (param)")
    p.add_argument("--title", help="figure title (default: one saying what is drawn)")


def _add_recover(sub: argparse._SubParsersAction) -> None:
    _command(sub, "recover", cmd_recover,
             "requeue runs of dead workers and archive finished runs now",
             "example:\n  hse recover\n\nWorkers do this on their own every few seconds; "
             "run it when no worker is running.")


def _add_workers(sub: argparse._SubParsersAction) -> None:
    _command(sub, "workers", cmd_workers, "list the workers registered in the database",
             "example:\n  hse workers\n\n"
             "state: alive; stopping (asked to stop: it finishes its current run, then "
             "exits);\nDEAD (its last heartbeat is older than its own lease, --lease of "
             "hyperspace_worker,\nor 3x the default heartbeat interval for workers that "
             "did not record one: it was\nkilled without cleaning up, and its run is "
             "requeued once the run's lease expires).")


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from .demo import DEMO_DB

    p = _command(sub, "demo", cmd_demo,
                 "queue, execute and rank a small grid on the bundled digits example",
                 "example:\n  hse demo\n\n"
                 f"Uses database '{DEMO_DB}' (its previous runs are DROPPED first; --db picks "
                 "another\none, the global --db and $HSE_DB are deliberately ignored), starts "
                 "2 local workers,\nwaits for the runs and prints the ranking, in well under "
                 "a minute.",
                 global_options=False)
    p.add_argument("--mongo-uri", metavar="URI", default=argparse.SUPPRESS,
                   help="MongoDB URI (default: $HSE_MONGO_URI, else the embedded server)")
    p.add_argument("--db", dest="demo_db", metavar="NAME", default=DEMO_DB,
                   help="database to (re)create for the demo (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="local worker processes "
                                                          "(default %(default)s)")


# =========================================================================== value parsing
def parse_value(text: str) -> Any:
    """A command-line value: JSON when it parses (0.5, true, null, [50,10]), else the
    string itself, so `className=Forest` needs no quoting."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_path(text: str, option: str, example: str) -> tuple[str, str]:
    path, sep, value = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"expected PATH=VALUE (e.g. {example}), got {text!r}")
    if not all(path.split(".")):
        raise argparse.ArgumentTypeError(f"{option} {text!r}: empty key in dotted path {path!r}")
    return path, value


def parse_assignment(text: str) -> tuple[str, Any]:
    """`--set model.C=0.5` -> ("model.C", 0.5)."""
    path, value = _split_path(text, "--set", "model.C=0.5")
    return path, parse_value(value)


def parse_grid(text: str) -> tuple[str, list[Any]]:
    """`--grid model.C=0.1,1` -> ("model.C", [0.1, 1]); commas inside brackets, braces
    or quotes do not split (`model.layers=[50,10],[20]` has two values)."""
    path, value = _split_path(text, "--grid", "model.C=0.1,1,10")
    items = split_top_level(value)
    if any(not item.strip() for item in items):
        raise argparse.ArgumentTypeError(f"--grid {text!r}: empty value in the list")
    return path, [parse_value(item.strip()) for item in items]


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...], {...} or a double-quoted string."""
    items, depth, start, quoted, escaped = [], 0, 0, False, False
    for i, ch in enumerate(text):
        if quoted:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


# =========================================================================== shared helpers
def _console(stderr: bool = False):
    """A rich console; wide when piped, so ids and values are never cut or wrapped."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, soft_wrap=False,
                   width=None if stream.isatty() else 200)


class Session:
    """What a command works with: its arguments and, connected on first use and closed
    by `main`, the Store of the chosen database."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self._store: Storage | None = None

    @property
    def db(self) -> str:
        if not self.args.db:
            raise HSEError("no database given: pass --db NAME (or set HSE_DB)")
        return self.args.db

    @property
    def study(self) -> str:
        return self.args.study or self.db

    @property
    def store(self) -> Storage:
        if self._store is None:
            from .server import resolve_uri
            from .storage import connect

            db = self.db  # before resolve_uri, which may start the embedded server
            self._store = connect(resolve_uri(self.args.mongo_uri), db)
        return self._store

    def match(self, **criteria: Any) -> RunFilter:
        """This Study's runs that meet `criteria` (RunFilter fields; None: any)."""
        return RunFilter(study=self.study).narrowed(**criteria)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def _epoch(value: Any) -> float | None:
    """Seconds since the epoch from a stored time (epoch number or datetime)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _when(value: Any) -> str:
    ts = _epoch(value)
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _duration(doc: Mapping[str, Any]) -> str:
    """Recorded duration of a finished run; time so far for a running one."""
    if doc.get("duration") is not None:
        return _seconds(float(doc["duration"]))
    started = _epoch(doc.get("started_at"))
    if doc.get("status") == RUNNING and started is not None:
        return _seconds(time.time() - started) + " so far"
    return "-"


def _text(value: Any, style: str = ""):
    """A table cell that is never parsed as rich markup (configs contain [...])."""
    from rich.text import Text

    return Text("-" if value is None else str(value), style=style)


def _status(status: Any):
    return _text(status, STATUS_STYLE.get(str(status), ""))


def _main_metric(doc: Mapping[str, Any]) -> str:
    name = (doc.get("task_spec") or {}).get("metric")
    metrics = doc.get("metrics") or {}
    if name in metrics:
        return f"{name}={metrics[name]:.4g}"
    return doc.get("reason") or "-"


def _task_counts(store: Storage, match: RunFilter) -> dict[str, Counter]:
    """{task: Counter(status)} over the runs matching `match` (counted by the server)."""
    counts: dict[str, Counter] = {}
    for (task, status), n in store.count_by_task_status(match).items():
        counts.setdefault(task or "?", Counter())[status] += n
    return counts


# =========================================================================== commands
def cmd_server(session: Session) -> int:
    from .server import ensure_server, server_status, stop_server

    args = session.args
    console = _console()
    if os.environ.get("HSE_MONGO_URI", "").strip():
        console.print(_text("note: HSE_MONGO_URI is set, so hse and workers use that server, "
                            "not the embedded one", "yellow"))
    if args.action == "start":
        uri = ensure_server()
        state = server_status()
        console.print(_text(f"embedded server running at {uri} (pid {state['pid']}); "
                            f"data in {state['data_dir']}"))
        return 0
    if args.action == "stop":
        console.print(_text("embedded server stopped" if stop_server()
                            else "no embedded server was running"))
        return 0
    state = server_status()
    console.print(_text("running" if state["running"] else "not running",
                        "green" if state["running"] else "red"))
    for key in ("uri", "pid", "started_at", "data_dir", "log_file"):
        if state.get(key) is not None:
            console.print(_text(f"  {key}: {state[key]}"))
    return 0 if state["running"] else 1


def cmd_worker(session: Session) -> int:
    from .worker import run_worker_from_args

    return run_worker_from_args(session.args)


def cmd_submit(session: Session) -> int:
    from .queue import RunQueue

    args = session.args
    conf = _read_config(args.config) if args.config else {}
    for path, value in args.assignments:
        set_dotted(conf, path, value)
    grid: dict[str, list[Any]] = {}
    for path, values in args.grid:
        if path in grid:
            raise ConfigError(path, "given twice with --grid; list all its values in one "
                                    "--grid PATH=V1,V2")
        grid[path] = values
    queue = RunQueue(args.mongo_uri, session.db, args.tasks_dir, study=args.study,
                     study_dir=args.study_dir)
    options = dict(seeds=args.seed_list if args.seed_list else args.seeds,
                   priority=args.priority, max_attempts=args.max_attempts,
                   max_runtime=args.max_runtime)
    try:
        ids = (queue.submit_grid(args.task, conf, grid, **options) if grid
               else queue.submit(args.task, conf, **options))
    finally:
        queue.store.close()
    for run_id in ids:
        print(run_id)
    _console(stderr=True).print(_text(
        f"queued {len(ids)} run(s) of task '{args.task}' in study '{queue.study}'"))
    return 0


def _read_config(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise HSEError(f"--config {path}: cannot read it: {exc.strerror}") from None
    except ValueError as exc:
        raise HSEError(f"--config {path}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HSEError(f"--config {path}: must hold a JSON object, got {type(data).__name__}")
    return data


def cmd_status(session: Session) -> int:
    from rich.table import Table

    store = session.store
    counts = _task_counts(store, session.match())
    console = _console()
    if not counts:
        console.print(_text(f"no runs in study '{session.study}' (database '{store.db_name}')"))
        return 0
    table = Table(title=f"study '{session.study}'")
    table.add_column("task")
    for status in STATUSES:
        table.add_column(status, justify="right", style=STATUS_STYLE[status])
    table.add_column("total", justify="right")
    total: Counter = Counter()
    for task in sorted(counts):
        total.update(counts[task])
        table.add_row(_text(task), *_count_cells(counts[task]))
    if len(counts) > 1:
        table.add_row(_text("all", "bold"), *_count_cells(total))
    console.print(table)
    return 0


def _count_cells(counts: Counter) -> list[str]:
    return [str(counts.get(s, 0)) for s in STATUSES] + [str(sum(counts.values()))]


def cmd_ls(session: Session) -> int:
    from rich.table import Table

    args = session.args
    if args.limit < 1:
        raise HSEError(f"-n must be at least 1, got {args.limit}")
    store = session.store
    fields = ["task", "status", "seed", "metrics", "duration", "host", "sacred_id",
              "task_spec", "order", "reason", "started_at"]
    docs = store.find_runs(session.match(task=args.task, status=args.status),
                           fields=fields, newest_first=True, limit=args.limit)
    docs = sorted(docs, key=lambda d: d.get("order", 0), reverse=True)[:args.limit]
    console = _console()
    if not docs:
        console.print(_text(f"no matching runs in study '{session.study}'"))
        return 0
    table = Table(title=f"{len(docs)} most recent run(s), newest first")
    for name, justify in (("id", "left"), ("sacred id", "right"), ("task", "left"),
                          ("status", "left"), ("seed", "right"), ("metric", "left"),
                          ("duration", "right"), ("host", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for doc in docs:
        table.add_row(_text(doc["_id"]), _text(doc.get("sacred_id")), _text(doc.get("task")),
                      _status(doc.get("status")), _text(doc.get("seed")),
                      _text(_main_metric(doc)), _text(_duration(doc)), _text(doc.get("host")))
    console.print(table)
    return 0


def cmd_show(session: Session) -> int:
    from rich.json import JSON
    from rich.table import Table

    args = session.args
    store = session.store
    doc = store.get_run(args.run)
    sacred = store.sacred_run(doc["sacred_id"]) if doc.get("sacred_id") is not None else None
    console = _console()
    console.print(_text(f"run {doc['_id']}  (sacred id {doc.get('sacred_id', '-')})", "bold"))
    facts = [("task", doc.get("task")), ("status", doc.get("status")),
             ("reason", doc.get("reason")), ("seed", doc.get("seed")),
             ("attempt", f"{doc.get('attempt', 0)} of {doc.get('max_attempts', '-')}"),
             ("priority", doc.get("priority")), ("host", doc.get("host")),
             ("worker", doc.get("worker")), ("queued", _when(doc.get("queued_at"))),
             ("started", _when(doc.get("started_at"))), ("ended", _when(doc.get("ended_at"))),
             ("duration", _duration(doc)), ("code version", _code_version(doc)),
             ("worker log", doc.get("log_file"))]
    info = Table.grid(padding=(0, 2))
    for key, value in facts:
        if value not in (None, "-"):
            info.add_row(_text(key, "dim"), _status(value) if key == "status" else _text(value))
    console.print(info)
    console.print(_text("\nconfig", "bold"))
    console.print(JSON.from_data(doc.get("config") or {}, default=str))
    if doc.get("metrics"):
        console.print(_text("\nmetrics", "bold"))
        for name, value in sorted(doc["metrics"].items()):
            console.print(_text(f"  {name} = {value}"))
    series = store.metric_series([doc["sacred_id"]]) if doc.get("sacred_id") else []
    if series:
        console.print(_text("\nlogged series", "bold"))
        for s in sorted(series, key=lambda s: s.get("name", "")):
            values = s.get("values") or []
            last = f", last {values[-1]:.4g}" if values else ""
            console.print(_text(f"  {s.get('name')}: {len(values)} step(s){last}"))
    error = doc.get("error") or doc.get("last_error") or "".join(
        (sacred or {}).get("fail_trace") or [])
    if error:
        console.print(_text("\nerror", "bold red"))
        console.print(_text(error.rstrip()))
    output = (sacred or {}).get("captured_out") or ""
    if output:
        lines = output.rstrip("\n").splitlines()
        shown = lines[-args.lines:] if args.lines > 0 else []
        console.print(_text(f"\noutput (last {len(shown)} of {len(lines)} lines)", "bold"))
        console.print(_text("\n".join(shown)))
    elif sacred is None and doc.get("status") not in ACTIVE:
        console.print(_text("\n(no Sacred record: the run never started)", "dim"))
    return 0


def _code_version(doc: Mapping[str, Any]) -> str | None:
    version = doc.get("code_version") or {}
    if not version.get("commit"):
        return None
    return f"{version['commit'][:12]}{' (dirty)' if version.get('dirty') else ''}"


def cmd_cancel(session: Session) -> int:
    args = session.args
    if not (args.runs or args.task or args.all):
        raise HSEError("say what to cancel: run ids, --task TASK, or --all")
    store = session.store
    console = _console()
    matches: list[RunFilter] = []
    for run in args.runs:
        doc = store.get_run(run)
        if doc.get("status") in FINAL:
            console.print(_text(f"run {doc['_id']} already ended ({doc['status']})", "dim"))
        else:
            matches.append(RunFilter(ids=(doc["_id"],)))
    if args.all:
        matches.append(session.match())
    elif args.task:
        matches.append(session.match(task=args.task))
    cancelled = stopping = 0
    for match in matches:
        now, flagged = store.request_cancel(match)
        cancelled, stopping = cancelled + now, stopping + flagged
    console.print(_text(f"cancelled {cancelled} queued run(s); asked {stopping} running "
                        f"run(s) to stop (they end CANCELLED within a heartbeat)"))
    return 0


def cmd_results(session: Session) -> int:
    from .analysis import summarize
    from .export import export
    from .results import results_frame

    args = session.args
    store = session.store
    metric, direction = _task_metric(session, args.task)
    frame = results_frame(store, session.match(task=args.task))
    summary = summarize(frame, metric, direction, by=args.by)
    if args.format == "table":
        _console().print(summary_table(
            summary, title=f"task '{args.task}': {len(frame)} run(s), ranked by {metric} "
                           f"({direction})"))
    else:
        print(export(summary, args.format, metric, direction))
    return 0


def _task_metric(session: Session, task: str) -> tuple[str, str]:
    """(metric, direction) of `task` as stored with its runs; HSEError naming the tasks
    that have runs when it has none."""
    store = session.store
    doc = next(iter(store.find_runs(session.match(task=task), fields=["task_spec"],
                                    limit=1)), None)
    if doc is None:
        known = ", ".join(sorted(_task_counts(store, session.match()))) or "(none)"
        raise HSEError(f"no runs of task '{task}' in study '{session.study}' (database "
                       f"'{store.db_name}'); tasks with runs: {known}")
    spec = doc.get("task_spec") or {}
    return spec.get("metric", "score"), spec.get("direction", "maximize")


def summary_table(summary: Any, title: str | None = None):
    """A `summarize()` frame as a rich table: one "mean ± std" cell per metric."""
    import pandas as pd
    from rich.table import Table

    from .analysis import format_value

    attrs = summary.attrs
    main, direction = attrs.get("metric"), attrs.get("direction")
    metrics = sorted(attrs.get("metrics", []), key=lambda m: m != main)
    config_columns = attrs.get("config_columns", [])
    table = Table(title=title)
    table.add_column("rank", justify="right")
    for col in config_columns:
        table.add_column(col)
    table.add_column("n", justify="right")
    for m in metrics:
        arrow = (" ↑" if direction == "maximize" else " ↓") if m == main else ""
        table.add_column(f"{m}{arrow}", justify="right", style="bold" if m == main else "")
    table.add_column("p (Holm)", justify="right")
    table.add_column("not worse")
    for _, row in summary.iterrows():
        cells = [_text(row["rank"])]
        cells += [_text(format_value(row[col])) for col in config_columns]
        cells.append(_text(row["n"]))
        cells += [_text(_mean_std(row[f"{m}_mean"], row[f"{m}_std"])) for m in metrics]
        p = row.get("p_welch_holm")
        cells.append(_text("-" if pd.isna(p) else f"{p:.3g}"))
        flag = row.get("not_worse")
        cells.append(_text("-" if pd.isna(flag) else ("yes" if flag else "no")))
        table.add_row(*cells)
    return table


def _mean_std(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.4f} ± {std:.4f}" if math.isfinite(std) else f"{mean:.4f}"


def best_run_info(session: Session, task: str) -> dict[str, Any]:
    """The best COMPLETED run of `task` by its stored metric and direction: ids, seed,
    metric value, every metric and the full config (what `hse best` prints)."""
    from .analysis import best_run
    from .results import results_frame

    metric, direction = _task_metric(session, task)
    frame = results_frame(session.store, session.match(task=task, status="COMPLETED"))
    if len(frame) == 0:
        counts = _task_counts(session.store, session.match(task=task)).get(task, Counter())
        raise HSEError(f"no COMPLETED run of task '{task}' yet ("
                       + ", ".join(f"{s}: {n}" for s, n in sorted(counts.items())) + ")")
    row = best_run(frame, metric, direction)
    doc = session.store.get_run(row["run_id"])
    metrics = doc.get("metrics") or {}
    return {"run_id": doc["_id"], "sacred_id": doc.get("sacred_id"), "task": task,
            "seed": doc.get("seed"), "metric": metric, "direction": direction,
            "value": metrics.get(metric), "metrics": metrics,
            "config": doc.get("config") or {}}


def cmd_best(session: Session) -> int:
    from rich.json import JSON
    from rich.table import Table

    args = session.args
    best = best_run_info(session, args.task)
    if args.save:
        path = Path(args.save)
        try:
            path.write_text(json.dumps(best["config"], indent=2, default=str) + "\n",
                            encoding="utf-8")
        except OSError as exc:
            raise HSEError(f"--save {path}: cannot write it: {exc.strerror}") from None
    if args.json:
        print(json.dumps(_json_ready(best), allow_nan=False, default=str))
        return 0
    console = _console()
    console.print(_text(f"best run of task '{args.task}' by {best['metric']} "
                        f"({best['direction']})", "bold"))
    info = Table.grid(padding=(0, 2))
    for key, value in (("run id", best["run_id"]), ("sacred id", best["sacred_id"]),
                       ("seed", best["seed"]), (best["metric"], best["value"])):
        info.add_row(_text(key, "dim"), _text(value))
    for name, value in sorted(best["metrics"].items()):
        if name != best["metric"]:
            info.add_row(_text(name, "dim"), _text(value))
    console.print(info)
    console.print(_text("\nconfig", "bold"))
    console.print(JSON.from_data(best["config"], default=str))
    config_file = args.save or "best.json"
    saved = (f"(config saved to {args.save})" if args.save
             else f"(hse best {args.task} --save {config_file} writes the config above)")
    console.print(_text("\nto run it again", "bold"))
    console.print(_text(f"  hse submit {args.task} --config {config_file} --seed "
                        f"{best['seed']}\n    {saved}"))
    console.print(_text(f"  or in Python, with q = RunQueue(None, {session.db!r}, "
                        f"{str(args.tasks_dir)!r}):"))
    console.print(_text(f"  q.submit({args.task!r}, {_python_literal(best['config'])}, "
                        f"seeds=[{best['seed']}])"))
    return 0


def _json_ready(value: Any) -> Any:
    """Plain JSON values: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _python_literal(value: Any) -> str:
    return repr(_json_ready(value))


_ABSENT = "<absent>"  # what results.run_diff puts for a path one config lacks


def cmd_diff(session: Session) -> int:
    from rich.table import Table

    from .results import run_diff

    args = session.args
    store = session.store
    diff = run_diff(store, args.run_a, args.run_b)
    docs = [store.get_run(r) for r in diff["runs"]]
    console = _console()
    console.print(_text(f"A: run {docs[0]['_id']} (sacred id {docs[0].get('sacred_id', '-')})"
                        f"\nB: run {docs[1]['_id']} (sacred id {docs[1].get('sacred_id', '-')})",
                        "bold"))
    if diff["config"]:
        console.print(_text(f"\nconfig: {len(diff['config'])} difference(s)", "bold"))
        table = Table()
        for name in ("path", "A", "B"):
            table.add_column(name)
        for path, a, b in diff["config"]:
            table.add_row(_text(path), _text(_config_value(a)), _text(_config_value(b)))
        console.print(table)
    else:
        console.print(_text("\nsame config", "green"))

    console.print(_text("\nruns side by side", "bold"))
    side = Table()
    for name in ("", "A", "B"):
        side.add_column(name)

    def add(label: str, pair: list[Any], style_status: bool = False) -> None:
        cells = [_status(v) if style_status else _text(v) for v in pair]
        differ = pair[0] != pair[1]
        side.add_row(_text(label, "bold" if differ else "dim"), *cells)

    add("task", diff["task"])
    add("seed", diff["seed"])
    add("status", diff["status"], style_status=True)
    metrics = [m or {} for m in diff["metrics"]]
    for name in sorted(set(metrics[0]) | set(metrics[1])):
        add(f"metrics.{name}", [m.get(name) for m in metrics])
    add("commit", diff["commit"])
    add("dirty", diff["dirty"])
    console.print(side)

    if diff["sources"]:
        console.print(_text(f"\nsource files: {len(diff['sources'])} differ", "bold"))
        table = Table()
        table.add_column("file")
        table.add_column("change")
        for name, change in diff["sources"]:
            table.add_row(_text(name), _text(change))
        console.print(table)
    else:
        note = ("" if diff["commit"][0] == diff["commit"][1]
                else " (the commits differ outside the recorded source files)")
        console.print(_text(f"\nsame code: no recorded source file differs{note}", "green"))
    return 0


def _config_value(value: Any) -> str:
    if isinstance(value, str) and value == _ABSENT:
        return value
    return json.dumps(_json_ready(value), default=str)


def cmd_plot(session: Session) -> int:
    from .analysis import config_paths, group_runs
    from .plots import SAVE_FORMATS, plot_curves, plot_metric_by_config, plot_param_vs_metric
    from .results import curves_frame, results_frame

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
    store = session.store
    task_metric, direction = _task_metric(session, args.task)
    metric = args.metric or task_metric
    if metric.removeprefix("metrics.") != task_metric:
        direction = None  # only the task's own metric has a known better direction
    frame = results_frame(store, session.match(task=args.task))
    if not (frame["status"] == "COMPLETED").any():
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
        runs = groups.data
        if not args.curve:
            names = _series_names(store, runs)
            raise HSEError(f"'curve' plots need --curve NAME; logged series: "
                           f"{', '.join(names) or '(none: the runs logged no log_scalar)'}")
        curves = curves_frame(store, runs, args.curve)
        if len(curves) == 0:
            names = _series_names(store, runs)
            raise HSEError(f"no run of task '{args.task}' logged a series named "
                           f"{args.curve!r}; logged series: {', '.join(names) or '(none)'}")
        plot_curves(curves, args.curve, groups.shown_columns, path=out, title=args.title)
    print(out)
    return 0


def _series_names(store: Storage, runs: Any) -> list[str]:
    """Names of the series the runs logged (for error messages)."""
    ids = [int(s) for s in runs["sacred_id"].dropna()]
    return sorted({str(r.get("name")) for r in store.metric_series(ids)})


def cmd_recover(session: Session) -> int:
    from .worker import recover_expired

    store = session.store
    recovered = recover_expired(store)
    store.quarantine_orphans()
    store.close_orphan_sacred_runs()
    swept = batch = store.sweep_finished(everything=True)
    while batch:
        batch = store.sweep_finished(everything=True)
        swept += batch
    _console().print(_text(
        f"recovered {recovered} run(s) whose worker stopped renewing its lease (requeued, or "
        f"FAILED after max_attempts); archived {swept} finished run(s)"))
    return 0


def cmd_workers(session: Session) -> int:
    from rich.table import Table

    from .worker import DEFAULT_HEARTBEAT_S

    store = session.store
    workers = sorted(store.list_workers(), key=lambda w: (w.get("host", ""), w.get("pid", 0)))
    console = _console()
    if not workers:
        console.print(_text(f"no workers registered in database '{store.db_name}'"))
        return 0
    table = Table(title=f"{len(workers)} worker(s) (DEAD: no heartbeat for longer than its "
                        f"lease)")
    for name in ("host", "pid", "study", "current run", "executed", "last heartbeat", "lease",
                 "state"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for w in workers:
        state, style = worker_state(w, now, 3 * DEFAULT_HEARTBEAT_S)
        beat = _epoch(w.get("heartbeat"))
        age = None if beat is None else max(0.0, now - beat)
        table.add_row(_text(w.get("host")), _text(w.get("pid")), _text(w.get("study")),
                      _text(w.get("current_run")), _text(w.get("executed", 0)),
                      _text("-" if age is None else f"{_seconds(age)} ago"),
                      _text(_seconds(_worker_lease(w, 3 * DEFAULT_HEARTBEAT_S))),
                      _text(state, style))
    console.print(table)
    return 0


def _worker_lease(worker: Mapping[str, Any], fallback: float) -> float:
    lease = worker.get("lease_s")
    if isinstance(lease, (int, float)) and not isinstance(lease, bool) and lease > 0:
        return float(lease)
    return fallback


def worker_state(worker: Mapping[str, Any], now: float, fallback_lease: float
                 ) -> tuple[str, str]:
    """("DEAD" | "stopping" | "alive", style) of a `hse_workers` document: DEAD when its
    last heartbeat is older than its own `lease_s` (`fallback_lease` when it has none)."""
    beat = _epoch(worker.get("heartbeat"))
    if beat is None or now - beat > _worker_lease(worker, fallback_lease):
        return "DEAD", "red"
    if worker.get("stopping"):
        return "stopping", "yellow"
    return "alive", "green"


def cmd_demo(session: Session) -> int:
    from .demo import run_demo

    args = session.args
    console = _console()
    result = run_demo(args.mongo_uri, args.demo_db, workers=args.workers,
                      say=lambda message: console.print(_text(message)))
    console.print(summary_table(
        result.summary, title=f"digits: {result.completed} run(s) ranked by mean accuracy "
                              f"over {result.seeds} seeds"))
    console.print(_text(f"done in {result.elapsed_s:.1f}s", "bold"))
    prefix = f"hse --db {result.db}"
    if result.custom_uri:
        prefix = f"hse --mongo-uri {redact_uri(result.uri)} --db {result.db}"
    console.print(_text("\nnext steps:", "bold"))
    for line in (f"{prefix} ls                    # the runs",
                 f"{prefix} show {result.example_id}      # one run: config, metrics, output",
                 f"{prefix} results digits        # this ranking; --format md|latex|csv|json",
                 f"cd {result.study_dir} && hse worker {result.tasks_dir} {result.db}"
                 f"   # a worker of your own"):
        console.print(_text(f"  {line}"))
    if result.problems:
        _fail(f"{len(result.problems)} run(s) did not complete, e.g. {result.problems[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
