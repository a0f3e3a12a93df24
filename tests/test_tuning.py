"""Tuning through the queue: search spaces, the Tuner (proposals as ordinary runs,
outcomes told to Optuna, restarts, cooperating tuners, warm start), pruning through
the worker, and the dashboard's HTTP API. Real workers, real server."""
from __future__ import annotations

import json
import socket
import threading
import urllib.request

import optuna  # in the test extra: a missing optuna fails loudly
import pytest

from helpers import STUDY, TASKS, run_worker, start_worker, wait_for  # noqa: E402

from hyperspace_explorer.errors import ConfigError  # noqa: E402
from hyperspace_explorer.status import Status  # noqa: E402
from hyperspace_explorer.study import load_scenarios  # noqa: E402
from hyperspace_explorer.tuning import Categorical, ClassChoice, Float, Int, Space, Tuner, load_space  # noqa: E402

scenarios = load_scenarios(STUDY)

SPACE = Space({
    "shape.className": ClassChoice({"Bowl": {"y": Float(-4.0, 4.0)},
                                    "Ridge": {"shape.width": Float(0.0, 1.0)}}),
    "x": Float(-3.0, 3.0),
})
State = optuna.trial.TrialState


def _quiet(**kw):
    return {"progress": False, "poll": 0.05, "say": lambda text: None, **kw}


# ----------------------------------------------------------------------- spaces
def test_space_from_json_and_yaml_matches_python(tmp_path):
    data = {"fixed": {"epochs": 2}, "params": {
        "shape.className": {"type": "class", "choices": {
            "Bowl": {"y": {"type": "float", "low": -4, "high": 4}},
            "Ridge": {"shape.width": {"type": "float", "low": 0, "high": 1}}}},
        "x": {"type": "float", "low": -3, "high": 3, "log": False},
        "epochs": {"type": "int", "low": 1, "high": 9, "step": 2},
        "behaviour": {"type": "categorical", "choices": ["ok"]}}}
    (tmp_path / "s.json").write_text(json.dumps(data))
    yaml = pytest.importorskip("yaml")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    a, b = load_space(tmp_path / "s.json"), load_space(tmp_path / "s.yaml")
    assert a.to_dict() == b.to_dict()
    assert a.params["epochs"] == Int(1, 9, step=2)
    assert a.params["behaviour"] == Categorical(("ok",))
    a.validate(scenarios.QuadraticScenario)


def test_conditional_sampling_maps_a_trial_to_a_config():
    bowl = SPACE.sample(optuna.trial.FixedTrial({"shape.className": "Bowl", "y": 1.5, "x": 0.5}))
    assert bowl == {"shape": {"className": "Bowl"}, "y": 1.5, "x": 0.5}
    ridge = SPACE.sample(optuna.trial.FixedTrial(
        {"shape.className": "Ridge", "shape.width": 0.25, "x": -1.0}))
    assert ridge == {"shape": {"className": "Ridge", "width": 0.25}, "x": -1.0}


@pytest.mark.parametrize("params, path, words", [
    ({"shape.className": ClassChoice({"Bowl": {"shape.offsett": Float(0, 1)}})},
     "shape.offsett", "unknown key 'offsett'"),
    ({"xx": Float(0, 1)}, "xx", "unknown key 'xx'"),
    ({"x": Categorical(["far"])}, "x", "expected float"),
    ({"epochs": Float(0.5, 2.0)}, "epochs", "expected int"),
    ({"shape.className": ClassChoice({"Blob": {}})}, "shape.className", "unknown className"),
])
def test_a_bad_space_fails_before_anything_is_queued_naming_the_path(q, params, path, words):
    with pytest.raises(ConfigError) as info:
        Tuner(q, "quadratic", Space(params), n_trials=2, **_quiet())
    assert info.value.path == path and words in str(info.value)
    assert q.status("quadratic")[Status.QUEUED] == 0


@pytest.mark.parametrize("spec, words", [
    ({"type": "float", "low": 0.1, "high": 1, "step": 0.1},
     "a float parameter takes low, high, log (low, high required): unknown key(s) ['step']"),
    ({"type": "int", "lo": 1, "high": 3},
     "an int parameter takes low, high, step, log (low, high required): unknown key(s) ['lo'], "
     "missing ['low']"),
    ({"type": "categorical", "choices": 5}, "categorical choices must be a non-empty list, got 5"),
])
def test_a_parameter_with_wrong_keys_names_the_keys_it_takes(tmp_path, spec, words):
    (tmp_path / "s.json").write_text(json.dumps({"params": {"x": spec}}))
    with pytest.raises(ConfigError) as info:
        load_space(tmp_path / "s.json")
    assert info.value.path == "x" and str(info.value) == f"config.x: {words}"


