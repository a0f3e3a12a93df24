"""Exactly once under injected faults: one final state in the queue and exactly one Sacred
record that agrees with it, whatever happens between two writes of the finish path.

Faults are injected deterministically, not by timing: a loopback proxy cuts one worker's
link to the store (tests/proxy.py), a worker stops itself (SIGSTOP) at a chosen write of
its finish path (a `sitecustomize` on its PYTHONPATH wraps that storage method), and the
store itself is stopped while a worker finishes.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from helpers import STUDY, TASKS, error_lines, process_gone, process_stopped, raw_db, wait_for
from proxy import Proxy
from pymongo.uri_parser import parse_uri

from hyperspace_explorer.errors import StoreError, StoreUnavailable
from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.storage import RunFilter, connect

FAST = ("--lease", "2", "--heartbeat", "0.4", "--interval", "0.1", "--idle-exit", "5")

# Wraps one storage method of the worker so that the worker stops itself right before
# that write (the test then decides what happens while it is frozen); or makes the
# claim's write lose its answer, as when the link drops right after the server wrote.
_PAUSE_HOOK = textwrap.dedent("""
    import os, signal, threading
    point = os.environ.get("HSE_TEST_PAUSE_AT")
    if point:
        from hyperspace_explorer.storage import mongo

        def pausing(method, when):
            paused = []  # once: the retries of that write go through

            def wrapper(self, *args, **kwargs):
                if not paused and when(*args):
                    paused.append(True)
                    # to this very thread: a signal sent to the process may be taken
                    # by another thread while this one goes on and writes
                    signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
                return method(self, *args, **kwargs)
            return wrapper

        if point == "before_final_record":
            mongo.MongoStorage.save_sacred_run = pausing(
                mongo.MongoStorage.save_sacred_run, lambda entry: entry["status"] == "COMPLETED")
        elif point == "before_queue_finish":
            mongo.MongoStorage.finish = pausing(mongo.MongoStorage.finish, lambda *a: True)
        elif point == "lose_claim_answer":
            import pymongo
            from pymongo.collection import Collection

            real, lost = Collection.find_one_and_update, []

            def losing(self, filter, update, *args, **kwargs):
                answer = real(self, filter, update, *args, **kwargs)
                if not lost and "attempt" in update.get("$inc", {}):  # a claim: once
                    lost.append(True)
                    raise pymongo.errors.AutoReconnect("connection reset by peer")
                return answer
            Collection.find_one_and_update = losing
        elif point == "lose_requeue_answer":
            import pymongo
            from pymongo.collection import Collection

            real_update, lost_update = Collection.update_one, []

            def losing_update(self, filter, update, *args, **kwargs):
                answer = real_update(self, filter, update, *args, **kwargs)
                if not lost_update and update.get("$set", {}).get("status") == "QUEUED":
                    lost_update.append(True)  # a requeue: once
                    raise pymongo.errors.AutoReconnect("connection reset by peer")
                return answer
            Collection.update_one = losing_update
