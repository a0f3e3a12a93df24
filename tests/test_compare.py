"""Comparing runs: the results frame, the summary over seeds, `hse results/plot/diff/best`,
and what incense and Omniboard read from the Sacred records.

One small grid of the test Study's `toy` task (epochs 1 and 3, noise 0.1, 3 seeds) is
queued and executed once for the module by a real in-process `Worker` against the real
test server; the tests only read it (tests that write use their own fresh database).
"""
from __future__ import annotations

import io
import json
import math
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import helpers
import numpy as np
import pandas as pd
import pytest
from helpers import STUDY, TASKS, raw_db
from pymongo import MongoClient
from scipy import stats

from hyperspace_explorer.cli import main
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.results import _FIXED

EPOCHS = (1, 3)
NOISE = 0.1
SEEDS = 3
TOY_SEED = 100  # tests/study/tasks/toy.json


@dataclass
class Grid:
    uri: str
    db: str
    ids: list[str]                   # submission order: epochs=1 x 3 seeds, epochs=3 x 3 seeds
    queue: RunQueue


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def grid(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory):
    db = f"hse_test_cmp_{uuid.uuid4().hex[:10]}"
    queue = RunQueue(mongo_uri, db, TASKS, study_dir=STUDY)
    ids = queue.submit_grid("toy", {"model": {"className": "Linear"}, "noise": NOISE},
                            {"epochs": list(EPOCHS)}, seeds=SEEDS)
    assert helpers.run_worker(mongo_uri, db, tmp_path_factory.mktemp("worker_logs"),
                              max_runs=len(ids), idle_exit=60) == len(ids)
    assert queue.status("toy")["COMPLETED"] == len(ids)
    yield Grid(mongo_uri, db, ids, queue)
    queue.close()
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(db)
    finally:
        client.close()


@pytest.fixture
def hse(grid: Grid, capfd: pytest.CaptureFixture):
    """`hse --mongo-uri URI --db <the grid's db> ARGS...`, in-process."""
    def run(*args: str, db: str | None = None) -> Result:
        capfd.readouterr()
        code = main(["--mongo-uri", grid.uri, "--db", db or grid.db, "--tasks-dir", str(TASKS),
                     *args])
        captured = capfd.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def docs_by_epochs(grid: Grid) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for run_id in grid.ids:
        doc = grid.queue.get(run_id)
        out.setdefault(doc["config"]["epochs"], []).append(doc)
    return out


# ------------------------------------------------------------------------ results frame
def test_results_frame_has_documented_columns_and_full_configs(grid: Grid):
    frame = grid.queue.results("toy")
    assert len(frame) == len(grid.ids) == len(EPOCHS) * SEEDS
    config_cols = [c for c in frame.columns if c.startswith("config.")]
    metric_cols = [c for c in frame.columns if c.startswith("metrics.")]
    assert list(frame.columns) == _FIXED + config_cols + metric_cols
    # The full config, defaults filled in by the worker (only model.className, noise and
    # epochs were given).
    assert config_cols == sorted(["config.behaviour", "config.duration", "config.epochs",
                                  "config.model.className", "config.model.layers",
                                  "config.model.lr", "config.noise",
                                  "config.options.verbose"])
    assert metric_cols == ["metrics.draw", "metrics.score"]
    assert set(frame["run_id"]) == set(grid.ids)
    assert (frame["status"] == "COMPLETED").all() and frame["error"].isna().all()
    assert sorted(frame["seed"]) == sorted([TOY_SEED + i for i in range(SEEDS)] * len(EPOCHS))
    assert (frame["config.model.lr"] == 0.1).all()
    assert (frame["config.model.layers"] == (8,)).all()  # lists as tuples
    assert (frame["config.options.verbose"] == False).all()  # noqa: E712
    assert (frame["config.noise"] == NOISE).all()
    assert sorted(frame["config.epochs"]) == sorted(list(EPOCHS) * SEEDS)
    # score = 0.5 + 0.01 * epochs + noise * U(0, 1)
    offset = frame["metrics.score"] - 0.5 - 0.01 * frame["config.epochs"]
    assert ((offset >= 0) & (offset <= NOISE)).all()
    for col in ("queued_at", "start_time", "stop_time"):
        assert isinstance(frame[col].dtype, pd.DatetimeTZDtype), col
    assert (frame["queued_at"] <= frame["start_time"]).all()
    assert (frame["start_time"] <= frame["stop_time"]).all()
    assert (frame["duration"] > 0).all()
    assert (frame["host"] == socket.gethostname()).all()
    # The test Study lives in this git checkout: commit, "+dirty" when it had changes.
    assert frame["code_version"].str.fullmatch(r"[0-9a-f]{40}(\+dirty)?").all()
    assert frame["sacred_id"].notna().all() and frame["sacred_id"].is_unique
    assert (frame["attempt"] == 1).all()


