"""The `hse` command line, run in-process against the real test server.

Runs are executed by a real `Worker` (in this process, forking a child per run) on the
test Study in tests/study, so `ls`, `show`, `status`, `results` and `cancel` are
checked on genuine queue documents and Sacred records.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import helpers
import pytest
from helpers import raw_db

from hyperspace_explorer.cli import build_parser, main, parse_grid, split_top_level
from hyperspace_explorer.storage import RunFilter, connect
from hyperspace_explorer.storage.mongo import MongoStorage

STUDY = Path(__file__).resolve().parent / "study"
TASKS = STUDY / "tasks"


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def hse(mongo_uri: str, db_name: str, capfd: pytest.CaptureFixture):
    """Run `hse --mongo-uri URI --db DB --tasks-dir tests/study/tasks ARGS...`.

    capfd, not capsys: workers forked by an in-process Worker need a sys.stderr with
    a real file descriptor."""
    def run(*args: str, global_options: bool = True) -> Result:
        capfd.readouterr()  # drop anything printed before
        prefix = ["--mongo-uri", mongo_uri, "--db", db_name, "--tasks-dir", str(TASKS)]
        code = main([*(prefix if global_options else []), *args])
        captured = capfd.readouterr()
        return Result(code, captured.out, captured.err)
    return run


@pytest.fixture
def store(mongo_uri: str, db_name: str):
    s = connect(mongo_uri, db_name)
    yield s
    s.close()


@pytest.fixture
def keep_signal_handlers():
    """A worker run in-process installs SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def submit(hse, *args: str) -> list[str]:
    result = hse("submit", *args)
    assert result.code == 0, result.err
    return result.out.split()


def run_worker(mongo_uri: str, db_name: str, runs: int) -> int:
    """Execute exactly `runs` queued runs with a real worker."""
    return helpers.run_worker(mongo_uri, db_name, max_runs=runs, idle_exit=60)


