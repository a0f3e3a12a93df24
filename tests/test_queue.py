"""RunQueue against the session's real server: submitting, watching, cancelling, results."""
from __future__ import annotations

import hashlib
from pathlib import Path

import helpers
import pandas as pd
import pytest

from hyperspace_explorer.errors import ConfigError, HSEError, RunNotFound, TaskError
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.status import CANCELLED, COMPLETED, QUEUED, RUNNING

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
    # re-submitting the same thing gives the same seeds (so it is skipped unless forced)
    assert q.submit("toy", LINEAR, seeds=3) == [] and sorted(q.last_skipped) == sorted(ids)
    again = q.submit("toy", LINEAR, seeds=3, force=True)
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


def test_a_large_grid_shows_a_progress_bar_and_a_small_submit_none(q, capsys):
    q.submit("toy", LINEAR, seeds=3)
    assert capsys.readouterr().err == ""
    ids = q.submit_grid("toy", LINEAR, {"epochs": list(range(10, 1010))})
    err = capsys.readouterr().err
    assert len(ids) == 1000 and "checking configs" in err and "queueing" in err
    assert "1000/1000" in err
    q.submit_grid("toy", LINEAR, {"epochs": [5, 6]}, progress=True)  # asked for: shown
    assert "queueing: 100%" in capsys.readouterr().err
    q.submit_grid("toy", LINEAR, {"epochs": list(range(1010, 2010))}, progress=False)
    assert capsys.readouterr().err == ""


def test_grid_paths_that_nest_give_each_run_its_own_values(q):
    ids = q.submit_grid("toy", LINEAR, {"options": [{"verbose": True}], "options.scale": [1, 2]})
    assert [q.get(i)["config"]["options"] for i in ids] == [
        {"verbose": True, "scale": 1}, {"verbose": True, "scale": 2}]


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
    assert q.cancel(all=True) == {"cancelled": 2, "stopping": 0}
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

    only_ok = q.results(status=[COMPLETED])
    assert len(only_ok) == 3 and set(only_ok["status"]) == {COMPLETED}
    assert len(q.results("noop")) == 0 and "run_id" in q.results("noop").columns


# ------------------------------------------------------------------ duplicates
def test_duplicates_are_skipped_and_reported(q, raw):
    ids = q.submit("toy", LINEAR, seeds=3)
    assert q.last_skipped == []
    # same task, complete config and seed: key order, 1 vs 1.0 and spelled-out
    # defaults do not make a run new; a new seed does
    more = q.submit("toy", {"epochs": 3, "model": {"lr": 0.1, "className": "Linear"}}, seeds=4)
    assert len(more) == 1 and q.get(more[0])["seed"] == 103
    assert q.last_skipped == ids
    assert q.submit("toy", {"model": {"className": "Linear", "lr": 1}}) != []
    assert q.submit("toy", {"model": {"lr": 1.0, "className": "Linear"}}) == []
    assert len(q.last_skipped) == 1
    assert q.submit("toy", LINEAR, seeds=[100], priority=5, max_attempts=1) == []
    # a different task is a different run
    assert len(q.submit("noop", {})) == 1
    # duplicates inside one submit: the first is queued, the others point at it
    grid = q.submit_grid("toy", LINEAR, {"model.lr": [0.5, 0.5, 2]}, seeds=2)
    assert len(grid) == 4 and q.last_skipped == grid[:2]
    # force=True queues anyway (and the next submit reports nothing stale)
    forced = q.submit("toy", LINEAR, seeds=3, force=True)
    assert len(forced) == 3 and q.last_skipped == []
    assert raw.hse_queue.count_documents({}) == 3 + 1 + 1 + 1 + 4 + 3
    # every run carries its fingerprint; forced copies share it
    fingerprints = {d["_id"]: d["fingerprint"] for d in raw.hse_queue.find({})}
    assert [fingerprints[i] for i in forced] == [fingerprints[i] for i in ids]
    assert len(set(fingerprints.values())) == 3 + 1 + 1 + 1 + 4


