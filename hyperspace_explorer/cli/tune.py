"""`hse tune` and `hse tune-dashboard`: Optuna proposes runs, workers execute them
(`tuning.tune`, `tuning.open_dashboard`; the optuna extra)."""
from __future__ import annotations

from ..errors import bounded_int, positive_int
from ..task import MAX_SEED
from . import render
from .common import Session, SubParsers, checked, command


def register(sub: SubParsers) -> None:
    p = command(sub, "tune", cmd_tune,
                "let Optuna propose runs of a task; workers execute them",
                "examples:\n"
                "  hse tune digits --space space.json --trials 40 --parallel 4\n"
                "  hse tune digits --space space.yaml --trials 40 --study-name digits-tpe "
                "--pruner median\n\n"
                "The space file maps config paths to parameters (see the README's Tuning "
                "section),\nvalidated against the Study before anything is queued. The "
                "Optuna study lives in the\nsame database; killing and restarting this "
                "command (on any machine) loses nothing, and\ntwo tuners on one study "
                "cooperate. Every finished run of the task that lies in the\nspace is "
                "a trial of the study before the first proposal (warm start).")
    p.add_argument("task", help="task name (TASKS_DIR/<task>.json)")
    p.add_argument("--space", required=True, metavar="FILE",
                   help="search space, a JSON or YAML file")
    p.add_argument("--trials", type=checked(positive_int), required=True, metavar="N",
                   help="stop once N proposed trials have finished")
    p.add_argument("--parallel", type=checked(positive_int), default=1, metavar="K",
                   help="proposals in flight at once (default %(default)s)")
    p.add_argument("--study-name", metavar="NAME",
                   help="the Optuna study (default: <study>-<task>); --study stays the "
                        "Study's name in the queue")
    p.add_argument("--pruner", choices=("none", "median", "successive_halving", "hyperband"),
                   default=None, help="prune runs that report poor intermediate values")
    p.add_argument("--seed", type=checked(bounded_int, 0, MAX_SEED), default=None,
                   help="the sampler's seed")
    p.add_argument("--no-warm-start", action="store_true",
                   help="do not add past runs of the task as trials")
    p.add_argument("--study-dir", metavar="DIR",
                   help="directory of the Study's scenarios.py (default: the tasks "
                        "directory's parent, then the current directory)")

    p = command(sub, "tune-dashboard", cmd_dashboard,
                "open optuna-dashboard on the tuning studies of the database",
                "examples:\n  hse --db digits tune-dashboard            # http://127.0.0.1:8080\n"
                "  hse --db digits tune-dashboard --study-name digits-digits --port 8081")
    p.add_argument("--study-name", metavar="NAME", help="check that this study exists")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default "
                                                       "%(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port (default %(default)s)")


def cmd_tune(session: Session) -> int:
    from ..tuning import tune

    args = session.args
    console = render.console()
    result = tune(args.mongo_uri, session.db, args.tasks_dir, args.task, args.space,
                  trials=args.trials, parallel=args.parallel, study_name=args.study_name,
                  study_dir=args.study_dir, study=args.study, pruner=args.pruner,
                  seed=args.seed, warm_start=not args.no_warm_start,
                  say=lambda message: console.print(render.text(message)))
    console.print(render.text(
        f"study '{result.study_name}': {result.trials} proposed trial(s) finished; "
        f"imported {result.imported} past run(s)", "bold"))
    if result.best_value is not None:
        console.print(render.text(f"best {result.metric} = {result.best_value:.6g} "
                                  f"(run {result.best_run_id}): {result.best_params}"))
    return 0


def cmd_dashboard(session: Session) -> int:
    from ..tuning import open_dashboard

    args = session.args
    console = render.console()
    open_dashboard(args.mongo_uri, session.db, args.study_name, host=args.host,
                   port=args.port, say=lambda message: console.print(render.text(message)))
    return 0