def test_params_of_keeps_configs_inside_the_space_only():
    full = scenarios.QuadraticScenario.complete_run_config
    inside = full({"shape": {"className": "Bowl"}, "x": 1.0, "y": 2.0})
    params, why = SPACE.params_of(inside, scenarios.QuadraticScenario)
    assert params == {"shape.className": "Bowl", "y": 2.0, "x": 1.0} and why == ""
    out_of_range = full({"shape": {"className": "Bowl"}, "x": 9.0})
    assert SPACE.params_of(out_of_range, scenarios.QuadraticScenario)[1].startswith("x=9.0 outside")
    fixed_differs = full({"shape": {"className": "Bowl", "offset": 3.0}, "x": 0.0})
    params, why = SPACE.params_of(fixed_differs, scenarios.QuadraticScenario)
    assert params is None and "shape.offset=3.0 differs" in why


# ----------------------------------------------------------------------- the tuner
def test_tuner_runs_trials_through_real_workers(q, mongo_uri, db_name, tmp_path):
    workers = [start_worker(mongo_uri, db_name, "--interval", "0.05", log=tmp_path / f"w{i}.log")
               for i in range(2)]
    try:
        tuner = Tuner(q, "quadratic", SPACE, n_trials=6, parallel=2, seed=1, **_quiet())
        result = tuner.run()
    finally:
        for w in workers:
            w.terminate()
            w.wait(30)
    assert result.trials == 6 and result.counts == {"COMPLETE": 6}
    assert len(result.run_ids) == 6
    runs = {r["_id"]: r for r in q.store.find_runs(q.runs("quadratic"))}
    assert set(runs) == set(result.run_ids)
    trials = tuner.study.get_trials()
    for t in trials:  # each run names its trial; each trial holds its run's value
        run = runs[t.user_attrs["hse_run_id"]]
        assert run["tuning"] == {"study": result.study_name, "trial": t.number}
        assert run["status"] == Status.COMPLETED and t.value == run["metrics"]["loss"]
    assert result.best_value == min(r["metrics"]["loss"] for r in runs.values())
    frame = q.results("quadratic")
    assert len(frame) == 6


def test_a_killed_tuner_loses_nothing_and_a_restart_tells_each_outcome_once(q, mongo_uri,
                                                                            db_name):
    first = Tuner(q, "quadratic", SPACE, n_trials=3, parallel=2, study_name="s", **_quiet())
    assert first._propose({}, []) and first._propose({}, [])
    del first  # "killed": its two trials are RUNNING in the study, their runs queued
    assert run_worker(mongo_uri, db_name, max_runs=2) == 2  # results land, no tuner runs
    again = Tuner(q, "quadratic", SPACE, n_trials=3, parallel=2, study_name="s", **_quiet())
    again.sync()
    trials = again.study.get_trials()
    assert [t.state for t in trials] == [State.COMPLETE, State.COMPLETE]
    values = {t.number: t.value for t in trials}
    again.sync()  # telling twice is skipped
    assert {t.number: t.value for t in again.study.get_trials()} == values
    runs = {r["tuning"]["trial"]: r for r in q.store.find_runs(q.runs("quadratic"))}
    assert {n: r["metrics"]["loss"] for n, r in runs.items()} == values


def test_outcomes_failed_cancelled_are_fail_with_why(q, mongo_uri, db_name):
    bad = Space({"x": Float(-1, 1)}, fixed={"behaviour": "raise"})
    tuner = Tuner(q, "quadratic", bad, n_trials=2, parallel=2, study_name="f", **_quiet())
    tuner._propose({}, [])
    tuner._propose({}, [])
    first, second = tuner.study.get_trials()
    q.cancel(second.user_attrs["hse_run_id"])
    assert run_worker(mongo_uri, db_name, max_runs=1) == 1
    tuner.sync()
    first, second = tuner.study.get_trials()
    assert first.state == State.FAIL and first.user_attrs["hse_status"] == "FAILED"
    assert "boom from a tuned run" in first.user_attrs["hse_error"]
    assert second.state == State.FAIL and second.user_attrs["hse_status"] == "CANCELLED"


def test_two_tuners_share_one_study_without_duplicating_trials(q, mongo_uri, db_name, tmp_path):
    from hyperspace_explorer.queue import RunQueue

    worker = start_worker(mongo_uri, db_name, "--interval", "0.05", log=tmp_path / "w.log")
    results, errors = [], []

    def tune_once():
        try:
            with RunQueue(mongo_uri, db_name, TASKS, study_dir=STUDY) as own:
                results.append(Tuner(own, "quadratic", SPACE, n_trials=8, parallel=2,
                                     study_name="shared", **_quiet()).run())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=tune_once) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    finally:
        worker.terminate()
        worker.wait(30)
    assert not errors and len(results) == 2
    study = optuna.load_study(study_name="shared", storage=q.store.optuna_storage())
    proposed = [t for t in study.get_trials() if t.user_attrs.get("hse_source") == "proposed"]
    assert len(proposed) == 8 and all(t.state == State.COMPLETE for t in proposed)
    assert sorted(t.user_attrs["hse_slot"] for t in proposed) == list(range(8))
    run_ids = [t.user_attrs["hse_run_id"] for t in proposed]
    assert len(set(run_ids)) == 8
    assert sorted(run_ids) == sorted(results[0].run_ids + results[1].run_ids)


