"""Bad input gets a clear error naming the bad part, and nothing else is touched."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import STUDY, TASKS, raw_db, start_worker

from hyperspace_explorer.errors import ConfigError, HSEError, StoreError, TaskError
from hyperspace_explorer.execution import TOO_LARGE
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.storage import connect
from hyperspace_explorer.tuning import Space, Tuner
from hyperspace_explorer.tuning.space import Float


def everything(q):
    """Every document of the Study's database, to check that nothing changed."""
    return {name: sorted(map(repr, raw_db(q.store)[name].find()))
            for name in raw_db(q.store).list_collection_names()}


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
    (record,) = raw_db(queue.store).runs.find({"meta.hse.run_id": bad})
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
    failed = list(queue.store.find_runs(queue.runs(status="FAILED")))
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
    log = Path(doc["log_file"])  # the run's log keeps a bounded tail too
    assert log.stat().st_size <= (1 << 20) + 200
    assert log.read_text().startswith("[hyperspace_explorer: output longer than")
    assert "training Linear on toy" in log.read_text()


@pytest.mark.parametrize("field, value, message", [
    ("seed", None, "field 'seed' is missing"),
    ("seed", 2**32, "field 'seed' must be an integer from 0 to 2**32 - 1 (Sacred seeds NumPy"),
    ("config", "lr=0.1", "field 'config' must be an object (the run config), got str"),
    ("max_runtime", "1h", "field 'max_runtime' must be a positive number of seconds"),
    ("task_spec", ["toy"], "field 'task_spec' must be an object"),
])
def test_malformed_documents_from_other_clients_end_invalid_with_a_message(
        queue, raw, mongo_uri, db_name, field, value, message):
    """Documents written by hand or another client: the run is quarantined (FAILED,
    invalid, the message names the field) and the queue goes on."""
    (good,) = queue.submit("toy", conf())
    bad = {k: v for k, v in queue.get(good).items() if k not in ("_id", "order")}
    if value is None:
        del bad[field]
    else:
        bad[field] = value
    (bad_id,) = queue.store.enqueue([bad])
    run_all(queue, mongo_uri, db_name)
    doc = queue.get(bad_id)
    assert (doc["status"], doc["reason"]) == ("FAILED", "invalid")
    assert message in doc["error"] and "Traceback" not in doc["error"]
    assert queue.get(good)["status"] == "COMPLETED"


def test_unreachable_mongo_uri_fails_fast_without_credentials(tmp_path):
    uri = "mongodb://alice:s3cret-pw@127.0.0.1:1/?serverSelectionTimeoutMS=1000"
    with pytest.raises(StoreError) as err:  # how fast: benchmarks/latency.py
        connect(uri, "whatever", timeout_s=2)
    assert "s3cret" not in str(err.value) and "cannot reach MongoDB" in str(err.value)
    proc = subprocess.run(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), "db",
         "--mongo-uri", uri, "--study-dir", str(STUDY)],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot reach MongoDB" in proc.stderr and "s3cret" not in proc.stderr + proc.stdout


def test_malformed_mongo_uri_is_a_clear_error():
    with pytest.raises(StoreError, match="invalid MongoDB URI") as err:
        connect("http://user:pw-secret@localhost", "db")
    assert "pw-secret" not in str(err.value)


# ------------------------------------------------------------------ configs nothing could store
def nested(levels: int) -> dict:
    """`levels` dicts deep (the run config is level 1), built without recursion."""
    conf: dict = {}
    node = conf
    for _ in range(levels - 1):
        node["a"] = {}
        node = node["a"]
    return conf


