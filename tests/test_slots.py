"""Several runs per worker, GPUs handed out per run, and worker tags."""
from __future__ import annotations

import json
import re
import signal

import pytest
from helpers import STUDY, TASKS, raw_db, sacred_records, start_worker, wait_for

from hyperspace_explorer.errors import HSEError
from hyperspace_explorer.worker import (
    OPENBLAS_SPIN,
    THREAD_VARIABLES,
    limit_run_threads,
    usable_cpus,
)

FAST = ("--interval", "0.05", "--heartbeat", "0.4", "--lease", "3")


def run(q, behaviour="ok", duration=0.0, **kwargs):
    conf = {"model": {"className": "Linear"}, "behaviour": behaviour, "duration": duration}
    return q.submit("toy", conf, force=True, **kwargs)[0]


def running_on(q, worker_pid):
    return [d for d in q.store.find_runs(q.runs(status="RUNNING"), fields=["worker"])
            if d.get("worker", "").split(":")[1] == str(worker_pid)]


def captured_out(q, run_id):
    return q.store.sacred_run(q.get(run_id)["sacred_id"])["captured_out"]


def devices(q, run_id):
    return re.search(r"devices \[(.*)\]", captured_out(q, run_id)).group(1)


def test_one_worker_runs_several_runs_at_once(q, procs, mongo_uri, db_name):
    # A lease far longer than a beat: each run must execute once, and a worker whose
    # first runs start slowly (its caches cold after a checkout: stalls of 6 s were seen)
    # would rightly lose a 3 s lease and see its run executed again.
    ids = [run(q, "sleep", 1.5) for _ in range(3)] + [run(q) for _ in range(5)]
    worker = start_worker(mongo_uri, db_name, "--interval", "0.05", "--heartbeat", "0.4",
                          "--lease", "30", "--concurrency", "3", "--idle-exit", "2")
    procs.append(worker)
    wait_for(lambda: len(running_on(q, worker.pid)) == 3, 60, "three runs at once")
    (doc,) = [w for w in q.store.list_workers() if w["pid"] == worker.pid]
    assert doc["concurrency"] == 3
    assert worker.wait(120) == 0
    docs = [q.get(i) for i in ids]
    assert {d["status"] for d in docs} == {"COMPLETED"} and {d["attempt"] for d in docs} == {1}
    records = list(raw_db(q.store).runs.find({}, {"status": 1, "meta": 1}))
    assert sorted(r["meta"]["hse"]["run_id"] for r in records) == sorted(ids)
    assert {r["status"] for r in records} == {"COMPLETED"}


def test_an_idle_worker_polls_once_per_interval_whatever_its_concurrency(q, mongo_uri, db_name):
    """Idle slots do not each poll the database: one that finds the queue empty holds
    the others off for an interval (the poller itself, its next poll due, is not held);
    a run claimed or GPUs freed lifts that at once."""
    from hyperspace_explorer.worker import Worker

    worker = Worker(TASKS, db_name, mongo_uri, study_dir=STUDY, concurrency=3, interval=600,
                    gpus=["0"])
    polls = []
    real_claim = worker.store.claim
    worker.store.claim = lambda *a, **kw: polls.append(kw["gpus"]) or real_claim(*a, **kw)
    one, two, three = worker.slots
    try:
        assert worker._claim(one) is None and len(polls) == 1
        assert worker._claim(two) is None and worker._claim(three) is None and len(polls) == 1
        assert worker._held_for(one) == 0 and 0 < worker._held_for(two) <= 600
        run_id = run(q)
        assert worker._claim(two) is None and len(polls) == 1, "held off: one just polled"
        assert worker._claim(one)["_id"] == run_id and len(polls) == 2
        assert worker._held_for(two) == 0, "the others follow at once"
        assert worker._claim(two) is None and len(polls) == 3, "a claim lifts the hold"
        assert worker._claim(three) is None and len(polls) == 3
        gpu_run = run(q, gpus=1)
        two.gpus, worker._free_gpus = ["0"], []  # as if two ran a GPU run
        assert worker._claim(two) is None and polls[-1] == 0
        worker._release(two)  # its GPU is free: the run that needs it can be claimed now
        assert worker._claim(three)["_id"] == gpu_run and polls[-1] == 1
    finally:
        worker.store.close()


