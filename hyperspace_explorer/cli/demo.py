"""`hse demo`: queue, execute and rank a small grid on the bundled digits example
(`demo.run_demo`)."""
from __future__ import annotations

import argparse

from ..demo import DEMO_DB
from . import render
from .common import Session, SubParsers, command, fail


def register(sub: SubParsers) -> None:
    p = command(sub, "demo", cmd_demo,
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
    p.add_argument("--tune", action="store_true",
                   help="then a short Optuna tuning session over the example's space.json, "
                        "warm-started from the grid (needs the optuna extra)")


def cmd_demo(session: Session) -> int:
    from ..demo import run_demo
    from ..storage import redact_uri

    args = session.args
    console = render.console()
    result = run_demo(args.mongo_uri, args.demo_db, workers=args.workers, tune=args.tune,
                      say=lambda message: console.print(render.text(message)))
    console.print(render.summary_table(
        result.summary, title=f"digits: {result.completed} run(s) ranked by mean accuracy "
                              f"over {result.seeds} seeds"))
    if result.tuning is not None:
        tuning = result.tuning
        console.print(render.text(
            f"tuning study '{tuning.study_name}': {tuning.trials} trial(s), imported "
            f"{tuning.imported} grid run(s); best {tuning.metric} = {tuning.best_value}: "
            f"{tuning.best_params}"))
    console.print(render.text(f"done in {result.elapsed_s:.1f}s", "bold"))
    prefix = f"hse --db {result.db}"
    if result.custom_uri:
        prefix = f"hse --mongo-uri {redact_uri(result.uri)} --db {result.db}"
    console.print(render.text("\nnext steps:", "bold"))
    for line in (f"{prefix} ls                    # the runs",
                 f"{prefix} show {result.example_id}      # one run: config, metrics, output",
                 f"{prefix} results digits        # this ranking; --format md|latex|csv|json",
                 f"cd {result.study_dir} && hse worker {result.tasks_dir} {result.db}"
                 f"   # a worker of your own"):
        console.print(render.text(f"  {line}"))
    if result.problems:
        fail(f"{len(result.problems)} run(s) did not complete, e.g. {result.problems[0]}")
        return 1
    return 0
