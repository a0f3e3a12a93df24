"""RunQueue against the session's real server: submitting, watching, cancelling, results."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import helpers

from hyperspace_explorer.errors import ConfigError, HSEError, TaskError
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.store import CANCELLED, COMPLETED, QUEUED, RUNNING

STUDY = Path(__file__).resolve().parent / "study"
TASKS = STUDY / "tasks"
LINEAR = {"model": {"className": "Linear"}}


def stored(raw) -> list[dict]:
    return list(raw.hse_queue.find({})) + list(raw.hse_done.find({}))


def run_worker(mongo_uri, db_name, tmp_path, max_runs, idle_exit=5.0):
    return helpers.run_worker(mongo_uri, db_name, tmp_path / "logs", max_runs=max_runs,
                              idle_exit=idle_exit)


# ------------------------------------------------------------------ submit
def test_submit_stores_one_doc_per_seed(q, raw):
    ids = q.submit("toy", LINEAR, seeds=3)
    assert len(ids) == 3 and len(set(ids)) == 3
    docs = {d["_id"]: d for d in stored(raw)}
    assert set(docs) == set(ids)
    assert [docs[i]["seed"] for i in ids] == [100, 101, 102]  # the task's seed, +1, +2
    for doc in docs.values():
        assert doc["status"] == QUEUED and doc["attempt"] == 0
        assert doc["study"] == q.study == raw.name and doc["task"] == "toy"
        assert doc["config"] == LINEAR  # as given: defaults are filled by the worker
        assert doc["task_spec"]["scenario"] == {"className": "ToyScenario", "size": 20}
        assert doc["priority"] == 0 and doc["max_attempts"] == 3
    # re-submitting the same thing gives the same seeds
    again = q.submit("toy", LINEAR, seeds=3)
    assert sorted(q.get(i)["seed"] for i in again) == [100, 101, 102]


def test_submit_default_and_explicit_seeds(q):
    (one,) = q.submit("toy", LINEAR)
    assert q.get(one)["seed"] == 100
    ids = q.submit("toy", LINEAR, seeds=[5, 0, 42])
    assert [q.get(i)["seed"] for i in ids] == [5, 0, 42]
    (noop,) = q.submit("noop")
    assert q.get(noop)["seed"] == 0 and q.get(noop)["config"] == {}


@pytest.mark.parametrize("seeds", [0, -2, True, [], [1, 1], [-1], [1.5], ["1"], [True]])
def test_bad_seeds_are_rejected_and_nothing_is_stored(q, raw, seeds):
    with pytest.raises(HSEError, match="seed"):
        q.submit("toy", LINEAR, seeds=seeds)
    assert raw.hse_queue.count_documents({}) == 0


def test_priority_and_limits_are_stored(q):
    (run_id,) = q.submit("toy", LINEAR, priority=7, max_attempts=1, max_runtime=30)
    doc = q.get(run_id)
    assert (doc["priority"], doc["max_attempts"], doc["max_runtime"]) == (7, 1, 30)
    for bad in ({"priority": 1.5}, {"priority": "high"}, {"max_attempts": 0},
                {"max_runtime": -1}, {"max_runtime": "1h"}, {"max_runtime": True},
                {"priority": True}, {"max_attempts": True}):
        with pytest.raises(HSEError):
            q.submit("toy", LINEAR, **bad)
    assert q.status()[QUEUED] == 1


def test_submit_grid_is_the_cartesian_product(q, raw):
    ids = q.submit_grid("toy", {"model": {"className": "Linear"}, "epochs": 2},
                        {"model.lr": [0.1, 1.0, 10.0], "noise": [0.0, 0.5],
                         "options.scale": [1, 2]}, seeds=2, priority=3)
    assert len(ids) == 3 * 2 * 2 * 2
    docs = [q.get(i) for i in ids]
    combos = {(d["config"]["model"]["lr"], d["config"]["noise"],
               d["config"]["options"]["scale"], d["seed"]) for d in docs}
    assert combos == {(lr, n, s, seed) for lr in (0.1, 1.0, 10.0) for n in (0.0, 0.5)
                      for s in (1, 2) for seed in (100, 101)}
    assert all(d["config"]["model"]["className"] == "Linear" and d["config"]["epochs"] == 2
               and d["priority"] == 3 for d in docs)
    # submission order is kept: the grid is claimed in the order it was written
    assert [d["order"] for d in docs] == sorted(d["order"] for d in docs)
    assert raw.hse_queue.count_documents({}) == 24


def test_submit_grid_over_a_polymorphic_choice(q):
    ids = q.submit_grid("toy", None, {"model": [{"className": "Linear"},
                                                {"className": "Forest", "n_trees": 3}]})
    assert [q.get(i)["config"]["model"]["className"] for i in ids] == ["Linear", "Forest"]


@pytest.mark.parametrize("grid", [{}, {"model.lr": []}, {"model.lr": "0.1"}, {"model.lr": 0.1}])
def test_bad_grids_are_rejected(q, raw, grid):
    with pytest.raises(ConfigError):
        q.submit_grid("toy", LINEAR, grid)
    assert raw.hse_queue.count_documents({}) == 0


def test_config_typo_fails_at_submit_and_nothing_is_stored(q, raw):
    q.submit("toy", LINEAR)
    before = raw.hse_queue.count_documents({})
    with pytest.raises(ConfigError) as info:
        q.submit("toy", {"model": {"className": "Linear", "lrr": 0.1}}, seeds=3)
    assert info.value.path == "model.lrr" and "did you mean 'lr'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        q.submit("toy", {"model": {"className": "Linaer"}})
    assert info.value.path == "model.className"
    with pytest.raises(ConfigError, match="set per run"):
        q.submit("toy", {**LINEAR, "seed": 3})
    # one bad point in a grid: none of the grid is queued
    with pytest.raises(ConfigError) as info:
        q.submit_grid("toy", LINEAR, {"model.lr": [0.1, 1.0, "big"]}, seeds=2)
    assert info.value.path == "model.lr" and "expected float" in str(info.value)
    with pytest.raises(ConfigError) as info:
        q.submit_grid("toy", LINEAR, {"epochz": [1, 2]})
    assert info.value.path == "epochz"
    assert raw.hse_queue.count_documents({}) == before == 1
    assert raw.hse_done.count_documents({}) == 0


def test_unknown_task_fails_and_lists_known_ones(q, raw):
    with pytest.raises(TaskError, match="unknown task 'toyy'") as info:
        q.submit("toyy", LINEAR)
    assert "noop" in str(info.value) and "toy" in str(info.value)
    with pytest.raises(TaskError, match="invalid task name"):
        q.submit("../toy", LINEAR)
    assert raw.hse_queue.count_documents({}) == 0


def test_queue_needs_an_existing_tasks_directory(mongo_uri, db_name, tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        RunQueue(mongo_uri, db_name, tmp_path / "nope", study_dir=STUDY)


def test_unknown_scenario_in_the_task_fails_at_submit(mongo_uri, db_name, tmp_path, raw):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "ghost.json").write_text('{"Scenario": {"className": "GhostScenario"}}')
    (tasks / "model.json").write_text('{"Scenario": {"className": "Linear"}}')
    (tasks / "badparam.json").write_text('{"Scenario": {"className": "ToyScenario", "sise": 3}}')
    queue = RunQueue(mongo_uri, db_name, tasks, study_dir=STUDY)
    try:
        with pytest.raises(ConfigError, match="unknown className 'GhostScenario'") as info:
            queue.submit("ghost", {})
        assert "ToyScenario" in str(info.value)
        with pytest.raises(ConfigError, match="'Linear' is not a Scenario"):
            queue.submit("model", {})
        with pytest.raises(ConfigError, match="did you mean 'size'") as info:
            queue.submit("badparam", LINEAR)
        assert info.value.path == "Scenario.sise"
    finally:
        queue.store.close()
    assert raw.hse_queue.count_documents({}) == 0


# ------------------------------------------------------------------ watching and cancelling
def test_status_counts_by_status_and_task(q):
    q.submit("toy", LINEAR, seeds=3)
    q.submit("noop", {}, seeds=2)
    counts = q.status()
    assert counts[QUEUED] == 5 and counts[RUNNING] == 0 and counts[COMPLETED] == 0
    assert set(counts) >= {"QUEUED", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"}
    assert q.status("noop")[QUEUED] == 2
    assert q.status("toy")[QUEUED] == 3


def test_cancel_queued_runs_by_ids_and_by_task(q, raw):
    toy = q.submit("toy", LINEAR, seeds=4)
    noop = q.submit("noop", {}, seeds=3)
    assert q.cancel(toy[:2]) == {"cancelled": 2, "stopping": 0}
    assert q.cancel(toy[0]) == {"cancelled": 0, "stopping": 0}  # already cancelled
    assert q.cancel(task="noop") == {"cancelled": 3, "stopping": 0}
    for run_id in toy[:2] + noop:
        doc = q.get(run_id)
        assert doc["status"] == CANCELLED and doc["reason"] == "cancelled"
        assert doc["attempt"] == 0 and "started_at" not in doc  # never started
    assert [q.get(i)["status"] for i in toy[2:]] == [QUEUED, QUEUED]
    assert q.status()[CANCELLED] == 5 and q.status()[QUEUED] == 2
    with pytest.raises(HSEError, match="refusing to cancel everything"):
        q.cancel()
    assert q.cancel(filter={}) == {"cancelled": 2, "stopping": 0}
    assert raw.hse_queue.count_documents({"status": QUEUED}) == 0


def test_cancelled_runs_are_never_started(q, tmp_path, mongo_uri, db_name):
    cancelled = q.submit("noop", {}, seeds=3)
    kept = q.submit("noop", {}, seeds=[10])
    q.cancel(cancelled)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=None, idle_exit=0.3) == 1
    assert q.get(kept[0])["status"] == COMPLETED
    for run_id in cancelled:
        doc = q.get(run_id)
        assert doc["status"] == CANCELLED and doc.get("sacred_id") is None
        assert "started_at" not in doc


def test_wait_times_out_on_runs_nobody_executes(q):
    ids = q.submit("noop", {}, seeds=2)
    with pytest.raises(TimeoutError, match="2 of 2 runs still unfinished"):
        q.wait(ids, timeout=0.3, poll=0.05, progress=False)  # precision: benchmarks/latency.py
    assert [q.get(i)["status"] for i in ids] == [QUEUED, QUEUED]
    # finished runs: wait returns at once with their counts
    q.cancel(ids)
    assert q.wait(ids, timeout=5, poll=0.05, progress=False) == {CANCELLED: 2}
    assert q.wait(timeout=1, progress=False) == {}  # nothing active


# ------------------------------------------------------------------ results
def test_results_after_a_real_worker(q, tmp_path, mongo_uri, db_name):
    ids = q.submit("toy", {"model": {"className": "Forest", "n_trees": 4}}, seeds=2)
    ids += q.submit("toy", {"model": {"className": "Linear", "lr": 1}, "epochs": 5})
    failing = q.submit("toy", {**LINEAR, "behaviour": "raise"})
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=4) == 4
    assert q.wait(ids + failing, timeout=10, poll=0.05, progress=False) == \
        {COMPLETED: 3, "FAILED": 1}

    frame = q.results("toy")
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4
    for col in ("run_id", "sacred_id", "task", "status", "reason", "seed", "queued_at",
                "start_time", "stop_time", "duration", "host", "attempt", "error",
                "config.model.className", "config.model.n_trees", "config.model.depth",
                "config.model.lr", "config.model.layers", "config.epochs", "config.noise",
                "config.options.verbose", "config.behaviour", "metrics.score", "metrics.draw"):
        assert col in frame.columns, col
    rows = frame.set_index("run_id")
    forest = rows.loc[ids[0]]
    assert forest["status"] == COMPLETED and forest["seed"] == 100
    assert forest["config.model.className"] == "Forest" and forest["config.model.n_trees"] == 4
    assert forest["config.epochs"] == 3  # defaults filled
    assert forest["metrics.score"] == pytest.approx(0.53)
    assert rows.loc[ids[1], "seed"] == 101
    linear = rows.loc[ids[2]]
    assert linear["config.model.lr"] == 1.0 and linear["config.model.layers"] == (8,)
    assert linear["metrics.score"] == pytest.approx(0.55)
    assert rows.loc[failing[0], "status"] == "FAILED"
    assert pd.isna(rows.loc[failing[0], "metrics.score"])
    assert "boom from user code" in rows.loc[failing[0], "error"]
    completed = frame[frame["status"] == COMPLETED]
    assert (completed["stop_time"] >= completed["start_time"]).all()
    assert (completed["start_time"] >= completed["queued_at"]).all()
    assert str(completed["start_time"].dtype).startswith("datetime64")
    assert (completed["duration"] > 0).all() and completed["host"].notna().all()
    assert sorted(completed["sacred_id"]) == sorted(set(completed["sacred_id"]))
    assert (frame["attempt"] == 1).all()

    only_ok = q.results(statuses=[COMPLETED])
    assert len(only_ok) == 3 and set(only_ok["status"]) == {COMPLETED}
    assert len(q.results("noop")) == 0 and "run_id" in q.results("noop").columns
