"""`hse demo`: the whole loop (queue, distributed execution, ranking) in well under a minute.

On a fresh machine it starts (or reuses) the embedded server, recreates the demo
database, queues a small grid over the two model families of the bundled digits Study
(`hyperspace_explorer/examples/digits`: `scenarios.py` and `tasks/digits.json`) under
several seeds, starts local worker processes exactly as a user would
(`python -m hyperspace_explorer.worker`), waits for the runs and summarises accuracy over
seeds. The CLI renders the ranking.

The example Study is package data, so the demo works from any install (`pip install .`,
a wheel, `pip install -e .`). In a checkout, `examples/digits_study/scenarios.py` and
`tasks/digits.json` are links to the same files.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hyperspace_explorer

from .errors import HSEError
from .logs import tail
from .processes import stop
from .status import COMPLETED
from .storage import RunFilter, connect, redact_uri

DEMO_DB = "hse_demo"
TASK = "digits"
# (base config, grid) per model family: 2 families x 2 values x SEEDS seeds. Each run
# trains on a seed-dependent 80 % of the training split, so that the seeds matter for
# every model (a logistic regression is otherwise deterministic) and std is meaningful.
TRAIN_FRACTION = 0.8
GRIDS: tuple[tuple[dict[str, Any], dict[str, list[Any]]], ...] = (
    ({"model": {"className": "LogisticModel"}, "train_fraction": TRAIN_FRACTION},
     {"model.C": [0.1, 1.0]}),
    ({"model": {"className": "ForestModel"}, "train_fraction": TRAIN_FRACTION},
     {"model.n_estimators": [20, 80]}),
)
SEEDS = 3
IDLE_EXIT_S = 2.0     # workers leave on their own once the queue stays empty this long
TUNE_TRIALS = 12      # `hse demo --tune`: trials of the short tuning session
TUNE_IDLE_EXIT_S = 30.0  # tuning workers wait longer: the tuner refills the queue
TIMEOUT_S = 600.0     # far above the ~10 s the demo takes: only a stuck setup hits it
STOP_GRACE_S = 30.0   # SIGTERM lets a worker finish its run; after this it is killed


@dataclasses.dataclass(frozen=True)
class ExampleStudy:
    """Where the bundled digits Study lives."""

    study_dir: Path  # holds scenarios.py; workers run from here
    tasks_dir: Path  # holds digits.json


@dataclasses.dataclass
class DemoResult:
    """What the demo did, for the CLI to report."""

    uri: str
    custom_uri: bool          # a URI other than the embedded server's was used
    db: str
    example: ExampleStudy
    dropped: int              # runs of an earlier demo removed first
    run_ids: list[str]
    counts: dict[str, int]    # status -> number of runs
    summary: Any              # analysis.summarize() frame, best first
    seeds: int
    elapsed_s: float
    problems: list[str]       # "run ID: STATUS: error" for runs that did not complete
    tuning: Any = None        # tuning.TuneResult of `run_demo(tune=True)`, else None

    @property
    def completed(self) -> int:
        return self.counts.get(COMPLETED, 0)

    @property
    def example_id(self) -> str:
        return self.run_ids[0]

    @property
    def study_dir(self) -> Path:
        return self.example.study_dir

    @property
    def tasks_dir(self) -> Path:
        return self.example.tasks_dir


def locate_example() -> ExampleStudy:
    """The example Study shipped inside the package (examples/digits)."""
    study_dir = Path(hyperspace_explorer.__file__).resolve().parent / "examples" / "digits"
    example = ExampleStudy(study_dir, study_dir / "tasks")
    missing = [p for p in (example.study_dir / "scenarios.py",
                           example.tasks_dir / f"{TASK}.json") if not p.is_file()]
    if missing:
        raise HSEError(
            f"the demo's example Study is missing from this installation of "
            f"hyperspace_explorer: {', '.join(map(str, missing))} does not exist (an "
            f"incomplete install or package build?). Reinstall it "
            f"(`pip install --force-reinstall hyperspace_explorer`, or `pip install -e .` "
            f"in a checkout), then run `hse demo` again")
    return example


def run_demo(mongo_uri: str | None = None, db: str = DEMO_DB, *, workers: int = 2,
             seeds: int = SEEDS, say: Callable[[str], None] = print,
             progress: bool = True, tune: bool = False,
             tune_trials: int = TUNE_TRIALS) -> DemoResult:
    """Run the demo end to end against `mongo_uri` (None: $HSE_MONGO_URI, else the
    embedded server), in database `db`, which is dropped first.

    `tune=True` (`hse demo --tune`, needs the optuna extra) then runs a short tuning
    session over the example's `space.json`: `tune_trials` trials, one in flight per
    worker, warm-started from the grid's runs (`DemoResult.tuning`)."""
    from .analysis import summarize
    from .queue import RunQueue
    from .server import resolve_uri

    if workers < 1:
        raise HSEError(f"--workers must be at least 1, got {workers}")
    started = time.monotonic()
    example = locate_example()
    custom_uri = bool(mongo_uri or os.environ.get("HSE_MONGO_URI", "").strip())
    uri = resolve_uri(mongo_uri)
    say(f"MongoDB: {redact_uri(uri)}" + ("" if custom_uri else " (embedded server)"))
    dropped = _reset_database(uri, db)
    say(f"database '{db}': dropped {dropped} run(s) of a previous demo" if dropped
        else f"database '{db}': fresh")

    queue = RunQueue(uri, db, example.tasks_dir, study_dir=example.study_dir)
    run_ids: list[str] = []
    for base, grid in GRIDS:
        run_ids += queue.submit_grid(TASK, base, grid, seeds=seeds)
    say(f"queued {len(run_ids)} runs of task '{TASK}': "
        + " and ".join(f"{base['model']['className']} x {_grid_text(grid)}"
                       for base, grid in GRIDS) + f", each under {seeds} seeds "
        f"(a seed picks the {TRAIN_FRACTION:.0%} of the training images a run learns from)")

    logs = _log_paths(workers)
    say(f"starting {workers} worker processes (logs: {logs[0].parent}/demo-worker-*.log)")
    procs = [_start_worker(example, uri, db, log) for log in logs]
    early_exit: list[str] = []
    try:
        counts = _wait(queue, run_ids, procs, progress, logs, early_exit)
    finally:
        stop(procs, STOP_GRACE_S)
    if early_exit and counts.get(COMPLETED, 0) == 0:
        raise HSEError(f"every demo worker exited before running anything: {early_exit[0]} "
                       f"(worker logs: {logs[0].parent}/demo-worker-*.log)")
    if counts.get(COMPLETED, 0) == 0:
        raise HSEError(f"no demo run completed ({counts}); the worker logs say why: "
                       f"{_tail(logs[0])}")
    frame = queue.results(TASK)
    problems = [f"run {row.run_id}: {row.status}: {str(row.error or '').strip()[-300:]}"
                for row in frame.itertuples() if row.status != COMPLETED]
    summary = summarize(frame, "accuracy", "maximize")
    tuning = _tune(queue, example, uri, db, workers, tune_trials, say, progress) if tune \
        else None
    queue.store.close()
    return DemoResult(uri=uri, custom_uri=custom_uri, db=db, example=example, dropped=dropped,
                      run_ids=run_ids, counts=counts, summary=summary, seeds=seeds,
                      elapsed_s=time.monotonic() - started, problems=problems, tuning=tuning)