def test_stored_config_missing_a_defaulted_parameter_shows_the_default(grid: Grid, db_name):
    """A run stored before `noise` existed (its config lacks it) reads as noise's
    default, not NaN."""
    old = dict(grid.queue.get(grid.ids[0]))  # a worker's finished document, as stored
    old["study"] = db_name
    del old["config"]["noise"]
    del old["config_given"]["noise"]
    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as queue:
        raw_db(queue.store).hse_done.insert_one(old)
        assert "noise" not in queue.get(old["_id"])["config"]
        frame = queue.results("toy")
    assert len(frame) == 1
    row = frame.iloc[0]
    assert row["config.noise"] == 0.0  # RunConfig.noise's default
    assert row["config.epochs"] == old["config"]["epochs"]
    assert not frame.filter(like="config.").isna().any(axis=None)


_FRESH_PROCESS = """
import json, sys, warnings
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.results import load_results
uri, db, tasks, study_dir, empty = sys.argv[1:]
assert "scenarios" not in sys.modules
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if empty != "-":  # a Study directory without scenarios.py: configs as stored
        frame = load_results(uri, db, "toy", study_dir=empty)
        out["bare"] = {"noise": frame["config.noise"].tolist(),
                       "warnings": [str(w.message) for w in caught]}
        caught.clear()
    if tasks != "-":  # no study_dir: the tasks directory's parent holds the Study
        with RunQueue(uri, db, tasks) as q:
            frame, summary = q.results("toy"), q.summary("toy")
    else:
        frame = load_results(uri, db, "toy", study_dir=study_dir)
        summary = None
    out["study"] = {"noise": frame["config.noise"].tolist(),
                    "n": None if summary is None else summary["n"].tolist(),
                    "warnings": [str(w.message) for w in caught]}
print(json.dumps(out))
"""


def _fresh_process(*args) -> dict:
    """Run `_FRESH_PROCESS` in a new interpreter: one that never imported the Study."""
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _old_and_new(grid: Grid, db_name: str) -> None:
    """Two runs of one config in `db_name`: one stored before `noise` existed, one
    stored by today's code with noise's default spelled out."""
    old, new = (dict(grid.queue.get(i)) for i in grid.ids[:2])  # epochs=1, seeds 100, 101
    del old["config"]["noise"], old["config_given"]["noise"]
    new["config"]["noise"] = new["config_given"]["noise"] = 0.0
    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as queue:
        raw_db(queue.store).hse_done.insert_many([{**old, "study": db_name},
                                                  {**new, "study": db_name}])


