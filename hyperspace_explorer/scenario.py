"""Scenario: the user's experiment template, and what a run can do from inside.

A Scenario's constructor parameters come from the Task (the fixed problem: data set,
split, ...). Its `config_class` declares what the run config (the hyper-parameters
being explored) is made of, so that a config can be validated and completed without
running anything. `single_run(params)` gets the completed config and returns the
quality metric.
"""
from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from .configurable import Configurable, complete, validate_config
from .errors import ConfigError, MetricError


class Scenario(Configurable):
    """Base class of a Study's scenarios (see the module docstring).

    Subclasses are usually dataclasses whose fields are the Task's `Scenario`
    parameters. `config_class` is a dataclass (often a Configurable) describing the
    run config; leave it None to accept any JSON-like dict unvalidated.
    """

    __abstract_config__ = True  # the base itself is not a selectable className
    config_class: ClassVar[type | None] = None
    run_seed: int | None = None  # the run's seed, set on the instance by the worker

    @classmethod
    def complete_run_config(cls, conf: Mapping[str, Any] | None) -> dict[str, Any]:
        """Validate a run config and fill every default from `config_class`.

        First `validate_config` (a dict MongoDB and Sacred can store: keys, nesting,
        size), then the checks of `config_class`; the completed config is checked for
        storability too (defaults can make it larger). None means {}."""
        return cls.check_run_config(conf)[1]

    @classmethod
    def check_run_config(cls, conf: Mapping[str, Any] | None
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
        """`complete_run_config`, also returning the config as given (a plain copy):
        what a submit stores, without checking it twice."""
        given = validate_config({} if conf is None else conf)
        if "seed" in given:
            raise ConfigError("seed", "'seed' is set per run (submit(..., seeds=...)), "
                                      "not inside the config")
        if cls.config_class is None:
            return given, given  # any storable dict; errors name the user's key
        return given, validate_config(complete(cls.config_class, given))

    def single_run(self, params: dict[str, Any]) -> float | dict[str, float]:
        """Build data and model from `params`, train, evaluate; return the metric(s)."""
        raise NotImplementedError(f"{type(self).__name__} must implement single_run(params)")

    # --- what a run can do from inside; outside a run (no worker) they record nothing
    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        """Record a metric over steps (stored in Sacred's `metrics` collection)."""
        run = _current_sacred_run()
        if run is not None:
            run.log_scalar(name, value, step)

    def add_artifact(self, filename: str, name: str | None = None,
                     content_type: str | None = None, metadata: Any = None) -> None:
        """Attach a file (model, plot, predictions) to the run's record, as Sacred's
        `Run.add_artifact`: stored in the database (GridFS) under `name` (default: the
        file's name), with its `content_type` (default: guessed from the file name,
        else "application/octet-stream") in the record's artifact entry, and
        `metadata` (anything BSON can store) on the stored file. The file is read
        before this returns, so it may be deleted afterwards."""
        run = _current_sacred_run()
        if run is not None:
            run.add_artifact(filename, name=name, metadata=metadata, content_type=content_type)

    def save_model(self, obj: Any, name: str = "model") -> None:
        """Keep a trained model with the run, for use outside the study: a torch module
        or state dict (`<name>.pt`) or anything picklable, e.g. a scikit-learn
        estimator (`<name>.pkl`), stored as an artifact of the run's Sacred record
        with its content type. `hyperspace_explorer.load_model(run_id, db=...)` gives
        it back; `hse export RUN DIR` writes it with its config and code version."""
        from .models import save_model

        save_model(self, obj, name)

    def save_checkpoint(self, obj: Any) -> bool:
        """Keep `obj` (e.g. {"epoch": e, "model": model.state_dict(), "optimizer": ...})
        as the run's latest checkpoint in the database, replacing the previous one. If
        the run is interrupted (its worker killed, lost or stopped) and queued again, the
        next attempt's `load_checkpoint()` returns it, and the metric points logged up to
        this call are carried over, so its curves continue. Returns whether it was kept
        (False outside a worker's run, or when another attempt owns the run)."""
        hook = _CHECKPOINTS[-1] if _CHECKPOINTS else None
        if hook is None:
            self.__dict__["_checkpoint"] = obj
            return False
        from .models import to_bytes

        data, content_type = to_bytes(obj)
        return bool(hook.save(data, content_type))

    def load_checkpoint(self) -> Any:
        """The latest checkpoint an earlier attempt of this run saved (see
        `save_checkpoint`), None when there is none: start from scratch then."""
        hook = _CHECKPOINTS[-1] if _CHECKPOINTS else None
        if hook is None:
            return self.__dict__.get("_checkpoint")
        found = hook.load()
        if found is None:
            return None
        from .models import from_bytes

        data, content_type = found
        return from_bytes(data, content_type, "the run's checkpoint")

    def report(self, value: float, step: int) -> None:
        """An intermediate value of the task's main metric at `step` (an epoch, a
        budget). It is logged as the metric series named after the task's metric
        (`q.curves(task, metric)`), and in a run proposed by a tuner it is also
        reported to the run's Optuna trial, for the pruner (see `should_prune`)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise MetricError(f"report(): the value must be a finite number, got {value!r}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise MetricError(f"report(): the step must be a non-negative int, got {step!r}")
        hook = _TUNING[-1] if _TUNING else None
        self.log_scalar(hook.metric if hook is not None else "intermediate", float(value), step)
        if hook is not None:
            hook.report(float(value), step)

    def should_prune(self) -> bool:
        """Whether the tuner's pruner wants this run stopped now, judged on the values
        `report`ed so far against the study's other trials. Then stop it with
        `raise hyperspace_explorer.errors.Pruned()`: the run ends PRUNED. Always
        False outside a tuned run."""
        hook = _TUNING[-1] if _TUNING else None
        return bool(hook is not None and hook.should_prune())

    @property
    def run_info(self) -> dict[str, Any]:
        """Free-form dict stored with the run (Sacred's `info`)."""
        run = _current_sacred_run()
        if run is not None:
            return run.info
        return self.__dict__.setdefault("_info", {})


_SACRED_RUN: list[Any] = []
#: In a worker's child: the channel of `report` / `should_prune` to the worker (set by
#: `execution.child`); it has `.metric`, `.report(value, step)`, `.should_prune()`.
_TUNING: list[Any] = []
#: In a run: the channel of `save_checkpoint` / `load_checkpoint` to the worker, with
#: `.save(data, content_type) -> bool` and `.load() -> (data, content_type) | None`.
_CHECKPOINTS: list[Any] = []


def _current_sacred_run() -> Any:
    return _SACRED_RUN[-1] if _SACRED_RUN else None


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and (when the Study imported it) torch's generators."""
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


def normalize_metrics(result: Any, main_metric: str) -> dict[str, float]:
    """Turn what `single_run` returned into {name: finite float}, or explain why not."""
    if isinstance(result, Mapping):
        metrics = dict(result)
        if main_metric not in metrics:
            raise MetricError(f"single_run returned metrics {sorted(metrics)} but not the "
                              f"task's main metric '{main_metric}'")
    else:
        metrics = {main_metric: result}
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or "." in name or name.startswith("$"):
            raise MetricError(f"metric name {name!r} is not usable (strings without '.' "
                              f"or a leading '$')")
        if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MetricError(f"metric '{name}' is {type(value).__name__} {value!r}, "
                              f"not a number")
        if not math.isfinite(value):
            raise MetricError(f"metric '{name}' is {value}: runs with NaN/inf metrics "
                              f"cannot be compared")
        out[name] = float(value)
    return out
