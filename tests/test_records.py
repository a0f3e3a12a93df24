"""Sacred records as complete as Sacred's own.

The same tiny experiment runs (a) as a bare Sacred run with Sacred's MongoObserver against
the test server and (b) through a worker, and the two records are compared field by field:
keys, types and nesting. The intended differences, all additions (README, "Dashboards"):

- `meta.hse`: the queue's run id, task, attempt, fencing token and scenario;
- `info.metrics_values`: every metric the run returned (`result` is the main one alone);
- an artifact entry's `content_type` (GridFS keeps it as `contentType` on MongoDB only:
  the embedded server drops that file field, so the record names it);
- a run the worker stopped (timeout, cancel, worker shutdown) or found dead has the
  status TIMEOUT / INTERRUPTED / FAILED, a `fail_trace` saying why, its log's tail as
  `captured_out` and its stop time as last `heartbeat`; a bare Sacred process killed the
  same way would leave its record RUNNING.

A run stopped from outside keeps the metric points and output it produced before: the
scenario logs its points and prints a marker, then blocks; the tests wait for those to
be visible, and only then stop it.
"""
from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import gridfs
import pytest
from helpers import process_stopped, run_worker, start_worker, wait_for

from hyperspace_explorer.server import home_dir

POINTS = 4
BLOCK = {"model": {"className": "Linear"}, "behaviour": "block", "epochs": POINTS,
         "duration": 600.0}
FAST = ("--heartbeat", "0.2", "--lease", "30", "--interval", "0.1", "--max-runs", "1",
        "--idle-exit", "30")

# The tiny experiment, bare: what tests/study's ToyScenario does for the behaviours used
# here, under Sacred's defaults (its host info, ...), in a process of its own.
BARE = textwrap.dedent("""
    import os, sys, tempfile
    from hyperspace_explorer.sacred_compat import import_sacred
    import_sacred()
    from sacred import SETTINGS, Experiment
    from sacred.observers import MongoObserver

    # Sacred's default "fd" capture reads the output through a `tee` process and may
    # miss the last lines; "sys" (the worker's) captures the same fields, reliably.
    SETTINGS.CAPTURE_MODE = "sys"
    uri, db, behaviour = sys.argv[1:4]
    ex = Experiment("toy")
    ex.observers.append(MongoObserver(url=uri, db_name=db, collection_prefix="bare"))

    @ex.main
    def main(_run):
        if behaviour == "raise":
            raise RuntimeError("boom from user code")
        if behaviour == "artifact":
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "predictions.csv")
                with open(path, "w") as f:
                    f.write("id,label\\n1,0\\n")
                _run.add_artifact(path, content_type="text/csv", metadata={"rows": 1})
        for step in range(3):
            _run.log_scalar("loss", 1.0 / (step + 1), step)
        print("training Linear on toy")
        return 0.53

    try:
        ex.run()
    except RuntimeError:
        pass  # recorded as FAILED
    """)