def test_warm_start_imports_each_past_run_in_the_space_once(q, mongo_uri, db_name):
    inside = [{"shape": {"className": "Bowl"}, "x": x, "y": 0.0} for x in (-1.0, 0.0, 2.0)]
    inside.append({"shape": {"className": "Ridge", "width": 0.5}, "x": 1.0})
    outside = [{"shape": {"className": "Bowl"}, "x": 7.0},           # out of range
               {"shape": {"className": "Bowl", "offset": 1.0}, "x": 0.0},   # fixed differs
               {"shape": {"className": "Bowl"}, "x": 0.5, "epochs": 2}]      # fixed differs
    ids = [i for conf in inside + outside for i in q.submit("quadratic", conf)]
    assert run_worker(mongo_uri, db_name, max_runs=len(ids)) == len(ids)
    notes = []
    tuner = Tuner(q, "quadratic", SPACE, n_trials=1, study_name="w", say=notes.append,
                  progress=False)
    assert tuner.import_past_runs() == 4
    assert tuner.skipped == {"x=... outside the space": 1,
                             "fixed value shape.offset differs from the space": 1,
                             "fixed value epochs differs from the space": 1}
    assert "4 past run(s)" in notes[0] and "left out" in notes[0]
    trials = tuner.study.get_trials()
    assert len(trials) == 4 and all(t.user_attrs["hse_source"] == "imported" for t in trials)
    losses = {r["_id"]: r["metrics"]["loss"] for r in q.store.find_runs(q.runs("quadratic"))}
    assert {t.user_attrs["hse_run_id"]: t.value for t in trials} == \
        {i: losses[i] for i in ids[:4]}
    restarted = Tuner(q, "quadratic", SPACE, n_trials=1, study_name="w", **_quiet())
    assert restarted.import_past_runs() == 0  # at a restart, nothing twice
    assert len(restarted.study.get_trials()) == 4


# ----------------------------------------------------------------------- pruning
def test_a_run_the_pruner_stops_ends_pruned_with_its_curve(q, mongo_uri, db_name):
    space = Space({"x": Float(2.0, 3.0)}, fixed={"epochs": 4})  # loss >= 1: above 0.5
    tuner = Tuner(q, "quadratic", space, n_trials=1, study_name="p",
                  pruner={"name": "ThresholdPruner", "kwargs": {"upper": 0.5}}, **_quiet())
    tuner._propose({}, [])
    (run_id,) = tuner.run_ids
    plain = q.submit("quadratic", {"x": 2.5, "epochs": 4})   # not tuned: never pruned
    assert run_worker(mongo_uri, db_name, max_runs=2) == 2
    run = q.get(run_id)
    assert run["status"] == Status.PRUNED and run["reason"] == "pruned"
    assert "pruned at epoch 0" in run["error"]
    assert q.get(plain[0])["status"] == Status.COMPLETED
    tuner.sync()
    (trial,) = tuner.study.get_trials()
    assert trial.state == State.PRUNED and list(trial.intermediate_values) == [0]
    (series,) = q.store.metric_series([run["sacred_id"]], "loss")  # its curve up to the pruning
    assert series["steps"] == [0] and series["values"] == [trial.intermediate_values[0]]
    (plain_series,) = q.store.metric_series([q.get(plain[0])["sacred_id"]], "loss")
    assert plain_series["steps"] == [0, 1, 2, 3]  # outside tuning: logged, never pruned
    assert q.store.sacred_run(run["sacred_id"])["status"] == "PRUNED"
    assert q.status("quadratic")[Status.PRUNED] == 1


