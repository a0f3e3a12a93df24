"""Never lose a run, never run it twice: tests that kill, pause and starve real workers."""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from helpers import STUDY, TASKS, raw_db, sacred_records, start_worker, wait_for

from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.worker import recover_expired

FAST = ("--lease", "2", "--heartbeat", "0.4", "--interval", "0.1")


def submit(q, behaviour="ok", duration=0.0, **kwargs):
    conf = {"model": {"className": "Linear"}, "behaviour": behaviour, "duration": duration}
    return q.submit("toy", conf, **{"force": True, **kwargs})[0]  # identical runs wanted


def status_of(q, run_id):
    return q.get(run_id)["status"]


def all_completed(q, ids):
    """Every run's document once all are COMPLETED: each run's own document, not the
    counts (a run being archived is briefly in both collections, where counts see it
    twice)."""
    def documents():
        docs = [q.get(i) for i in ids]
        return docs if all(d["status"] == "COMPLETED" for d in docs) else None
    return wait_for(documents, 120, f"all {len(ids)} runs to complete")


def test_killed_worker_run_is_requeued_and_completed_once(queue, workers, mongo_uri, db_name):
    run_id = submit(queue, "sleep", 1.5)
    first = start_worker(mongo_uri, db_name, *FAST)
    workers.append(first)
    wait_for(lambda: sacred_records(queue, run_id), 30, "the run to start")
    first.kill()  # SIGKILL: no chance to clean up
    first.wait()
    workers.append(start_worker(mongo_uri, db_name, *FAST))
    wait_for(lambda: status_of(queue, run_id) == "COMPLETED", 30, "the run to complete")
    doc = queue.get(run_id)
    assert doc["attempt"] == 2
    assert "worker lost" in doc["last_error"]
    records = sacred_records(queue, run_id)
    assert sorted(r["status"] for r in records) == ["COMPLETED", "FAILED"]
    lost = next(r for r in records if r["status"] == "FAILED")
    assert "worker lost" in lost["fail_trace"][0]


def test_run_fails_as_worker_lost_after_max_attempts(queue, workers, mongo_uri, db_name):
    run_id = submit(queue, "sleep", 30, max_attempts=1)
    worker = start_worker(mongo_uri, db_name, *FAST)
    workers.append(worker)
    wait_for(lambda: sacred_records(queue, run_id), 30, "the run to start")
    worker.kill()
    worker.wait()
    store = queue.store
    wait_for(lambda: recover_expired(store), 10, "the lease to expire and be recovered")
    doc = queue.get(run_id)
    assert doc["status"] == "FAILED" and doc["reason"] == "worker lost"
    assert "max_attempts=1" in doc["error"]
    (record,) = sacred_records(queue, run_id)
    assert record["status"] == "FAILED"  # no dashboard shows it RUNNING forever


def test_paused_worker_cannot_overwrite_newer_attempt(queue, workers, mongo_uri, db_name):
    run_id = submit(queue, "sleep", 1.0)
    paused = start_worker(mongo_uri, db_name, *FAST)
    workers.append(paused)
    # Its Sacred record, not the queue's RUNNING (set before the claim's reply reaches
    # the worker): paused then, the worker would not yet know it has the run.
    wait_for(lambda: sacred_records(queue, run_id), 30, "the run to start")
    os.kill(paused.pid, signal.SIGSTOP)  # its child finishes the run meanwhile
    other = start_worker(mongo_uri, db_name, *FAST)
    workers.append(other)
    wait_for(lambda: status_of(queue, run_id) == "COMPLETED", 30, "the newer attempt")
    winner = queue.get(run_id)
    woken = time.time()
    os.kill(paused.pid, signal.SIGCONT)
    # The woken worker finds its lease gone, drops its outcome and goes back to
    # claiming: its entry in the workers collection shows it is idle again.
    wait_for(lambda: any(w["pid"] == paused.pid and w["heartbeat"] > woken
                         and w["current_run"] is None for w in queue.store.list_workers()),
             15, "the paused worker to wake up and let go of the run")
    after = queue.get(run_id)
    assert after["status"] == "COMPLETED" and after["token"] == winner["token"]
    assert after["attempt"] == winner["attempt"] == 2
    assert after["sacred_id"] == winner["sacred_id"]
    statuses = sorted(r["status"] for r in sacred_records(queue, run_id))
    assert statuses.count("COMPLETED") == 1 and "RUNNING" not in statuses


