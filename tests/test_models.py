"""Checkpoints and resume, saved models, export, cross-validation, and the example's
torch scenario: real workers against the real test server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
from helpers import raw_db, wait_for

from hyperspace_explorer import load_model
from hyperspace_explorer.cli import main
from hyperspace_explorer.crossval import cross_validate
from hyperspace_explorer.errors import HSEError

EXAMPLE = Path(__file__).resolve().parents[1] / "hyperspace_explorer" / "examples" / "digits"


def test_a_killed_training_resumes_from_its_checkpoint_and_finishes_once(
        q, procs, mongo_uri, db_name, tmp_path):
    pytest.importorskip("torch")
    pidfile = tmp_path / "run.pid"
    [run] = q.submit("torch_train", {"epochs": 6, "stop_after": 2, "pidfile": str(pidfile)})
    first = helpers.start_worker(mongo_uri, db_name, "--lease", "3", "--heartbeat", "0.5",
                                 log=tmp_path / "w1.log")
    procs.append(first)
    # attempt 1 saved epoch 2's checkpoint, then stopped itself: kill its worker now
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 120, "epoch 2"))
    wait_for(lambda: helpers.process_stopped(pid), 30, "the run to stop itself")
    saved = q.get(run)["checkpoint"]
    assert saved["points"] == {"loss": 3} and saved["attempt"] == 1
    first.kill()
    first.wait()
    second = helpers.start_worker(mongo_uri, db_name, "--lease", "3", "--heartbeat", "0.5",
                                  "--idle-exit", "30", log=tmp_path / "w2.log")
    procs.append(second)
    wait_for(lambda: q.get(run)["status"] == "COMPLETED", 120, "the resumed run")
    doc = q.get(run)
    assert doc["attempt"] == 2 and doc["metrics"]["start_epoch"] == 3.0
    records = list(raw_db(q.store)["runs"].find({"meta.hse.run_id": run}))
    completed = [r for r in records if r["status"] == "COMPLETED"]
    assert len(completed) == 1 and completed[0]["_id"] == doc["sacred_id"]
    assert all(r["status"] == "FAILED" for r in records if r is not completed[0])
    [series] = [s for s in q.record(run)["series"] if s["name"] == "loss"]
    assert series["steps"] == [0, 1, 2, 3, 4, 5]  # one curve: continued, no step twice
    losses = series["values"]
    assert all(b <= a for a, b in zip(losses, losses[1:]))  # trained on, not restarted
    model = q.load_model(run)
    import torch

    assert isinstance(model, torch.nn.Module)
    assert q.store.read_file(saved["file_id"]) is None  # older checkpoints are removed
    assert q.store.load_checkpoint(run)[1]["attempt"] == 2


def test_a_checkpoint_write_of_a_lost_attempt_is_refused(q):
    doc = q.store.start_here({"study": q.study, "task": "toy"}, "w", 60)
    assert q.store.save_checkpoint(doc["_id"], doc["token"], b"one", {"epoch": 1})
    assert not q.store.save_checkpoint(doc["_id"], "another-token", b"two", {"epoch": 2})
    data, meta = q.store.load_checkpoint(doc["_id"])
    assert data == b"one" and meta["epoch"] == 1
    assert q.store.save_checkpoint(doc["_id"], doc["token"], b"three", {"epoch": 3})
    assert q.store.load_checkpoint(doc["_id"])[0] == b"three"


def test_saved_models_load_without_a_worker_and_export(q, mongo_uri, db_name, tmp_path,
                                                       monkeypatch):
    pytest.importorskip("torch")
    [run] = q.submit("torch_train", {"epochs": 2})
    assert helpers.run_worker(mongo_uri, db_name, max_runs=1, idle_exit=60) == 1
    record = q.record(run)["sacred"]
    [artifact] = [a for a in record["artifacts"] if a["name"] == "model.pt"]
    assert artifact["content_type"] == "application/x-pytorch"
    model = load_model(run, uri=mongo_uri, db=db_name)
    import torch

    assert model(torch.zeros(1, 4)).shape == (1, 1)
    out = tmp_path / "export"
    assert main(["--mongo-uri", mongo_uri, "--db", db_name, "export", run, str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "code_version.json", "config.json", "metrics.json", "model.pt", "run.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and config["config"]["hidden"] == 8
    assert json.loads((out / "code_version.json").read_text())["python"]
    assert json.loads((out / "run.json").read_text())["models"][0]["file"] == "model.pt"
    exported = torch.load(out / "model.pt", weights_only=False)
    assert torch.equal(exported(torch.ones(1, 4)), model(torch.ones(1, 4)))
    with pytest.raises(HSEError, match="not an empty directory"):
        q.export(run, out)
    with pytest.raises(HSEError, match="no model named 'best'"):
        q.load_model(run, name="best")
    monkeypatch.delenv("HSE_DB", raising=False)
    with pytest.raises(HSEError, match="which database"):
        load_model(run, uri=mongo_uri)


def test_a_run_without_a_model_says_so(q, mongo_uri, db_name, tmp_path):
    [run] = q.submit("toy", {"model": {"className": "Linear"}})
    assert helpers.run_worker(mongo_uri, db_name, max_runs=1, idle_exit=60) == 1
    with pytest.raises(HSEError, match="saved no model"):
        q.export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_scikit_learn_models_are_pickled(q, tmp_path):
    from sklearn.linear_model import LogisticRegression

    from hyperspace_explorer import models

    saved = {}

    class Catcher:
        def add_artifact(self, path, name, content_type, metadata):
            saved.update(data=Path(path).read_bytes(), name=name, content_type=content_type,
                         metadata=metadata)

    estimator = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
    models.save_model(Catcher(), estimator)
    assert saved["name"] == "model.pkl" and saved["content_type"] == "application/x-pickle"
    assert saved["metadata"]["class"].endswith("LogisticRegression")
    again = models.from_bytes(saved["data"], saved["content_type"], "model")
    assert again.predict([[1.0]]) == [1]


class _Logged:
    run_seed = 3

    def __init__(self):
        self.points = []

    def log_scalar(self, name, value, step=None):
        self.points.append((name, step, value))


def test_cross_validation_is_seeded_by_the_run_and_logs_each_fold():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300]
    first, second = _Logged(), _Logged()
    a = cross_validate(first, LogisticRegression(max_iter=300), X, y, folds=4)
    b = cross_validate(second, LogisticRegression(max_iter=300), X, y, folds=4)
    assert a == b and len(a.scores) == 4
    assert a.mean == pytest.approx(np.mean(a.scores))
    assert a.std == pytest.approx(np.std(a.scores, ddof=1))
    assert [(n, s) for n, s, _ in first.points] == [("cv_score", i) for i in range(4)]
    other = _Logged()
    other.run_seed = 4
    assert cross_validate(other, LogisticRegression(max_iter=300), X, y, folds=4) != a

    seen = []

    def fit_score(X_train, y_train, X_test, y_test):  # e.g. a torch model per fold
        seen.append(len(y_test))
        return 0.5

    plain = cross_validate(_Logged(), fit_score, X, y, folds=3, stratified=False)
    assert plain.mean == 0.5 and plain.std == 0.0 and sum(seen) == len(y)
    with pytest.raises(HSEError, match="folds"):
        cross_validate(_Logged(), fit_score, X, y, folds=1)


def test_the_example_study_loads_without_torch(tmp_path):
    code = ("import importlib.abc, sys\n"
            "class NoTorch(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] == 'torch':\n"
            "            raise ImportError('no torch here')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            f"sys.path.insert(0, {str(EXAMPLE)!r})\n"
            "import scenarios\n"
            "assert 'torch' not in sys.modules\n"
            "print(sorted(c for c in dir(scenarios) if c.endswith('Scenario')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "TorchDigitsScenario" in out and "DigitsScenario" in out


def test_the_example_torch_scenario_learns_and_saves_its_model(mongo_uri, db_name):
    pytest.importorskip("torch")
    # in a process of its own: this one has imported the test Study's `scenarios`
    code = ("import json, sys\n"
            "from hyperspace_explorer import RunQueue\n"
            f"q = RunQueue({mongo_uri!r}, {db_name!r}, {str(EXAMPLE / 'tasks')!r}, "
            f"study_dir={str(EXAMPLE)!r})\n"
            "out = q.run_here('digits_torch', {'epochs': 3}, seed=1)\n"
            "series = {s['name']: s['steps'] for s in q.record(out['run_id'])['series']}\n"
            "model = q.load_model(out['run_id'])\n"
            "print(json.dumps({'out': out, 'series': series, 'model': type(model).__name__}))")
    answer = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True,
                                       text=True, check=True).stdout.strip().splitlines()[-1])
    assert answer["out"]["status"] == "COMPLETED"
    assert answer["out"]["metrics"]["accuracy"] > 0.8
    assert answer["series"]["test_accuracy"] == [0, 1, 2]
    assert answer["model"] == "Sequential"
