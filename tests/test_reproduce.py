"""Reproducing runs: code versions, `rerun`, `run_here` and `backfill`, against the real
test server with real workers (in-process `Worker`, as `helpers.run_worker` starts it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import helpers
import pytest
from helpers import STUDY, TASKS, raw_db

from hyperspace_explorer.cli import main
from hyperspace_explorer.errors import ConfigError, RunNotFound
from hyperspace_explorer.queue import CodeChangedWarning, RunQueue
from hyperspace_explorer.versions import code_version, differences

BASE = {"model": {"className": "Linear"}, "noise": 0.1}


@pytest.fixture
def q(mongo_uri, db_name):
    queue = RunQueue(mongo_uri, db_name, TASKS, study_dir=STUDY)
    yield queue
    queue.close()


def _run_all(q: RunQueue, mongo_uri: str, db_name: str, n: int, tmp_path) -> None:
    assert helpers.run_worker(mongo_uri, db_name, tmp_path / "logs", max_runs=n,
                              idle_exit=60) == n


def _finished_docs(q: RunQueue, task: str = "toy") -> dict[str, dict]:
    db = raw_db(q.store)
    return {d["_id"]: d for coll in ("hse_queue", "hse_done") for d in db[coll].find(
        {"task": task})}


def test_every_run_records_its_code_version(q, mongo_uri, db_name, tmp_path):
    [run] = q.submit("toy", BASE)
    _run_all(q, mongo_uri, db_name, 1, tmp_path)
    version = q.get(run)["code_version"]
    assert version["python"] == ".".join(map(str, sys.version_info[:3]))
    assert version["hyperspace_explorer"]
    assert version["source_digest"] and version["commit"]
    assert "numpy" in version["packages"]  # the test Study imports numpy
    out = subprocess.run([sys.executable, "-m", "hyperspace_explorer.cli", "--mongo-uri",
                          mongo_uri, "--db", db_name, "show", run],
                         capture_output=True, text=True, check=True).stdout
    assert "code version" in out and "Python" in out


def test_outside_git_the_source_digest_stands_in_for_the_commit(tmp_path):
    study = tmp_path / "study"
    shutil.copytree(STUDY, study)
    version = code_version(study)
    assert version["vcs"] == "none"
    assert version["commit"] == version["source_digest"]
    (study / "scenarios.py").write_text((study / "scenarios.py").read_text() + "\n# edit\n")
    assert code_version(study)["commit"] != version["commit"]


def _committed_repo(path, text: str):
    """A git repository at `path` whose one commit holds scenarios.py with `text`."""
    path.mkdir()
    git = ["git", "-C", str(path), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True)
    (path / "scenarios.py").write_text(text)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "first"], check=True)
    return path


def test_git_state_and_one_stored_diff_per_content(q, tmp_path):
    repo = _committed_repo(tmp_path / "repo", "import numpy\nX = 1\n")
    clean = code_version(repo, q.store.store_blob)
    assert clean["vcs"] == "git" and clean["branch"] == "main" and not clean["dirty"]
    assert clean["diff"] is None and len(clean["commit"]) == 40
    (repo / "scenarios.py").write_text("import numpy\nX = 2\n")
    dirty = code_version(repo, q.store.store_blob)
    assert dirty["dirty"] and dirty["changed"] == ["scenarios.py"]
    assert b"+X = 2" in q.store.read_blob(dirty["diff"])
    again = code_version(repo, q.store.store_blob)
    assert again["diff"] == dirty["diff"]
    assert raw_db(q.store)["hse_sources"].count_documents({"_id": dirty["diff"]}) == 1
    assert ("dirty", False, True) in differences(clean, dirty)


def test_reading_the_git_state_leaves_the_index_alone(tmp_path):
    """A file touched but not changed leaves git's index stale. Reading the state must
    not rewrite the index (that takes the lock the user's git commands need, and the
    index's new stamp made the next run of a worker compute the version again)."""
    repo = _committed_repo(tmp_path / "repo", "X = 1\n")
    st = (repo / "scenarios.py").stat()
    os.utime(repo / "scenarios.py", ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    index = repo / ".git" / "index"
    before = (index.stat().st_mtime_ns, index.read_bytes())
    version = code_version(repo)
    assert not version["dirty"]  # same content: not a change
    assert (index.stat().st_mtime_ns, index.read_bytes()) == before
    assert code_version(repo) is version  # from the cache: nothing it reads has changed


def test_rerun_queues_the_exact_config_with_changes(q, mongo_uri, db_name, tmp_path):
    [run] = q.submit("toy", BASE)
    _run_all(q, mongo_uri, db_name, 1, tmp_path)
    old = q.get(run)
    again = q.rerun(run)
    changed = q.rerun(old["sacred_id"], {"noise": 0.5, "model.lr": 0.01}, seed=7)
    assert len({run, again, changed}) == 3  # identical reruns are not skipped
    new = q.get(changed)
    assert new["reproduces"] == run and q.get(again)["reproduces"] == run
    assert new["seed"] == 7 and q.get(again)["seed"] == old["seed"]
    expected = {**old["config"], "noise": 0.5,
                "model": {**old["config"]["model"], "lr": 0.01}}
    assert new["config"] == expected
    _run_all(q, mongo_uri, db_name, 2, tmp_path)
    diff = q.diff(run, changed)
    assert {path for path, _, _ in diff["config"]} == {"noise", "model.lr"}
    assert diff["reproduces"] == [None, run]
    assert q.get(changed)["status"] == "COMPLETED"


def test_rerun_refuses_bad_input_and_queues_nothing(q, mongo_uri, db_name, tmp_path):
    [run] = q.submit("toy", BASE)
    _run_all(q, mongo_uri, db_name, 1, tmp_path)
    before = q.status()
    with pytest.raises(RunNotFound):
        q.rerun("no-such-run")
    with pytest.raises(ConfigError, match="n_layers"):
        q.rerun(run, {"model.n_layers": 3})
    with pytest.raises(ConfigError, match="dotted"):
        q.rerun(run, {"model..lr": 3})
    assert q.status() == before


def test_rerun_says_when_todays_code_differs(q, mongo_uri, db_name, tmp_path, capsys):
    [run] = q.submit("toy", BASE)
    _run_all(q, mongo_uri, db_name, 1, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CodeChangedWarning)
        q.rerun(run)  # same code: no warning
    db = raw_db(q.store)
    for coll in ("hse_queue", "hse_done"):
        db[coll].update_one({"_id": run}, {"$set": {"code_version.commit": "0" * 40,
                                                    "code_version.python": "2.7.18"}})
    with pytest.warns(CodeChangedWarning, match="commit: 000000000000"):
        q.rerun(run)
    assert any("python" in change for change in q.last_code_changes)
    code = main(["--mongo-uri", mongo_uri, "--db", db_name, "--tasks-dir", str(TASKS),
                 "rerun", run, "--set", "noise=0.3"])
    out = capsys.readouterr().out
    assert code == 0 and "today's code differs" in out
    new_id = out.strip().splitlines()[-1]
    assert q.get(new_id)["config"]["noise"] == 0.3


def test_run_here_runs_in_this_process_like_a_worker(q, capsys):
    out = q.run_here("toy", {**BASE, "epochs": 2}, seed=5)
    assert out["status"] == "COMPLETED" and "score" in out["metrics"]
    doc = q.get(out["run_id"])
    assert doc["status"] == "COMPLETED" and doc["seed"] == 5
    assert doc["config"]["epochs"] == 2 and doc["config"]["model"]["lr"] == 0.1  # filled
    assert doc["code_version"]["python"]
    record = q.record(out["run_id"])["sacred"]
    assert record["status"] == "COMPLETED" and record["result"] == out["metrics"]["score"]
    frame = q.results("toy")
    assert out["run_id"] in set(frame["run_id"])
    # what a worker computes for the same config and seed
    [queued] = q.submit("toy", {**BASE, "epochs": 2}, seeds=[5], force=True)
    assert helpers.run_worker(q.store.uri, q.store.db_name, max_runs=1, idle_exit=60) == 1
    assert q.get(queued)["metrics"] == doc["metrics"]


def test_run_here_raises_the_scenarios_error_after_recording_it(q):
    with pytest.raises(RuntimeError, match="boom from user code"):
        q.run_here("toy", {**BASE, "behaviour": "raise"})
    [doc] = [d for d in _finished_docs(q).values() if d.get("run_here")]
    assert doc["status"] == "FAILED" and "boom from user code" in doc["error"]
    assert q.record(doc["_id"])["sacred"]["status"] == "FAILED"
    with pytest.raises(ConfigError, match="n_layers"):
        q.run_here("toy", {"model": {"className": "Linear", "n_layers": 2}})


def test_backfill_writes_todays_defaults_once_and_reports_unknown_keys(
        q, mongo_uri, db_name, tmp_path):
    ids = q.submit("toy", BASE, seeds=3)
    _run_all(q, mongo_uri, db_name, 3, tmp_path)
    db = raw_db(q.store)
    # as if stored by older code: no `noise` parameter yet; one run with a removed one
    for coll in ("hse_queue", "hse_done"):
        db[coll].update_many({"_id": {"$in": ids}}, {"$unset": {"config.noise": ""}})
        db[coll].update_one({"_id": ids[2]}, {"$set": {"config.old_param": 1}})
    sacred = {d["_id"]: d["sacred_id"] for d in _finished_docs(q).values()}
    db["runs"].update_many({"_id": {"$in": list(sacred.values())}},
                           {"$unset": {"config.noise": ""}})
    dry = q.backfill("toy", dry_run=True)
    assert dry["changed"] == 2 and dry["dry_run"]
    assert "noise" not in _finished_docs(q)[ids[0]]["config"]
    report = q.backfill("toy")
    assert report["changed"] == 2 and report["runs"] == 3
    [(problem, n)] = report["refused"].items()
    assert "old_param" in problem and n == 1
    docs = _finished_docs(q)
    for run in ids[:2]:
        assert docs[run]["config"]["noise"] == 0.0
        assert "noise" not in docs[run]["config_original"]
        record = db["runs"].find_one({"_id": sacred[run]})
        assert record["config"]["noise"] == 0.0 and record["config"]["seed"] == docs[run]["seed"]
    assert "config_original" not in docs[ids[2]] and "noise" not in docs[ids[2]]["config"]
    assert q.backfill("toy")["changed"] == 0  # a second call changes nothing
    assert _finished_docs(q)[ids[0]]["config_original"] == docs[ids[0]]["config_original"]


def test_a_frame_of_some_of_the_last_read_runs_reuses_their_rows(q, monkeypatch):
    import pandas as pd

    from hyperspace_explorer import results

    ids = q.submit("toy", BASE, seeds=3) + q.submit("toy", {"model": {"className": "Forest"}})
    q.cancel(ids[-1])
    built = []
    row = results._row
    monkeypatch.setattr(results, "_row", lambda doc, completers: built.append(doc["_id"])
                        or row(doc, completers))
    everything = q.results("toy")
    assert sorted(built) == sorted(ids)
    queued = q.results("toy", status="QUEUED")  # as summary() asks after results()
    assert sorted(built) == sorted(ids), "no row built twice"
    afresh = results.results_frame(q.store, q.runs("toy", status="QUEUED"), study_dir=STUDY,
                                   tasks_dir=TASKS)
    pd.testing.assert_frame_equal(queued, afresh)  # the same frame as one built anew
    assert len(queued) == 3 and len(everything) == 4 and "_class" not in everything


def test_results_reuse_the_last_read_only_while_nothing_changed(q, mongo_uri, db_name,
                                                                 tmp_path, monkeypatch):
    ids = q.submit("toy", BASE, seeds=2)
    reads = []
    find_results = q.store.find_results
    def counted(runs, **kwargs):  # counts the reads of whole results, then does them
        reads.append(runs)
        return find_results(runs, **kwargs)

    monkeypatch.setattr(q.store, "find_results", counted)
    assert set(q.results("toy")["status"]) == {"QUEUED"} and len(reads) == 1
    assert len(q.results("toy", status="COMPLETED")) == 0 and len(reads) == 1  # from the last
    _run_all(q, mongo_uri, db_name, 2, tmp_path)                                 # read
    frame = q.results("toy")
    assert list(frame["status"]) == ["COMPLETED"] * 2 and len(reads) == 2
    q.summary("toy")
    assert len(reads) == 2
    q.requeue(ids[0], status="COMPLETED")
    assert sorted(q.results("toy")["status"]) == ["COMPLETED", "QUEUED"] and len(reads) == 3
    db = raw_db(q.store)
    for coll in ("hse_queue", "hse_done"):
        db[coll].update_many({"_id": ids[1]}, {"$unset": {"config.noise": ""}})
    q.backfill("toy")
    assert len(q.results("toy")) == 2 and len(reads) == 4  # the backfill is seen