def test_old_configs_read_with_todays_defaults_without_importing_the_study(grid: Grid,
                                                                         db_name, tmp_path):
    _old_and_new(grid, db_name)
    out = _fresh_process(grid.uri, db_name, TASKS, "-", tmp_path)
    # not importable: said once, naming where it looked, and the two rows differ
    (warning,) = out["bare"]["warnings"]
    assert f"no scenarios.py in {tmp_path.resolve()}" in warning
    assert "2 run(s) of Scenario ToyScenario" in warning and "different rows" in warning
    assert sorted(out["bare"]["noise"], key=math.isnan)[0] == 0.0
    assert math.isnan(sorted(out["bare"]["noise"], key=math.isnan)[1])
    # RunQueue finds the Study next to its tasks directory: one config, two seeds
    assert out["study"] == {"noise": [0.0, 0.0], "n": [2], "warnings": []}
    # load_results imports it from study_dir=
    out = _fresh_process(grid.uri, db_name, "-", STUDY, "-")
    assert out["study"] == {"noise": [0.0, 0.0], "n": None, "warnings": []}


def test_malformed_documents_are_left_out_with_one_warning(grid: Grid, db_name):
    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as queue:
        raw = raw_db(queue.store)
        good = [{**grid.queue.get(i), "study": db_name} for i in grid.ids]
        raw.hse_done.insert_many(good)
        best = max(good, key=lambda d: d["metrics"]["score"])
        raw.hse_done.insert_many([
            {**best, "_id": "bad-config", "config": "epochs=5", "metrics": {"score": 9.0}},
            {**best, "_id": "bad-spec", "task_spec": ["toy"], "metrics": {"score": 9.0}},
            {**best, "_id": "bad-list", "config": [1, 2], "status": "FAILED"}])
        with pytest.warns(UserWarning) as caught:
            frame = queue.results("toy")
        (warning,) = [str(w.message) for w in caught]
        assert warning.startswith("3 run(s) left out of the results")
        assert "bad-config (malformed queue document: field 'config' must be an object " \
               "(the run config), got str 'epochs=5')" in warning
        assert "bad-spec (malformed queue document: field 'task_spec'" in warning
        assert "bad-list (malformed queue document: field 'config'" in warning
        assert sorted(frame["run_id"]) == sorted(grid.ids)
        assert (frame["config.noise"] == NOISE).all() and frame["metrics.score"].max() < 1
        # summary and best over the good runs, as if the malformed ones were not there
        with pytest.warns(UserWarning, match="2 run\\(s\\) left out"):  # reads COMPLETED ones
            summary = queue.summary("toy")
        assert summary["epochs"].tolist() == [3, 1] and summary["n"].tolist() == [SEEDS, SEEDS]
        assert summary["score_mean"].tolist() == grid.queue.summary("toy")["score_mean"].tolist()
        with pytest.warns(UserWarning, match="left out"):
            assert queue.best("toy")["run_id"] == best["_id"]


# ------------------------------------------------------------------------ summary
def test_summary_groups_seeds_ranks_and_tests_against_the_best(grid: Grid):
    summary = grid.queue.summary("toy")
    frame = grid.queue.results("toy")
    # Only the varying config value is shown; model, noise, defaults are constant.
    assert summary.attrs["config_columns"] == ["epochs"]
    assert [c for c in summary.columns if c.startswith("config") or "." in c] == []
    assert summary["n"].tolist() == [SEEDS, SEEDS]
    # Same seeds in both groups and the noise draws depend on the seed only, so every
    # epochs=3 run scores exactly 0.02 above its epochs=1 twin: epochs=3 ranks first.
    assert summary["epochs"].tolist() == [3, 1]
    assert summary["rank"].tolist() == [1, 2]
    for m in ("score", "draw"):
        for suffix in ("mean", "std", "sem", "ci_low", "ci_high"):
            assert f"{m}_{suffix}" in summary.columns
    by_epochs = {e: frame.loc[frame["config.epochs"] == e, "metrics.score"].to_numpy()
                 for e in EPOCHS}
    best, other = summary.iloc[0], summary.iloc[1]
    assert best["score_mean"] == pytest.approx(by_epochs[3].mean())
    assert other["score_mean"] == pytest.approx(by_epochs[1].mean())
    assert best["score_mean"] - other["score_mean"] == pytest.approx(0.02)
    assert best["score_std"] == pytest.approx(by_epochs[3].std(ddof=1))
    assert best["score_sem"] == pytest.approx(by_epochs[3].std(ddof=1) / math.sqrt(SEEDS))
    half = stats.t.ppf(0.975, SEEDS - 1) * best["score_sem"]
    assert (best["score_ci_low"], best["score_ci_high"]) == (
        pytest.approx(best["score_mean"] - half), pytest.approx(best["score_mean"] + half))
    expected_p = stats.ttest_ind(by_epochs[3], by_epochs[1], equal_var=False).pvalue
    assert math.isnan(best["p_welch_holm"])
    assert other["p_welch_holm"] == pytest.approx(expected_p)  # one comparison: Holm = raw
    assert bool(best["not_worse"]) is True
    assert bool(other["not_worse"]) is bool(expected_p >= 0.05)


