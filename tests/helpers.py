"""Small helpers shared by tests that run real worker processes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

STUDY = Path(__file__).resolve().parent / "study"
TASKS = STUDY / "tasks"
T = TypeVar("T")


def error_lines(stderr: str) -> list[str]:
    """A command's stderr lines but a worker's INFO log lines (its start-up note on the
    runs' BLAS settings, printed unless the environment already has them)."""
    return [line for line in stderr.splitlines() if line.strip() and " INFO " not in line]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)  # polling interval, not synchronisation


def start_worker(uri: str, db: str, *args: str, log: Path | None = None,
                 study: Path = STUDY, env: dict[str, str | None] | None = None
                 ) -> subprocess.Popen:
    """A real `hyperspace_worker` process for the test Study (or a copy of it); `env`:
    variables to set in its environment (None: to remove)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    wanted = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment = {name: value for name, value in wanted.items() if value is not None}
    return subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(study / "tasks"), db,
         "--mongo-uri", uri, "--study-dir", str(study), *args],
        stdout=out, stderr=subprocess.STDOUT, env=environment)


def run_worker(mongo_uri: str, db_name: str, log_dir: Path | None = None, *,
               max_runs: int | None = None, idle_exit: float | None = 5.0,
               **options) -> int:
    """Run a real Worker in this process until `max_runs` runs were executed (`idle_exit`
    then only bounds a broken test); pytest's SIGINT/SIGTERM handlers are put back."""
    from hyperspace_explorer.worker import Worker

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = Worker(TASKS, db_name, mongo_uri, study_dir=STUDY, max_runs=max_runs,
                    idle_exit=idle_exit, log_dir=log_dir, **{"interval": 0.05, **options})
    try:
        return worker.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        worker.store.close()


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` in /proc ("R", "S", "T" stopped, "Z" zombie...),
    None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_gone(pid: int) -> bool:
    """Whether process `pid` ended (a zombie only waits for its parent to reap it)."""
    return process_state(pid) in (None, "Z", "X")


def process_stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP)."""
    return process_state(pid) == "T"


def assert_written(path: Path, kind: str) -> None:
    """`path` holds a real, non-trivial PNG or SVG image."""
    data = path.read_bytes()
    assert len(data) > 1000
    if kind == "png":
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
    else:
        assert b"<svg" in data[:2000]


_RAW_CLIENTS: dict[str, object] = {}


def raw_db(store):
    """The database behind a Storage, through plain pymongo: tests check what is really
    stored (the package itself never exposes its collections)."""
    from pymongo import MongoClient

    client = _RAW_CLIENTS.get(store.uri)
    if client is None:
        client = _RAW_CLIENTS[store.uri] = MongoClient(store.uri, serverSelectionTimeoutMS=5000,
                                                      socketTimeoutMS=60000)
    return client[store.db_name]


def sacred_records(q, run_id):
    """The Sacred records of a run's attempts (without their captured output)."""
    return list(raw_db(q.store).runs.find({"meta.hse.run_id": run_id}, {"captured_out": 0}))