def _tune(queue: Any, example: ExampleStudy, uri: str, db: str, workers: int, trials: int,
          say: Callable[[str], None], progress: bool) -> Any:
    """A short Optuna tuning session through the same queue and fresh workers."""
    try:
        from .tuning import Tuner
    except ImportError:  # pragma: no cover - the package is there; Optuna may not be
        raise HSEError('`hse demo --tune` needs Optuna: pip install -e ".[optuna]"') from None
    space = example.study_dir / "space.json"
    say(f"tuning task '{TASK}' over {space}: {trials} trials proposed by Optuna (TPE), "
        f"{workers} in flight, warm-started from the grid's runs")
    logs = [log.with_name(log.name.replace("demo-worker", "demo-tune-worker"))
            for log in _log_paths(workers)]
    procs = [_start_worker(example, uri, db, log, idle_exit=TUNE_IDLE_EXIT_S) for log in logs]
    try:
        tuner = Tuner(queue, TASK, space, n_trials=trials, parallel=workers,
                      study_name=f"{db}-{TASK}", seed=0, progress=progress, say=say)
        result = tuner.run()
    finally:
        stop(procs, STOP_GRACE_S)
    say(f"tuning: {result.trials} trial(s) in study '{result.study_name}', best accuracy "
        f"{result.best_value:.4f} with {result.best_params}" if result.best_value is not None
        else f"tuning: no trial completed ({result.counts})")
    return result