# ------------------------------------------------------------------------ hse results
def test_results_exports_parse(hse):
    md = hse("results", "toy", "--format", "md")
    assert md.code == 0, md.err
    cells = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in md.out.strip().splitlines()]
    assert cells[0][:3] == ["rank", "epochs", "n"] and "score ↑" in cells[0]
    assert all(set(c) <= set("-:") and c for c in cells[1])
    assert [row[:3] for row in cells[2:]] == [["1", "3", "3"], ["2", "1", "3"]]
    score = cells[0].index("score ↑")
    assert all(" ± " in row[score] for row in cells[2:])

    latex = hse("results", "toy", "--format", "latex")
    assert latex.code == 0, latex.err
    assert r"\toprule" in latex.out and r"\bottomrule" in latex.out
    assert r"\textbf{" in latex.out  # the best mean

    as_json = hse("results", "toy", "--format", "json")
    rows = json.loads(as_json.out)
    assert [(r["rank"], r["epochs"], r["n"]) for r in rows] == [(1, 3, 3), (2, 1, 3)]

    csv = pd.read_csv(io.StringIO(hse("results", "toy", "--format", "csv").out))
    assert csv["epochs"].tolist() == [3, 1] and csv["n"].tolist() == [3, 3]
    assert csv["score_mean"].tolist() == pytest.approx([r["score_mean"] for r in rows])
    assert {"score_ci_low", "p_welch_holm", "not_worse"} <= set(csv.columns)

    html = hse("results", "toy", "--format", "html")
    assert html.code == 0 and '<table' in html.out and "hse-summary" in html.out
    assert "<th>epochs</th>" in html.out


# ------------------------------------------------------------------------ hse plot
@pytest.mark.parametrize("suffix", [".png", ".svg"])
@pytest.mark.parametrize("kind, options", [
    ("box", []),
    ("box", ["--metric", "draw", "--by", "epochs"]),
    ("curve", ["--curve", "loss"]),
    ("param", ["--param", "epochs"]),
])
def test_plot_writes_the_file(hse, tmp_path: Path, kind, options, suffix):
    out = tmp_path / "figures" / f"{kind}{suffix}"
    result = hse("plot", "toy", kind, *options, "-o", str(out))
    assert result.code == 0, result.err
    assert result.out.strip() == str(out)
    helpers.assert_written(out, suffix.lstrip("."))


def test_plot_curve_draws_one_line_per_varying_config(grid: Grid, tmp_path: Path, hse):
    out = tmp_path / "loss.svg"
    assert hse("plot", "toy", "curve", "--curve", "loss", "-o", str(out)).code == 0
    svg = out.read_text()
    assert "epochs=1" in svg and "epochs=3" in svg  # legend: the varying config path


