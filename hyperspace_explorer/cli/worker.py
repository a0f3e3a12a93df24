"""`hse worker` and the `hyperspace_worker` command: run a worker of the Study.

The daemon itself (`Worker`, lease recovery, its constants) is `hyperspace_explorer.worker`;
this module holds its command line only. `python -m hyperspace_explorer.worker` and
`bin/hyperspace_worker.py` run `main` too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import HSEError
from ..worker import (
    DEFAULT_HEARTBEAT_S,
    DEFAULT_INTERVAL_S,
    DEFAULT_LEASE_S,
    DEFAULT_RUNS_PER_PROCESS,
)
from .common import Session, SubParsers, command

log = logging.getLogger("hyperspace_explorer.worker")


def register(sub: SubParsers) -> None:
    p = command(sub, "worker", cmd_worker,
                "execute queued runs of the Study (same options as hyperspace_worker)",
                "examples:\n  cd examples/digits_study && hse worker ../../tasks digits\n"
                "  hse worker tasks mystudy --study-dir src/ --idle-exit 60\n\n"
                "Start as many as you like, on any machines reaching the database.\n"
                "Ctrl-C once finishes the current run then stops; twice puts it back in "
                "the queue.", global_options=False)
    add_worker_arguments(p)
    for action in p._actions:  # let `hse --mongo-uri X worker ...` keep X (see common)
        if action.dest in ("mongo_uri", "study"):
            action.default = argparse.SUPPRESS


def cmd_worker(session: Session) -> int:
    return run_worker_from_args(session.args)


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    """Worker options, shared by `hyperspace_worker` and `hse worker`."""
    parser.add_argument("tasks_dir", help="directory with the Study's task .json files")
    parser.add_argument("db_name", help="MongoDB database of the Study (also the queue)")
    parser.add_argument("--mongo-uri", help="MongoDB URI (default: $HSE_MONGO_URI, else the "
                                            "embedded server on this machine)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S,
                        help="seconds between polls of an empty queue (default %(default)s)")
    parser.add_argument("--study-dir", default=None,
                        help="directory containing scenarios.py (default: current directory)")
    parser.add_argument("--study", default=None,
                        help="Study name in the queue (default: the database name)")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT_S,
                        help="seconds between lease renewals (default %(default)s)")
    parser.add_argument("--lease", type=float, default=DEFAULT_LEASE_S,
                        help="seconds without renewal after which a run is presumed lost "
                             "(default %(default)s)")
    parser.add_argument("--max-runs", type=int, default=None,
                        help="exit after executing this many runs")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="exit after the queue has been empty this long")
    parser.add_argument("--concurrency", type=int, default=1, metavar="N",
                        help="runs executed at once by this worker, at most 1024 (default "
                             "%(default)s)")
    parser.add_argument("--gpus", type=names, default=[], metavar="IDS",
                        help="GPU ids this worker hands out, e.g. 0,1,2,3: a run needing k "
                             "GPUs sees k free ones as CUDA_VISIBLE_DEVICES (default: none; "
                             "runs that need GPUs are left to other workers)")
    parser.add_argument("--tags", type=names, default=[], metavar="TAGS",
                        help="what this worker offers, e.g. gpu,big-mem: it also takes runs "
                             "submitted with those tags (untagged runs go to any worker)")
    parser.add_argument("--runs-per-process", type=int, default=DEFAULT_RUNS_PER_PROCESS,
                        metavar="N",
                        help="runs one forked process executes in turn, as long as each "
                             "leaves no process or thread behind; 1 gives every run a fresh "
                             "process (default %(default)s)")
    parser.add_argument("--threads-per-run", type=int, default=None, metavar="N",
                        help="threads of each run's OpenMP/BLAS pools (OMP_NUM_THREADS, "
                             "OPENBLAS_NUM_THREADS, MKL_NUM_THREADS...; default: the "
                             "environment's, and with --concurrency above 1, CPUs / "
                             "concurrency for those it leaves unset). Idle OpenBLAS "
                             "threads of runs spin 1-2 ms (OPENBLAS_THREAD_TIMEOUT=22) "
                             "unless the environment sets OPENBLAS_THREAD_TIMEOUT")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def names(text: str) -> list[str]:
    """A comma-separated list of names (GPU ids, tags); "" is none. An empty item
    (`0,,1`, `gpu,`) is refused: it is more likely a typo than a wish."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"an empty item in {text!r}: separate the names "
                                         f"with single commas")
    return items


def run_worker_from_args(args: argparse.Namespace) -> int:
    """Run a `Worker` with the parsed options until it stops. When it stopped because
    the Study's sources were edited (`reload_requested`), re-execute this very command
    line, so that the next run uses the new code."""
    from ..worker import Worker, limit_run_threads

    # Before the Study (and NumPy, through Sacred) is imported: the pools read them then.
    threads = limit_run_threads(args.concurrency, args.threads_per_run)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    if threads:
        log.info("each run's OpenMP/BLAS settings: %s",
                 ", ".join(f"{name}={value}" for name, value in threads.items()))
    worker = Worker(args.tasks_dir, args.db_name, args.mongo_uri, study_dir=args.study_dir,
                    study=args.study, interval=args.interval, heartbeat=args.heartbeat,
                    lease=args.lease, max_runs=args.max_runs, idle_exit=args.idle_exit,
                    concurrency=args.concurrency, gpus=args.gpus, tags=args.tags,
                    runs_per_process=args.runs_per_process)
    worker.run()
    worker.store.close()
    if worker.reload_requested:
        # Start afresh on the edited Study code: same interpreter, same command line.
        log.warning("re-executing the worker to load the edited Study code")
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `hyperspace_worker` command."""
    parser = argparse.ArgumentParser(
        prog="hyperspace_worker",
        description="Execute queued runs of the Study in the current directory.")
    add_worker_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_worker_from_args(args)
    except HSEError as exc:
        print(f"hyperspace_worker: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