def test_duplicates_are_found_whether_the_task_is_read_whole_or_looked_up(q, monkeypatch):
    lookups = []
    find = q.store.find_fingerprints
    monkeypatch.setattr(q.store, "find_fingerprints",
                        lambda *a: lookups.append(1) or find(*a))
    first = q.submit_grid("toy", LINEAR, {"epochs": [1, 2, 3, 4, 5, 6]})
    assert len(first) == 6 and lookups == []  # an empty task: read whole, nothing found
    # fewer new runs than the task has: their fingerprints are looked up
    assert q.submit("toy", {**LINEAR, "epochs": 2}) == [] and q.last_skipped == [first[1]]
    assert lookups == [1]
    lookups.clear()
    # more: the task's runs are read whole; the same answer
    grid = q.submit_grid("toy", LINEAR, {"epochs": list(range(1, 11))})
    assert len(grid) == 4 and q.last_skipped == first and lookups == []


def test_only_queued_running_and_completed_runs_count_as_duplicates(q, raw, tmp_path,
                                                                    mongo_uri, db_name):
    done = q.submit("noop", {}, seeds=2)
    cancelled = q.submit("toy", LINEAR, seeds=2)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    q.cancel(cancelled)
    assert raw.hse_done.count_documents({"status": COMPLETED}) == 2  # archived by the worker
    assert q.submit("noop", {}, seeds=3) != [] and q.last_skipped == done
    again = q.submit("toy", LINEAR, seeds=2)
    assert len(again) == 2 and q.last_skipped == []  # cancelled runs are not duplicates


def test_a_large_grid_is_checked_in_a_few_round_trips(q, raw):
    from pymongo import monitoring

    class Finds(monitoring.CommandListener):
        active, count = False, 0

        def started(self, event):
            if self.active and event.command_name == "find":
                Finds.count += 1

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    listener = Finds()
    monitoring.register(listener)  # for clients created from now on
    with RunQueue(q.store.uri, q.store.db_name, TASKS, study_dir=STUDY) as queue:
        grid = {"model.lr": [0.001 * i for i in range(1, 301)], "epochs": [1, 2, 3, 4]}
        assert len(queue.submit_grid("toy", LINEAR, grid)) == 1200
        listener.active = True
        assert queue.submit_grid("toy", LINEAR, grid) == []
        listener.active = False
    assert len(queue.last_skipped) == 1200
    # 2 fingerprints per run (as given, complete), 1000 per query, 2 collections
    assert 0 < Finds.count <= 2 * 3
    assert raw.hse_queue.count_documents({}) == 1200


def test_fingerprints_are_canonical_and_stable():
    from hyperspace_explorer.queue import run_fingerprint

    base = run_fingerprint("toy", {"model": {"className": "Linear", "lr": 1.0}, "k": [1, 2]}, 3)
    # pinned: the same in every Python version and on every machine
    assert base == "d6a315c96137f2c630a77e4de9b14a5e"
    canonical = '{"config":{"k":[1,2],"model":{"className":"Linear","lr":1}},"seed":3,' \
                '"task":"toy","v":1}'
    assert base == hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert run_fingerprint("toy", {"k": (1.0, 2), "model": {"lr": 1, "className": "Linear"}},
                           3) == base
    for other in (run_fingerprint("toy2", {"model": {"className": "Linear", "lr": 1.0},
                                           "k": [1, 2]}, 3),
                  run_fingerprint("toy", {"model": {"className": "Linear", "lr": 1.0},
                                          "k": [1, 2]}, 4),
                  run_fingerprint("toy", {"model": {"className": "Linear", "lr": 1.5},
                                          "k": [1, 2]}, 3),
                  run_fingerprint("toy", {"model": {"className": "Linear", "lr": True},
                                          "k": [1, 2]}, 3),
                  run_fingerprint("toy", {"model": {"className": "Linear", "lr": 1.0},
                                          "k": [2, 1]}, 3)):
        assert other != base