DEEP = "config.options" + ".a" * 31 + ": nested deeper than 32 levels of dicts/lists, the limit"
UNSTORABLE = [
    pytest.param(conf(options=nested(200)), DEEP, id="200-levels"),
    pytest.param(conf(options=nested(10_000)), DEEP, id="10000-levels"),
    pytest.param(conf(options={"data": "y" * (15 << 20)}),
                 "config: too large to store: 15.0 MiB (15,728,", id="15MB"),
    pytest.param(conf(options={"lr.decay": 0.5}), "config.options['lr.decay']: key 'lr.decay' "
                 "contains '.', which MongoDB field names cannot contain", id="dot-key"),
    pytest.param(conf(options={"deep": [{"$where": 1}]}), "config.options.deep[0]['$where']: "
                 "key '$where' starts with '$'", id="dollar-key"),
    pytest.param(conf(options={"": 1}), "config.options['']: empty key ''", id="empty-key"),
]


def queued(raw) -> int:
    return raw["hse_queue"].count_documents({})


@pytest.mark.parametrize("bad, message", UNSTORABLE)
def test_unstorable_config_is_refused_at_submit_and_nothing_is_queued(q, raw, bad, message):
    (good,) = q.submit("toy", conf())
    before = everything(q)
    with pytest.raises(ConfigError) as err:
        q.submit("toy", bad, seeds=2)
    assert str(err.value).startswith(message)
    if "too large" in message:
        assert "over the limit of 1 MiB (1,048,576 bytes) per run config" in str(err.value)
        assert "largest part: config.options" in str(err.value)
    with pytest.raises(ConfigError) as err:  # one bad config among good ones: none queued
        q.submit_grid("toy", bad, {"epochs": [1, 2, 3]})
    assert str(err.value).startswith(message)
    assert queued(raw) == 1 and everything(q) == before
    assert q.get(good)["status"] == "QUEUED"


def test_one_unstorable_grid_value_queues_nothing(q, raw):
    with pytest.raises(ConfigError) as err:
        q.submit_grid("toy", conf(), {"options": [{"ok": 1}, {"a.b": 1}], "epochs": [1, 2]})
    assert str(err.value).startswith("config.options['a.b']: key 'a.b' contains '.'")
    with pytest.raises(ConfigError, match="nested deeper than 32 levels"):
        q.submit_grid("toy", conf(), {"options": [{"ok": 1}, nested(10_000)]})
    assert queued(raw) == 0


@pytest.mark.parametrize("whole", [[{"model": {"className": "Linear"}}], "Linear", 3])
def test_a_whole_config_that_is_not_a_dict_is_refused_naming_config(q, raw, whole):
    shown = {list: "list [{'model': {'className': 'Linear'}}]", str: "str 'Linear'", int: "int 3"}[type(whole)]
    for submit in (lambda: q.submit("toy", whole), lambda: q.submit("noop", whole),
                   lambda: q.submit_grid("toy", whole, {"epochs": [1, 2]})):
        with pytest.raises(ConfigError) as err:
            submit()
        assert str(err.value) == f"config: a run config must be a dict of parameters, got {shown}"
    assert queued(raw) == 0


def test_none_like_string_for_an_optional_field_names_none(q, raw):
    with pytest.raises(ConfigError) as err:
        q.submit("toy", {"model": {"className": "Forest", "depth": "none"}})
    assert str(err.value) == ("config.model.depth: wrong type: expected int or None, got str "
                              "'none' (use null in JSON, None in Python)")
    assert queued(raw) == 0
    (ok,) = q.submit("toy", {"model": {"className": "Forest", "depth": None}})
    assert raw["hse_queue"].find_one({"_id": ok})["config"]["model"]["depth"] is None


def test_unstorable_config_in_a_stored_document_fails_as_invalid_on_the_worker(
        queue, mongo_uri, db_name):
    """Documents written by other clients skip submit: the worker refuses them the same way."""
    (good,) = queue.submit("toy", conf())
    template = {k: v for k, v in queue.get(good).items() if k not in ("_id", "order")}
    bad_configs = {"list": [1, 2], "deep": conf(options=nested(40)),
                   "dollar": conf(options={"$x": 1})}
    ids = {name: queue.store.enqueue([{**template, "config": config}])[0]
           for name, config in bad_configs.items()}
    run_all(queue, mongo_uri, db_name)
    errors = {}
    for name, run_id in ids.items():
        doc = queue.get(run_id)
        assert (doc["status"], doc["reason"]) == ("FAILED", "invalid")
        errors[name] = doc["error"]
    assert errors["list"] == ("malformed queue document: field 'config' must be an object "
                              "(the run config), got list [1, 2]")
    assert errors["deep"].startswith(DEEP)
    assert errors["dollar"].startswith("config.options['$x']: key '$x' starts with '$'")
    assert queue.get(good)["status"] == "COMPLETED"


