"""Editing the Study while workers run: the daily loop "edit code, submit, compare".

Each test works on a copy of the test Study, submits from a separate process (one
Study per process: this one already imported tests/study) and runs real workers.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import STUDY, start_worker, wait_for

from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.study import source_digest

FAST = ("--interval", "0.1", "--heartbeat", "0.4", "--lease", "2")
EDIT = '''

@dataclass
class Boosted(Model):
    """A component added while workers run."""

    rounds: int = 3


@dataclass
class ExtendedConfig(RunConfig):
    extra: int = 7  # a new parameter, with the default that keeps old runs comparable


ToyScenario.config_class = ExtendedConfig
'''


def copy_study(where: Path) -> Path:
    shutil.copytree(STUDY, where, ignore=shutil.ignore_patterns("__pycache__"))
    return where


def edit(study: Path) -> None:
    with open(study / "scenarios.py", "a") as f:
        f.write(EDIT)


def submit_from(study: Path, uri: str, db: str, conf: dict) -> str:
    """Submit as a user would from a notebook on that Study (validated there)."""
    code = ("import sys, json\nfrom hyperspace_explorer import RunQueue\n"
            f"q = RunQueue({uri!r}, {db!r}, {str(study / 'tasks')!r}, study_dir={str(study)!r})\n"
            f"print(q.submit('toy', json.loads({__import__('json').dumps(conf)!r}))[0])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=study)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture
def reader(mongo_uri, db_name):
    with RunQueue(mongo_uri, db_name) as q:
        yield q


def test_a_worker_picks_up_edited_study_code_between_runs(tmp_path, mongo_uri, db_name,
                                                          procs, reader):
    study = copy_study(tmp_path / "study")
    log = tmp_path / "worker.log"
    procs.append(start_worker(mongo_uri, db_name, *FAST, log=log, study=study))
    first = submit_from(study, mongo_uri, db_name, {"model": {"className": "Linear"}})
    wait_for(lambda: reader.get(first)["status"] == "COMPLETED", 60, "the first run")
    edit(study)
    second = submit_from(study, mongo_uri, db_name,
                         {"model": {"className": "Boosted"}, "extra": 9})
    wait_for(lambda: reader.get(second)["status"] in ("COMPLETED", "FAILED"), 60,
             "the run that needs the new code")
    doc = reader.get(second)
    assert doc["status"] == "COMPLETED", doc.get("error")
    assert doc["config"]["extra"] == 9 and doc["config"]["model"] == {
        "className": "Boosted", "rounds": 3}
    assert doc["validated_with"] == source_digest(study)
    text = log.read_text()
    assert "the Study's sources changed (scenarios.py)" in text
    assert "re-executing the worker" in text


def test_a_worker_with_older_code_leaves_the_run_to_one_that_can_run_it(
        tmp_path, mongo_uri, db_name, procs, reader):
    old, new = copy_study(tmp_path / "old"), copy_study(tmp_path / "new")
    edit(new)
    procs.append(start_worker(mongo_uri, db_name, *FAST, log=tmp_path / "old.log", study=old))
    run_id = submit_from(new, mongo_uri, db_name, {"model": {"className": "Linear"},
                                                   "extra": 9})
    rejection = wait_for(lambda: reader.get(run_id).get("last_rejection"), 60,
                         "the old worker to refuse the run")
    doc = reader.get(run_id)
    assert doc["status"] == "QUEUED" and doc["attempt"] == 0, "left in the queue, not failed"
    assert "unknown key 'extra'" in rejection["error"]
    assert rejection["code_digest"] == source_digest(old) != doc["validated_with"]
    (worker,) = wait_for(lambda: [w for w in reader.store.list_workers()
                                  if w.get("cannot_run")], 30, "the old worker's note")
    assert "unknown key 'extra'" in worker["last_rejection"]
    procs.append(start_worker(mongo_uri, db_name, *FAST, log=tmp_path / "new.log", study=new))
    wait_for(lambda: reader.get(run_id)["status"] == "COMPLETED", 60,
             "a worker with the new code to run it")
    assert reader.get(run_id)["attempt"] == 1
    assert procs[0].poll() is None, "the old worker keeps serving the queue"


def test_a_config_refused_by_the_code_it_was_validated_with_is_invalid(
        tmp_path, mongo_uri, db_name, procs, reader):
    """Same code on both sides: a refusal is final (FAILED, invalid), not a hand-off."""
    study = copy_study(tmp_path / "study")
    run_id = submit_from(study, mongo_uri, db_name, {"model": {"className": "Linear"}})
    raw_conf = {"model": {"className": "Linear"}, "epochs": "three"}
    reader.store.enqueue([{**{k: v for k, v in reader.get(run_id).items()
                              if k not in ("_id", "order")}, "config": raw_conf}])
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1", study=study)
    procs.append(worker)
    assert worker.wait(120) == 0
    (bad,) = [d for d in reader.store.find_runs(reader.runs(status="FAILED"))]
    assert bad["reason"] == "invalid" and "config.epochs: wrong type" in bad["error"]
