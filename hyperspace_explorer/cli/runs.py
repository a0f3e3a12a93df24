"""`hse status`, `hse ls`, `hse show`, `hse export`, `hse cancel`: watch, inspect,
export and cancel runs (`RunQueue.status_by_task`, `recent`, `record`, `export`,
`cancel`)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import HSEError, bounded_int, positive_int
from ..status import ACTIVE, FINAL, STATUSES
from . import render
from .common import Session, SubParsers, checked, command

OUTPUT_LINES = 40  # lines of captured output `hse show` prints (the tail)


def register(sub: SubParsers) -> None:
    command(sub, "status", cmd_status, "number of runs in each status, per task",
            "example:\n  hse --db digits status")

    p = command(sub, "ls", cmd_ls, "list the most recently queued runs",
                "examples:\n  hse ls\n  hse ls --task digits --status FAILED -n 100")
    p.add_argument("--task", help="only runs of this task")
    p.add_argument("--status", type=str.upper, choices=[s.value for s in STATUSES], metavar="STATUS",
                   help=f"only runs in this status ({', '.join(STATUSES)})")
    p.add_argument("-n", "--limit", type=checked(positive_int), default=20,
                   help="how many runs (default %(default)s)")

    p = command(sub, "show", cmd_show,
                "one run in full: config, metrics, error and the tail of its output",
                "examples:\n  hse show 3f9a0c1b2d4e   # queue id, as printed by submit/ls\n"
                "  hse show 12             # Sacred id (as in Omniboard)")
    p.add_argument("run", help="queue id or Sacred id")
    p.add_argument("--lines", type=checked(bounded_int, 0), default=OUTPUT_LINES,
                   help="lines of captured output to print (default %(default)s; 0: none)")

    p = command(sub, "export", cmd_export,
                "write a run's saved model(s) with its config, code version and metrics",
                "example:\n  hse export 3f9a0c1b2d4e model_dir/\n\n"
                "DIR must be new or empty. It gets each model file (.pt: torch, .pkl: "
                "pickle), config.json,\ncode_version.json, metrics.json and run.json "
                "(ids, status, how to load each model).")
    p.add_argument("run", help="queue id or Sacred id")
    p.add_argument("directory", metavar="DIR", help="new or empty directory")

    p = command(sub, "cancel", cmd_cancel,
                "cancel queued runs; ask running ones to stop (they end CANCELLED)",
                "examples:\n  hse cancel 3f9a0c1b2d4e 12\n  hse cancel --task digits\n"
                "  hse cancel --all          # every queued or running run of the Study")
    p.add_argument("runs", nargs="*", metavar="RUN", help="queue or Sacred ids")
    p.add_argument("--task", help="every active run of this task")
    p.add_argument("--all", action="store_true", help="every active run of the Study")


def cmd_status(session: Session) -> int:
    from rich.table import Table

    queue = session.queue
    counts = queue.status_by_task()
    console = render.console()
    if not counts:
        console.print(render.text(f"no runs in study '{queue.study}' (database "
                                  f"'{queue.store.db_name}')"))
        return 0
    table = Table(title=f"study '{queue.study}'")
    table.add_column("task")
    for status in STATUSES:
        table.add_column(status, justify="right", style=render.STATUS_STYLE[status])
    table.add_column("total", justify="right")
    total: dict[str, int] = {}
    for task in sorted(counts):
        for status, n in counts[task].items():
            total[status] = total.get(status, 0) + n
        table.add_row(render.text(task), *_count_cells(counts[task]))
    if len(counts) > 1:
        table.add_row(render.text("all", "bold"), *_count_cells(total))
    console.print(table)
    for group in queue.unclaimable():
        needs = " and ".join(part for part in (
            f"{group['gpus']} GPU(s)" if group["gpus"] else "",
            f"tags {', '.join(group['tags'])}" if group["tags"] else "") if part)
        console.print(render.text(
            f"{group['queued']} queued run(s) of task '{group['task']}' need {needs}, which "
            f"no live worker offers: start one with --gpus/--tags, or they wait", "yellow"))
    return 0


def _count_cells(counts: Mapping[Any, int]) -> list[str]:
    return [str(counts.get(s, 0)) for s in STATUSES] + [str(sum(counts.values()))]


def cmd_ls(session: Session) -> int:
    from rich.table import Table

    args = session.args
    docs = session.queue.recent(args.task, status=args.status, limit=args.limit)
    console = render.console()
    if not docs:
        console.print(render.text(f"no matching runs in study '{session.study}'"))
        return 0
    table = Table(title=f"{len(docs)} most recent run(s), newest first")
    for name, justify in (("id", "left"), ("sacred id", "right"), ("task", "left"),
                          ("status", "left"), ("seed", "right"), ("metric", "left"),
                          ("duration", "right"), ("host", "left")):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for doc in docs:
        table.add_row(render.text(doc["_id"]), render.text(doc.get("sacred_id")),
                      render.text(doc.get("task")), render.status_text(doc.get("status")),
                      render.text(doc.get("seed")), render.text(_main_metric(doc)),
                      render.text(render.duration(doc)), render.text(doc.get("host")))
    console.print(table)
    return 0


def _main_metric(doc: Mapping[str, Any]) -> str:
    name = (doc.get("task_spec") or {}).get("metric")
    metrics = doc.get("metrics") or {}
    if name in metrics:
        return f"{name}={metrics[name]:.4g}"
    return doc.get("reason") or "-"


def cmd_show(session: Session) -> int:
    from rich.json import JSON
    from rich.table import Table

    args = session.args
    record = session.queue.record(args.run)
    doc, sacred = record["run"], record["sacred"]
    console = render.console()
    console.print(render.text(f"run {doc['_id']}  (sacred id {doc.get('sacred_id', '-')})",
                              "bold"))
    facts = [("task", doc.get("task")), ("status", doc.get("status")),
             ("reason", doc.get("reason")), ("seed", doc.get("seed")),
             ("attempt", f"{doc.get('attempt', 0)} of {doc.get('max_attempts', '-')}"),
             ("priority", doc.get("priority")), ("host", doc.get("host")),
             ("worker", doc.get("worker")), ("queued", render.when(doc.get("queued_at"))),
             ("started", render.when(doc.get("started_at"))),
             ("ended", render.when(doc.get("ended_at"))),
             ("duration", render.duration(doc)), ("code version", _code_version(doc)),
             ("changed files", ", ".join((doc.get("code_version") or {}).get("changed") or [])
              or None),
             ("reproduces", doc.get("reproduces")),
             ("worker log", doc.get("log_file")),
             ("last rejection", _rejection(doc.get("last_rejection")))]
    info = Table.grid(padding=(0, 2))
    for key, value in facts:
        if value not in (None, "-"):
            info.add_row(render.text(key, "dim"),
                         render.status_text(value) if key == "status" else render.text(value))
    console.print(info)
    console.print(render.text("\nconfig", "bold"))
    console.print(JSON.from_data(doc.get("config") or {}, default=str))
    if doc.get("metrics"):
        console.print(render.text("\nmetrics", "bold"))
        for name, value in sorted(doc["metrics"].items()):
            console.print(render.text(f"  {name} = {value}"))
    if record["series"]:
        console.print(render.text("\nlogged series", "bold"))
        for s in record["series"]:
            values = s.get("values") or []
            last = f", last {values[-1]:.4g}" if values else ""
            console.print(render.text(f"  {s.get('name')}: {len(values)} step(s){last}"))
    if record["error"]:
        ended = doc.get("status") in FINAL and doc.get("status") != "COMPLETED"
        console.print(render.text("\nerror" if ended else "\nerror of an earlier attempt",
                                  "bold red"))
        console.print(render.text(record["error"].rstrip()))
    output = record["output"]
    if output:
        lines = output.rstrip("\n").splitlines()
        shown = lines[-args.lines:] if args.lines else []
        console.print(render.text(f"\noutput (last {len(shown)} of {len(lines)} lines)",
                                  "bold"))
        console.print(render.text("\n".join(shown)))
    elif sacred is None and doc.get("status") not in ACTIVE:
        console.print(render.text("\n(no Sacred record: the run never started)", "dim"))
    return 0


def _code_version(doc: Mapping[str, Any]) -> str | None:
    from ..versions import short

    version = doc.get("code_version")
    text = short(version)
    if text is None or not isinstance(version, Mapping):
        return text
    extra = [f"Python {version['python']}" if version.get("python") else None,
             f"hyperspace_explorer {version['hyperspace_explorer']}"
             if version.get("hyperspace_explorer") else None]
    packages = version.get("packages") or {}
    if packages:
        extra.append(", ".join(f"{name} {v}" for name, v in sorted(packages.items())))
    return "; ".join([text] + [e for e in extra if e])


def _rejection(note: Any) -> str | None:
    """A run's `last_rejection` (left to another worker whose Study code may run it)."""
    if not isinstance(note, Mapping):
        return None if note is None else str(note)
    return (f"{note.get('error')} (worker {note.get('worker', '?')}, Study code "
            f"{note.get('code_digest', '?')}, {render.when(note.get('at'))})")


def cmd_export(session: Session) -> int:
    out = session.queue.export(session.args.run, session.args.directory)
    render.console().print(render.text(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} "
                                       f"to {out}"))
    return 0


def cmd_cancel(session: Session) -> int:
    args = session.args
    if not (args.runs or args.task or args.all):
        raise HSEError("say what to cancel: run ids, --task TASK, or --all")
    queue = session.queue
    console = render.console()
    ids = []
    for run in args.runs:
        doc = queue.get(run)
        if doc.get("status") in FINAL:
            console.print(render.text(f"run {doc['_id']} already ended ({doc['status']})",
                                      "dim"))
        else:
            ids.append(doc["_id"])
    answers = [queue.cancel(ids)] if ids else []
    if args.all:
        answers.append(queue.cancel(all=True))
    elif args.task:
        answers.append(queue.cancel(task=args.task))
    cancelled = sum(a["cancelled"] for a in answers)
    stopping = sum(a["stopping"] for a in answers)
    console.print(render.text(f"cancelled {cancelled} queued run(s); asked {stopping} running "
                              f"run(s) to stop (they end CANCELLED within a heartbeat)"))
    return 0
