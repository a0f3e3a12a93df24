"""Stopping the processes the package starts (workers of the demo, the embedded server)."""
from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence


def stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
    """SIGTERM every process still running, give them `grace_s` together to exit (a
    worker finishes its run), SIGKILL those left, and reap all. Raises TimeoutExpired
    only if a process survives SIGKILL for 10 s."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(timeout=10)
