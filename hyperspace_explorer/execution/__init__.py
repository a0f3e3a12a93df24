"""Execution of one attempt of a run, split by concern:

- `child`: the forked process that runs user code under Sacred and forwards its
  Sacred events over a pipe (it never talks to the database);
- `records`: the Sacred record of the attempt, written by the worker through Storage;
- `supervisor`: forks children, applies events, keeps the lease, enforces timeout and
  cancellation, kills what the run left behind, and reports the `Outcome`;
- `sacred_settings`: Sacred imported and configured in one place.

Importing this package imports Sacred: only workers do.
"""
from __future__ import annotations

from .child import RunSpec
from .records import TOO_LARGE
from .supervisor import SUPERSEDED, Executor, Outcome

__all__ = ["Executor", "Outcome", "RunSpec", "SUPERSEDED", "TOO_LARGE"]