def table_row(out: str, first_cell: str) -> list[str]:
    """Cells of the rich table row whose first cell is `first_cell`."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row starting with {first_cell!r} in:\n{out}")


# ------------------------------------------------------------------------ parsing
def test_help_works_for_every_command(capsys: pytest.CaptureFixture):
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    subparsers = next(a for a in build_parser()._actions
                      if isinstance(a, argparse._SubParsersAction))
    names = sorted(subparsers.choices)
    assert names == ["backfill", "best", "cancel", "demo", "diff", "export", "ls", "plot", "recover",
                     "requeue", "rerun", "results", "server", "show", "status", "submit", "tune", "tune-dashboard",
                     "ui", "worker", "workers"]
    for name in names:
        assert name in top
        assert main([name, "--help"]) == 0, name
        text = capsys.readouterr().out
        assert text.startswith(f"usage: hse {name}"), text
        assert "example" in text, f"`hse {name} --help` shows no example"
    assert main(["worker", "--help"]) == 0
    assert "--idle-exit" in capsys.readouterr().out  # the hyperspace_worker options


@pytest.mark.parametrize("argv", [["worker", "tasks", "db", "--gpus", "0,,1"],
                                  ["worker", "tasks", "db", "--tags", "gpu,"],
                                  ["submit", "toy", "--tags", ","]])
def test_an_empty_item_in_a_list_of_names_is_refused_naming_the_option(
        argv: list[str], capsys: pytest.CaptureFixture):
    assert main(argv) == 2
    option, value = argv[-2:]
    assert (f"error: argument {option}: an empty item in {value!r}: separate the names with "
            f"single commas") in capsys.readouterr().err
    from hyperspace_explorer.cli.worker import main as hyperspace_worker

    if argv[0] == "worker":  # the same options
        with pytest.raises(SystemExit) as exit_:
            hyperspace_worker(argv[1:])
        assert exit_.value.code == 2 and f"argument {option}: an empty item" in \
            capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["submit", "toy", "--max-attempts", "0"], "must be a positive integer, got 0"),
    (["submit", "toy", "--max-runtime", "nan"],
     "must be a positive, finite number of seconds, got nan"),
    (["submit", "toy", "--gpus", "-1"], "must be an integer from 0 to 2**63 - 1, got -1"),
    (["submit", "toy", "--priority", str(2**63)], "must be an integer from -9223372036854775807"),
    (["submit", "toy", "--priority", "1.5"], "invalid int value: '1.5'"),
    (["submit", "toy", "--seeds", "0"], "must be a positive integer, got 0"),
    (["submit", "toy", "--seed", "-1"], "must be an integer from 0 to 4294967295, got -1"),
    (["rerun", "abc", "--seed", str(2**32)], "must be an integer from 0 to 4294967295"),
    (["ls", "-n", "0"], "must be a positive integer, got 0"),
    (["show", "abc", "--lines", "-1"], "must be an integer from 0 to 2**63 - 1, got -1"),
    (["tune", "toy", "--space", "s.json", "--trials", "0"], "must be a positive integer"),
    (["tune", "toy", "--space", "s.json", "--trials", "2", "--parallel", "0"],
     "must be a positive integer"),
])
def test_a_bad_number_is_refused_naming_the_option_before_any_database_is_reached(
        argv: list[str], message: str, capsys: pytest.CaptureFixture, monkeypatch):
    # The API's own checks name its arguments (max_attempts); typed on the command line,
    # the error names the option, and comes before the embedded server is started.
    monkeypatch.setenv("HSE_MONGO_URI", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=1")
    assert main(argv) == 2
    option = {"-n": "-n/--limit"}.get(argv[-2], argv[-2])
    err = capsys.readouterr().err
    assert f"error: argument {option}" in err and message in err, err


def test_an_unknown_status_lists_the_statuses_by_name(capsys: pytest.CaptureFixture):
    assert main(["ls", "--status", "BOGUS"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'BOGUS'" in err and "QUEUED" in err and "PRUNED" in err
    assert "<Status." not in err


def test_module_runs_as_a_script():
    proc = subprocess.run([sys.executable, "-m", "hyperspace_explorer.cli", "submit", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--grid PATH=V1,V2,..." in proc.stdout


def test_grid_values_split_on_top_level_commas_only():
    assert split_top_level('[50,10],[20],"a,b"') == ["[50,10]", "[20]", '"a,b"']
    assert parse_grid("model.layers=[50,10],[20]") == ("model.layers", [[50, 10], [20]])
    assert parse_grid("model.className=Linear,Forest") == ("model.className",
                                                           ["Linear", "Forest"])
    assert parse_grid("depth=null,3") == ("depth", [None, 3])


# ------------------------------------------------------------------------ submit
def test_submit_set_and_seeds_queue_the_right_documents(hse, store):
    ids = submit(hse, "toy", "--set", "model.className=Linear", "--set", "model.lr=0.5",
                 "--set", "model.layers=[50,10]", "--set", "behaviour=ok",
                 "--seeds", "2", "--priority", "3")
    assert len(ids) == 2
    docs = [store.get_run(i) for i in ids]
    for doc in docs:
        assert doc["config"] == {"model": {"className": "Linear", "lr": 0.5,
                                           "layers": [50, 10]}, "behaviour": "ok"}
        assert (doc["task"], doc["status"], doc["priority"]) == ("toy", "QUEUED", 3)
        assert doc["study"] == store.db_name
    assert sorted(d["seed"] for d in docs) == [100, 101]  # toy.json's seed, +1


def test_submit_explicit_seeds(hse, store):
    ids = submit(hse, "toy", "--set", "model.className=Linear", "--seed", "7", "--seed", "3")
    assert sorted(store.get_run(i)["seed"] for i in ids) == [3, 7]
    both = hse("submit", "toy", "--set", "model.className=Linear", "--seed", "7",
               "--seeds", "2")
    assert both.code == 2 and "not allowed with argument" in both.err
    duplicate = hse("submit", "toy", "--set", "model.className=Linear", "--seed", "7",
                    "--seed", "7")
    assert duplicate.code == 2 and "seeds contain duplicates" in duplicate.err


def test_submit_grid_on_top_of_a_config_file(hse, store, tmp_path: Path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"model": {"className": "Forest"}, "epochs": 7}))
    ids = submit(hse, "toy", "--config", str(base), "--set", "noise=0.25",
                 "--grid", "model.n_trees=5,50", "--grid", "options={\"verbose\":true},{}",
                 "--max-runtime", "30", "--max-attempts", "1")
    docs = [store.get_run(i) for i in ids]
    configs = sorted((d["config"]["model"]["n_trees"], json.dumps(d["config"]["options"]))
                     for d in docs)
    assert configs == [(5, "{\"verbose\": true}"), (5, "{}"),
                       (50, "{\"verbose\": true}"), (50, "{}")]
    for doc in docs:
        assert doc["config"]["epochs"] == 7 and doc["config"]["noise"] == 0.25
        assert doc["config"]["model"]["className"] == "Forest"
        assert (doc["max_runtime"], doc["max_attempts"], doc["seed"]) == (30, 1, 100)


def test_submit_bad_key_names_the_dotted_path_and_queues_nothing(hse, store):
    result = hse("submit", "toy", "--set", "model.className=Linear", "--set", "model.lrr=1")
    assert result.code == 2
    assert result.err.startswith("hse: error: config.model.lrr: unknown key 'lrr'")
    assert "did you mean 'lr'" in result.err
    assert "Traceback" not in result.err
    assert sum(store.count_by_status(RunFilter()).values()) == 0


@pytest.mark.parametrize("args, message", [
    (["--set", "model.C"], "expected PATH=VALUE"),
    (["--set", "model..C=1"], "empty key"),
    (["--grid", "model.C=1,,2"], "empty value"),
    (["--grid", "epochs=1", "--grid", "epochs=2"], "given twice"),
    (["--config", "/nonexistent/base.json"], "cannot read it"),
])
def test_submit_rejects_malformed_options(hse, args, message):
    result = hse("submit", "toy", "--set", "model.className=Linear", *args)
    assert result.code == 2
    assert message in result.err


def test_submit_unknown_task_lists_the_known_ones(hse):
    result = hse("submit", "nope")
    assert result.code == 2
    assert "unknown task 'nope'" in result.err and "known tasks: noop, " in result.err


def test_data_commands_need_a_database(mongo_uri: str, capsys, monkeypatch):
    monkeypatch.delenv("HSE_DB", raising=False)
    assert main(["--mongo-uri", mongo_uri, "status"]) == 2
    assert "no database given: pass --db NAME" in capsys.readouterr().err


def test_database_can_come_from_the_environment(mongo_uri, db_name, capsys, monkeypatch):
    monkeypatch.setenv("HSE_DB", db_name)
    assert main(["status", "--mongo-uri", mongo_uri]) == 0  # options after the command too
    assert f"no runs in study '{db_name}'" in capsys.readouterr().out


def test_credentials_in_uris_are_never_printed(capsys):
    code = main(["--mongo-uri", "mongodb://alice:s3cret@localhost:notaport", "--db", "x",
                 "ls"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hse: error:") and "s3cret" not in err and "***" in err


# ------------------------------------------------------------------------ on executed runs
@pytest.fixture
def executed(hse, mongo_uri, db_name, keep_signal_handlers) -> dict[str, list[str]]:
    """Five runs of `toy` executed by a real worker: a 2x2 grid (epochs 1 and 3, two
    seeds) that completes, and one run whose user code raises."""
    ok = submit(hse, "toy", "--set", "model.className=Linear", "--grid", "epochs=1,3",
                "--seeds", "2")
    failed = submit(hse, "toy", "--set", "model.className=Forest", "--set", "behaviour=raise")
    assert run_worker(mongo_uri, db_name, runs=5) == 5
    return {"ok": ok, "failed": failed}


def test_status_counts_runs_per_task_and_status(hse, executed, monkeypatch):
    def read_every_run(*args, **kwargs):
        raise AssertionError("hse status must count on the server, not read every run")

    monkeypatch.setattr(MongoStorage, "find_runs", read_every_run)
    result = hse("status")
    assert result.code == 0, result.err
    header = table_row(result.out, "task")
    assert table_row(result.out, "toy") == ["toy", "0", "0", "4", "1", "0", "0", "0", "5"]
    assert header[1:] == ["QUEUED", "RUNNING", "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED",
                          "PRUNED", "total"]


def test_ls_lists_recent_runs_with_filters(hse, executed, store):
    everything = hse("ls")
    assert everything.code == 0
    for run_id in executed["ok"] + executed["failed"]:
        row = table_row(everything.out, run_id)
        doc = store.get_run(run_id)
        assert row[1:5] == [str(doc["sacred_id"]), "toy", doc["status"], str(doc["seed"])]
        assert row[7] == doc["host"]
    ok_row = table_row(everything.out, executed["ok"][0])
    assert ok_row[5].startswith("score=0.51")  # 0.5 + 0.01 * epochs(1)
    assert table_row(everything.out, executed["failed"][0])[5] == "error"  # the reason

    failed = hse("ls", "--status", "failed")
    assert executed["failed"][0] in failed.out
    assert not any(run_id in failed.out for run_id in executed["ok"])

    newest = hse("ls", "-n", "1")
    assert executed["failed"][0] in newest.out  # submitted last
    assert not any(run_id in newest.out for run_id in executed["ok"])

    assert "no matching runs" in hse("ls", "--task", "noop").out


def test_show_prints_config_metrics_series_and_output(hse, executed, store):
    run_id = executed["ok"][0]
    doc = store.get_run(run_id)
    by_id = hse("show", run_id)
    assert by_id.code == 0
    assert f"run {run_id}  (sacred id {doc['sacred_id']})" in by_id.out
    assert '"className": "Linear"' in by_id.out and '"epochs": 1' in by_id.out
    assert f"score = {doc['metrics']['score']}" in by_id.out
    assert "loss: 1 step(s), last 1" in by_id.out  # log_scalar over epochs
    assert "training Linear on toy" in by_id.out  # Sacred's captured output
    by_sacred_id = hse("show", str(doc["sacred_id"]))
    assert by_sacred_id.out == by_id.out

    failed = hse("show", executed["failed"][0])
    assert "FAILED" in failed.out
    assert "RuntimeError: boom from user code" in failed.out


def test_show_of_an_unknown_run_is_a_clear_error(hse):
    result = hse("show", "0123456789ab")
    assert result.code == 2
    assert result.err.startswith("hse: error: no run with id '0123456789ab' in database")


def test_results_rank_configs_over_seeds(hse, executed):
    as_json = hse("results", "toy", "--format", "json")
    assert as_json.code == 0, as_json.err
    rows = json.loads(as_json.out)
    assert [(r["rank"], r["epochs"], r["n"]) for r in rows] == [(1, 3, 2), (2, 1, 2)]
    assert rows[0]["score_mean"] == pytest.approx(0.53)

    table = hse("results", "toy")
    assert "ranked by score (maximize)" in table.out
    assert table_row(table.out, "1")[1:4] == ["3", "2", "0.5300 ± 0.0000"]

    by_model = hse("results", "toy", "--by", "model.className", "--format", "csv")
    assert by_model.out.splitlines()[0].startswith("rank,model.className,n,")
    assert by_model.out.splitlines()[1].startswith("1,Linear,4,")

    missing = hse("results", "noop")
    assert missing.code == 2
    assert "no runs of task 'noop'" in missing.err and "tasks with runs: toy" in missing.err


def test_cancel_queued_runs_by_id_task_or_all(hse, store, executed):
    first, second, third = submit(hse, "toy", "--set", "model.className=Linear",
                                  "--set", "epochs=2", "--seeds", "3")  # not run yet
    result = hse("cancel", first, executed["ok"][0])
    assert result.code == 0
    assert f"run {executed['ok'][0]} already ended (COMPLETED)" in result.out
    assert "cancelled 1 queued run(s)" in result.out
    assert store.get_run(first)["status"] == "CANCELLED"
    assert store.get_run(second)["status"] == "QUEUED"

    assert "cancelled 2 queued run(s)" in hse("cancel", "--task", "toy").out
    assert {store.get_run(i)["status"] for i in (second, third)} == {"CANCELLED"}
    assert store.get_run(executed["ok"][0])["status"] == "COMPLETED"
    assert "cancelled 0 queued run(s)" in hse("cancel", "--all").out

    nothing = hse("cancel")
    assert nothing.code == 2 and "say what to cancel" in nothing.err


# ------------------------------------------------------------------------ maintenance
def test_recover_requeues_expired_leases_and_archives(hse, store):
    lost, finished = submit(hse, "toy", "--set", "model.className=Linear", "--seeds", "2")
    # A worker that claimed `lost` and died: its lease is already over.
    assert store.claim(store.db_name, ["toy"], "ghost:1", lease_s=-1)["_id"] == lost
    # One that finished a run and died before archiving it.
    doc = store.claim(store.db_name, ["toy"], "ghost:2", lease_s=60)
    assert doc["_id"] == finished and store.finish(finished, doc["token"], "FAILED", {})

    result = hse("recover")
    assert result.code == 0
    assert "recovered 1 run(s)" in result.out
    assert "archived 1 finished run(s)" in result.out
    doc = store.get_run(lost)
    assert (doc["status"], doc["attempt"]) == ("QUEUED", 1)
    assert "ghost:1 stopped renewing its lease" in doc["last_error"]
    assert raw_db(store).hse_done.find_one({"_id": finished})["status"] == "FAILED"


def test_workers_flags_silent_ones_as_dead(hse, store):
    assert "no workers registered" in hse("workers").out
    now = time.time()
    for worker_id, pid, beat in (("h:1:a", 1111, now), ("h:2:b", 2222, now - 3600)):
        store.register_worker({"_id": worker_id, "host": "h", "pid": pid, "study": "s",
                               "heartbeat": beat, "current_run": "abc" if pid == 1111 else None,
                               "executed": 4})
    result = hse("workers")
    assert result.code == 0
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.out.splitlines()
            if line.startswith("│ h ")]
    # No lease_s recorded (an older worker): DEAD after 3x the default heartbeat.
    assert rows == [["h", "1111", "s", "abc", "4", rows[0][5], "15.0s", "alive"],
                    ["h", "2222", "s", "-", "4", "1h00m ago", "15.0s", "DEAD"]]


def test_workers_are_dead_after_their_own_lease_and_show_stopping(hse, store):
    now = time.time()
    for pid, beat, lease, stopping in ((1, now - 100, 600.0, False),  # slow but within lease
                                       (2, now - 100, 60.0, False),   # past its lease
                                       (3, now - 1, 60.0, True),      # asked to stop
                                       (4, now - 100, 60.0, True)):   # stopping, then died
        store.register_worker({"_id": f"w:{pid}", "host": "w", "pid": pid, "study": "s",
                               "heartbeat": beat, "current_run": None, "executed": 0,
                               "stopping": stopping, "heartbeat_s": lease / 12,
                               "lease_s": lease})
    result = hse("workers")
    assert result.code == 0
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                          for line in result.out.splitlines()
                                          if line.startswith("│ w "))}
    assert {pid: (row[6], row[7]) for pid, row in rows.items()} == {
        "1": ("10m00s", "alive"), "2": ("1m00s", "DEAD"), "3": ("1m00s", "stopping"),
        "4": ("1m00s", "DEAD")}
    assert "DEAD: no heartbeat for longer than its lease" in result.out


def test_worker_command_executes_runs(hse, mongo_uri, db_name, store, keep_signal_handlers):
    (run_id,) = submit(hse, "toy", "--set", "model.className=Linear")
    # --mongo-uri before the subcommand must reach the worker.
    code = main(["--mongo-uri", mongo_uri, "worker", str(TASKS), db_name,
                 "--study-dir", str(STUDY), "--max-runs", "1", "--interval", "0.05",
                 "--idle-exit", "60"])
    assert code == 0
    assert store.get_run(run_id)["status"] == "COMPLETED"


def test_server_start_status_stop(capsys):
    """The machine-wide server of this session's HSE_HOME (see conftest)."""
    assert main(["server", "start"]) == 0
    assert "embedded server running at mongodb://" in capsys.readouterr().out
    assert main(["server", "status"]) == 0
    assert capsys.readouterr().out.startswith("running")
    assert main(["server", "stop"]) == 0
    assert "embedded server stopped" in capsys.readouterr().out
    assert main(["server", "status"]) == 1
    assert capsys.readouterr().out.startswith("not running")


