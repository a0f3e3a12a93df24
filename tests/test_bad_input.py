"""Bad input gets a clear error naming the bad part, and nothing else is touched."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from helpers import STUDY, TASKS, start_worker
from hyperspace_explorer.errors import ConfigError, StoreError, TaskError
from hyperspace_explorer.execution import TOO_LARGE
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.store import Store


def everything(q):
    """Every document of the Study's database, to check that nothing changed."""
    return {name: sorted(map(repr, q.store.db[name].find()))
            for name in q.store.db.list_collection_names()}


def conf(**kw):
    return {"model": {"className": "Linear"}, **kw}


@pytest.mark.parametrize("bad, problem, where", [
    (conf(epochz=3), "unknown key 'epochz'", "config.epochz"),
    (conf(epochs="three"), "wrong type: expected int", "config.epochs"),
    ({"model": {"className": "Lineer"}}, "unknown className 'Lineer'", "config.model.className"),
    ({"epochs": 2}, "missing required value", "config.model"),
])
def test_invalid_config_rejected_at_submit(queue, bad, problem, where):
    good = queue.submit("toy", conf())
    before = everything(queue)
    with pytest.raises(ConfigError) as err:
        queue.submit_grid("toy", bad, {"noise": [0.0, 0.1]}, seeds=2)
    assert problem in str(err.value) and str(err.value).startswith(where)
    if "Lineer" in problem:
        assert "Linear" in str(err.value) and "Forest" in str(err.value)  # valid choices
    assert everything(queue) == before
    assert queue.get(good[0])["status"] == "QUEUED"


def test_broken_task_file_names_file_and_line(queue, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(TASKS, tasks)
    (tasks / "broken.json").write_text('{\n  "Scenario": {"className": "ToyScenario"},\n  "seed": 1,,\n}\n')
    q = RunQueue(queue.store.uri, queue.store.db_name, tasks, study_dir=STUDY)
    before = everything(q)
    with pytest.raises(TaskError, match=r"broken\.json:3:"):
        q.submit("broken", conf())
    with pytest.raises(TaskError, match="unknown task 'nope'.*known tasks: .*toy"):
        q.submit("nope", conf())
    (tasks / "badscenario.json").write_text(json.dumps({"Scenario": {"className": "os.system"}}))
    with pytest.raises(ConfigError, match="unknown className 'os.system'"):
        q.submit("badscenario", conf())
    assert everything(q) == before


def run_all(q, mongo_uri, db_name):
    worker = start_worker(mongo_uri, db_name, "--idle-exit", "1", "--interval", "0.1")
    assert worker.wait(120) == 0


@pytest.mark.parametrize("behaviour, reason, message", [
    ("raise", "error", "RuntimeError: boom from user code"),
    ("nan", "error", "metric 'score' is nan"),
    ("string", "error", "metric 'score' is str 'not a number', not a number"),
    ("segfault", "killed", "killed by signal SIGSEGV"),
    ("exit", "killed", "exited with code 3"),
    ("huge", "error", TOO_LARGE),
])
def test_failing_run_is_reported_and_isolated(queue, mongo_uri, db_name, behaviour, reason,
                                               message):
    (bad,) = queue.submit("toy", conf(behaviour=behaviour), priority=1)
    (good,) = queue.submit("toy", conf())
    run_all(queue, mongo_uri, db_name)
    doc = queue.get(bad)
    assert (doc["status"], doc["reason"]) == ("FAILED", reason)
    assert message in doc["error"]
    assert queue.get(good)["status"] == "COMPLETED"  # the worker went on
    (record,) = queue.store.runs.find({"meta.hse.run_id": bad})
    assert record["status"] == "FAILED"  # the Sacred record is kept, not lost
    assert queue.status()["COMPLETED"] == 1 and queue.status()["FAILED"] == 1


def test_unregistered_class_in_stored_document_is_refused(queue, mongo_uri, db_name):
    """A document written by something else can only name registered Configurables."""
    (good,) = queue.submit("toy", conf())
    doc = queue.get(good)
    evil = {k: v for k, v in doc.items() if k not in ("_id", "order")}
    evil["task_spec"] = {**evil["task_spec"], "scenario": {"className": "Popen"}}
    queue.store.enqueue([evil])
    evil2 = {**{k: v for k, v in doc.items() if k not in ("_id", "order")},
             "config": {"model": {"className": "Scenario"}}}
    queue.store.enqueue([evil2])
    run_all(queue, mongo_uri, db_name)
    failed = [d for d in queue.store.find_runs({"status": "FAILED"})]
    assert len(failed) == 2 and {d["reason"] for d in failed} == {"invalid"}
    assert any("unknown className 'Popen'" in d["error"] for d in failed)
    assert any("'Scenario' is not a Model" in d["error"] for d in failed)
    assert queue.get(good)["status"] == "COMPLETED"


def test_fifty_megabytes_of_output_keeps_the_tail(queue, mongo_uri, db_name):
    (run_id,) = queue.submit("toy", conf(behaviour="print", duration=500_000))  # 50 MB
    run_all(queue, mongo_uri, db_name)
    doc = queue.get(run_id)
    assert doc["status"] == "COMPLETED"
    record = queue.store.sacred_run(doc["sacred_id"])
    out = record["captured_out"]
    assert out.startswith("[hyperspace_explorer: output longer than")
    assert len(out) <= (1 << 20) + 200
    assert out.rstrip().endswith("training Linear on toy")


def test_unreachable_mongo_uri_fails_fast_without_credentials(tmp_path):
    uri = "mongodb://alice:s3cret-pw@127.0.0.1:1/?serverSelectionTimeoutMS=1000"
    with pytest.raises(StoreError) as err:  # how fast: benchmarks/latency.py
        Store.connect(uri, "whatever", timeout_s=2)
    assert "s3cret" not in str(err.value) and "cannot reach MongoDB" in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), "db",
         "--mongo-uri", uri, "--study-dir", str(STUDY)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach MongoDB" in proc.stderr and "s3cret" not in proc.stderr + proc.stdout


def test_malformed_mongo_uri_is_a_clear_error():
    with pytest.raises(StoreError, match="invalid MongoDB URI") as err:
        Store("http://user:pw-secret@localhost", "db")
    assert "pw-secret" not in str(err.value)
