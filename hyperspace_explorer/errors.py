"""Every exception the package raises on purpose.

One module so that callers (notebooks, the CLI, workers) can catch `HSEError` and print
its message: each message says what is wrong and, where possible, what to do about it.
"""
from __future__ import annotations

import math


class HSEError(Exception):
    """Base of every error hyperspace_explorer raises deliberately."""


MAX_INT = 2**63 - 1  # MongoDB stores integers in 64 bits


def bounded_int(value: object, name: str, low: int, high: int = MAX_INT,
                error: type[HSEError] = HSEError) -> int:
    """`value` when it is an int (a bool is not) from `low` to `high`, else an `error`
    naming `name`: a number that MongoDB cannot store must be refused before anything
    is written, not end in a driver's OverflowError halfway through a batch."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        top = "2**63 - 1" if high == MAX_INT else high
        raise error(f"{name} must be an integer from {low} to {top}, got {value!r}")
    return value


def positive_int(value: object, name: str) -> int:
    """`value` when it is a positive int (a bool is not), else an HSEError naming `name`:
    the one check of every count a user gives, as an argument or an option, so that
    they all say the same thing."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HSEError(f"{name} must be a positive integer, got {value!r}")
    return bounded_int(value, name, 1)


def seconds(value: object, name: str, *, zero: bool = False,
            error: type[HSEError] = HSEError) -> float:
    """`value` as a float when it is a finite number of seconds above 0 (or 0 itself
    with `zero`), else an `error` naming `name`. NaN passes every `<=` test and
    infinity no JSON document holds, so both are refused here, where the user gave
    them."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0 or (value == 0 and not zero)):
        wanted = "a finite number of seconds, 0 or more" if zero else \
            "a positive, finite number of seconds"
        raise error(f"{name} must be {wanted}, got {value!r}")
    return float(value)


class ConfigError(HSEError, ValueError):
    """A run or task config does not match the Configurable classes it must fill.

    `path` is the dotted path of the offending value ("" for the config root), so the
    message can point at the exact key in a deeply nested config; a key that is itself
    the problem is quoted in brackets (`options['a.b']`).
    """

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        # "a.b", "a[0]", "a['odd.key']"; a quoted key at the top: "config['odd.key']"
        where = f"config{path}" if path.startswith("[") else f"config.{path}" if path \
            else "config"
        super().__init__(f"{where}: {problem}")


class TaskError(HSEError):
    """A task file is missing, unreadable, not valid JSON or not a valid task."""


class StudyError(HSEError):
    """The Study's `scenarios` module cannot be found or imported."""


class StoreError(HSEError):
    """The MongoDB store refused an operation or answered something unexpected."""


class StoreUnavailable(StoreError):
    """The MongoDB store cannot be reached right now (down, restarting, a network cut,
    or no answer within the client's deadline): retrying the same operation later can
    succeed, which is what `Storage.retry` does."""


class DocumentTooLarge(StoreError):
    """A document would exceed MongoDB's 16 MB limit."""


class QueryError(HSEError, ValueError):
    """A run filter names an unknown status, field or value."""


class ServerError(HSEError):
    """The embedded MongoDB-wire server could not be started, reached or stopped."""


class RunNotFound(HSEError, KeyError):
    """No queued or finished run has the given id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "run not found"


class MetricError(HSEError, ValueError):
    """`single_run` returned something that is not a usable metric."""


class AnalysisError(HSEError, ValueError):
    """A results frame cannot be summarised, exported or plotted as asked.

    The message names the bad argument (metric, config path, format, ...) and lists the
    valid choices.
    """


class Pruned(HSEError):
    """Raised in a run's code to stop a trial its tuner's pruner gave up on:
    `if self.should_prune(): raise Pruned(...)`. The run ends PRUNED (not FAILED), keeps
    its logged curve, and is told to Optuna as pruned. `optuna.TrialPruned` works too."""