# ------------------------------------------------------------------------ startup cost
HEAVY = ("matplotlib", "scipy", "pandas", "sacred", "torch")


@pytest.mark.parametrize("args", [["--help"], ["status"], ["ls"]])
def test_fast_commands_import_no_heavy_module(mongo_uri, db_name, args):
    """`hse --help`, `hse status` and `hse ls` answer without loading the analysis,
    plotting or execution stack (a fresh interpreter, so nothing is imported already)."""
    probe = ("import sys; from hyperspace_explorer.cli import main; code = main(sys.argv[1:]); "
             f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}); "
             "print('EXIT', code, 'HEAVY', heavy, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe, "--mongo-uri", mongo_uri,
                           "--db", db_name, *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "EXIT 0 HEAVY []" in proc.stderr, proc.stderr
    assert ("usage: hse" if args == ["--help"] else
            "no runs in study" if args == ["status"] else "no matching runs") in proc.stdout


def test_plot_help_names_the_formats_plots_can_write():
    from hyperspace_explorer.cli.results import PLOT_FORMATS
    from hyperspace_explorer.plots import SAVE_FORMATS

    assert PLOT_FORMATS == SAVE_FORMATS


@pytest.mark.parametrize("command", [["-m", "hyperspace_explorer.worker"],
                                     [str(Path(__file__).resolve().parents[1] / "bin" /
                                          "hyperspace_worker.py")]])
