"""Small helpers shared by tests that run real worker processes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

STUDY = Path(__file__).resolve().parent / "study"
TASKS = STUDY / "tasks"
T = TypeVar("T")


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


def start_worker(uri: str, db: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    """A real `hyperspace_worker` process for the test Study."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db,
         "--mongo-uri", uri, "--study-dir", str(STUDY), *args],
        stdout=out, stderr=subprocess.STDOUT, env=env)
