"""Task: one JSON file in the tasks directory fixing a Scenario and its parameters.

`TASKS_DIR/<name>.json`::

    {"Scenario": {"className": "DigitsScenario", "test_size": 0.25},
     "seed": 0, "metric": "accuracy", "direction": "maximize", "max_runtime": 3600}
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import HSEError, TaskError, bounded_int, seconds

DIRECTIONS = ("maximize", "minimize")
_TASK_KEYS = {"Scenario", "seed", "metric", "direction", "max_runtime", "description",
              "gpus", "tags"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
MAX_SEED = 2**32 - 1  # Sacred seeds NumPy's legacy generator with a run's seed
MAX_TAG = 100  # characters of a tag (`--tags`)


@dataclasses.dataclass(frozen=True)
class Task:
    """A parsed task file; `to_doc()` is the snapshot stored with each queued run."""

    name: str
    scenario: dict[str, Any]
    seed: int = 0
    metric: str = "score"
    direction: str = "maximize"
    max_runtime: float | None = None
    description: str = ""
    gpus: int = 0                  # GPUs each run needs (a worker started with --gpus)
    tags: tuple[str, ...] = ()     # what a worker must offer (--tags), e.g. ("big-mem",)

    @property
    def scenario_class_name(self) -> str:
        return self.scenario["className"]

    def to_doc(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Task:
        return cls(**{**doc, "tags": tuple(doc.get("tags") or ())})

    @classmethod
    def from_dict(cls, name: str, data: Any, source: str) -> Task:
        """Validate the parsed JSON of a task; `source` names the file in errors."""
        if not isinstance(data, dict):
            raise TaskError(f"{source}: a task must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _TASK_KEYS)
        if unknown:
            raise TaskError(f"{source}: unknown key(s) {unknown}; valid keys: {sorted(_TASK_KEYS)}")
        scenario = data.get("Scenario")
        if not isinstance(scenario, dict) or not isinstance(scenario.get("className"), str):
            raise TaskError(f"{source}: 'Scenario' must be an object starting with "
                            f"'className' (the Scenario class to run)")
        seed = bounded_int(data.get("seed", 0), f"{source}: 'seed'", 0, MAX_SEED, TaskError)
        metric = data.get("metric", "score")
        if not isinstance(metric, str) or not metric or "." in metric:
            raise TaskError(f"{source}: 'metric' must be a metric name without '.', got {metric!r}")
        direction = data.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise TaskError(f"{source}: 'direction' must be one of {list(DIRECTIONS)}, "
                            f"got {direction!r}")
        max_runtime = data.get("max_runtime")
        if max_runtime is not None:
            max_runtime = seconds(max_runtime, f"{source}: 'max_runtime'",
                                  error=TaskError)
        gpus = bounded_int(data.get("gpus", 0), f"{source}: 'gpus'", 0, error=TaskError)
        tags = data.get("tags", [])
        if not isinstance(tags, list):
            raise TaskError(f"{source}: 'tags' must be a list of names, got {tags!r}")
        tags = tag_names(tags, f"{source}: 'tags'", TaskError)
        return cls(name=name, scenario=scenario, seed=seed, metric=metric, direction=direction,
                   max_runtime=max_runtime, description=str(data.get("description", "")),
                   gpus=gpus, tags=tags)


def tag_names(tags: Iterable[Any], name: str, error: type[HSEError] = HSEError
              ) -> tuple[str, ...]:
    """`tags` sorted and without repeats, when each is a name a worker can offer: a
    non-empty string of at most MAX_TAG characters (the claim's index keys hold them),
    without ',' (`--tags` splits on it) or surrounding blanks (which `--tags` strips,
    so a run requiring " gpu" would wait for ever); else an `error` naming `name`. The
    one check of the tags a task file, `submit` and a worker give."""
    tags = list(tags)
    if not all(isinstance(t, str) and 0 < len(t) <= MAX_TAG and "," not in t
               and t == t.strip() for t in tags):
        shown = repr(tags) if len(repr(tags)) <= 200 else repr(tags)[:197] + "..."
        raise error(f"{name} must be names of 1 to {MAX_TAG} characters, without ',' or "
                    f"surrounding blanks, got {shown}")
    return tuple(sorted(set(tags)))


def task_path(tasks_dir: str | Path, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskError(f"invalid task name {name!r}: use letters, digits, '_' and '-'")
    return Path(tasks_dir) / f"{name}.json"


def task_names(tasks_dir: str | Path) -> list[str]:
    """Names of the tasks in `tasks_dir` (the stems of its .json files)."""
    path = Path(tasks_dir)
    if not path.is_dir():
        raise TaskError(f"tasks directory {path} does not exist")
    return sorted(p.stem for p in path.glob("*.json") if _NAME.match(p.stem))


def load_task(tasks_dir: str | Path, name: str) -> Task:
    """Read and validate `tasks_dir/<name>.json`, with errors naming file and line."""
    path = task_path(tasks_dir, name)
    if not path.is_file():
        known = task_names(tasks_dir)  # raises when the directory itself is missing
        raise TaskError(f"unknown task '{name}': {path} does not exist; "
                        f"known tasks: {', '.join(known) or '(none)'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskError(f"{path}: cannot read task file: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    return Task.from_dict(name, data, str(path))