def test_worker_entry_points_parse_the_worker_options(command):
    proc = subprocess.run([sys.executable, *command, "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: hyperspace_worker") and "--idle-exit" in proc.stdout


# ------------------------------------------------------------------------ the same answers
def test_cli_and_run_queue_give_the_same_best_and_summary(hse, executed, mongo_uri, db_name):
    """Reading commands need no tasks directory, and say what RunQueue says."""
    from hyperspace_explorer.cli.render import json_ready
    from hyperspace_explorer.queue import RunQueue

    with RunQueue(mongo_uri, db_name) as q:  # no tasks_dir, as in a notebook
        best = q.best("toy")
        summary = q.summary("toy")
        by_task = q.status_by_task()
        assert best["config"] == q.get(best["run_id"])["config"]  # complete, with defaults
    assert best["resubmit"] == (f"q.submit('toy', {best['config']!r}, force=True, "
                                f"seeds=[{best['seed']}])")
    assert json.loads(hse("best", "toy", "--json").out) == json_ready(best)
    rows = json.loads(hse("results", "toy", "--format", "json").out)
    assert [r["score_mean"] for r in rows] == pytest.approx(summary["score_mean"].tolist())
    assert by_task == {"toy": {"COMPLETED": 4, "FAILED": 1}}
    no_tasks_dir = main(["--mongo-uri", mongo_uri, "--db", db_name, "--tasks-dir",
                         "/nonexistent/tasks", "best", "toy", "--json"])
    assert no_tasks_dir == 0


# ------------------------------------------------------------------------ defects
def test_best_prints_commands_that_work_as_printed(hse, executed, store, tmp_path: Path):
    saved = tmp_path / "best.json"
    result = hse("best", "toy", "--save", str(saved))
    assert result.code == 0, result.err
    best = json.loads(hse("best", "toy", "--json").out)
    (line,) = [ln.strip() for ln in result.out.splitlines()
               if ln.strip().startswith("hse submit")]
    argv = shlex.split(line)
    assert argv[argv.index("--db") + 1] == store.db_name
    assert argv[argv.index("--mongo-uri") + 1] == store.uri
    again = main(argv[1:])  # as printed: the run is COMPLETED, so --force is in it
    assert again == 0
    copies = [d for d in store.find_runs(RunFilter(study=store.db_name, status="QUEUED"))]
    assert [(d["config"], d["seed"]) for d in copies] == [(best["config"], best["seed"])]

    # The Python lines, run as printed, queue one more copy.
    lines = [ln.strip() for ln in result.out.splitlines()]
    setup = next(ln for ln in lines if ln.startswith("or in Python, with q = "))
    call = lines[lines.index(setup) + 1]
    namespace: dict = {}
    exec("from hyperspace_explorer import RunQueue\n"
         + setup.removeprefix("or in Python, with ").rstrip(":"), namespace)
    try:
        (copy_id,) = eval(call, namespace)
    finally:
        namespace["q"].close()
    assert (store.get_run(copy_id)["config"], store.get_run(copy_id)["seed"]) == (
        best["config"], best["seed"])

    unsaved = hse("best", "toy")  # without --save: first save, then submit
    assert f"hse best toy --save best.json --mongo-uri {store.uri} --db {store.db_name}" \
        in unsaved.out


def test_results_title_counts_only_the_runs_it_ranks(hse, executed):
    (extra,) = submit(hse, "toy", "--set", "model.className=Linear", "--set", "epochs=9")
    assert hse("cancel", extra).code == 0
    table = hse("results", "toy")
    assert table.code == 0, table.err
    assert ("task 'toy': 4 completed run(s) (1 failed, 1 cancelled not shown), ranked by "
            "score (maximize)") in " ".join(table.out.split())


def test_ls_and_show_give_the_host_of_a_running_run(hse, store):
    (run_id,) = submit(hse, "toy", "--set", "model.className=Linear")
    assert store.claim(store.db_name, ["toy"], "gpu-node-7:4242:a1b2c3", lease_s=600)
    row = table_row(hse("ls").out, run_id)
    assert (row[3], row[7]) == ("RUNNING", "gpu-node-7")
    shown = hse("show", run_id).out
    assert "host" in shown and "gpu-node-7" in shown and "gpu-node-7:4242:a1b2c3" in shown


def test_show_explains_a_timeout(hse, store, mongo_uri, db_name, keep_signal_handlers):
    (slow,) = submit(hse, "toy", "--set", "model.className=Linear", "--set", "behaviour=sleep",
                     "--set", "duration=60", "--max-runtime", "0.3")
    assert run_worker(mongo_uri, db_name, runs=1) == 1
    assert store.get_run(slow)["status"] == "TIMEOUT"
    shown = hse("show", slow).out
    error = shown[shown.index("\nerror\n"):]
    assert "ran longer than max_runtime=0.3s and was stopped" in error

    # A run recorded without an error message still says why it ended.
    (old,) = submit(hse, "toy", "--set", "model.className=Linear", "--set", "epochs=7")
    doc = store.claim(store.db_name, ["toy"], "h:1:a", lease_s=600)
    assert doc["_id"] == old and store.finish(old, doc["token"], "TIMEOUT",
                                              {"reason": "timeout"})
    shown = hse("show", old).out
    assert "ran longer than its max_runtime and was stopped" in \
        shown[shown.index("\nerror\n"):]


def test_show_gives_the_last_rejection_of_a_run(hse, store):
    (run_id,) = submit(hse, "toy", "--set", "model.className=Linear")
    doc = store.claim(store.db_name, ["toy"], "old:9:ff", lease_s=600)
    assert store.requeue(run_id, doc["token"], {"last_rejection": {
        "worker": "old:9:ff", "host": "old", "code_digest": "c0ffee", "at": time.time(),
        "error": "unknown Scenario class 'Toy2'"}})
    shown = hse("show", run_id).out
    line = next(ln for ln in shown.splitlines() if ln.startswith("last rejection"))
    assert "unknown Scenario class 'Toy2'" in line and "old:9:ff" in line and "c0ffee" in line


def test_a_key_set_twice_is_an_error_naming_it(hse, store):
    result = hse("submit", "toy", "--set", "model.className=Linear", "--set", "model.lr=0.1",
                 "--set", "model.lr=0.5")
    assert result.code == 2
    assert result.err.startswith("hse: error: config.model.lr: given twice with --set")
    both = hse("submit", "toy", "--set", "model.className=Linear", "--set", "epochs=2",
               "--grid", "epochs=1,3")
    assert both.code == 2 and "config.epochs: given with both --set and --grid" in both.err
    assert sum(store.count_by_status(RunFilter()).values()) == 0


def test_submit_says_which_runs_it_skipped_as_duplicates(hse, store):
    (first,) = submit(hse, "toy", "--set", "model.className=Linear")
    again = hse("submit", "toy", "--set", "model.className=Linear")
    assert again.code == 0 and again.out.split() == []
    assert "skipped 1 run(s) already queued, running or completed" in again.err
    assert first in again.err and "--force" in again.err
    forced = hse("submit", "toy", "--set", "model.className=Linear", "--force")
    assert forced.code == 0 and len(forced.out.split()) == 1


def test_workers_caption_only_what_applies_and_show_rejections(hse, store):
    now = time.time()
    store.register_worker({"_id": "h:1:a", "host": "h", "pid": 1, "study": "s",
                           "heartbeat": now, "current_run": None, "executed": 2,
                           "lease_s": 60.0})
    alive = hse("workers")
    assert alive.code == 0
    assert "1 worker(s)" in alive.out and "DEAD" not in alive.out
    assert "cannot run" not in alive.out
    store.register_worker({"_id": "h:2:b", "host": "h", "pid": 2, "study": "s",
                           "heartbeat": now, "current_run": None, "executed": 0,
                           "lease_s": 60.0, "stopping": True, "cannot_run": 3,
                           "last_rejection": "run 0123456789ab: unknown key 'lrr'"})
    result = hse("workers")
    rows = {cells[1]: cells for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                          for line in result.out.splitlines()
                                          if line.startswith("│ h "))}
    assert (rows["1"][7], rows["1"][8]) == ("alive", "0")
    assert (rows["2"][7], rows["2"][8]) == ("stopping", "3")
    assert "stopping: finishes its current run, then exits" in result.out
    assert "DEAD" not in result.out
    assert "worker h:2 last refused run 0123456789ab: unknown key 'lrr'" in result.out