""")


def worker_process(uri: str, db: str, *args: str, log: Path, pause_at: str | None = None,
                   hook_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pause_at:
        env["HSE_TEST_PAUSE_AT"] = pause_at
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir),
                                                          env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db,
         "--mongo-uri", uri, "--study-dir", str(STUDY), *args],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)


@pytest.fixture
def hook_dir(tmp_path):
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(_PAUSE_HOOK)
    return tmp_path / "hook"


def sleeping_run(q, duration: float) -> str:
    conf = {"model": {"className": "Linear"}, "behaviour": "sleep", "duration": duration}
    return q.submit("toy", conf)[0]


def assert_exactly_once(q, run_id: str) -> None:
    """The invariant: the queue says COMPLETED, exactly one Sacred record is COMPLETED
    and it is the one the queue points at; every other record is closed as superseded
    or lost, none is RUNNING."""
    doc = q.get(run_id)
    assert doc["status"] == "COMPLETED", doc
    records = list(raw_db(q.store).runs.find({"meta.hse.run_id": run_id},
                                             {"status": 1, "fail_trace": 1, "result": 1}))
    completed = [r for r in records if r["status"] == "COMPLETED"]
    assert [r["_id"] for r in completed] == [doc["sacred_id"]], records
    assert completed[0]["result"] == doc["metrics"]["score"]
    others = [r for r in records if r["_id"] != doc["sacred_id"]]
    assert all(r["status"] == "FAILED" for r in others), others
    assert all(("superseded" in r["fail_trace"][0] or "worker lost" in r["fail_trace"][0])
               for r in others), others


def test_a_partitioned_worker_leaves_exactly_one_completed_record(
        queue, procs, mongo_uri, db_name, tmp_path):
    """The link of the worker running the run is cut for longer than its lease while the
    run finishes; another worker re-executes it; then the link comes back."""
    run_id = sleeping_run(queue, 1.0)
    host, port = parse_uri(mongo_uri)["nodelist"][0]
    with Proxy(host, port) as proxy:
        cut_off = worker_process(proxy.uri, db_name, *FAST, log=tmp_path / "w1.log")
        procs.append(cut_off)
        # Its Sacred record, not the queue's RUNNING: the claim sets that before its
        # reply reaches the worker, and a cut in between is another case (see
        # test_a_claim_whose_answer_was_lost_runs_the_run_it_leased).
        wait_for(lambda: raw_db(queue.store).runs.find_one({"meta.hse.run_id": run_id}),
                 60, "the run's Sacred record (its child started it)")
        proxy.cut()
        procs.append(worker_process(mongo_uri, db_name, *FAST, log=tmp_path / "w2.log"))
        wait_for(lambda: queue.get(run_id)["status"] == "COMPLETED", 60,
                 "the second worker to complete the run")
        assert queue.get(run_id)["attempt"] == 2
        proxy.restore()
        cut_off.wait(60)  # it learns it lost the run, closes its record, idles, exits
    assert_exactly_once(queue, run_id)
    assert "newer attempt" in (tmp_path / "w1.log").read_text()


@pytest.mark.parametrize("pause_at", ["before_final_record", "before_queue_finish"])
def test_a_worker_paused_inside_its_finish_path_cannot_complete_a_lost_run(
        queue, procs, mongo_uri, db_name, tmp_path, hook_dir, pause_at):
    run_id = sleeping_run(queue, 0.2)
    paused = worker_process(mongo_uri, db_name, *FAST, log=tmp_path / "w1.log",
                            pause_at=pause_at, hook_dir=hook_dir)
    procs.append(paused)
    wait_for(lambda: process_stopped(paused.pid), 60, f"the worker to stop itself {pause_at}")
    procs.append(worker_process(mongo_uri, db_name, *FAST, log=tmp_path / "w2.log"))
    wait_for(lambda: queue.get(run_id)["status"] == "COMPLETED", 60,
             "the second worker to recover and complete the run")
    os.kill(paused.pid, signal.SIGCONT)
    paused.wait(60)
    assert_exactly_once(queue, run_id)
    assert queue.get(run_id)["attempt"] == 2


def test_a_claim_whose_answer_was_lost_runs_the_run_it_leased(
        queue, procs, mongo_uri, db_name, tmp_path, hook_dir):
    """The link drops after the claim leased the first run, before the answer reached
    the worker: the worker's retry of that claim gets that run, in its first attempt,
    rather than leave it leased to nobody until its lease expires."""
    first, second = sleeping_run(queue, 0.2), sleeping_run(queue, 0.3)
    log = tmp_path / "w.log"
    worker = worker_process(mongo_uri, db_name, *FAST, log=log,
                            pause_at="lose_claim_answer", hook_dir=hook_dir)
    procs.append(worker)
    assert worker.wait(60) == 0, log.read_text()[-3000:]  # --idle-exit once both ran
    for run_id in (first, second):
        assert_exactly_once(queue, run_id)
        assert queue.get(run_id)["attempt"] == 1, log.read_text()[-3000:]
    assert "connection reset by peer" in log.read_text()


def test_a_requeue_whose_answer_was_lost_leaves_the_run_queued_and_says_so(
        queue, mongo_uri, db_name, procs, tmp_path, hook_dir):
    """The worker's second signal requeues its run; the link drops right after the
    server wrote that. Its retry finds the run queued already: the run stays QUEUED
    with its attempt uncounted, another worker can claim it at once, and the log says
    what happened rather than blame a newer attempt."""
    run_id = sleeping_run(queue, 60)
    log = tmp_path / "w.log"
    worker = worker_process(mongo_uri, db_name, *FAST, log=log,
                            pause_at="lose_requeue_answer", hook_dir=hook_dir)
    procs.append(worker)
    wait_for(lambda: queue.get(run_id)["status"] == "RUNNING", 60, "the run to start")
    worker.send_signal(signal.SIGINT)
    wait_for(lambda: any(w["stopping"] for w in queue.store.list_workers()), 30,
             "the worker to acknowledge the first signal")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "connection reset by peer" in text
    assert "is back in the queue already" in text and "newer attempt" not in text, text[-3000:]
    doc = queue.get(run_id)
    assert (doc["status"], doc["attempt"]) == ("QUEUED", 0)
    claimed = queue.store.claim(queue.study, ["toy"], "another-worker", 60)
    assert claimed is not None and claimed["_id"] == run_id  # no stale lease keeps it


def test_the_store_stopped_during_the_finish(embedded_server, procs, tmp_path, hook_dir):
    uri, db = embedded_server.uri, f"hse_test_finish_outage_{uuid.uuid4().hex[:8]}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    try:
        run_id = sleeping_run(q, 0.2)
        worker = worker_process(uri, db, "--interval", "0.1", "--idle-exit", "1",
                                log=tmp_path / "w.log", pause_at="before_queue_finish",
                                hook_dir=hook_dir)
        procs.append(worker)
        wait_for(lambda: process_stopped(worker.pid), 60, "the worker to reach its queue write")
        embedded_server.stop()
        try:
            os.kill(worker.pid, signal.SIGCONT)
            wait_for(lambda: "unreachable" in (tmp_path / "w.log").read_text(), 60,
                     "the worker to find the store gone")
        finally:
            embedded_server.start()
        worker.wait(60)
        assert_exactly_once(q, run_id)
        assert q.get(run_id)["attempt"] == 1
    finally:
        q.store.drop_database()
        q.close()


# ------------------------------------------------------------------ deadlines and errors
def test_a_store_that_stops_answering_fails_calls_with_a_deadline(
        mongo_uri, db_name, monkeypatch):
    monkeypatch.setenv("HSE_STORE_TIMEOUT", "1")
    host, port = parse_uri(mongo_uri)["nodelist"][0]
    with Proxy(host, port) as proxy:
        store = connect(proxy.uri, db_name)
        try:
            proxy.freeze()  # connected, then nothing answers (like a hung read)
            with pytest.raises(StoreUnavailable, match="did not answer in time"):
                store.count_by_status(RunFilter())
        finally:
            proxy.restore()
            store.close()


def test_a_server_that_never_answers_is_a_clear_error():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts TCP, never speaks
    try:
        port = silent.getsockname()[1]
        with pytest.raises(StoreUnavailable, match=f"cannot reach MongoDB at .*:{port}"):
            connect(f"mongodb://127.0.0.1:{port}/?directConnection=true", "x", timeout_s=1)
    finally:
        silent.close()


def test_public_calls_raise_package_errors_while_the_store_is_down(embedded_server):
    q = RunQueue(embedded_server.uri, f"hse_test_down_{uuid.uuid4().hex[:8]}", TASKS,
                 study_dir=STUDY)
    try:
        embedded_server.stop()
        try:
            with pytest.raises(StoreUnavailable, match="unreachable"):
                q.submit("toy", {"model": {"className": "Linear"}})
            with pytest.raises(StoreError):
                q.status()
        finally:
            embedded_server.start()
        assert sum(q.status().values()) == 0, "nothing half-submitted"
    finally:
        q.store.drop_database()
        q.close()


def test_credentials_against_the_embedded_server_are_a_clear_error(mongo_uri, db_name):
    if os.environ.get("HSE_TEST_MONGO_URI"):
        pytest.skip("checks the embedded server's lack of authentication")
    host, port = parse_uri(mongo_uri)["nodelist"][0]
    uri = f"mongodb://alice:s3cret@{host}:{port}"
    with pytest.raises(StoreError, match="authentication") as info:
        RunQueue(uri, db_name, TASKS, study_dir=STUDY)
    assert "s3cret" not in str(info.value)
    worker = subprocess.run(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db_name,
         "--mongo-uri", uri, "--study-dir", str(STUDY)], capture_output=True, text=True,
        timeout=120)
    assert worker.returncode == 2
    (error,) = error_lines(worker.stderr)  # one line, beside the worker's INFO note
    assert "authentication" in error
    assert "Traceback" not in worker.stderr and "s3cret" not in worker.stderr


# ------------------------------------------------------------------ the run's processes
def _spawned_pid(log: Path) -> int:
    text = wait_for(lambda: log.exists() and "spawned pid" in log.read_text() and log.read_text(),
                    60, "the run to spawn its helper process")
    return int(text.split("spawned pid ")[1].split()[0])


@pytest.mark.parametrize("ending", ["COMPLETED", "TIMEOUT", "CANCELLED"])
def test_processes_started_by_a_run_end_with_it(queue, procs, tmp_path, mongo_uri, db_name,
                                                 ending):
    conf = {"model": {"className": "Linear"}, "behaviour": "spawn",
            "duration": 0.0 if ending == "COMPLETED" else 60.0}
    (run_id,) = queue.submit("slow" if ending == "TIMEOUT" else "toy", conf)
    worker = worker_process(mongo_uri, db_name, "--heartbeat", "0.2", "--lease", "2",
                            "--max-runs", "1", log=tmp_path / "worker.log")
    procs.append(worker)
    pid = _spawned_pid(Path(os.environ["HSE_HOME"]) / "logs" / f"{run_id}.log")
    if ending == "CANCELLED":
        queue.cancel(run_id)
    worker.wait(120)
    assert queue.get(run_id)["status"] == ending
    wait_for(lambda: process_gone(pid), 30, f"the helper process {pid} of a {ending} run to end")