def test_gpus_are_handed_out_per_run(q, procs, mongo_uri, db_name):
    one = [run(q, "gpus", 1.0, gpus=1) for _ in range(2)]
    both = run(q, "gpus", 0.0, gpus=2, priority=-1)
    cpu = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "2")  # no GPUs: none for it
    procs.append(cpu)
    assert cpu.wait(120) == 0
    assert {q.get(i)["status"] for i in one + [both]} == {"QUEUED"}
    gpu = start_worker(mongo_uri, db_name, *FAST, "--concurrency", "2", "--gpus", "0,1",
                       "--idle-exit", "2")
    procs.append(gpu)
    wait_for(lambda: len(running_on(q, gpu.pid)) == 2, 60, "both 1-GPU runs at once")
    assert gpu.wait(120) == 0
    assert sorted(devices(q, i) for i in one) == ["0", "1"], "one GPU each, never shared"
    assert sorted(devices(q, both).split(",")) == ["0", "1"]



def test_gpu_uuids_are_handed_out_and_padded_tags_match(q, procs, mongo_uri, db_name):
    """CUDA_VISIBLE_DEVICES also takes GPU UUIDs; `--tags " big-mem "` offers big-mem."""
    run_id = run(q, "gpus", 0.0, gpus=1, tags=["big-mem"])
    uuid = "GPU-8f6a1c2e-0b1d-4c5e-9a7f-3e2d1c0b9a8f"
    worker = start_worker(mongo_uri, db_name, *FAST, "--gpus", uuid, "--tags", " big-mem ",
                          "--idle-exit", "1")
    procs.append(worker)
    assert worker.wait(120) == 0
    assert q.get(run_id)["status"] == "COMPLETED" and devices(q, run_id) == uuid


def thread_pools(q, run_id):
    """The thread variables a run saw, and its OpenBLAS pools' sizes."""
    found = re.search(r"threads (\{.*\}) openblas (\[.*\])", captured_out(q, run_id))
    return json.loads(found.group(1)), json.loads(found.group(2))


def idle_spin(q, run_id):
    """The spin setting a run saw, and the CPU its idle OpenBLAS threads took (ms)."""
    found = json.loads(re.search(r"spin (\{.*\})", captured_out(q, run_id)).group(1))
    return found["OPENBLAS_THREAD_TIMEOUT"], found["idle_cpu_ms"]


NO_THREAD_SETTINGS = {**dict.fromkeys(THREAD_VARIABLES), OPENBLAS_SPIN[0]: None}