# ------------------------------------------------------------------------ requeue, needs
def test_requeue_puts_failed_runs_back(hse, executed, store):
    (failed,) = executed["failed"]
    result = hse("requeue", "--task", "toy")
    assert result.code == 0, result.err
    assert "requeued 1 finished run(s)" in result.out
    doc = store.get_run(failed)
    assert doc["status"] == "QUEUED" and doc["attempt"] == 0
    assert doc["previous_attempts"][-1]["status"] == "FAILED"
    assert hse("requeue").code == 2 and "say what to requeue" in hse("requeue").err
    completed = executed["ok"][0]
    assert hse("requeue", completed).code == 0  # by id: COMPLETED too
    assert store.get_run(completed)["status"] == "QUEUED"


def test_status_names_runs_no_live_worker_can_take(hse, store):
    submit(hse, "toy", "--set", "model.className=Linear", "--gpus", "2", "--tags", "big-mem")
    out = hse("status").out
    assert "1 queued run(s) of task 'toy' need 2 GPU(s) and tags big-mem" in out
    (doc,) = list(store.find_runs(RunFilter(study=store.db_name)))
    assert (doc["gpus"], doc["tags"]) == (2, ["big-mem"])


def test_credentials_against_the_embedded_server_are_one_clear_line(hse, mongo_uri):
    if os.environ.get("HSE_TEST_MONGO_URI"):
        pytest.skip("checks the embedded server's lack of authentication")
    uri = mongo_uri.replace("mongodb://", "mongodb://alice:s3cret@")
    result = hse("--mongo-uri", uri, "--db", "hse_test_auth", "status", global_options=False)
    assert result.code == 2 and "authentication" in result.err
    assert "Traceback" not in result.err and "s3cret" not in result.err