# ------------------------------------------------------------------ requeue
def test_requeue_failed_runs_keeps_their_earlier_attempt(q, raw, tmp_path, mongo_uri, db_name):
    failing = q.submit("toy", {**LINEAR, "behaviour": "raise"}, seeds=2)
    (ok,) = q.submit("toy", LINEAR)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    assert raw.hse_done.count_documents({}) == 3 and raw.hse_queue.count_documents({}) == 0
    first = {i: q.get(i) for i in failing}
    records = {i: raw.runs.find_one({"_id": first[i]["sacred_id"]}) for i in failing}
    assert all(r["status"] == "FAILED" for r in records.values())

    assert q.requeue(task="toy") == 2  # FAILED by default, not the COMPLETED one
    assert q.status("toy") == {**q.status("toy"), QUEUED: 2, COMPLETED: 1, "FAILED": 0}
    for run_id in failing:
        doc = raw.hse_queue.find_one({"_id": run_id})
        assert raw.hse_done.count_documents({"_id": run_id}) == 0
        assert doc["status"] == QUEUED and doc["attempt"] == 0 and "sacred_id" not in doc
        assert doc["config"] == {**LINEAR, "behaviour": "raise"}  # as submitted
        (previous,) = doc["previous_attempts"]
        old = first[run_id]
        for key in ("status", "reason", "error", "metrics", "sacred_id", "ended_at",
                    "attempt", "worker", "host", "started_at", "code_version", "duration"):
            assert previous.get(key) == old.get(key), key
        assert previous["status"] == "FAILED" and "boom from user code" in previous["error"]
        assert raw.runs.find_one({"_id": old["sacred_id"]}) == records[run_id]  # untouched
    assert q.get(ok)["status"] == COMPLETED and "previous_attempts" not in q.get(ok)

    # they run again: a new Sacred record each, and a second requeue grows the list
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    second = {i: q.get(i) for i in failing}
    assert all(d["status"] == "FAILED" and d["attempt"] == 1 for d in second.values())
    assert {d["sacred_id"] for d in second.values()}.isdisjoint(
        d["sacred_id"] for d in first.values())
    assert raw.runs.count_documents({}) == 5
    assert q.requeue(failing[0]) == 1
    assert [p["sacred_id"] for p in q.get(failing[0])["previous_attempts"]] == [
        first[failing[0]]["sacred_id"], second[failing[0]]["sacred_id"]]
    frame = q.results("toy")
    assert sorted(frame["run_id"]) == sorted(failing + [ok])  # nothing lost or duplicated


def test_requeue_completed_runs_only_when_asked(q, raw, tmp_path, mongo_uri, db_name):
    done = q.submit("noop", {}, seeds=3)
    cancelled = q.submit("noop", {}, seeds=[50])
    q.cancel(cancelled)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    assert q.requeue(task="noop") == 1  # the cancelled one: COMPLETED stays
    assert q.get(cancelled[0])["status"] == QUEUED
    assert q.get(cancelled[0])["previous_attempts"][0]["status"] == CANCELLED
    assert q.requeue(task="noop", status="FAILED,TIMEOUT") == 0
    assert q.requeue(done[0]) == 1  # by id: any finished status
    assert q.requeue(task="noop", status="COMPLETED") == 2
    assert q.status("noop")[QUEUED] == 4 and q.status("noop")[COMPLETED] == 0
    # the cancelled run now really runs, and the requeued ones run again
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=4) == 4
    assert q.wait(done + cancelled, timeout=10, poll=0.05, progress=False) == {COMPLETED: 4}
    assert raw.hse_queue.count_documents({}) == 0 and raw.hse_done.count_documents({}) == 4


def test_requeue_refuses_active_runs_and_unclear_requests(q, raw):
    queued = q.submit("toy", LINEAR, seeds=2)
    finished = q.submit("noop", {})
    q.cancel(finished)
    with pytest.raises(HSEError, match="cannot requeue active run") as info:
        q.requeue(queued + finished)
    assert queued[0] in str(info.value) and queued[1] in str(info.value)
    assert finished[0] not in str(info.value)
    assert q.get(finished[0])["status"] == CANCELLED, "nothing requeued after a refusal"
    with pytest.raises(HSEError, match="cannot requeue QUEUED runs"):
        q.requeue(task="toy", status="QUEUED")
    with pytest.raises(HSEError, match="refusing to requeue every finished run"):
        q.requeue()
    with pytest.raises(RunNotFound, match="no run nope"):
        q.requeue(["nope", finished[0]])
    assert q.requeue(finished, task="toy") == 0  # every criterion must hold
    assert q.requeue(finished) == 1
    assert q.status()[QUEUED] == 3 and raw.hse_queue.count_documents({}) == 3
