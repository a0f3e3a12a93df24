"""Real workers executing real runs: in this process (`Worker(...).run()`) and as
`python -m hyperspace_explorer.worker` subprocesses, against the session's real server.

Every test uses the same Study directory (tests/study): in-process workers share this
process's imported `scenarios` module, which is one Study per process.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import gridfs
import helpers
import numpy as np
import pytest
from helpers import wait_for
from pymongo import monitoring

from hyperspace_explorer.errors import HSEError
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.status import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING
from hyperspace_explorer.storage import new_run_id
from hyperspace_explorer.task import load_task
from hyperspace_explorer.worker import recover_expired

STUDY = Path(__file__).resolve().parent / "study"
TASKS = STUDY / "tasks"
LINEAR = {"model": {"className": "Linear"}}
TOY_FULL = {"model": {"className": "Linear", "lr": 0.1, "layers": [8]}, "epochs": 3,
            "noise": 0.0, "options": {"verbose": False}, "behaviour": "ok", "duration": 0.0}


def run_worker(mongo_uri, db_name, tmp_path, *, max_runs=None, idle_exit=5.0, study=None,
               **options):
    return helpers.run_worker(mongo_uri, db_name, tmp_path / "logs", max_runs=max_runs,
                              idle_exit=idle_exit, study=study, **options)


def docs_of(q, ids):
    return [q.get(i) for i in ids]


# ------------------------------------------------------------------ running
def test_runs_complete_with_the_full_config_stored(q, raw, tmp_path, mongo_uri, db_name):
    given = {"model": {"className": "Forest", "depth": 4}, "options": {"extra": 1}}
    ids = q.submit("toy", given, seeds=2)
    (noop,) = q.submit("noop", {"free": [1, {"a": True}]})
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    for doc in docs_of(q, ids):
        assert doc["status"] == COMPLETED, doc.get("error")
        assert doc["attempt"] == 1 and doc["reason"] is None and doc["error"] is None
        assert doc["config"] == {**TOY_FULL, "model": {"className": "Forest", "n_trees": 10,
                                                       "depth": 4},
                                 "options": {"verbose": False, "extra": 1}}
        assert doc["config_given"] == given
        assert set(doc["metrics"]) == {"score", "draw"}
        assert doc["metrics"]["score"] == pytest.approx(0.53)
        assert isinstance(doc["sacred_id"], int)
        assert doc["host"] == socket.gethostname()
        assert doc["duration"] > 0 and doc["ended_at"] >= doc["started_at"] >= doc["queued_at"]
        assert Path(doc["log_file"]).is_file()
        assert "token" in doc and doc["worker"].startswith(socket.gethostname())
    noop_doc = q.get(noop)
    assert noop_doc["status"] == COMPLETED and noop_doc["metrics"] == {"score": 1.0}
    assert noop_doc["config"] == noop_doc["config_given"] == {"free": [1, {"a": True}]}
    # the worker swept finished runs out of the claim path
    assert raw.hse_queue.count_documents({}) == 0 and raw.hse_done.count_documents({}) == 3
    assert raw.hse_workers.count_documents({}) == 0  # it unregistered itself


def test_claims_follow_priority_then_age(q, tmp_path, mongo_uri, db_name):
    prios = [0, 10, 2, 0, -1, 10, 100, -20, 3, 2]
    ids = [q.submit("noop", {"i": i}, priority=p)[0] for i, p in enumerate(prios)]
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=len(ids)) == len(ids)
    docs = docs_of(q, ids)
    assert all(d["status"] == COMPLETED for d in docs)
    by_start = sorted(docs, key=lambda d: (d["started_at"], d["sacred_id"]))
    expected = sorted(range(len(prios)), key=lambda i: (-prios[i], i))
    assert [d["config"]["i"] for d in by_start] == expected
    # one worker takes its Sacred ids in order: the same order again, strictly
    assert [d["config"]["i"] for d in sorted(docs, key=lambda d: d["sacred_id"])] == expected
    starts = [d["started_at"] for d in by_start]
    assert starts == sorted(starts)


def test_a_run_that_raises_fails_and_the_worker_goes_on(q, raw, tmp_path, mongo_uri, db_name):
    (bad,) = q.submit("toy", {**LINEAR, "behaviour": "raise"})
    (good,) = q.submit("toy", LINEAR)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    doc = q.get(bad)
    assert doc["status"] == FAILED and doc["reason"] == "error"
    assert "Traceback (most recent call last)" in doc["error"]
    assert "RuntimeError: boom from user code" in doc["error"]
    assert "scenarios.py" in doc["error"]  # the user's frame is in the traceback
    assert doc.get("metrics") is None
    record = raw.runs.find_one({"_id": doc["sacred_id"]})
    assert record["status"] == FAILED and "boom from user code" in "".join(record["fail_trace"])
    assert q.get(good)["status"] == COMPLETED


def test_a_killed_run_fails_with_reason_killed(q, raw, tmp_path, mongo_uri, db_name):
    (segv,) = q.submit("toy", {**LINEAR, "behaviour": "segfault"})
    (exits,) = q.submit("toy", {**LINEAR, "behaviour": "exit"})
    (good,) = q.submit("toy", LINEAR)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    doc = q.get(segv)
    assert doc["status"] == FAILED and doc["reason"] == "killed"
    assert "killed by signal SIGSEGV" in doc["error"]
    doc = q.get(exits)
    assert doc["status"] == FAILED and doc["reason"] == "killed"
    assert "exited with code 3" in doc["error"]
    # their Sacred records are closed, not left RUNNING forever
    for run_id in (segv, exits):
        record = raw.runs.find_one({"_id": q.get(run_id)["sacred_id"]})
        assert record is not None and record["status"] == FAILED
    assert q.get(good)["status"] == COMPLETED


def test_unusable_metrics_fail_with_a_clear_message(q, tmp_path, mongo_uri, db_name):
    (nan,) = q.submit("toy", {**LINEAR, "behaviour": "nan"})
    (text,) = q.submit("toy", {**LINEAR, "behaviour": "string"})
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    doc = q.get(nan)
    assert doc["status"] == FAILED and doc["reason"] == "error"
    assert "MetricError: metric 'score' is nan" in doc["error"]
    assert "cannot be compared" in doc["error"]
    doc = q.get(text)
    assert doc["status"] == FAILED
    assert "MetricError: metric 'score' is str 'not a number', not a number" in doc["error"]


def test_timeout_and_cancelling_a_running_run(q, raw, tmp_path, mongo_uri, db_name):
    sleepy = {**LINEAR, "behaviour": "sleep", "duration": 60.0}
    (slow,) = q.submit("toy", sleepy, max_runtime=0.3)
    (doomed,) = q.submit("toy", sleepy, force=True)
    answers: list[dict] = []

    def cancel_once_running():
        wait_for(lambda: q.get(doomed)["status"] == RUNNING, 30, "the run to start", 0.01)
        answers.append(q.cancel(doomed))

    thread = threading.Thread(target=cancel_once_running, daemon=True)
    thread.start()
    # Neither run sleeps its 60 s: the worker ends both (the statuses below; how fast:
    # benchmarks/latency.py). The test's timeout only bounds a broken worker.
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2, heartbeat=0.1, lease=1.0) == 2
    thread.join(10)
    assert answers == [{"cancelled": 0, "stopping": 1}]
    doc = q.get(slow)
    assert doc["status"] == "TIMEOUT" and doc["reason"] == "timeout"
    assert "max_runtime=0.3" in doc["error"]
    assert raw.runs.find_one({"_id": doc["sacred_id"]})["status"] == "TIMEOUT"
    doc = q.get(doomed)
    assert doc["status"] == CANCELLED and doc["reason"] == "cancelled"
    assert raw.runs.find_one({"_id": doc["sacred_id"]})["status"] == "INTERRUPTED"


# ------------------------------------------------------------------ Sacred records
def test_every_run_has_a_complete_sacred_record(q, raw, tmp_path, mongo_uri, db_name):
    ids = q.submit("toy", {"model": {"className": "Linear", "lr": 1}, "epochs": 3}, seeds=2)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    source_ids = set()
    for doc in docs_of(q, ids):
        record = raw.runs.find_one({"_id": doc["sacred_id"]})
        assert record is not None, f"no Sacred record for run {doc['_id']}"
        assert record["experiment"]["name"] == "toy"
        assert record["status"] == COMPLETED
        assert record["config"] == {**doc["config"], "seed": doc["seed"]}
        assert record["config"]["model"] == {"className": "Linear", "lr": 1.0, "layers": [8]}
        assert "training Linear on toy" in record["captured_out"]
        assert record["result"] == doc["metrics"]["score"]  # the main metric
        assert record["info"]["metrics_values"] == doc["metrics"]
        assert record["host"]["hostname"] == socket.gethostname()
        sources = dict(record["experiment"]["sources"])
        assert "scenarios.py" in sources
        source_ids.add(sources["scenarios.py"])
        assert record["meta"]["hse"]["run_id"] == doc["_id"]
        assert record["meta"]["hse"]["scenario"] == {"className": "ToyScenario", "size": 20}
        assert record["stop_time"] >= record["start_time"]
        (loss,) = list(raw.metrics.find({"run_id": doc["sacred_id"], "name": "loss"}))
        assert loss["steps"] == [0, 1, 2]
        assert loss["values"] == pytest.approx([1.0, 0.5, 1 / 3])
    # the source file is stored once, not once per run, and is the Study's code
    (source_id,) = source_ids
    assert gridfs.GridFS(raw).get(source_id).read() == (STUDY / "scenarios.py").read_bytes()


def test_a_worker_stores_the_study_s_sources_before_its_first_run(q, raw, tmp_path, mongo_uri,
                                                                   db_name):
    # Before its first claim (the uploads slowed the first runs beside them), and each
    # record then names the file stored then.
    assert run_worker(mongo_uri, db_name, tmp_path, idle_exit=0.3) == 0
    path = str((STUDY / "scenarios.py").resolve())
    (stored,) = [doc["file_id"] for doc in raw.hse_sources.find({})
                 if doc["_id"].endswith(":" + path)]
    assert gridfs.GridFS(raw).get(stored).read() == (STUDY / "scenarios.py").read_bytes()
    ids = q.submit("noop", {}, seeds=2)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    for doc in docs_of(q, ids):
        record = raw.runs.find_one({"_id": doc["sacred_id"]})
        assert dict(record["experiment"]["sources"])["scenarios.py"] == stored


def test_a_worker_reserves_sacred_ids_before_its_first_claim(q, raw, tmp_path, mongo_uri,
                                                             db_name):
    # Its first run then waits for no round trip to the counter, which came beside the
    # submits that woke the worker; the runs take the ids reserved then.
    from hyperspace_explorer.worker import SACRED_ID_BLOCK

    assert run_worker(mongo_uri, db_name, tmp_path, idle_exit=0.3) == 0
    assert raw.hse_counters.find_one({"_id": "sacred_run_id"})["seq"] == SACRED_ID_BLOCK
    ids = q.submit("noop", {}, seeds=2)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2) == 2
    assert sorted(d["sacred_id"] for d in docs_of(q, ids)) == [SACRED_ID_BLOCK + 1,
                                                               SACRED_ID_BLOCK + 2]
    assert raw.hse_counters.find_one({"_id": "sacred_run_id"})["seq"] == 2 * SACRED_ID_BLOCK


def test_sacred_ids_are_unique_integers_beyond_ten(q, raw, tmp_path, mongo_uri, db_name):
    # The embedded server sorts integer _ids as text ("10" < "9"): Sacred's own
    # "max id + 1" would reuse ids after run 10 and overwrite records.
    first = q.submit("noop", {}, seeds=12)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=12) == 12
    second = q.submit("noop", {}, seeds=[50, 51, 52])
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3  # a new worker
    docs = docs_of(q, first + second)
    sacred_ids = [d["sacred_id"] for d in docs]
    assert all(type(i) is int for i in sacred_ids)
    assert len(set(sacred_ids)) == 15
    assert sorted(sacred_ids[:12]) == list(range(1, 13))
    records = {r["_id"]: r for r in raw.runs.find({})}
    assert set(records) == set(sacred_ids) and len(records) == 15
    for doc in docs:  # each record belongs to its own run: none was overwritten
        record = records[doc["sacred_id"]]
        assert record["meta"]["hse"]["run_id"] == doc["_id"]
        assert record["config"]["seed"] == doc["seed"] and record["status"] == COMPLETED


# ------------------------------------------------------------------ the run's process
def _run_pid(doc) -> int:
    """The pid a "block" run printed in its log."""
    text = Path(doc["log_file"]).read_text()
    return int(text.split(" points in pid ")[1].split()[0])


def test_a_child_runs_run_after_run_until_one_leaves_a_process_behind(q, raw, tmp_path,
                                                                       mongo_uri, db_name):
    block = {**LINEAR, "behaviour": "block", "epochs": 1}
    first = q.submit("toy", {**block, "options": {"first": 1}})
    second = q.submit("toy", {**block, "options": {"second": 2}})
    spawns = q.submit("toy", {**LINEAR, "behaviour": "spawn"})
    after = q.submit("toy", block)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=4) == 4
    docs = docs_of(q, first + second + spawns + after)
    assert [d["status"] for d in docs] == [COMPLETED] * 4
    pids = [_run_pid(docs[0]), _run_pid(docs[1]), _run_pid(docs[3])]
    assert pids[0] == pids[1], "the second run should reuse the first run's process"
    assert pids[2] != pids[1], "a run that left a process behind retires its process"
    # the process it left behind ended with its run
    helper = int(Path(docs[2]["log_file"]).read_text().split("spawned pid ")[1].split()[0])
    wait_for(lambda: helpers.process_gone(helper), 30, f"the helper process {helper} to end")
    # nothing of the first run's config reaches the second run's Sacred record
    record = raw.runs.find_one({"_id": docs[1]["sacred_id"]})
    assert record["config"]["options"] == docs[1]["config"]["options"]
    assert "first" not in record["config"]["options"]
    assert record["config"]["seed"] == docs[1]["seed"]


def test_a_spare_runner_creates_a_sacred_run_of_each_task_and_keeps_nothing_of_it(tmp_path):
    # While a spare runner waits for its first run it warms Sacred's run creation
    # (`child._warm`): the Experiment its runs then use is as it was, and its
    # experiment info, read once by the worker, is handed out as a fresh dict each time.
    from hyperspace_explorer.execution.child import _warm
    from hyperspace_explorer.execution.supervisor import Executor
    from hyperspace_explorer.study import load_scenarios

    task = load_task(TASKS, "toy")
    executor = Executor(None, load_scenarios(STUDY), tmp_path, 5.0, 60.0,
                        interrupt=lambda: None, on_beat=lambda: None)
    ex = executor.experiment_for(task)
    before = list(ex.configurations), list(ex.captured_functions)
    _warm({"toy": ex})
    assert (list(ex.configurations), list(ex.captured_functions)) == before
    info = ex.get_experiment_info()
    assert info["name"] == "toy" and dict(info["sources"])["scenarios.py"]
    info["sources"] = []  # what Sacred's observers do to their copy
    assert ex.get_experiment_info()["sources"] != []


def test_a_run_that_leaves_a_thread_behind_retires_its_process(q, tmp_path, mongo_uri,
                                                               db_name):
    block = {**LINEAR, "behaviour": "block", "epochs": 1}
    first = q.submit("toy", block)
    threads = q.submit("toy", {**LINEAR, "behaviour": "thread"})
    after = q.submit("toy", block, seeds=[1])
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    docs = docs_of(q, first + threads + after)
    assert [d["status"] for d in docs] == [COMPLETED] * 3
    left = int(Path(docs[1]["log_file"]).read_text().split("thread in pid ")[1].split()[0])
    # the child's own heartbeat thread does not count: the first process ran the second run
    assert _run_pid(docs[0]) == left
    assert _run_pid(docs[2]) != left, "a run that left a thread behind retires its process"


@pytest.mark.parametrize("per_process", [1, 2])
def test_runs_per_process_bounds_the_runs_of_one_child(q, tmp_path, mongo_uri, db_name,
                                                       per_process):
    ids = q.submit("toy", {**LINEAR, "behaviour": "block", "epochs": 1}, seeds=4)
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=4,
                      runs_per_process=per_process) == 4
    docs = sorted(docs_of(q, ids), key=lambda d: d["started_at"])
    pids = [_run_pid(d) for d in docs]
    if per_process == 1:
        assert len(set(pids)) == 4
    else:
        assert pids[0] == pids[1] and pids[2] == pids[3] and pids[1] != pids[2]


def test_runs_per_process_must_be_a_positive_integer(mongo_uri, db_name, tmp_path):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(HSEError, match="--runs-per-process must be a positive integer"):
            run_worker(mongo_uri, db_name, tmp_path, max_runs=1, runs_per_process=bad)


@pytest.mark.parametrize("options, message", [
    ({"heartbeat": float("nan")}, "--heartbeat must be a positive, finite number of seconds, "
                                  "got nan"),
    ({"heartbeat": 0}, "--heartbeat must be a positive, finite number of seconds, got 0"),
    ({"lease": float("inf")}, "--lease must be a positive, finite number of seconds, got inf"),
    ({"interval": -1}, "--interval must be a positive, finite number of seconds, got -1"),
    ({"idle_exit": -1.0}, "--idle-exit must be a finite number of seconds, 0 or more, got -1.0"),
    ({"max_runs": 0}, "--max-runs must be a positive integer, got 0"),
    ({"concurrency": 1025}, "--concurrency must be an integer from 1 to 1024, got 1025"),
    ({"max_runs": 2**63}, "--max-runs must be an integer from 1 to 2**63 - 1, got 9223372036854"),
    ({"gpus": ["a"]}, "--gpus must list distinct GPU ids: indices (0,1) or UUIDs"),
    ({"gpus": ["-1"]}, "--gpus must list distinct GPU ids"),
    ({"gpus": ["0", " 0"]}, "--gpus must list distinct GPU ids"),
    ({"gpus": "0,0"}, "--gpus must list distinct GPU ids"),
    ({"tags": "big-mem,"}, "--tags must be names of 1 to 100 characters"),
    ({"tags": ["big,mem"]}, "--tags must be names of 1 to 100 characters, without ','"),
])
def test_bad_worker_options_are_refused_naming_them_before_any_claim(
        q, raw, tmp_path, mongo_uri, db_name, options, message):
    (run_id,) = q.submit("toy", LINEAR)
    with pytest.raises(HSEError) as err:
        run_worker(mongo_uri, db_name, tmp_path, **{"max_runs": 1, **options})
    assert str(err.value).startswith(message)
    assert q.get(run_id)["status"] == "QUEUED" and raw["hse_workers"].count_documents({}) == 0


def test_gpus_and_tags_given_as_one_string_are_split_as_on_the_command_line(
        mongo_uri, db_name, tmp_path):
    from hyperspace_explorer.worker import Worker

    worker = Worker(helpers.TASKS, db_name, mongo_uri, study_dir=helpers.STUDY,
                    log_dir=tmp_path, gpus="0,1", tags="big-mem, gpu")
    try:
        assert worker.gpus == ["0", "1"] and worker.tags == {"big-mem", "gpu"}
    finally:
        worker.store.close()


def test_a_run_claimed_ahead_by_a_worker_that_died_goes_back_without_using_an_attempt(
        q, raw, tmp_path, mongo_uri, db_name):
    (never, started) = [q.submit("toy", LINEAR, seeds=[s], max_attempts=1)[0] for s in (1, 2)]
    # a worker claims both ahead of need, starts the second, dies: leases already expired
    claimed = [q.store.claim(db_name, ["toy"], "dead:1:w", -1.0, ahead=True) for _ in range(2)]
    assert [d["_id"] for d in claimed] == [never, started]
    assert all(d["ahead"] and d["attempt"] == 1 for d in claimed)
    raw.runs.insert_one({"_id": 99, "status": "RUNNING",
                         "meta": {"hse": {"run_id": started, "token": claimed[1]["token"]}}})
    assert not q.store.attempt_started(never, claimed[0]["token"])
    assert q.store.attempt_started(started, claimed[1]["token"])
    assert recover_expired(q.store) == 2
    doc = q.get(never)  # never started: back as it was, its only attempt still to come
    assert doc["status"] == QUEUED and doc["attempt"] == 0 and "ahead" not in doc
    doc = q.get(started)  # started: an attempt like any other, and its last
    assert doc["status"] == FAILED and doc["reason"] == "worker lost"
    assert raw.runs.find_one({"_id": 99})["status"] == FAILED  # closed as lost
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=1) == 1
    doc = q.get(never)
    assert doc["status"] == COMPLETED and doc["attempt"] == 1 and "ahead" not in doc


# ------------------------------------------------------------------ what a worker refuses
def queue_doc(study: str, task: str, config: dict, *, scenario: dict | None = None,
              seed: int = 0) -> dict:
    """A queue document shaped like the ones RunQueue._enqueue + Storage.enqueue write."""
    spec = load_task(TASKS, task).to_doc() if task in ("toy", "noop") else \
        {"name": task, "scenario": {"className": "NoopScenario"}, "seed": 0,
         "metric": "score", "direction": "maximize", "max_runtime": None, "description": ""}
    if scenario is not None:
        spec["scenario"] = scenario
    return {"_id": new_run_id(), "study": study, "task": task, "task_spec": spec,
            "config": config, "seed": seed, "priority": 0, "max_attempts": 3,
            "max_runtime": None, "queued_at": time.time(), "submitted_from": "test",
            "order": time.time_ns(), "status": QUEUED, "attempt": 0}


def test_invalid_queue_docs_fail_as_invalid_and_touch_nothing_else(raw, tmp_path, mongo_uri,
                                                                   db_name):
    study = db_name  # a worker's default study is its database name
    invalid = {
        "unregistered": queue_doc(study, "toy", LINEAR, scenario={"className": "os"}),
        "not_a_scenario": queue_doc(study, "toy", LINEAR, scenario={"className": "Linear"}),
        "bad_param": queue_doc(study, "toy", LINEAR,
                               scenario={"className": "ToyScenario", "sise": 3}),
        "unknown_key": queue_doc(study, "toy", {"model": {"className": "Linear", "lrr": 1}}),
        "wrong_model": queue_doc(study, "toy", {"model": {"className": "ToyScenario"}}),
        "seed_in_config": queue_doc(study, "noop", {"seed": 3}),
    }
    valid = queue_doc(study, "toy", LINEAR)
    others = [queue_doc("another_study", "toy", LINEAR),
              queue_doc(study, "not_a_task_here", {})]
    raw.hse_queue.insert_many(list(invalid.values()) + [valid] + others)
    before = {d["_id"]: d for d in raw.hse_queue.find({"_id": {"$in": [o["_id"] for o in others]}})}

    assert run_worker(mongo_uri, db_name, tmp_path, idle_exit=0.3) == 1  # invalid: not executed
    docs = {d["_id"]: d for d in list(raw.hse_queue.find({})) + list(raw.hse_done.find({}))}
    expect = {"unregistered": "unknown className 'os'",
              "not_a_scenario": "'Linear' is not a Scenario",
              "bad_param": "Scenario.sise",
              "unknown_key": "config.model.lrr",
              "wrong_model": "'ToyScenario' is not a Model",
              "seed_in_config": "config.seed"}
    for name, doc in invalid.items():
        stored = docs[doc["_id"]]
        assert stored["status"] == FAILED and stored["reason"] == "invalid", name
        assert expect[name] in stored["error"], (name, stored["error"])
        assert stored.get("sacred_id") is None  # never executed
    assert docs[valid["_id"]]["status"] == COMPLETED
    for run_id, doc in before.items():
        assert docs[run_id] == doc, "a document the worker must not take was changed"
    assert raw.runs.count_documents({}) == 1  # only the valid run has a Sacred record


def test_a_worker_only_takes_runs_of_its_study(mongo_uri, db_name, tmp_path):
    queue_a = RunQueue(mongo_uri, db_name, TASKS, study="A", study_dir=STUDY)
    queue_b = RunQueue(mongo_uri, db_name, TASKS, study="B", study_dir=STUDY)
    try:
        ids_b = queue_b.submit("noop", {}, seeds=2, priority=100)
        ids_a = queue_a.submit("noop", {}, seeds=2)
        assert run_worker(mongo_uri, db_name, tmp_path, study="A", idle_exit=0.3) == 2
        assert [queue_a.get(i)["status"] for i in ids_a] == [COMPLETED, COMPLETED]
        for doc in (queue_b.get(i) for i in ids_b):
            assert doc["status"] == QUEUED and doc["attempt"] == 0 and "worker" not in doc
        assert queue_a.status()[COMPLETED] == 2 and queue_b.status()[QUEUED] == 2
        assert queue_b.status()[COMPLETED] == 0
    finally:
        queue_a.store.close()
        queue_b.store.close()


# ------------------------------------------------------------------ seeds
def test_same_seed_same_draw_different_seed_different_draw(q, tmp_path, mongo_uri, db_name):
    (a,) = q.submit("toy", LINEAR, seeds=[7])
    (b,) = q.submit("toy", LINEAR, seeds=[7], force=True)
    (c,) = q.submit("toy", LINEAR, seeds=[8])
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=3) == 3
    draw = {i: q.get(i)["metrics"]["draw"] for i in (a, b, c)}
    assert draw[a] == draw[b]
    assert draw[a] != draw[c]
    # the run's NumPy generator was seeded with the run's seed
    assert draw[a] == np.random.RandomState(7).rand()
    assert draw[c] == np.random.RandomState(8).rand()


# ------------------------------------------------------------------ many worker processes
def test_four_worker_processes_execute_200_runs_exactly_once(q, raw, tmp_path, mongo_uri,
                                                             db_name):
    ids = q.submit("noop", {}, seeds=200)
    logs = [tmp_path / f"worker{k}.log" for k in range(4)]
    procs = []
    for log in logs:
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db_name,
                 "--mongo-uri", mongo_uri, "--study-dir", str(STUDY), "--idle-exit", "2",
                 "--interval", "0.1"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
    try:
        for proc in procs:
            proc.wait(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], output

    docs = docs_of(q, ids)
    bad = [(d["_id"], d["status"], d.get("attempt"), d.get("error")) for d in docs
           if d["status"] != COMPLETED or d["attempt"] != 1]
    assert not bad, f"runs not completed exactly once: {bad[:5]}\n{output}"
    sacred_ids = {d["sacred_id"] for d in docs}
    assert len(sacred_ids) == 200
    assert raw.runs.count_documents({"experiment.name": "noop", "status": COMPLETED}) == 200
    assert raw.runs.count_documents({"experiment.name": "noop"}) == 200
    assert {r["_id"] for r in raw.runs.find({}, {"_id": 1})} == sacred_ids
    workers = {d["worker"] for d in docs}
    assert len(workers) >= 2, "the runs should have been shared between workers"
    assert q.status() == {**{s: 0 for s in q.status()}, COMPLETED: 200}
    assert raw.hse_workers.count_documents({}) == 0


# ------------------------------------------------------------------ responsiveness
def test_an_idle_worker_picks_up_a_new_run_within_half_a_second(q, tmp_path, mongo_uri,
                                                                db_name):
    (first,) = q.submit("noop", {})
    second: list[str] = []

    def submit_once_the_queue_ran_dry():
        wait_for(lambda: q.get(first)["status"] == COMPLETED, 30, "the first run", 0.01)
        second.extend(q.submit("noop", {}, seeds=[1]))

    thread = threading.Thread(target=submit_once_the_queue_ran_dry, daemon=True)
    thread.start()
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=2, idle_exit=10) == 2
    thread.join(10)
    doc = q.get(second[0])
    latency = doc["started_at"] - doc["queued_at"]
    assert latency < 0.5, (
        f"BUG (execution.Executor.release_spare/_discard): a run submitted to an idle worker "
        f"(interval 0.05s) waited {latency:.2f}s to start. When the queue runs dry the worker "
        f"discards its forked-ahead child by closing its end of the pipe and joining for 1s, "
        f"but the child inherited that same pipe end at fork and never sees EOF, so every "
        f"discard blocks the worker for the full second and then SIGKILLs the child")


class QueueWrites(monitoring.CommandListener):
    """A pymongo command listener (for clients created once it is registered: the
    worker's) that notes, while `active`, the claims and finishes of runs and the polls
    of the queue, in the order the worker sent them."""

    def __init__(self):
        self.active, self.seen = False, []

    def started(self, event):
        if not self.active:
            return
        collection = event.command.get(event.command_name)
        if collection == "hse_ready_bounds" and event.command_name == "find":
            self.seen.append(("poll", None))  # the first read of every claim
        elif collection != "hse_queue":
            return
        elif event.command_name == "findAndModify":  # a claim (or a lease renewal)
            self.seen.append(("claim", event.command["query"]["_id"]))
        elif event.command_name == "update":
            for update in event.command["updates"]:
                if update["u"].get("$set", {}).get("status") == COMPLETED.value:
                    self.seen.append(("finish", update["q"]["_id"]))

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def watched_worker(mongo_uri: str, db_name: str, tmp_path: Path,
                   **options) -> tuple[int, list]:
    """How many runs an in-process worker (`run_worker` with `options`) executed, and
    what it claimed, finished and polled, in order."""
    listener = QueueWrites()
    monitoring.register(listener)
    listener.active = True
    try:
        executed = run_worker(mongo_uri, db_name, tmp_path, **options)
    finally:
        listener.active = False
    return executed, listener.seen


def test_a_runs_outcome_is_written_after_the_next_claim_when_none_was_claimed_ahead(
        q, raw, tmp_path, mongo_uri, db_name):
    """The first run of a worker has no run claimed ahead: the claim of the next one is
    on the path between the two runs, the first one's outcome writes are not, so they
    wait for that claim instead of taking the database's lock before it. Nothing is
    lost by waiting: both outcomes are written before the worker exits."""
    first, second = q.submit("noop", {}, seeds=2, force=True)
    executed, seen = watched_worker(mongo_uri, db_name, tmp_path, max_runs=2)
    assert executed == 2
    assert [e for e in seen if e[0] != "poll"] == [
        ("claim", first), ("claim", second), ("finish", first), ("finish", second)]
    assert [q.get(i)["status"] for i in (first, second)] == [COMPLETED, COMPLETED]
    assert raw.runs.count_documents({"status": "COMPLETED"}) == 2


def test_a_runs_outcome_is_written_at_once_when_the_claim_ahead_found_the_queue_empty(
        q, raw, tmp_path, mongo_uri, db_name):
    """After a short run, the next one is claimed during the current one. When that
    claim found nothing, the run's outcome is written before the slot's next claim,
    not after it (which would most likely find nothing too, and delay the writes)."""
    first, second = q.submit("noop", {}, seeds=2, force=True)
    _, seen = watched_worker(mongo_uri, db_name, tmp_path, idle_exit=0)
    assert [e for e in seen if e[0] != "poll"] == [
        ("claim", first), ("claim", second), ("finish", first), ("finish", second)]
    # the claim during the second run found none: its outcome went before the next poll
    assert seen[-2:] == [("finish", second), ("poll", None)]
    assert [q.get(i)["status"] for i in (first, second)] == [COMPLETED, COMPLETED]
    assert raw.runs.count_documents({"status": "COMPLETED"}) == 2
