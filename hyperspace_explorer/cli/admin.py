"""`hse recover`, `hse workers`: maintenance of the queue and its workers
(`RunQueue.recover`, `RunQueue.workers`)."""
from __future__ import annotations

from . import render
from .common import Session, SubParsers, command

STATE_STYLE = {"DEAD": "red", "stopping": "yellow", "alive": "green"}
STATE_MEANING = {"DEAD": "no heartbeat for longer than its lease",
                 "stopping": "finishes its current run, then exits"}


def register(sub: SubParsers) -> None:
    command(sub, "recover", cmd_recover,
            "requeue runs of dead workers and archive finished runs now",
            "example:\n  hse recover\n\nWorkers do this on their own every few seconds; "
            "run it when no worker is running.")
    command(sub, "workers", cmd_workers, "list the workers registered in the database",
            "example:\n  hse workers\n\n"
            "state: alive; stopping (asked to stop: it finishes its current run, then "
            "exits);\nDEAD (its last heartbeat is older than its own lease, --lease of "
            "hyperspace_worker,\nor 3x the default heartbeat interval for workers that "
            "did not record one: it was\nkilled without cleaning up, and its run is "
            "requeued once the run's lease expires).\n'cannot run': runs this worker's "
            "Study code refused and left to other workers\n(the last one is shown under "
            "the table).")


def cmd_recover(session: Session) -> int:
    done = session.queue.recover()
    render.console().print(render.text(
        f"recovered {done['recovered']} run(s) whose worker stopped renewing its lease "
        f"(requeued, or FAILED after max_attempts); archived {done['archived']} finished "
        f"run(s)"))
    return 0


def cmd_workers(session: Session) -> int:
    from rich.table import Table

    queue = session.queue
    workers = queue.workers()
    console = render.console()
    if not workers:
        console.print(render.text(f"no workers registered in database "
                                  f"'{queue.store.db_name}'"))
        return 0
    states = [w["state"] for w in workers]
    legend = "; ".join(f"{state}: {meaning}" for state, meaning in STATE_MEANING.items()
                       if state in states)
    table = Table(title=f"{len(workers)} worker(s)" + (f" ({legend})" if legend else ""))
    rejecting = any(w.get("cannot_run") for w in workers)
    columns = ["host", "pid", "study", "current run", "executed", "last heartbeat", "lease",
               "state"] + (["cannot run"] if rejecting else [])
    for name in columns:
        table.add_column(name, no_wrap=True)
    for w in workers:
        age = w["heartbeat_age"]
        cells = [render.text(w.get("host")), render.text(w.get("pid")),
                 render.text(w.get("study")), render.text(w.get("current_run")),
                 render.text(w.get("executed", 0)),
                 render.text("-" if age is None else f"{render.seconds(age)} ago"),
                 render.text(render.seconds(w["lease"])),
                 render.text(w["state"], STATE_STYLE.get(w["state"], ""))]
        if rejecting:
            cells.append(render.text(w.get("cannot_run") or 0))
        table.add_row(*cells)
    console.print(table)
    for w in workers:
        if w.get("last_rejection"):
            console.print(render.text(f"worker {w.get('host')}:{w.get('pid')} last refused "
                                      f"{w['last_rejection']}", "yellow"))
    return 0