def _grid_text(grid: dict[str, list[Any]]) -> str:
    return ", ".join(f"{path} in {values}" for path, values in grid.items())


def _reset_database(uri: str, db: str) -> int:
    """Drop `db` after checking it only holds demo runs; returns how many it held.

    The check keeps `hse demo --db <a real study>` from destroying real results.
    """
    store = connect(uri, db)
    try:
        runs = list(store.find_runs(RunFilter(), fields=["study", "task"]))
        foreign = [r for r in runs if r.get("study") != db or r.get("task") != TASK]
        if foreign:
            raise HSEError(f"database '{db}' holds {len(foreign)} run(s) that are not from "
                           f"the demo (e.g. task '{foreign[0].get('task')}'); the demo drops "
                           f"its database first, so choose another one with --db")
        store.drop_database()
        return len(runs)
    finally:
        store.close()


def _log_paths(workers: int) -> list[Path]:
    from .server import home_dir

    logs = home_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [logs / f"demo-worker-{i + 1}.log" for i in range(workers)]


def _start_worker(example: ExampleStudy, uri: str, db: str, log: Path, *,
                  idle_exit: float = IDLE_EXIT_S) -> subprocess.Popen:
    """A worker process as a user would start one from the Study directory. The URI
    goes through the environment, not argv, so no password shows up in `ps`."""
    cmd = [sys.executable, "-m", "hyperspace_explorer.worker", str(example.tasks_dir), db,
           "--study-dir", str(example.study_dir), "--idle-exit", str(idle_exit)]
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=example.study_dir, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "HSE_MONGO_URI": uri})


def _wait(queue: Any, run_ids: list[str], procs: list[subprocess.Popen],
          progress: bool, logs: list[Path], early_exit: list[str]) -> dict[str, int]:
    """`RunQueue.wait` with a watchdog: if every worker exits while runs are left
    (a broken install, a crash at start-up), the leftovers are cancelled so the wait
    ends at once instead of at the timeout, and the workers' reason goes to
    `early_exit`."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            if all(p.poll() is not None for p in procs):
                early_exit.append(_exit_reason(logs, procs))
                queue.cancel(run_ids)
                return

    watchdog = threading.Thread(target=watch, name="demo-watchdog", daemon=True)
    watchdog.start()
    try:
        return queue.wait(run_ids, timeout=TIMEOUT_S, progress=progress)
    except TimeoutError as exc:
        raise HSEError(f"the demo runs did not finish in {TIMEOUT_S:.0f}s: {exc}") from None
    finally:
        done.set()
        watchdog.join()


def _exit_reason(logs: list[Path], procs: list[subprocess.Popen]) -> str:
    """Why the workers stopped: the `hyperspace_worker: error:` line one of them printed,
    else the last line of the first log and the exit status."""
    last = ""
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("hyperspace_worker: error:"):
                return line.strip()
        last = last or next((line.strip() for line in reversed(lines) if line.strip()), "")
    codes = sorted({p.returncode for p in procs})
    return f"exit status {', '.join(map(str, codes))}" + (f"; last log line: {last}"
                                                          if last else "")


def _tail(path: Path, chars: int = 2000) -> str:
    return f"{path}:\n{tail(path, chars) or '(empty or unreadable)'}"
