"""`hse submit`: queue runs of a task (`RunQueue.submit` / `submit_grid`), and the
parsing of the PATH=VALUE values of --set and --grid."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import MAX_INT, ConfigError, HSEError, bounded_int, positive_int, seconds
from ..storage import DEFAULT_MAX_ATTEMPTS
from ..task import MAX_SEED
from . import render
from .common import Session, SubParsers, checked, command
from .worker import names


def register(sub: SubParsers) -> None:
    p = command(sub, "requeue", cmd_requeue,
                "put finished runs back in the queue with a fresh attempt count",
                "examples:\n"
                "  hse requeue 3f9a0c1b2d4e 12              # these runs (any final status)\n"
                "  hse requeue --task digits                  # its FAILED, TIMEOUT, CANCELLED runs\n"
                "  hse requeue --task digits --status FAILED,TIMEOUT\n\n"
                "COMPLETED runs are requeued only when named by id or by --status. Each run "
                "keeps its\nearlier outcome (in previous_attempts) and its Sacred record.")
    p.add_argument("runs", nargs="*", metavar="RUN", help="queue or Sacred ids")
    p.add_argument("--task", help="finished runs of this task")
    p.add_argument("--status", metavar="S1,S2",
                   help="only runs in these statuses (default with --task: "
                        "FAILED,TIMEOUT,CANCELLED)")

    p = command(sub, "rerun", cmd_rerun,
                "queue a past run again: its exact stored config, plus changes; prints the "
                "new id",
                "examples:\n"
                "  hse rerun 3f9a0c1b2d4e                     # same config and seed\n"
                "  hse rerun 12 --set model.C=2.0 --seed 7    # by Sacred id, with changes\n\n"
                "The new run records the run it reproduces (hse show, hse diff OLD NEW). "
                "It is queued\neven when an identical run exists. A note says when "
                "today's Study code differs\nfrom the code the run ran with.")
    p.add_argument("run", metavar="RUN", help="queue or Sacred id of the run to run again")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   type=parse_assignment, metavar="PATH=VALUE",
                   help="change a config value by dotted path (repeatable)")
    p.add_argument("--seed", type=checked(bounded_int, 0, MAX_SEED), default=None,
                   metavar="S", help="run it under this seed (default: the run's own)")

    p = command(sub, "backfill", cmd_backfill,
                "write today's defaults into the stored configs of a task's finished runs",
                "examples:\n"
                "  hse backfill digits --dry-run      # how many runs would change\n"
                "  hse backfill digits\n\n"
                "Queue documents and Sacred records get complete configs (incense and "
                "Omniboard then\nshow every parameter without the Study's code); each "
                "original is kept in\nconfig_original. Runs whose config today's code "
                "refuses (a renamed or removed\nparameter) are reported and left as they "
                "are. A second call changes nothing.")
    p.add_argument("task", help="task name")
    p.add_argument("--dry-run", action="store_true", help="only report what would change")

    p = command(sub, "submit", cmd_submit, "queue runs of a task; prints their ids",
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
                "queued. Runs already queued, running\nor completed (same task, config and "
                "seed) are skipped unless --force.")
    p.set_defaults(needs_tasks=True)
    p.add_argument("task", help="task name (TASKS_DIR/<task>.json)")
    p.add_argument("--set", dest="assignments", action="append", default=[],
                   type=parse_assignment, metavar="PATH=VALUE",
                   help="set a config value by dotted path (repeatable, once per path)")
    p.add_argument("--grid", action="append", default=[], type=parse_grid,
                   metavar="PATH=V1,V2,...",
                   help="one axis of a grid; the cartesian product of all axes is queued")
    p.add_argument("--config", metavar="FILE.json",
                   help="base config (a JSON object); --set and --grid apply on top")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=checked(positive_int), default=None, metavar="N",
                       help="run each config under N seeds: the task's seed, +1, ... "
                            "(default: just the task's seed)")
    seeds.add_argument("--seed", dest="seed_list", type=checked(bounded_int, 0, MAX_SEED),
                       action="append", metavar="S",
                       help="run each config under this seed (repeatable), e.g. to re-run "
                            "a run found by `hse best`")
    p.add_argument("--priority", type=checked(bounded_int, -MAX_INT), default=0,
                   help="higher runs first (default %(default)s)")
    p.add_argument("--max-runtime", type=checked(seconds, convert=float), default=None,
                   metavar="S",
                   help="seconds after which a run is killed as TIMEOUT "
                        "(default: the task's max_runtime)")
    p.add_argument("--max-attempts", type=checked(positive_int), default=DEFAULT_MAX_ATTEMPTS,
                   metavar="N",
                   help="attempts before a run whose worker keeps dying is FAILED "
                        "(default %(default)s)")
    p.add_argument("--gpus", type=checked(bounded_int, 0), default=None, metavar="N",
                   help="GPUs each run needs (default: the task file's, else 0); only "
                        "workers started with --gpus claim such runs")
    p.add_argument("--tags", type=names, default=None, metavar="TAGS",
                   help="tags a worker must offer (--tags of hse worker), e.g. big-mem "
                        "(default: the task file's)")
    p.add_argument("--force", action="store_true",
                   help="queue runs even when the same task, config and seed is already "
                        "queued, running or completed (e.g. to re-run the best run)")
    p.add_argument("--study-dir", metavar="DIR",
                   help="directory of the Study's scenarios.py, to validate the config "
                        "(default: the tasks directory's parent, then the current directory)")


def cmd_requeue(session: Session) -> int:
    args = session.args
    if not (args.runs or args.task or args.status):
        raise HSEError("say what to requeue: run ids, or --task TASK (and/or --status)")
    ids = [session.queue.get(run)["_id"] for run in args.runs] or None  # Sacred ids too
    n = session.queue.requeue(ids, task=args.task, status=args.status)
    render.console().print(render.text(
        f"requeued {n} finished run(s) with a fresh attempt count (each keeps its earlier "
        f"outcome in previous_attempts)"))
    return 0


def cmd_rerun(session: Session) -> int:
    import warnings

    from ..queue import CodeChangedWarning

    args = session.args
    overrides: dict[str, Any] = {}
    for path, value in args.assignments:
        if path in overrides:
            raise HSEError(f"--set {path} given twice")
        overrides[path] = value
    queue, console = session.queue, render.console()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CodeChangedWarning)  # printed below instead
        new_id = queue.rerun(args.run, overrides or None, seed=args.seed)
    for change in queue.last_code_changes:
        console.print(render.text(f"note: today's code differs: {change}", "yellow"))
    print(new_id)
    return 0


def cmd_backfill(session: Session) -> int:
    args = session.args
    report = session.queue.backfill(args.task, dry_run=args.dry_run)
    console = render.console()
    verb = "would change" if report["dry_run"] else "changed"
    console.print(render.text(f"{report['runs']} finished run(s) of {args.task}: {verb} "
                              f"{report['changed']}, {report['unchanged']} already complete"))
    for problem, n in sorted(report["refused"].items()):
        console.print(render.text(f"left as is ({n} run(s)): {problem}", "yellow"))
    return 0


def cmd_submit(session: Session) -> int:
    from ..configurable import set_dotted

    args = session.args
    conf = _read_config(args.config) if args.config else {}
    _given_once("--set", [path for path, _ in args.assignments])
    for path, value in args.assignments:
        set_dotted(conf, path, value)
    _given_once("--grid", [path for path, _ in args.grid], "; list all its values in one "
                                                           "--grid PATH=V1,V2")
    grid = dict(args.grid)
    both = sorted(set(grid) & {path for path, _ in args.assignments})
    if both:
        raise ConfigError(both[0], "given with both --set and --grid; use one of them")
    queue = session.queue
    options = dict(seeds=args.seed_list if args.seed_list else args.seeds,
                   priority=args.priority, max_attempts=args.max_attempts,
                   max_runtime=args.max_runtime, force=args.force, gpus=args.gpus,
                   tags=args.tags)
    ids = (queue.submit_grid(args.task, conf, grid, **options) if grid
           else queue.submit(args.task, conf, **options))
    for run_id in ids:
        print(run_id)
    console = render.console(stderr=True)
    console.print(render.text(
        f"queued {len(ids)} run(s) of task '{args.task}' in study '{queue.study}'"))
    if queue.last_skipped:
        shown = ", ".join(queue.last_skipped[:5]) + (", ..." if len(queue.last_skipped) > 5
                                                     else "")
        console.print(render.text(
            f"skipped {len(queue.last_skipped)} run(s) already queued, running or completed "
            f"(the same task, config and seed: {shown}); --force queues them anyway",
            "yellow"))
    return 0


def _given_once(option: str, paths: list[str], hint: str = "") -> None:
    """A ConfigError naming the first path given twice to `option`."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ConfigError(path, f"given twice with {option}{hint or '; give each path once'}")
        seen.add(path)


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


# --------------------------------------------------------------------------- values
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
