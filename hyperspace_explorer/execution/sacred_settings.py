"""Sacred, imported and configured in one place for the whole package.

Sacred keeps process-wide settings in `sacred.SETTINGS`; the worker changes three of
them, here and nowhere else, when this module is first imported (workers only: a
notebook that never executes runs never imports Sacred):

- `CAPTURE_MODE = "sys"`: "fd" would spawn a `tee` process per run; the child's file
  descriptors go to the run's log file anyway (see `child.child_main`), which keeps
  C-level output too.
- `HOST_INFO.INCLUDE_CPU_INFO / INCLUDE_GPU_INFO = False`: Sacred would spawn
  `cat /proc/cpuinfo` and `nvidia-smi` in every run; `host_facts()` gathers them once
  per worker and the record writer adds them to each record (leaving out a fact this
  machine lacks, as Sacred does: no `gpus` without nvidia-smi).
"""
from __future__ import annotations

from typing import Any

from ..sacred_compat import import_sacred

import_sacred()  # before any `from sacred import`: works without pkg_resources too
from sacred import SETTINGS, Experiment  # noqa: E402
from sacred.host_info import get_host_info  # noqa: E402
from sacred.metrics_logger import MetricsLogger  # noqa: E402
from sacred.observers import MongoObserver, RunObserver  # noqa: E402
from sacred.observers.mongo import mimetype_detector  # noqa: E402
from sacred.utils import SacredInterrupt, apply_backspaces_and_linefeeds  # noqa: E402

__all__ = ["DISABLED_HOST_INFO", "Experiment", "MetricsLogger", "MongoObserver",
           "RunObserver", "SacredInterrupt", "apply_backspaces_and_linefeeds",
           "guess_content_type", "host_facts"]

SETTINGS.CAPTURE_MODE = "sys"
#: Host facts Sacred no longer gathers per run (it stores them as null instead).
DISABLED_HOST_INFO = ("cpu", "gpus")
_HOST_FACTS: dict[str, Any] = {
    key: value for key, value in get_host_info().items() if key in DISABLED_HOST_INFO
    and value is not None}  # Sacred leaves a key out rather than storing null
SETTINGS.HOST_INFO.INCLUDE_CPU_INFO = False
SETTINGS.HOST_INFO.INCLUDE_GPU_INFO = False


def host_facts() -> dict[str, Any]:
    """CPU and GPU facts of this machine, gathered once (see the module docstring)."""
    return dict(_HOST_FACTS)


def guess_content_type(filename: str) -> str:
    """An artifact's content type from its name, as Sacred's MongoObserver guesses it
    (Sacred's own MIME table, the same on every platform), without the line Sacred
    prints about it; "application/octet-stream" when the name says nothing."""
    return mimetype_detector.guess_type(filename)[0] or "application/octet-stream"