@pytest.mark.parametrize("args, messages", [
    (["violin"], ["unknown plot kind 'violin'", "box, curve, param"]),
    (["param"], ["need --param PATH", "epochs", "model.lr"]),
    (["param", "--param", "behaviour"], ["not numeric", "'epochs'"]),
    (["curve"], ["need --curve NAME", "logged series: loss"]),
    (["curve", "--curve", "acc"], ["no run of task 'toy' logged a series named 'acc'",
                                   "loss"]),
    (["box", "--metric", "scor"], ["unknown metric 'scor'", "'score'"]),
    (["box", "--by", "epoch"], ["'epoch'", "'epochs'"]),
    (["box", "--logx"], ["--logx applies to 'param' plots only"]),
])
def test_plot_errors_name_the_valid_choices(hse, tmp_path: Path, args, messages):
    out = tmp_path / "x.png"
    result = hse("plot", "toy", *args, "-o", str(out))
    assert result.code == 2
    assert result.err.startswith("hse: error:") and "Traceback" not in result.err
    for message in messages:
        assert message in result.err, result.err
    assert not out.exists()


def test_plot_rejects_an_unknown_format_and_task(hse, tmp_path: Path):
    bad = hse("plot", "toy", "box", "-o", str(tmp_path / "x.jpg"))
    assert bad.code == 2 and ".png, .svg, .pdf" in bad.err
    missing = hse("plot", "noop", "box", "-o", str(tmp_path / "x.png"))
    assert missing.code == 2 and "no runs of task 'noop'" in missing.err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------ hse diff
def test_diff_lists_config_differences_and_same_code(hse, grid: Grid):
    runs = docs_by_epochs(grid)
    a, b = runs[1][0], runs[3][0]  # same seed, epochs 1 vs 3
    assert a["seed"] == b["seed"]
    result = hse("diff", a["_id"], str(b["sacred_id"]))  # queue id and Sacred id
    assert result.code == 0, result.err
    out = result.out
    assert f"A: run {a['_id']} (sacred id {a['sacred_id']})" in out
    assert f"B: run {b['_id']} (sacred id {b['sacred_id']})" in out
    assert "config: 1 difference(s)" in out
    diff_rows = [line for line in out.splitlines() if line.startswith("│ epochs")]
    assert [[c.strip() for c in r.split("│")[1:-1]] for r in diff_rows] == [["epochs", "1", "3"]]
    assert "same config" not in out
    assert "same code" in out
    for doc in (a, b):
        assert str(doc["metrics"]["score"]) in out
    assert a["code_version"]["commit"] in out

    same = hse("diff", a["_id"], a["_id"])
    assert same.code == 0 and "same config" in same.out and "same code" in same.out

    unknown = hse("diff", a["_id"], "0123456789ab")
    assert unknown.code == 2 and "no run with id '0123456789ab'" in unknown.err


def test_diff_reports_changed_source_files(grid: Grid, hse, db_name):
    """Two runs whose Sacred records point at different uploads of scenarios.py."""
    runs = docs_by_epochs(grid)
    store = grid.queue.store
    records = [store.sacred_run(runs[e][0]["sacred_id"]) for e in EPOCHS]
    # Copy both runs and their Sacred records into a fresh database, giving B another
    # version of scenarios.py (a new GridFS id: uploads are deduplicated by content).
    from bson import ObjectId

    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as other:
        for i, (e, record) in enumerate(zip(EPOCHS, records)):
            doc = {**runs[e][0], "study": db_name, "sacred_id": 1000 + i}
            if i == 1:
                record = {**record, "experiment": {**record["experiment"], "sources": [
                    ["scenarios.py", ObjectId()], ["extra.py", ObjectId()]]}}
                doc["code_version"] = {**doc["code_version"], "commit": "f" * 40}
            raw_db(other.store).hse_done.insert_one(doc)
            raw_db(other.store).runs.insert_one({**record, "_id": 1000 + i})
        result = hse("diff", "1000", "1001", db=db_name)
    assert result.code == 0, result.err
    assert "source files: 2 differ" in result.out
    rows = {cells[0]: cells[1] for cells in (
        [c.strip() for c in line.split("│")[1:-1]] for line in result.out.splitlines())
        if len(cells) == 2}
    assert rows["scenarios.py"] == "changed" and rows["extra.py"] == "only in B"
    assert "same code" not in result.out and "f" * 40 in result.out