def bare_record(tmp_path: Path, raw, mongo_uri: str, db_name: str, behaviour: str) -> dict:
    script = tmp_path / "bare.py"
    script.write_text(BARE)
    out = subprocess.run([sys.executable, str(script), mongo_uri, db_name, behaviour],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = raw.bare_runs.find({})
    return record


def worker_record(q, raw, tmp_path: Path, mongo_uri: str, db_name: str,
                  behaviour: str) -> dict:
    (run_id,) = q.submit("toy", {"model": {"className": "Linear"}, "behaviour": behaviour})
    assert run_worker(mongo_uri, db_name, tmp_path, max_runs=1) == 1
    return raw.runs.find_one({"_id": q.get(run_id)["sacred_id"]})


def shape(value: Any) -> Any:
    """The type tree of a stored value: a dict's keys with their shapes, a list's
    distinct element shapes, a scalar's type."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return ("list", sorted({repr(shape(item)) for item in value}))
    return type(value).__name__


def is_date(value: Any, *, lenient: bool = False) -> bool:
    """A BSON date. `lenient` for the bare run's record: Sacred updates it with `$set`,
    which nx-27017 turns into a string for some datetimes (the worker's records are
    rewritten whole, so they always hold dates)."""
    if isinstance(value, datetime.datetime):
        return True
    if lenient and isinstance(value, str):
        try:
            datetime.datetime.fromisoformat(value)
            return True
        except ValueError:
            return False
    return False


def without(record: dict, *keys: str) -> dict:
    return {key: value for key, value in record.items() if key not in keys}


def assert_same_series_shape(raw, ours: dict, bare: dict) -> None:
    (our_loss,) = raw.metrics.find({"run_id": ours["_id"], "name": "loss"})
    (bare_loss,) = raw.bare_metrics.find({"run_id": bare["_id"], "name": "loss"})
    timestamps = (our_loss.pop("timestamps"), bare_loss.pop("timestamps"))
    assert shape(our_loss) == shape(bare_loss)
    assert all(is_date(t) for t in timestamps[0])
    assert all(is_date(t, lenient=True) for t in timestamps[1])
    assert len(timestamps[0]) == len(timestamps[1]) == 3
    assert (our_loss["steps"], our_loss["values"]) == (bare_loss["steps"], bare_loss["values"])
    # Omniboard finds a run's series through info.metrics: [{name, id of the document}]
    assert ours["info"]["metrics"] == [{"name": "loss", "id": str(our_loss["_id"])}]
    assert shape(ours["info"]["metrics"]) == shape(bare["info"]["metrics"])


@pytest.mark.parametrize("behaviour", ["artifact", "raise"])
def test_a_worker_record_has_the_fields_and_types_of_a_bare_sacred_run(
        behaviour, q, raw, tmp_path, mongo_uri, db_name):
    bare = bare_record(tmp_path, raw, mongo_uri, db_name, behaviour)
    ours = worker_record(q, raw, tmp_path, mongo_uri, db_name, behaviour)

    assert set(ours) == set(bare)
    assert ours["status"] == bare["status"] == ("FAILED" if behaviour == "raise"
                                               else "COMPLETED")
    for key in ("format", "command", "captured_out"):
        assert type(ours[key]) is type(bare[key]) is str, key
    for key in ("start_time", "stop_time", "heartbeat"):
        assert is_date(ours[key]), key
        assert is_date(bare[key], lenient=True), key
    assert ours["start_time"] <= ours["heartbeat"] and ours["start_time"] <= ours["stop_time"]
    assert shape(ours["experiment"]).keys() == shape(bare["experiment"]).keys()
    for key in ("base_dir", "mainfile", "name", "dependencies", "sources"):
        assert shape(ours["experiment"][key]) == shape(bare["experiment"][key]), key
    assert type(ours["experiment"]["repositories"]) is list
    # Host facts: the same keys, e.g. no `gpus: null` where Sacred leaves `gpus` out.
    assert shape(ours["host"]) == shape(bare["host"])
    assert ours["host"].get("gpus", "absent") is not None
    assert shape(without(ours["meta"], "hse")) == shape(bare["meta"])
    assert type(ours["config"]["seed"]) is type(bare["config"]["seed"]) is int
    assert ours["resources"] == bare["resources"] == []

    if behaviour == "raise":
        assert shape(ours["fail_trace"]) == shape(bare["fail_trace"]) == ("list", ["'str'"])
        for trace in (ours["fail_trace"], bare["fail_trace"]):
            assert trace[-1].strip() == "RuntimeError: boom from user code"
        assert ours["result"] is bare["result"] is None
        assert shape(ours["info"]) == shape(bare["info"]) == {}
        return

    # `result` is the main metric, a number, as a bare run returning it has it.
    assert type(ours["result"]) is type(bare["result"]) is float
    assert ours["result"] == ours["info"]["metrics_values"]["score"]
    assert set(ours["info"]["metrics_values"]) == {"score", "draw"}
    assert shape(without(ours["info"], "metrics_values")) == shape(bare["info"])
    assert "training Linear on toy" in ours["captured_out"]
    assert "training Linear on toy" in bare["captured_out"]
    assert_same_series_shape(raw, ours, bare)

    # Artifacts: the same entry (plus its content type), the same stored file.
    (our_entry,), (bare_entry,) = ours["artifacts"], bare["artifacts"]
    assert shape(without(our_entry, "content_type")) == shape(bare_entry)
    assert our_entry["name"] == bare_entry["name"] == "predictions.csv"
    assert our_entry["content_type"] == "text/csv"
    fs = gridfs.GridFS(raw)
    files = [fs.get(entry["file_id"]) for entry in (our_entry, bare_entry)]
    assert files[0].read() == files[1].read() == b"id,label\n1,0\n"
    assert files[0].metadata == files[1].metadata == {"rows": 1}
    stored = [raw["fs.files"].find_one({"_id": entry["file_id"]})
              for entry in (our_entry, bare_entry)]
    # MongoDB keeps GridFS's contentType ("text/csv" in both); nx-27017 drops it in both
    assert stored[0].get("contentType") == stored[1].get("contentType")


# --------------------------------------------------------- runs stopped from outside
def record_of(raw, run_id: str) -> dict | None:
    return raw.runs.find_one({"meta.hse.run_id": run_id})


def logged_steps(raw, run_id: str) -> list:
    record = record_of(raw, run_id)
    series = None if record is None else raw.metrics.find_one(
        {"run_id": record["_id"], "name": "loss"})
    return (series or {}).get("steps") or []


def marker_pid(run_id: str) -> int | None:
    """The pid of the run's process, once its log shows it printed its marker."""
    try:
        text = (home_dir() / "logs" / f"{run_id}.log").read_text()
    except OSError:
        return None
    found = re.search(rf"logged {POINTS} points in pid (\d+)", text)
    return int(found.group(1)) if found else None


def assert_kept(raw, record: dict, status: str, why: str) -> None:
    """The record of a stopped run has what the run produced before it was stopped."""
    assert record["status"] == status
    assert why in record["fail_trace"][0]
    assert f"logged {POINTS} points" in record["captured_out"]
    (loss,) = raw.metrics.find({"run_id": record["_id"], "name": "loss"})
    assert loss["steps"] == list(range(POINTS))
    assert loss["values"] == pytest.approx([1.0 / (s + 1) for s in range(POINTS)])
    assert all(is_date(t) for t in loss["timestamps"])
    assert record["info"]["metrics"] == [{"name": "loss", "id": str(loss["_id"])}]
    assert is_date(record["heartbeat"]) and is_date(record["stop_time"])
    assert record["start_time"] <= record["heartbeat"] <= record["stop_time"]
    assert "result" in record and record["result"] is None  # as Sacred's before a result


def test_metric_points_reach_the_database_while_the_run_goes_on(
        q, raw, procs, mongo_uri, db_name):
    (run_id,) = q.submit("toy", BLOCK)
    worker = start_worker(mongo_uri, db_name, *FAST)
    procs.append(worker)
    wait_for(lambda: logged_steps(raw, run_id) == list(range(POINTS)), 60,
             "the run's points in the metrics collection")
    wait_for(lambda: (record_of(raw, run_id) or {}).get("info", {}).get("metrics"), 60,
             "the record to name the series")
    assert record_of(raw, run_id)["status"] == "RUNNING"
    wait_for(lambda: marker_pid(run_id), 60, "the run's marker in its log")
    assert q.cancel(run_id) == {"cancelled": 0, "stopping": 1}
    assert worker.wait(60) == 0
    doc = q.get(run_id)
    assert doc["status"] == "CANCELLED"
    assert_kept(raw, raw.runs.find_one({"_id": doc["sacred_id"]}), "INTERRUPTED",
                "cancelled while running")


@pytest.mark.parametrize("how", ["timeout", "cancel", "kill"])
def test_a_run_stopped_from_outside_keeps_its_metrics_and_output(
        how, q, raw, procs, mongo_uri, db_name):
    """The worker is frozen (SIGSTOP) while its run logs its points and prints its
    marker; once the marker is in the log, the run is stopped (a cancel, a SIGKILL, or
    its time running out: 3 s after it started, by then or soon after) and the worker
    thawed. So the stop comes after the points whatever the machine's speed, and the
    points were still in the pipe to the worker when it came."""
    (run_id,) = q.submit("toy", BLOCK, max_runtime=3.0 if how == "timeout" else None)
    worker = start_worker(mongo_uri, db_name, *FAST)
    procs.append(worker)
    # Its record exists: the run's process has its spec and runs without the worker.
    wait_for(lambda: record_of(raw, run_id), 60, "the run to start", 0.01)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: process_stopped(worker.pid), 10, "the worker to stop")
        pid = wait_for(lambda: marker_pid(run_id), 60, "the run's marker in its log")
        if how == "cancel":
            assert q.cancel(run_id) == {"cancelled": 0, "stopping": 1}
        elif how == "kill":
            os.kill(pid, signal.SIGKILL)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert worker.wait(60) == 0
    doc = q.get(run_id)
    record = raw.runs.find_one({"_id": doc["sacred_id"]})
    status, sacred_status, why = {
        "timeout": ("TIMEOUT", "TIMEOUT", "max_runtime=3"),
        "cancel": ("CANCELLED", "INTERRUPTED", "cancelled while running"),
        "kill": ("FAILED", "FAILED", "killed by signal SIGKILL")}[how]
    assert doc["status"] == status
    assert_kept(raw, record, sacred_status, why)