def test_concurrent_runs_share_the_cpus_instead_of_each_taking_them_all(
        q, procs, mongo_uri, db_name):
    """With --concurrency 2 each run's pools get half the CPUs, except where the
    environment says otherwise; one run at a time keeps the libraries' defaults."""
    per_run = str(max(1, usable_cpus() // 2))
    ids = [run(q, "threads") for _ in range(2)]
    worker = start_worker(mongo_uri, db_name, *FAST, "--concurrency", "2", "--idle-exit", "1",
                          env={**NO_THREAD_SETTINGS, "MKL_NUM_THREADS": "3"})
    procs.append(worker)
    assert worker.wait(120) == 0
    for run_id in ids:
        assert thread_pools(q, run_id) == ({"OMP_NUM_THREADS": per_run,
                                            "OPENBLAS_NUM_THREADS": per_run,
                                            "MKL_NUM_THREADS": "3"}, [int(per_run)])
    alone = run(q, "threads")
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1", env=NO_THREAD_SETTINGS)
    procs.append(worker)
    assert worker.wait(120) == 0
    assert thread_pools(q, alone)[0] == dict.fromkeys(
        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"))


def test_threads_per_run_sets_every_pool_whatever_the_environment_says(
        q, procs, mongo_uri, db_name):
    run_id = run(q, "threads")
    worker = start_worker(mongo_uri, db_name, *FAST, "--threads-per-run", "1", "--idle-exit", "1",
                          env={**NO_THREAD_SETTINGS, "OMP_NUM_THREADS": "2",
                               "OPENBLAS_NUM_THREADS": "2"})
    procs.append(worker)
    assert worker.wait(120) == 0
    assert thread_pools(q, run_id) == ({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                                        "MKL_NUM_THREADS": "1"}, [1])


def test_idle_blas_threads_of_runs_spin_briefly_unless_the_environment_says_otherwise(
        q, procs, mongo_uri, db_name):
    """OpenBLAS's helper threads spin for about 0.1 s after every call: a worker's runs
    get a spin of 2**22 cycles (1-2 ms) where its environment sets none."""
    short = run(q, "threads")
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1", env=NO_THREAD_SETTINGS)
    procs.append(worker)
    assert worker.wait(120) == 0
    assert idle_spin(q, short)[0] == OPENBLAS_SPIN[1] == "22"
    kept = run(q, "threads")
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1",
                          env={**NO_THREAD_SETTINGS, OPENBLAS_SPIN[0]: "28"})
    procs.append(worker)
    assert worker.wait(120) == 0
    assert idle_spin(q, kept)[0] == "28"
    helpers = max(thread_pools(q, short)[1]) - 1  # the pool's threads besides the run's
    if helpers > 0:  # see them spin: 2**22 cycles are at most 4 ms at 1 GHz, 2**28 ~0.1 s
        assert idle_spin(q, short)[1] / helpers < 10 < 25 < idle_spin(q, kept)[1] / helpers


def test_thread_limits_are_checked_before_anything_is_set():
    environ = {"OMP_NUM_THREADS": "4"}
    for concurrency, threads, option in ((0, None, "--concurrency"), (2, 0, "--threads-per-run"),
                                         (1, True, "--threads-per-run")):
        with pytest.raises(HSEError, match=f"{option} must be a positive integer"):
            limit_run_threads(concurrency, threads, environ)
    assert environ == {"OMP_NUM_THREADS": "4"}
    assert limit_run_threads(1, None, environ) == {"OPENBLAS_THREAD_TIMEOUT": "22"}
    assert environ == {"OMP_NUM_THREADS": "4", "OPENBLAS_THREAD_TIMEOUT": "22"}
    environ = {"OPENBLAS_THREAD_TIMEOUT": "28"}  # the environment's own spin is kept
    assert limit_run_threads(2, 1, environ) == dict.fromkeys(THREAD_VARIABLES, "1")
    assert environ["OPENBLAS_THREAD_TIMEOUT"] == "28"


def test_tagged_runs_go_only_to_workers_with_those_tags(q, procs, mongo_uri, db_name):
    tagged = run(q, tags=["big-mem"])
    plain = run(q)
    untagged_worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "2")
    procs.append(untagged_worker)
    wait_for(lambda: q.get(plain)["status"] == "COMPLETED", 60, "the untagged run")
    assert [g["tags"] for g in q.unclaimable()] == [["big-mem"]], \
        "reported: no live worker offers big-mem"
    assert untagged_worker.wait(120) == 0
    assert q.get(tagged)["status"] == "QUEUED"
    procs.append(start_worker(mongo_uri, db_name, *FAST, "--tags", "big-mem,gpu",
                              "--idle-exit", "2"))
    wait_for(lambda: q.get(tagged)["status"] == "COMPLETED", 60, "the tagged run")
    assert q.unclaimable() == []


def test_a_run_claimed_ahead_goes_back_to_the_queue_when_the_current_run_is_long(
        q, procs, mongo_uri, db_name, tmp_path):
    """After a short run, a slot claims its next run while the current one executes; a
    current run that lasts 2 s (AHEAD_HOLD_S) gives it back, for another worker to take."""
    short = run(q, priority=2)
    long_ = run(q, "sleep", 120.0, priority=1)
    after = run(q)
    log = tmp_path / "first.log"
    first = start_worker(mongo_uri, db_name, *FAST, log=log)
    procs.append(first)
    wait_for(lambda: "claimed ahead, goes back" in log.read_text(), 60,
             "the first worker to give back the run it claimed ahead")
    assert q.get(short)["status"] == "COMPLETED" and q.get(long_)["status"] == "RUNNING"
    second = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1")
    procs.append(second)
    assert second.wait(120) == 0
    doc = q.get(after)
    assert doc["status"] == "COMPLETED" and doc["attempt"] == 1  # the give-back was no attempt
    assert doc["worker"].split(":")[1] == str(second.pid)
    assert q.get(long_)["status"] == "RUNNING"
    q.cancel([long_])
    wait_for(lambda: q.get(long_)["status"] == "CANCELLED", 60, "the long run to stop")


def test_a_run_offered_to_the_runner_and_given_back_meanwhile_is_not_started_by_it(
        q, procs, mongo_uri, db_name, tmp_path):
    """The runner is offered the run claimed ahead while its current run executes, and
    prepares it once that run is over, but starts it only on the worker's word: a run
    given back meanwhile (the current run lasted AHEAD_HOLD_S) is withdrawn, and the
    same runner later takes it from the queue as any run."""
    first = run(q, priority=3)
    current = run(q, "pid", 2.5, priority=2)  # the slot claims ahead: its last run was short
    offered = run(q, "pid", priority=1)
    log = tmp_path / "worker.log"
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1", log=log)
    procs.append(worker)
    assert worker.wait(120) == 0
    assert f"run {offered}, claimed ahead, goes back" in log.read_text()
    assert {q.get(i)["status"] for i in (first, current, offered)} == {"COMPLETED"}
    doc = q.get(offered)
    assert doc["attempt"] == 1  # the give-back was no attempt
    assert [(r["_id"], r["status"]) for r in sacred_records(q, offered)] == \
        [(doc["sacred_id"], "COMPLETED")]
    assert captured_out(q, offered) == captured_out(q, current)  # "pid N": one runner


def test_a_worker_asked_to_stop_withdraws_the_run_it_offered_the_runner(
        q, procs, mongo_uri, db_name):
    first = run(q, priority=3)
    current = run(q, "sleep", 1.5, priority=2)
    offered = run(q, priority=1)
    worker = start_worker(mongo_uri, db_name, *FAST)
    procs.append(worker)
    wait_for(lambda: q.get(offered)["status"] == "RUNNING", 60,
             "the slot to claim its next run ahead")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    assert q.get(first)["status"] == "COMPLETED" and q.get(current)["status"] == "COMPLETED"
    doc = q.get(offered)
    assert doc["status"] == "QUEUED" and doc["attempt"] == 0
    assert sacred_records(q, offered) == []  # prepared in the runner, never started


def test_a_run_offered_to_a_runner_whose_run_is_cancelled_runs_once_in_a_fresh_runner(
        q, procs, mongo_uri, db_name):
    """Cancelling the current run ends its runner, with the next run offered to it and
    not started: the slot starts that run in a fresh runner, as its first attempt."""
    first = run(q, priority=3)
    current = run(q, "pid", 60.0, priority=2)  # the slot claims ahead: its last run was short
    offered = run(q, "pid", priority=1)
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1")
    procs.append(worker)
    wait_for(lambda: q.get(offered)["status"] == "RUNNING", 60,
             "the slot to claim its next run ahead")
    q.cancel([current])
    assert worker.wait(120) == 0
    assert q.get(first)["status"] == "COMPLETED" and q.get(current)["status"] == "CANCELLED"
    doc = q.get(offered)
    assert doc["status"] == "COMPLETED" and doc["attempt"] == 1
    assert [r["status"] for r in sacred_records(q, offered)] == ["COMPLETED"]
    assert captured_out(q, offered) != captured_out(q, current)  # another runner's pid


def test_a_run_asking_its_worker_while_the_next_run_is_offered_gets_its_answers(
        q, procs, mongo_uri, db_name):
    """The run's thread reads the worker's answers (here: whether to prune, five times
    over 1 s) from the pipe that also brings the next run, offered early in this one:
    the offer is kept for later, never taken for an answer (a truthy answer would
    prune the run)."""
    def quadratic(conf, priority):
        return q.submit("quadratic", conf, force=True, priority=priority)[0]

    first = quadratic({}, 3)
    asking = quadratic({"epochs": 5, "behaviour": "sleep", "duration": 0.2}, 2)
    offered = quadratic({"x": 1.0}, 1)
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1")
    procs.append(worker)
    assert worker.wait(120) == 0
    docs = {i: q.get(i) for i in (first, asking, offered)}
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}, docs
    assert docs[offered]["attempt"] == 1
    assert [r["status"] for r in sacred_records(q, offered)] == ["COMPLETED"]


