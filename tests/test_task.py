"""Task files: parsing, defaults and error messages that point at the file (and line)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperspace_explorer import Task, load_task
from hyperspace_explorer.errors import HSEError, TaskError
from hyperspace_explorer.task import task_names

STUDY_TASKS = Path(__file__).resolve().parent / "study" / "tasks"


def write(tasks_dir: Path, name: str, content) -> Path:
    tasks_dir.mkdir(parents=True, exist_ok=True)
    path = tasks_dir / f"{name}.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


def task_error(tasks_dir: Path, name: str) -> str:
    with pytest.raises(TaskError) as info:
        load_task(tasks_dir, name)
    assert isinstance(info.value, HSEError)
    return str(info.value)


def test_study_tasks_parse():
    toy = load_task(STUDY_TASKS, "toy")
    assert toy == Task(name="toy", scenario={"className": "ToyScenario", "size": 20}, seed=100,
                       metric="score", direction="maximize", max_runtime=None, description="")
    assert toy.scenario_class_name == "ToyScenario"
    assert Task.from_doc(toy.to_doc()) == toy
    assert set(task_names(STUDY_TASKS)) >= {"toy", "noop"}


def test_defaults(tmp_path):
    write(tmp_path, "minimal", {"Scenario": {"className": "NoopScenario"}})
    task = load_task(tmp_path, "minimal")
    assert (task.metric, task.direction, task.seed) == ("score", "maximize", 0)
    assert task.max_runtime is None and task.description == ""


def test_all_fields(tmp_path):
    write(tmp_path, "full", {"Scenario": {"className": "ToyScenario", "size": 3}, "seed": 7,
                             "metric": "loss", "direction": "minimize", "max_runtime": 60,
                             "description": "small", "gpus": 2, "tags": ["big-mem", "a"]})
    task = load_task(tmp_path, "full")
    assert task.to_doc() == {"name": "full", "scenario": {"className": "ToyScenario", "size": 3},
                             "seed": 7, "metric": "loss", "direction": "minimize",
                             "max_runtime": 60.0, "description": "small", "gpus": 2,
                             "tags": ("a", "big-mem")}
    assert isinstance(task.max_runtime, float)


def test_broken_json_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "broken",
                 '{\n  "Scenario": {"className": "ToyScenario"},\n  "seed": 1,,\n  "metric": "x"\n}\n')
    message = task_error(tmp_path, "broken")
    assert str(path) in message
    assert f"{path}:3:" in message  # line 3 holds the stray comma
    assert "invalid JSON" in message


def test_not_an_object(tmp_path):
    path = write(tmp_path, "list", "[1, 2]")
    message = task_error(tmp_path, "list")
    assert str(path) in message and "JSON object" in message


@pytest.mark.parametrize("data", [
    {"metric": "score"},                                   # no Scenario
    {"Scenario": "ToyScenario"},                           # not an object
    {"Scenario": {"size": 3}},                             # no className
    {"Scenario": {"className": 3}},                        # className not a string
])
def test_missing_scenario_or_class_name(tmp_path, data):
    path = write(tmp_path, "bad", data)
    message = task_error(tmp_path, "bad")
    assert str(path) in message
    assert "'Scenario'" in message and "className" in message


def test_bad_direction(tmp_path):
    write(tmp_path, "bad", {"Scenario": {"className": "ToyScenario"}, "direction": "up"})
    message = task_error(tmp_path, "bad")
    assert "'direction'" in message and "maximize" in message and "minimize" in message
    assert "'up'" in message


def test_unknown_keys(tmp_path):
    write(tmp_path, "bad", {"Scenario": {"className": "ToyScenario"}, "metrik": "x",
                            "extra": 1})
    message = task_error(tmp_path, "bad")
    assert "unknown key(s) ['extra', 'metrik']" in message
    assert "metric" in message and "direction" in message  # the valid keys are listed


@pytest.mark.parametrize("field, value, expect", [
    ("seed", -1, "'seed' must be an integer from 0 to 4294967295, got -1"),
    ("seed", True, "'seed' must be an integer from 0 to 4294967295, got True"),
    ("seed", 1.5, "'seed' must be an integer from 0 to 4294967295, got 1.5"),
    ("seed", 2**32, "'seed' must be an integer from 0 to 4294967295, got 4294967296"),
    ("max_runtime", float("nan"), "'max_runtime' must be a positive, finite number "
                                  "of seconds, got nan"),
    ("max_runtime", float("inf"), "'max_runtime' must be a positive, finite"),
    ("gpus", 2**63, "'gpus' must be an integer from 0 to 2**63 - 1"),
    ("tags", "gpu", "'tags' must be a list of names, got 'gpu'"),
    ("tags", [" gpu"], "'tags' must be names of 1 to 100 characters, without ',' or surrounding"),
    ("metric", "a.b", "'metric' must be a metric name"),
    ("metric", "", "'metric' must be a metric name"),
    ("max_runtime", 0, "'max_runtime' must be a positive, finite number of seconds, got 0"),
    ("max_runtime", "1h", "'max_runtime' must be a positive, finite number"),
])
def test_bad_values(tmp_path, field, value, expect):
    path = write(tmp_path, "bad", {"Scenario": {"className": "ToyScenario"}, field: value})
    message = task_error(tmp_path, "bad")
    assert expect in message and str(path) in message


def test_unknown_task_lists_known_tasks(tmp_path):
    write(tmp_path, "alpha", {"Scenario": {"className": "NoopScenario"}})
    write(tmp_path, "beta", {"Scenario": {"className": "NoopScenario"}})
    message = task_error(tmp_path, "gamma")
    assert "unknown task 'gamma'" in message
    assert "known tasks: alpha, beta" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "known tasks: (none)" in task_error(empty, "gamma")


def test_invalid_task_name(tmp_path):
    for name in ("../toy", "a b", "", ".hidden"):
        with pytest.raises(TaskError, match="invalid task name"):
            load_task(tmp_path, name)


def test_missing_tasks_directory(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(TaskError, match="does not exist") as info:
        task_names(missing)
    assert str(missing) in str(info.value)
    message = task_error(missing, "toy")
    assert f"tasks directory {missing} does not exist" in message