def test_timeout_stops_the_run_and_worker_goes_on(queue, workers, mongo_uri, db_name):
    slow = submit(queue, "sleep", 60, max_runtime=1)
    fast = submit(queue)
    workers.append(start_worker(mongo_uri, db_name, *FAST))
    wait_for(lambda: status_of(queue, fast) == "COMPLETED", 30, "the next run")
    doc = queue.get(slow)
    assert doc["status"] == "TIMEOUT" and doc["reason"] == "timeout"
    assert "max_runtime=1s" in doc["error"]
    (record,) = sacred_records(queue, slow)
    assert record["status"] == "TIMEOUT"


def test_task_max_runtime_applies(queue, workers, mongo_uri, db_name):
    run_id = queue.submit("slow", {"behaviour": "sleep", "duration": 60,
                                   "model": {"className": "Linear"}})[0]
    workers.append(start_worker(mongo_uri, db_name, *FAST))
    wait_for(lambda: status_of(queue, run_id) == "TIMEOUT", 30, "the task's max_runtime")


def test_cancel_running_and_queued_runs(queue, workers, mongo_uri, db_name):
    running = submit(queue, "sleep", 60)
    waiting = submit(queue, "sleep", 60, priority=-1)
    workers.append(start_worker(mongo_uri, db_name, *FAST))
    wait_for(lambda: status_of(queue, running) == "RUNNING", 30, "the run to start")
    assert queue.cancel([waiting]) == {"cancelled": 1, "stopping": 0}
    assert queue.cancel(task="toy") == {"cancelled": 0, "stopping": 1}
    # It stops long before its 60 s (how fast: benchmarks/latency.py).
    wait_for(lambda: status_of(queue, running) == "CANCELLED", 30, "the running run to stop")
    assert queue.get(waiting)["status"] == "CANCELLED"
    assert "started_at" not in queue.get(waiting)  # it never started
    (record,) = sacred_records(queue, running)
    assert record["status"] == "INTERRUPTED"