def test_a_run_claimed_ahead_too_large_to_offer_is_handed_over_when_the_current_one_ends(
        q, procs, mongo_uri, db_name):
    """A spec larger than OFFER_BYTES would not wait in the pipe's buffer: it is not
    offered early, and the runner gets it whole once the current run is over."""
    from hyperspace_explorer.execution.supervisor import OFFER_BYTES

    first = run(q, priority=3)
    current = run(q, "pid", 0.5, priority=2)
    conf = {"model": {"className": "Linear"}, "behaviour": "pid",
            "options": {"verbose": False, "notes": "x" * 2 * OFFER_BYTES}}
    large = q.submit("toy", conf, force=True, priority=1)[0]
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1")
    procs.append(worker)
    assert worker.wait(120) == 0
    docs = {i: q.get(i) for i in (first, current, large)}
    assert {d["status"] for d in docs.values()} == {"COMPLETED"}
    assert docs[large]["attempt"] == 1
    assert [(r["_id"], r["status"]) for r in sacred_records(q, large)] == \
        [(docs[large]["sacred_id"], "COMPLETED")]
    assert captured_out(q, large) == captured_out(q, current)  # the same runner


def test_only_a_spec_that_fits_the_pipe_s_buffer_is_offered_ahead(tmp_path):
    import multiprocessing
    from types import SimpleNamespace

    from hyperspace_explorer.execution import RunSpec
    from hyperspace_explorer.execution.child import NextRun
    from hyperspace_explorer.execution.supervisor import OFFER_BYTES, _Runner
    from hyperspace_explorer.task import Task

    ours, theirs = multiprocessing.Pipe()
    alive = SimpleNamespace(is_alive=lambda: True)
    runner = _Runner(alive, ours, frozenset({"toy"}), env={}, runs=1)
    task = Task(name="toy", scenario={"className": "ToyScenario"}, seed=0, metric="score")

    def spec(run_id, notes):
        return RunSpec(run_id=run_id, task=task, config={"notes": notes}, seed=0, sacred_id=1,
                       attempt=1, token="t", max_runtime=None, log_path=tmp_path / "r.log")

    runner.offer(spec("large", "x" * OFFER_BYTES), limit=100)
    assert runner.offered is None and not theirs.poll()  # handed over whole, later
    runner.offer(spec("small", "x"), limit=100)
    assert runner.offered == "small" and isinstance(theirs.recv(), NextRun)
    runner.give(spec("small", "x"))  # the child was offered it: only the word
    assert theirs.recv() == "go" and runner.offered is None and runner.runs == 2
    runner.offer(spec("full", "x"), limit=2)  # its last run in this runner: nothing
    assert runner.offered is None and not theirs.poll()


def test_a_run_claimed_ahead_records_when_it_really_started(q, procs, mongo_uri, db_name):
    ids = [run(q) for _ in range(6)]
    worker = start_worker(mongo_uri, db_name, *FAST, "--idle-exit", "1")
    procs.append(worker)
    assert worker.wait(120) == 0
    docs = sorted((q.get(i) for i in ids), key=lambda d: d["started_at"])
    assert {d["status"] for d in docs} == {"COMPLETED"}
    for before, doc in zip(docs, docs[1:]):  # one slot: each run started after the last
        stopped = q.store.sacred_run(before["sacred_id"])["stop_time"].timestamp()
        assert doc["started_at"] >= stopped - 0.002, (before, doc)
        assert doc["duration"] <= doc["ended_at"] - doc["started_at"] + 0.002