# ------------------------------------------------------------------------ hse best
def test_best_json_is_the_max_score_run_and_its_config_resubmits(hse, grid: Grid, db_name,
                                                                  tmp_path: Path):
    frame = grid.queue.results("toy")
    top = frame.loc[frame["metrics.score"].idxmax()]
    result = hse("best", "toy", "--json")
    assert result.code == 0, result.err
    best = json.loads(result.out)
    assert {"run_id", "sacred_id", "task", "seed", "metric", "value", "metrics",
            "config"} <= set(best)
    assert best["run_id"] == top["run_id"] and best["sacred_id"] == top["sacred_id"]
    assert (best["task"], best["metric"], best["seed"]) == ("toy", "score", top["seed"])
    assert best["value"] == top["metrics.score"] == best["metrics"]["score"]
    assert best["value"] == frame["metrics.score"].max()
    doc = grid.queue.get(best["run_id"])
    assert best["config"] == doc["config"]
    assert best["config"]["model"] == {"className": "Linear", "lr": 0.1, "layers": [8]}

    # Re-submitting it validates against the Study's classes and queues the same run.
    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as queue:
        (again,) = queue.submit(best["task"], best["config"], seeds=[best["seed"]])
        queued = queue.get(again)
        queue.cancel(again)  # else the CLI's resubmit below is skipped as its duplicate
    assert (queued["config"], queued["seed"], queued["status"]) == (
        best["config"], best["seed"], "QUEUED")

    # ... and so does the CLI hint: `hse best --save FILE` then `hse submit --config FILE`.
    saved = tmp_path / "best.json"
    text = hse("best", "toy", "--save", str(saved))
    assert text.code == 0, text.err
    assert json.loads(saved.read_text()) == best["config"]
    assert f"hse submit toy --config {saved} --seed {best['seed']}" in text.out
    assert f"seeds=[{best['seed']}])" in text.out and "q.submit('toy', {" in text.out
    assert best["run_id"] in text.out and str(best["value"]) in text.out
    resubmit = hse("submit", "toy", "--config", str(saved), "--seed", str(best["seed"]),
                   db=db_name)
    assert resubmit.code == 0, resubmit.err
    (cli_id,) = resubmit.out.split()
    with RunQueue(grid.uri, db_name) as queue:
        queued = queue.get(cli_id)
    assert (queued["config"], queued["seed"]) == (best["config"], best["seed"])


def test_best_without_completed_runs_is_a_clear_error(hse, db_name):
    assert hse("submit", "toy", "--set", "model.className=Linear", db=db_name).code == 0
    result = hse("best", "toy", db=db_name)
    assert result.code == 2
    assert "no COMPLETED run of task 'toy' yet (QUEUED: 1)" in result.err
    assert "no runs of task 'noop'" in hse("best", "noop", db=db_name).err


# ------------------------------------------------------------------------ incense / Omniboard
@pytest.mark.filterwarnings("ignore:keys will default to True:DeprecationWarning")  # incense
def test_incense_reads_the_runs(grid: Grid):
    ExperimentLoader = pytest.importorskip(  # not installable on Python 3.12+ (pyproject)
        "incense").ExperimentLoader

    loader = ExperimentLoader(mongo_uri=grid.uri, db_name=grid.db)
    runs = docs_by_epochs(grid)
    doc = runs[3][1]
    exp = loader.find_by_id(doc["sacred_id"])
    assert exp.id == doc["sacred_id"]
    config = json.loads(json.dumps(exp.to_dict()["config"]))
    assert config == {**doc["config"], "seed": doc["seed"]}  # Sacred adds the seed
    assert exp.status == "COMPLETED"
    assert exp.result == doc["metrics"]["score"]  # the main metric, a number
    assert dict(exp.info["metrics_values"]) == doc["metrics"]

    loss = exp.metrics["loss"]
    assert isinstance(loss, pd.Series)
    assert loss.index.tolist() == list(range(3))  # steps 0..epochs-1
    assert loss.to_numpy() == pytest.approx([1.0, 0.5, 1 / 3])

    linear = loader.find_by_config_key("model.className", "Linear")
    assert sorted(e.id for e in linear) == sorted(d["sacred_id"] for r in runs.values()
                                                  for d in r)
    assert len(loader.find_by_config_key("model.className", "Forest")) == 0
    three = loader.find_by_config_key("epochs", 3)
    assert sorted(e.id for e in three) == sorted(d["sacred_id"] for d in runs[3])
    by_name = loader.find_by_name("toy")
    assert len(by_name) == len(grid.ids)
    assert {e.experiment["name"] for e in by_name} == {"toy"}
    # `result` is the main metric, a number: incense projects it into a column.
    table = by_name.project(on=["result"])
    scores = {d["sacred_id"]: d["metrics"]["score"] for r in runs.values() for d in r}
    assert table["result"].to_dict() == scores