# ----------------------------------------------------------------------- dashboard
def test_dashboard_api_lists_the_study(q, mongo_uri, db_name):
    pytest.importorskip("optuna_dashboard")
    from hyperspace_explorer.errors import HSEError
    from hyperspace_explorer.tuning import open_dashboard

    Tuner(q, "quadratic", SPACE, n_trials=1, study_name="dash", **_quiet())
    with pytest.raises(HSEError, match="no Optuna study 'nope'.*studies there: dash"):
        open_dashboard(mongo_uri, db_name, "nope")
    with socket.socket() as taken:  # before its address is printed, not a traceback after
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy, said_nothing = taken.getsockname()[1], []
        with pytest.raises(HSEError, match=f"^cannot listen on 127.0.0.1 port {busy}: Address "
                                           f"already in use: choose another port$"):
            open_dashboard(mongo_uri, db_name, "dash", port=busy, say=said_nothing.append)
        assert said_nothing == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    said: list[str] = []
    thread = threading.Thread(target=open_dashboard, args=(mongo_uri, db_name, "dash"),
                              kwargs={"host": "127.0.0.1", "port": port, "say": said.append},
                              daemon=True)
    thread.start()

    def studies():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            return None

    answer = wait_for(studies, 30, "the dashboard to answer")
    assert [s["study_name"] for s in answer["study_summaries"]] == ["dash"]
    assert f"http://127.0.0.1:{port}/dashboard/studies/0" in said[0]


# ----------------------------------------------------------------------- demo
DEMO = """
import json, sys
from hyperspace_explorer.demo import GRIDS, run_demo
notes = []
r = run_demo(sys.argv[1], sys.argv[2], workers=2, seeds=1, tune=True, tune_trials=4,
             progress=False, say=notes.append)
t = r.tuning
print(json.dumps({"grid": sum(len(v) for _, g in GRIDS for v in g.values()),
                  "imported": t.imported, "skipped": t.skipped, "trials": t.trials,
                  "counts": t.counts, "best": t.best_value, "notes": notes}))
"""


def test_demo_tune_runs_a_short_warm_started_session(mongo_uri, db_name, tmp_path):
    import subprocess
    import sys

    # its own process: one Study per process (the demo's, not the test Study)
    proc = subprocess.run([sys.executable, "-c", DEMO, mongo_uri, db_name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] == out["grid"] and out["skipped"] == {}  # the grid is in the space
    assert out["trials"] == 4 and out["counts"]["COMPLETE"] == out["grid"] + 4
    assert 0.5 < out["best"] <= 1.0
    assert any(n.startswith("tuning: 4 trial(s)") for n in out["notes"])


def test_readme_tuning_example_runs_as_written(mongo_uri, db_name, tmp_path):
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text()
    body = text.split("## Tuning (Optuna)\n", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```python\n(.*?)```", body, flags=re.S)[0]
    assert 'RunQueue(None, "digits",' in block and "n_trials=40, parallel=4" in block
    block = block.replace('RunQueue(None, "digits",', f'RunQueue(None, "{db_name}",')
    block = block.replace("n_trials=40, parallel=4", "n_trials=3, parallel=2, progress=False")
    block += "\nprint('RESULT', result.trials, result.best_value, result.best_run_id)\n"
    env = {**os.environ, "HSE_MONGO_URI": mongo_uri}
    example = root / "hyperspace_explorer" / "examples" / "digits"
    worker = subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(example / "tasks"), db_name,
         "--interval", "0.05"], cwd=example, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = subprocess.run([sys.executable, "-c", block], cwd=root, env=env,
                              capture_output=True, text=True, timeout=240)
    finally:
        worker.terminate()
        worker.wait(30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, trials, best, run_id = proc.stdout.strip().splitlines()[-1].split()
    assert trials == "3" and 0.5 < float(best) <= 1.0 and len(run_id) == 12


# ----------------------------------------------------------------------- hse tune
def test_hse_tune_runs_trials_through_workers(mongo_uri, db_name, tmp_path, procs):
    from hyperspace_explorer.cli import main
    from hyperspace_explorer.queue import RunQueue

    space = {"params": {"x": {"type": "float", "low": -3, "high": 3},
                        "shape.className": {"type": "class", "choices": {
                            "Bowl": {"y": {"type": "float", "low": -4, "high": 4}}}}}}
    (tmp_path / "space.json").write_text(json.dumps(space))
    procs.append(start_worker(mongo_uri, db_name, "--interval", "0.05", "--idle-exit", "30"))
    code = main(["--mongo-uri", mongo_uri, "--db", db_name, "--tasks-dir", str(STUDY / "tasks"),
                 "tune", "quadratic", "--space", str(tmp_path / "space.json"), "--trials", "3",
                 "--parallel", "2", "--study-name", "cli-study", "--seed", "3"])
    assert code == 0
    with RunQueue(mongo_uri, db_name) as q:
        runs = list(q.store.find_runs(q.runs("quadratic"), fields=["tuning", "status"]))
        assert len(runs) >= 3 and {r["tuning"]["study"] for r in runs} == {"cli-study"}
        study = optuna.load_study(study_name="cli-study", storage=q.store.optuna_storage())
    finished = [t for t in study.trials if t.state == State.COMPLETE]
    assert len(finished) >= 3 and all(t.value is not None for t in finished)
