"""The states a run goes through and why it ended: one vocabulary for every module.

Both enums are `str` subclasses, so a member equals its stored value
(`Status.QUEUED == "QUEUED"`), documents read back from the database compare equal
to members, and a member can be used wherever a plain string is expected.
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

from .errors import QueryError


class _Text(str, Enum):
    def __str__(self) -> str:  # "QUEUED", not "Status.QUEUED", in messages
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(_Text):
    """Where a run is in its life."""

    QUEUED = "QUEUED"        # waiting for a worker
    RUNNING = "RUNNING"      # leased by a worker
    COMPLETED = "COMPLETED"  # single_run returned valid metrics
    FAILED = "FAILED"        # see Reason
    TIMEOUT = "TIMEOUT"      # ran past max_runtime
    CANCELLED = "CANCELLED"  # cancel() / hse cancel
    PRUNED = "PRUNED"        # stopped early by its tuner's pruner (self.should_prune())

    @property
    def final(self) -> bool:
        return self in FINAL


class Reason(_Text):
    """Why a run ended other than COMPLETED, so that users and retry rules can act on it."""

    ERROR = "error"              # the code raised, or returned unusable metrics
    KILLED = "killed"            # killed by a signal / out of memory / exited early
    TIMEOUT = "timeout"          # ran past max_runtime
    WORKER_LOST = "worker lost"  # its lease expired max_attempts times
    CANCELLED = "cancelled"
    INVALID = "invalid"          # the queue document, task or config cannot be run
    PRUNED = "pruned"            # the Optuna pruner stopped it early (tuning)


#: The error of a CANCELLED run, as it ended: before its attempt started, or during it.
CANCELLED_QUEUED = "cancelled before it started"
CANCELLED_RUNNING = "cancelled while running"

QUEUED, RUNNING, COMPLETED, FAILED, TIMEOUT, CANCELLED, PRUNED = Status
ACTIVE: tuple[Status, ...] = (Status.QUEUED, Status.RUNNING)
FINAL: tuple[Status, ...] = (Status.COMPLETED, Status.FAILED, Status.TIMEOUT, Status.CANCELLED,
                             Status.PRUNED)
STATUSES: tuple[Status, ...] = tuple(Status)


def parse_statuses(statuses: str | Sequence[str] | None) -> tuple[Status, ...] | None:
    """Statuses given by a user ("FAILED", ["failed", "TIMEOUT"], "FAILED,TIMEOUT") as
    members, or None for "any"; a QueryError names the bad one and the valid ones."""
    if statuses is None:
        return None
    items = statuses.split(",") if isinstance(statuses, str) else list(statuses)
    out = []
    for item in items:
        name = str(item).strip().upper()
        if name not in Status.__members__:
            raise QueryError(f"unknown status {item!r}; valid: {', '.join(Status.__members__)}")
        out.append(Status(name))
    return tuple(out)