def test_sacred_records_have_what_omniboard_reads(grid: Grid):
    store = grid.queue.store
    for run_id in grid.ids:
        doc = grid.queue.get(run_id)
        record = store.sacred_run(doc["sacred_id"])
        assert record is not None, run_id
        assert record["experiment"]["name"] == "toy"
        assert record["config"] == {**doc["config"], "seed": doc["seed"]}
        assert "training Linear on toy" in record["captured_out"]
        assert record["status"] == "COMPLETED"
        for key in ("heartbeat", "start_time", "stop_time"):
            assert record[key].tzinfo is not None, key  # BSON dates, not strings
        assert record["start_time"] <= record["stop_time"]
        assert record["start_time"] <= record["heartbeat"]
        assert record["result"] == doc["metrics"]["score"]
        assert record["info"]["metrics_values"] == doc["metrics"]
        assert record["host"]["hostname"] == socket.gethostname()
        assert record["meta"]["hse"]["run_id"] == run_id
        assert record["meta"]["command"]
        assert record["format"].startswith("MongoObserver-")
        # The run's series, in the `metrics` collection keyed by the Sacred id.
        series = store.metric_series([doc["sacred_id"]], "loss")
        assert len(series) == 1 and len(series[0]["steps"]) == doc["config"]["epochs"]
        assert np.allclose(series[0]["values"], [1 / (s + 1) for s in series[0]["steps"]])
        # Omniboard finds a run's series through info.metrics (name -> metrics doc id).
        assert record["info"]["metrics"] == [{"name": "loss", "id": str(series[0]["_id"])}]


def test_diff_treats_two_uploads_of_the_same_source_as_the_same_code(grid: Grid, hse, db_name):
    """Two workers starting at once may each upload scenarios.py: same content, new id."""
    import gridfs

    runs = docs_by_epochs(grid)
    store = grid.queue.store
    records = [store.sacred_run(runs[e][0]["sacred_id"]) for e in EPOCHS]
    (name, file_id), = records[0]["experiment"]["sources"]
    content = store.read_file(file_id)
    with RunQueue(grid.uri, db_name, TASKS, study_dir=STUDY) as other:
        fs = gridfs.GridFS(raw_db(other.store))
        uploads = [fs.put(content, filename=name), fs.put(content, filename=name),
                   fs.put(content + b"\n# edited\n", filename=name)]
        for i, (doc, upload) in enumerate(zip([runs[EPOCHS[0]][0], runs[EPOCHS[1]][0],
                                               runs[EPOCHS[1]][1]], uploads)):
            record = {**records[0], "_id": 2000 + i,
                      "experiment": {**records[0]["experiment"], "sources": [[name, upload]]}}
            raw_db(other.store).runs.insert_one(record)
            raw_db(other.store).hse_done.insert_one({**doc, "study": db_name, "sacred_id": 2000 + i})
        assert other.diff("2000", "2001")["sources"] == []
        assert other.diff("2000", "2002")["sources"] == [(name, "changed")]
    assert "same code" in hse("diff", "2000", "2001", db=db_name).out