def test_graceful_stop_finishes_current_run(queue, workers, mongo_uri, db_name):
    run_id = submit(queue, "sleep", 1.5)
    later = submit(queue, priority=-1)
    worker = start_worker(mongo_uri, db_name, *FAST)
    workers.append(worker)
    wait_for(lambda: status_of(queue, run_id) == "RUNNING", 30, "the run to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert status_of(queue, run_id) == "COMPLETED"
    assert status_of(queue, later) == "QUEUED"  # it stopped claiming
    assert queue.store.list_workers() == []


def test_second_signal_interrupts_and_requeues(queue, workers, mongo_uri, db_name):
    run_id = submit(queue, "sleep", 60)
    worker = start_worker(mongo_uri, db_name, *FAST)
    workers.append(worker)
    wait_for(lambda: status_of(queue, run_id) == "RUNNING", 30, "the run to start")
    worker.send_signal(signal.SIGINT)
    # Signals sent back to back merge into one: send the second once the first is seen.
    wait_for(lambda: any(w["stopping"] for w in queue.store.list_workers()), 10,
             "the worker to acknowledge the first signal")
    worker.send_signal(signal.SIGINT)
    assert worker.wait(30) == 0
    doc = queue.get(run_id)
    assert doc["status"] == "QUEUED" and doc["attempt"] == 0
    (record,) = sacred_records(queue, run_id)
    assert record["status"] == "INTERRUPTED"


def test_max_runs_and_idle_exit(queue, mongo_uri, db_name):
    ids = [submit(queue) for _ in range(3)]
    worker = start_worker(mongo_uri, db_name, "--max-runs", "2", "--interval", "0.1")
    assert worker.wait(60) == 0
    assert sorted(status_of(queue, i) for i in ids) == ["COMPLETED", "COMPLETED", "QUEUED"]
    worker = start_worker(mongo_uri, db_name, "--idle-exit", "0.5", "--interval", "0.1")
    assert worker.wait(60) == 0
    assert all(status_of(queue, i) == "COMPLETED" for i in ids)


def test_store_outage_in_the_middle_of_a_run(embedded_server, tmp_path):
    """The server stops for 15 s while a run executes; nothing is lost or doubled."""
    uri, db = embedded_server.uri, f"hse_outage_test_{uuid.uuid4().hex[:12]}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    run_id = submit(q, "sleep", 3)
    after = submit(q, priority=-1)
    log = tmp_path / "worker.log"
    worker = start_worker(uri, db, "--interval", "0.1", log=log)
    try:
        wait_for(lambda: status_of(q, run_id) == "RUNNING", 30, "the run to start")
        embedded_server.stop()
        outage_end = time.monotonic() + 15
        # The worker must stay alive through the whole outage.
        wait_for(lambda: worker.poll() is not None or time.monotonic() > outage_end, 20,
                 "the outage to last 15 s")
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        embedded_server.start()
    try:
        wait_for(lambda: status_of(q, after) == "COMPLETED", 60, "the queue to drain")
        doc = q.get(run_id)
        assert doc["status"] == "COMPLETED" and doc["attempt"] == 1, log.read_text()[-4000:]
        records = sacred_records(q, run_id)
        assert [r["status"] for r in records] == ["COMPLETED"]
        assert records[0]["result"] == doc["metrics"]["score"]
        assert "unreachable" in log.read_text()
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        q.store.drop_database()


def test_chaos_every_run_completes_exactly_once(queue, workers, mongo_uri, db_name):
    ids = queue.submit("toy", {"model": {"className": "Linear"}, "behaviour": "sleep",
                               "duration": 0.2}, seeds=60)
    workers.extend(start_worker(mongo_uri, db_name, *FAST) for _ in range(3))
    killed, stopped, _ = workers

    def completed():
        return queue.status()["COMPLETED"]

    wait_for(lambda: completed() >= 10, 60, "10 runs to complete")
    killed.kill()
    os.kill(stopped.pid, signal.SIGSTOP)
    wait_for(lambda: completed() >= 30, 60, "30 runs to complete")
    # Give the paused worker's lease time to expire before it wakes up.
    stopped_at = time.monotonic()
    wait_for(lambda: time.monotonic() - stopped_at > 3, 10, "the lease to expire")
    os.kill(stopped.pid, signal.SIGCONT)
    docs = all_completed(queue, ids)
    assert {d["status"] for d in docs} == {"COMPLETED"}
    counts = queue.status()
    assert counts["QUEUED"] == counts["RUNNING"] == 0
    records = list(raw_db(queue.store).runs.find({}, {"status": 1, "meta": 1}))
    done = [r["meta"]["hse"]["run_id"] for r in records if r["status"] == "COMPLETED"]
    assert sorted(done) == sorted(ids)  # each run COMPLETED exactly once in Sacred too
    assert not [r for r in records if r["status"] == "RUNNING"]
    assert len({d["sacred_id"] for d in docs}) == 60


@pytest.mark.parametrize("round_", range(3))
def test_chaos_rounds_with_a_store_restart(embedded_server, workers, tmp_path, round_):
    """SIGKILL one worker, SIGSTOP another past its lease and restart the store while
    runs execute, several rounds in a row: every run ends COMPLETED exactly once, in the
    queue and in Sacred, and no record is left RUNNING."""
    uri, db = embedded_server.uri, f"hse_test_chaos_{round_}_{uuid.uuid4().hex[:8]}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    try:
        ids = q.submit("toy", {"model": {"className": "Linear"}, "behaviour": "sleep",
                               "duration": 0.2}, seeds=30)
        logs = [tmp_path / f"w{i}.log" for i in range(3)]
        workers.extend(start_worker(uri, db, *FAST, log=log) for log in logs)
        killed, stopped, survivor = workers

        def completed():
            return q.status()["COMPLETED"]

        wait_for(lambda: completed() >= 5, 60, "5 runs to complete")
        killed.kill()
        os.kill(stopped.pid, signal.SIGSTOP)
        embedded_server.stop()
        try:
            wait_for(lambda: "unreachable" in logs[2].read_text(), 60,
                     "the surviving worker to notice the outage")
        finally:
            embedded_server.start()
        wait_for(lambda: completed() >= 15, 60, "15 runs to complete after the restart")
        os.kill(stopped.pid, signal.SIGCONT)
        docs = all_completed(q, ids)
        wait_for(lambda: not list(raw_db(q.store).runs.find({"status": "RUNNING"})), 30,
                 "every record to be closed")
        records = list(raw_db(q.store).runs.find({}, {"status": 1, "meta": 1}))
        done = sorted(r["meta"]["hse"]["run_id"] for r in records if r["status"] == "COMPLETED")
        assert done == sorted(ids), "each run COMPLETED exactly once in Sacred"
        completed_ids = {r["_id"] for r in records if r["status"] == "COMPLETED"}
        assert {d["sacred_id"] for d in docs} == completed_ids, "the queue points at them"
    finally:
        q.store.drop_database()
        q.close()