@pytest.mark.parametrize("count", [0, -1, True, 2.0, "3", None])
def test_every_count_is_checked_the_same_way_naming_it(queue, count):
    """max_attempts, limit, n_trials and parallel share one check (as the worker's
    options do): a bool, a float, a string or a number below 1 names the argument,
    and nothing is queued."""
    before = everything(queue)
    calls = {
        "max_attempts": lambda: queue.submit("toy", conf(), max_attempts=count),
        "limit": lambda: queue.recent(limit=count),
        "n_trials": lambda: Tuner(queue, "quadratic", Space({"x": Float(0, 1)}),
                                  n_trials=count, progress=False),
        "parallel": lambda: Tuner(queue, "quadratic", Space({"x": Float(0, 1)}),
                                  n_trials=2, parallel=count, progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(HSEError, match=f"^{name} must be a positive integer, got "
                                           f"{re.escape(repr(count))}$"):
            call()
    assert everything(queue) == before


@pytest.mark.parametrize("options, message", [
    ({"priority": 2**63}, "priority must be an integer from -9223372036854775807 to 2**63 - 1"),
    ({"priority": -2**63}, "priority must be an integer from -9223372036854775807"),
    ({"max_attempts": 2**63}, "max_attempts must be an integer from 1 to 2**63 - 1"),
    ({"gpus": 2**63}, "gpus must be an integer from 0 to 2**63 - 1"),
    ({"max_runtime": float("nan")}, "max_runtime must be a positive, finite number of seconds, "
                                    "got nan"),
    ({"max_runtime": float("inf")}, "max_runtime must be a positive, finite number of seconds"),
    ({"seeds": [2**32]}, "seeds must be ints from 0 to 4294967295 (2**32 - 1: Sacred seeds NumPy"),
    ({"seeds": 2**32}, "seeds=4294967296: from the task's seed 100 that goes past the largest seed"),
    ({"tags": [" gpu"]}, "tags must be names of 1 to 100 characters, without ',' or surrounding"),
    ({"tags": ["x" * 101]}, "tags must be names of 1 to 100 characters, without ',' or "),
])
def test_values_no_run_could_use_are_refused_at_submit_naming_them(q, raw, options, message):
    """Numbers MongoDB cannot store (above 64 bits, NaN, infinity), seeds Sacred cannot
    seed NumPy with, tags no worker can offer: one clear error, and nothing queued."""
    (good,) = q.submit("toy", conf())
    before = everything(q)
    for submit in (lambda: q.submit("toy", conf(), **options),
                   lambda: q.submit_grid("toy", conf(), {"epochs": [1, 2]}, **options)):
        with pytest.raises(HSEError) as err:
            submit()
        assert str(err.value).startswith(message)
    assert everything(q) == before and queued(raw) == 1


@pytest.mark.parametrize("options, message", [
    ({"priority": 2**63}, "priority must be an integer from -9223372036854775807"),
    ({"max_runtime": float("nan")}, "max_runtime must be a positive, finite number of seconds"),
    ({"poll": 0}, "poll must be a positive, finite number of seconds, got 0"),
    ({"seed": 2**32}, "seed must be an integer from 0 to 4294967295, got 4294967296"),
])
def test_a_tuner_refuses_what_its_runs_could_not_use_before_any_trial(queue, options, message):
    before = everything(queue)
    with pytest.raises(HSEError) as err:
        Tuner(queue, "quadratic", Space({"x": Float(0, 1)}), n_trials=2, progress=False,
              **options)
    assert str(err.value).startswith(message)
    assert everything(queue) == before  # no Optuna study, no trial, no run