def test_a_run_logging_points_without_pause_still_times_out(q, raw, procs, mongo_uri,
                                                           db_name):
    """The worker drains the run's events, but not past a beat or the deadline: the
    lease, cancel and timeout checks are not starved by a run that never stops logging."""
    (run_id,) = q.submit("toy", {"model": {"className": "Linear"}, "behaviour": "stream"},
                         max_runtime=1.0)
    worker = start_worker(mongo_uri, db_name, *FAST)
    procs.append(worker)
    assert worker.wait(120) == 0
    doc = q.get(run_id)
    assert doc["status"] == "TIMEOUT"
    record = raw.runs.find_one({"_id": doc["sacred_id"]})
    assert record["status"] == "TIMEOUT"
    series = list(raw.metrics.find({"run_id": doc["sacred_id"], "name": "loss"}))
    steps = series[0]["steps"] if series else []
    assert steps == list(range(len(steps)))  # every point logged in order, none twice


def test_a_stopped_runs_output_is_its_logs_tail_with_a_note_when_cut(tmp_path):
    from hyperspace_explorer.execution.records import OUTPUT_LIMIT, logged_output
    from hyperspace_explorer.logs import cut_note

    log = tmp_path / "run.log"
    lines = [f"line {i:07d} " + "x" * 80 + "\n" for i in range(2 * OUTPUT_LIMIT // 90)]
    log.write_text("".join(lines))
    out = logged_output(log)
    assert out.startswith(cut_note(OUTPUT_LIMIT)) and len(out) <= OUTPUT_LIMIT
    assert out.endswith(lines[-1]) and lines[-2] in out and lines[0] not in out
    log.write_text("progress 10%\rprogress 100%\ndone\n")  # filtered as Sacred filters
    assert logged_output(log) == "progress 100%\ndone\n"
    assert logged_output(tmp_path / "missing.log") == ""
