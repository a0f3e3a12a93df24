"""Conformance tests of the storage boundary: what every `Storage` must do.

Runs against the session's real server (`mongo_uri`: embedded nx-27017, or the MongoDB
named by HSE_TEST_MONGO_URI, like Optuna's storage test modes), talking to it through
the `Storage` interface and, to check what is really stored, plain pymongo (`raw`).
Covers claim order, fencing, expiry, quarantine, sweep idempotence, counts and the
fenced Sacred records.
"""
from __future__ import annotations

import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import pymongo
import pytest
from pymongo import MongoClient

from hyperspace_explorer.errors import QueryError, RunNotFound, StoreError, StoreUnavailable
from hyperspace_explorer.status import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING
from hyperspace_explorer.storage import RunFilter, connect, new_run_id, redact_uri
from hyperspace_explorer.storage.mongo import MongoStorage


@pytest.fixture
def store(mongo_uri, db_name):
    s = connect(mongo_uri, db_name)
    yield s
    s.close()


def queued(study="s", task="t", **fields):
    return {"study": study, "task": task, "priority": 0, **fields}


def claim_all(store, study="s", tasks=("t",)):
    out = []
    while (doc := store.claim(study, tasks, "w1", 60)) is not None:
        out.append(doc)
    return out


# ------------------------------------------------------------------ claims
def test_claim_order_priority_then_submission_order(store):
    prios = [2, 10, -1, 0, 10, 100, -20, 3, 0, 9, 11, 1]
    store.enqueue([queued(priority=p, i=i) for i, p in enumerate(prios)])
    claimed = [(d["priority"], d["i"]) for d in claim_all(store)]
    expected = sorted(((p, i) for i, p in enumerate(prios)), key=lambda pi: (-pi[0], pi[1]))
    assert claimed == expected, "claims must go by priority (numeric, not text order), then age"


def test_claim_keeps_submission_order_across_batches_and_many_docs(store):
    first = store.enqueue([queued(i=i) for i in range(15)])
    second = store.enqueue([queued(i=15 + i) for i in range(15)])
    assert [d["_id"] for d in claim_all(store)] == first + second


def test_claim_sets_the_lease_and_a_fresh_token(store, raw):
    (run_id,) = store.enqueue([queued()])
    before = time.time()
    doc = store.claim("s", ["t"], "worker-1", 30)
    assert doc["_id"] == run_id and doc["status"] == RUNNING and doc["attempt"] == 1
    assert doc["worker"] == "worker-1" and len(doc["token"]) == 16
    assert before - 1 <= doc["started_at"] <= time.time() + 1
    assert doc["lease_until"] == pytest.approx(doc["started_at"] + 30)
    assert raw.hse_queue.find_one({"_id": run_id})["status"] == RUNNING


def test_a_claim_ahead_is_marked_until_the_attempt_ends_or_goes_back(store, raw):
    first, second = store.enqueue([queued(i=0), queued(i=1)])
    doc = store.claim("s", ["t"], "w", 60, ahead=True)
    assert doc["_id"] == first and doc["ahead"]
    assert raw.hse_queue.find_one({"_id": first})["ahead"]
    assert "ahead" not in store.claim("s", ["t"], "w", 60)  # a plain claim is not marked
    assert store.finish(first, doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
    assert "ahead" not in raw.hse_queue.find_one({"_id": first})
    assert store.requeue(second, raw.hse_queue.find_one({"_id": second})["token"], {})
    again = store.claim("s", ["t"], "w", 60, ahead=True)
    assert again["_id"] == second and again["ahead"]
    assert store.requeue(second, again["token"], {"attempt": 0})
    assert "ahead" not in raw.hse_queue.find_one({"_id": second})


def test_a_plain_claim_clears_a_mark_left_by_an_earlier_claim_ahead(store, raw):
    (run_id,) = store.enqueue([queued()])
    doc = store.claim("s", ["t"], "w", -1, ahead=True)  # its lease expired at once
    assert store.expire(run_id, doc["token"], {}, final_status=FAILED)  # worker lost
    assert store.requeue_finished(RunFilter(study="s", ids=[run_id])) == 1
    again = store.claim("s", ["t"], "w", 60)
    assert again["_id"] == run_id and "ahead" not in again
    assert "ahead" not in raw.hse_queue.find_one({"_id": run_id})


def test_claim_returns_none_on_an_empty_queue(store, raw):
    assert store.claim("s", ["t"], "w", 60) is None
    # nothing claimable: other study, other task, not QUEUED
    store.enqueue([queued(study="other"), queued(task="other")])
    raw.hse_queue.insert_one({"_id": "done1", "study": "s", "task": "t", "status": COMPLETED,
                            "priority": 5, "order": 1})
    assert store.claim("s", ["t"], "w", 60) is None
    assert store.claim("s", [], "w", 60) is None
    assert raw.hse_queue.count_documents({"status": RUNNING}) == 0


def test_claim_filters_by_study_and_task(store, raw):
    store.enqueue([queued(study="A", task="t1"), queued(study="B", task="t1"),
                   queued(study="A", task="t2")])
    doc = store.claim("A", ["t2", "t3"], "w", 60)
    assert (doc["study"], doc["task"]) == ("A", "t2")
    doc = store.claim("A", ["t1"], "w", 60)
    assert (doc["study"], doc["task"]) == ("A", "t1")
    assert store.claim("A", ["t1", "t2"], "w", 60) is None
    assert raw.hse_queue.find_one({"study": "B"})["status"] == QUEUED


def test_concurrent_claims_take_each_run_exactly_once(mongo_uri, db_name, store, raw):
    ids = store.enqueue([queued(i=i) for i in range(60)])
    stores = [connect(mongo_uri, db_name) for _ in range(6)]
    try:
        def drain(s):
            return [d["_id"] for d in claim_all(s)]
        with ThreadPoolExecutor(len(stores)) as pool:
            taken = [i for part in pool.map(drain, stores) for i in part]
    finally:
        for s in stores:
            s.close()
    assert sorted(taken) == sorted(ids), "every run claimed exactly once"
    assert raw.hse_queue.count_documents({"status": RUNNING, "attempt": 1}) == 60


class _AnswerLost:
    """A collection whose `method` writes, then raises as pymongo does when the link
    drops before the server's answer arrives (once). `written=False`: the link drops
    before the write reaches the server (or its client dies there)."""

    def __init__(self, coll, method, *, written=True):
        self._coll, self._method, self._written, self.lost = coll, method, written, False

    def __getattr__(self, name):
        real = getattr(self._coll, name)
        if name != self._method or self.lost:
            return real

        def write_then_drop(*args, **kwargs):
            if self._written:
                real(*args, **kwargs)
            self.lost = True
            raise pymongo.errors.AutoReconnect("connection reset by peer")
        return write_then_drop


@pytest.mark.parametrize("coll, method", [("_leases", "insert_one"),
                                          ("_queue", "find_one_and_update"),
                                          ("_ready", "delete_one")])
def test_a_claim_retried_after_its_answer_was_lost_gets_the_run_it_leased(
        store, raw, monkeypatch, coll, method):
    first, second = store.enqueue([queued(i=0), queued(i=1)])
    lossy = _AnswerLost(getattr(store, coll), method)
    monkeypatch.setattr(store, coll, lossy)
    with pytest.raises(StoreUnavailable):
        store.claim("s", ["t"], "w", 60, token="a" * 16)
    assert lossy.lost
    doc = store.claim("s", ["t"], "w", 60, token="a" * 16)
    assert (doc["_id"], doc["token"], doc["attempt"]) == (first, "a" * 16, 1)
    assert store.claim("s", ["t"], "w", 60)["_id"] == second  # another claim: the next
    assert store.claim("s", ["t"], "w", 60) is None
    assert [(d["_id"], d["attempt"]) for d in raw.hse_queue.find({}, sort=[("i", 1)])] == [
        (first, 1), (second, 1)]
    assert sorted(lease["_id"] for lease in raw.hse_leases.find()) == sorted([first, second])
    assert raw.hse_ready.count_documents({}) == 0


def test_a_claim_retried_once_its_lost_lease_went_to_another_attempt_takes_another_run(
        store, raw, monkeypatch):
    first, second = store.enqueue([queued(i=0), queued(i=1)])
    monkeypatch.setattr(store, "_queue", _AnswerLost(store._queue, "find_one_and_update"))
    with pytest.raises(StoreUnavailable):
        store.claim("s", ["t"], "w", -1, token="b" * 16)  # its lease expires at once
    (expired,) = store.expired_leases()
    assert store.expire(first, expired["token"], {})  # recovery requeues it
    doc = store.claim("s", ["t"], "w", 60, token="b" * 16)
    assert doc["_id"] == first and doc["attempt"] == 2  # claimed anew, not the lost lease


def test_a_requeue_retried_after_its_answer_was_lost_leaves_a_run_claims_find(
        store, raw, monkeypatch):
    store.enqueue([queued(i=i) for i in range(3)])
    first, second = store.claim("s", ["t"], "w", 60), store.claim("s", ["t"], "w", 60)
    monkeypatch.setattr(store, "_queue", _AnswerLost(store._queue, "update_one"))
    with pytest.raises(StoreUnavailable):
        store.requeue(first["_id"], first["token"], {"attempt": 0})
    assert not store.requeue(first["_id"], first["token"], {"attempt": 0})  # done already
    assert raw.hse_queue.find_one({"_id": first["_id"]})["status"] == QUEUED
    assert raw.hse_ready.find_one({"_id": first["_id"]})  # pointed at before it was queued
    assert store.claim("s", ["t"], "w", 60)["_id"] == first["_id"]  # before the third, older
    assert store.finish(second["_id"], second["token"], COMPLETED, {})


def test_a_finish_retried_after_its_answer_was_lost_counts_as_recorded(
        store, raw, monkeypatch):
    (run_id,) = store.enqueue([queued()])
    doc = store.claim("s", ["t"], "w", 60)
    monkeypatch.setattr(store, "_queue", _AnswerLost(store._queue, "update_one"))
    with pytest.raises(StoreUnavailable):
        store.finish(run_id, doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
    assert store.finish(run_id, doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
    assert raw.hse_leases.count_documents({}) == 0
    assert store.sweep_finished() == 1  # archived like any run this process ended
    assert raw.hse_done.find_one({"_id": run_id})["status"] == COMPLETED
    assert not store.finish(run_id, "another-token", COMPLETED, {})


def test_a_run_queued_by_a_writer_that_died_before_pointing_at_it_is_still_claimed(
        store, raw, monkeypatch):
    (first,) = store.enqueue([queued(i=0)])
    assert store.claim("s", ["t"], "w", 60)["_id"] == first  # the window is built, complete
    monkeypatch.setattr(store, "_ready", _AnswerLost(store._ready, "insert_many",
                                                     written=False))
    with pytest.raises(StoreUnavailable):
        store.enqueue([queued(i=1)])  # inserted; its pointer never written
    (stray,) = raw.hse_queue.find({"i": 1, "status": QUEUED})
    assert raw.hse_ready.count_documents({}) == 0
    again = connect(store.uri, store.db_name)  # another worker
    try:
        assert again.claim("s", ["t"], "w2", 60)["_id"] == stray["_id"]
    finally:
        again.close()


# ------------------------------------------------------------------ fencing
def test_stale_token_cannot_finish_or_renew(store, raw):
    (run_id,) = store.enqueue([queued()])
    first = store.claim("s", ["t"], "w1", -1)  # lease already expired: w1 looks dead
    assert store.expire(run_id, first["token"], {"last_error": "worker lost"}) is True
    second = store.claim("s", ["t"], "w2", 60)
    assert second["_id"] == run_id and second["attempt"] == 2
    assert second["token"] != first["token"]
    snapshot = raw.hse_queue.find_one({"_id": run_id})

    assert store.finish(run_id, first["token"], COMPLETED, {"metrics": {"score": 1.0}}) is False
    assert store.renew_lease(run_id, first["token"], 60, {"sacred_id": 99}) is None
    assert store.expire(run_id, first["token"], {"last_error": "x"}) is False
    assert raw.hse_queue.find_one({"_id": run_id}) == snapshot, "a stale token changed the run"

    # the current attempt is not expired: expire() must leave it alone too
    assert store.expire(run_id, second["token"], {"last_error": "x"}) is False
    renewed = store.renew_lease(run_id, second["token"], 60, {"sacred_id": 7})
    assert renewed is not None and renewed["attempt"] == 2
    assert store.finish(run_id, second["token"], COMPLETED, {"metrics": {"score": 2.0}}) is True
    doc = raw.hse_queue.find_one({"_id": run_id})
    assert doc["status"] == COMPLETED and doc["metrics"] == {"score": 2.0}
    assert doc["sacred_id"] == 7 and doc["ended_at"] >= doc["started_at"]
    # finished: not even the right token can write again
    assert store.finish(run_id, second["token"], FAILED, {}) is False
    assert store.renew_lease(run_id, second["token"], 60) is None


def test_requeue_clears_the_attempt(store, raw):
    (run_id,) = store.enqueue([queued()])
    doc = store.claim("s", ["t"], "w1", 60)
    assert store.requeue(run_id, doc["token"], {"attempt": 0}) is True
    doc = raw.hse_queue.find_one({"_id": run_id})
    assert doc["status"] == QUEUED and doc["attempt"] == 0
    assert not {"token", "worker", "lease_until", "started_at"} & set(doc)
    assert store.claim("s", ["t"], "w2", 60)["_id"] == run_id


def test_cancel_requests(store, raw):
    ids = store.enqueue([queued(i=i) for i in range(3)])
    running = store.claim("s", ["t"], "w", 60)
    assert store.request_cancel(RunFilter(study="s")) == (2, 1)
    statuses = {i: store.get_run(i) for i in ids}  # cancelled ones are archived at once
    assert statuses[running["_id"]]["status"] == RUNNING
    # truthy, not `is True`: nx-27017 stores a top-level boolean written by $set as 1
    assert statuses[running["_id"]]["cancel_requested"]
    assert sorted(i for i, d in statuses.items() if d["status"] == CANCELLED) == \
        sorted(set(ids) - {running["_id"]})
    renewed = store.renew_lease(running["_id"], running["token"], 60)
    assert renewed["cancel_requested"]
    # cancelling again changes nothing: the cancelled runs are final, the running one flagged
    assert store.request_cancel(RunFilter(study="s"))[0] == 0


def test_a_leased_run_whose_cancel_was_requested_ends_cancelled_instead_of_going_back(
        store, raw):
    # Flagged while leased (RUNNING, maybe claimed ahead and not started): given back
    # (the current run was long, the worker stops) or recovered once its lease expired,
    # it ends CANCELLED. Back in the queue with its flag, the next worker would run it,
    # and a run shorter than the lease beat would complete despite the cancel.
    store.enqueue([queued(i=i) for i in range(4)])
    ahead = store.claim("s", ["t"], "w", 60, ahead=True)  # not started: no Sacred record
    started = store.claim("s", ["t"], "w", 60)
    lost = store.claim("s", ["t"], "w", -1)  # its worker looks dead
    kept = store.claim("s", ["t"], "w", 60)  # never cancelled
    for sacred_id, doc in enumerate((started, lost), 1):
        store.save_sacred_run(_record(sacred_id, doc["_id"], doc["token"]), new=True)
    assert store.request_cancel(RunFilter(ids=[ahead["_id"], started["_id"], lost["_id"]])) \
        == (0, 3)
    assert store.requeue(ahead["_id"], ahead["token"], {"attempt": 0}) is True
    assert store.requeue(started["_id"], started["token"], {"attempt": 0}) is True
    assert store.expire(lost["_id"], lost["token"], {"last_error": "worker lost"}) is True
    assert store.requeue(kept["_id"], kept["token"], {"attempt": 0}) is True
    docs = {d["_id"]: store.get_run(d["_id"]) for d in (ahead, started, lost, kept)}
    assert [docs[d["_id"]]["status"] for d in (ahead, started, lost, kept)] == \
        [CANCELLED, CANCELLED, CANCELLED, QUEUED]
    assert docs[ahead["_id"]]["error"] == "cancelled before it started"
    assert "started_at" not in docs[ahead["_id"]] and docs[ahead["_id"]]["attempt"] == 0
    assert docs[started["_id"]]["error"] == "cancelled while running"
    assert docs[started["_id"]]["started_at"] == started["started_at"]
    assert all(docs[i]["reason"] == "cancelled" and docs[i]["ended_at"]
               for i in (ahead["_id"], started["_id"], lost["_id"]))
    assert [d["_id"] for d in raw.hse_leases.find({})] == []
    assert [d["_id"] for d in claim_all(store)] == [kept["_id"]]  # only that one went back
    # Its attempt is over: not even its own token can end it otherwise now.
    assert store.requeue(ahead["_id"], ahead["token"], {}) is False
    assert store.finish(started["_id"], started["token"], COMPLETED, {}) is False


# ------------------------------------------------------------------ sweeping
def _finish_all(store, n, status=COMPLETED):
    ids = store.enqueue([queued(i=i) for i in range(n)])
    for doc in claim_all(store):
        assert store.finish(doc["_id"], doc["token"], status, {"metrics": {"score": 1.0}})
    return ids


def test_sweep_moves_final_docs_to_done(store, raw):
    final = _finish_all(store, 3)
    (waiting,) = store.enqueue([queued(task="later")])
    assert store.sweep_finished() == 3
    assert [d["_id"] for d in raw.hse_queue.find({})] == [waiting]
    done = {d["_id"]: d for d in raw.hse_done.find({})}
    assert sorted(done) == sorted(final)
    assert all(d["status"] == COMPLETED and d["metrics"] == {"score": 1.0} for d in done.values())
    assert store.sweep_finished() == 0
    # reads see runs wherever they are
    assert store.get_run(final[0])["status"] == COMPLETED
    assert store.count_by_status(RunFilter(study="s"))[COMPLETED] == 3
    assert store.count_by_status(RunFilter(study="s"))[QUEUED] == 1


def test_interrupted_sweep_is_idempotent(store, raw):
    ids = _finish_all(store, 4)
    # a sweep crashed after copying one doc to hse_done, before deleting it from the queue
    raw.hse_done.insert_one(raw.hse_queue.find_one({"_id": ids[1]}))
    assert store.sweep_finished() == 4
    assert raw.hse_queue.count_documents({}) == 0
    assert sorted(d["_id"] for d in raw.hse_done.find({})) == sorted(ids), "one copy of each"
    assert store.sweep_finished() == 0


def test_sweep_leaves_active_runs(store, raw):
    ids = store.enqueue([queued(i=i) for i in range(3)])
    store.claim("s", ["t"], "w", 60)
    assert store.sweep_finished() == 0
    assert sorted(d["_id"] for d in raw.hse_queue.find({})) == sorted(ids)


# ------------------------------------------------------------------ requeue of finished runs
ATTEMPT_STATE = {"token", "lease_until", "heartbeat", "started_at", "ended_at", "worker",
                 "host", "reason", "error", "metrics", "sacred_id", "cancel_requested",
                 "config_given", "duration"}


def _finish_one(store, status, sacred_id, **fields):
    """One run of task 't' claimed and finished as a worker does (config completed,
    the given one kept in config_given)."""
    (run_id,) = store.enqueue([queued(config={"lr": 1}, seed=0, task_spec={})])
    doc = store.claim("s", ["t"], "w1", 60, exclude=[])
    assert doc["_id"] == run_id
    store.renew_lease(run_id, doc["token"], 60, {"sacred_id": sacred_id})
    assert store.finish(run_id, doc["token"], status, {
        "reason": "error" if status == FAILED else None, "error": f"attempt {sacred_id}",
        "metrics": {"score": float(sacred_id)}, "sacred_id": sacred_id, "host": "h1",
        "config": {"lr": 1, "epochs": 3}, "config_given": {"lr": 1}, **fields})
    return run_id


def test_requeue_finished_keeps_the_earlier_attempt(store, raw):
    run_id = _finish_one(store, FAILED, 11, cancel_requested=True)
    before = raw.hse_queue.find_one({"_id": run_id})
    assert store.requeue_finished(RunFilter(study="s", status=[FAILED])) == 1
    doc = raw.hse_queue.find_one({"_id": run_id})
    assert doc["status"] == QUEUED and doc["attempt"] == 0
    assert not ATTEMPT_STATE & set(doc), "nothing of the finished attempt leaks into the next"
    assert doc["config"] == {"lr": 1}, "the config as submitted, completed again by the worker"
    assert doc["order"] > before["order"] and doc["queued_at"] >= before["ended_at"]
    (previous,) = doc["previous_attempts"]
    assert {k: previous[k] for k in ("status", "reason", "error", "metrics", "sacred_id",
                                     "attempt", "worker", "host", "ended_at", "config")} == {
        "status": FAILED, "reason": "error", "error": "attempt 11", "metrics": {"score": 11.0},
        "sacred_id": 11, "attempt": 1, "worker": "w1", "host": "h1",
        "ended_at": before["ended_at"], "config": {"lr": 1, "epochs": 3}}
    # a second round: the list grows, the run is claimed with a fresh attempt count
    again = store.claim("s", ["t"], "w2", 60)
    assert again["_id"] == run_id and again["attempt"] == 1
    store.finish(run_id, again["token"], COMPLETED, {"sacred_id": 12, "metrics": {"score": 1.0}})
    assert store.requeue_finished(RunFilter(study="s", ids=[run_id])) == 1
    doc = raw.hse_queue.find_one({"_id": run_id})
    assert [(p["status"], p["sacred_id"]) for p in doc["previous_attempts"]] == [
        (FAILED, 11), (COMPLETED, 12)]
    assert store.requeue_finished(RunFilter(study="s")) == 0, "a queued run is not finished"


def test_requeue_finished_takes_only_the_asked_statuses_and_never_active_runs(store, raw):
    failed = _finish_one(store, FAILED, 1)
    completed = _finish_one(store, COMPLETED, 2)
    waiting, running = store.enqueue([queued(), queued()])
    store.claim("s", ["t"], "w", 60, exclude=[waiting])
    with pytest.raises(StoreError, match="final statuses"):
        store.requeue_finished(RunFilter(study="s", status=[QUEUED]))
    assert store.requeue_finished(RunFilter(study="s", status=[FAILED, CANCELLED])) == 1
    assert store.requeue_finished(RunFilter(study="other")) == 0
    statuses = {d["_id"]: d["status"] for d in raw.hse_queue.find({})}
    assert statuses == {failed: QUEUED, completed: COMPLETED, waiting: QUEUED,
                        running: RUNNING}
    assert "previous_attempts" not in raw.hse_queue.find_one({"_id": waiting})


def test_requeue_finished_moves_archived_runs_back_once(store, raw):
    ids = [_finish_one(store, FAILED, i) for i in range(3)]
    kept = _finish_one(store, COMPLETED, 9)
    assert store.sweep_finished() == 4
    assert store.requeue_finished(RunFilter(study="s", status=[FAILED])) == 3
    assert sorted(d["_id"] for d in raw.hse_queue.find({})) == sorted(ids)
    assert [d["_id"] for d in raw.hse_done.find({})] == [kept]
    for doc in raw.hse_queue.find({}):
        assert doc["status"] == QUEUED and doc["previous_attempts"][0]["status"] == FAILED
    counts = store.count_by_status(RunFilter(study="s"))
    assert (counts[QUEUED], counts[FAILED], counts[COMPLETED]) == (3, 0, 1)
    claimed = claim_all(store)
    assert sorted(d["_id"] for d in claimed) == sorted(ids)
    assert all(d["attempt"] == 1 for d in claimed)


def test_a_requeue_that_crashed_before_deleting_the_archived_copy(store, raw):
    """Crash-safe order: the requeued run is inserted into the queue, then deleted from
    the archive. A crash in between leaves it in both: readers see the queued one, a
    later requeue or sweep removes the stale copy, and no outcome is lost."""
    run_id = _finish_one(store, FAILED, 5)
    store.sweep_finished()
    archived = raw.hse_done.find_one({"_id": run_id})
    from hyperspace_explorer.storage.base import requeued_document
    raw.hse_queue.insert_one(requeued_document(archived, 1, time.time()))  # then crash
    assert store.get_run(run_id)["status"] == QUEUED
    assert [d["status"] for d in store.find_runs(RunFilter(study="s"))] == [QUEUED]
    # requeued again (the user retries): nothing requeued twice, the stale copy goes
    assert store.requeue_finished(RunFilter(study="s", status=[FAILED])) == 0
    assert raw.hse_done.count_documents({}) == 0
    assert raw.hse_queue.count_documents({}) == 1
    # or the requeued run ran and finished again before anyone looked: the sweep keeps
    # the new outcome, not the stale archived one
    raw.hse_done.insert_one(archived)
    doc = store.claim("s", ["t"], "w2", 60)
    store.finish(run_id, doc["token"], COMPLETED, {"metrics": {"score": 2.0}})
    assert store.sweep_finished() == 1
    (done,) = list(raw.hse_done.find({}))
    assert done["status"] == COMPLETED and done["metrics"] == {"score": 2.0}
    assert done["previous_attempts"][0]["metrics"] == {"score": 5.0}
    assert raw.hse_queue.count_documents({}) == 0


def test_concurrent_requeues_requeue_each_run_once(mongo_uri, db_name, store, raw):
    ids = [_finish_one(store, FAILED, i) for i in range(40)]
    store.sweep_finished()
    ids += [_finish_one(store, FAILED, 100 + i) for i in range(10)]  # 10 still in the queue

    def requeue(_):
        s = connect(mongo_uri, db_name)
        try:
            return s.requeue_finished(RunFilter(study="s", status=[FAILED]))
        finally:
            s.close()
    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(requeue, range(4)))
    assert sum(counts) == 50, counts
    assert sorted(d["_id"] for d in raw.hse_queue.find({})) == sorted(ids)
    assert raw.hse_done.count_documents({}) == 0
    assert all(len(d["previous_attempts"]) == 1 for d in raw.hse_queue.find({}))


# ------------------------------------------------------------------ fingerprints
def test_find_fingerprints_in_batches_over_both_collections(store, raw, monkeypatch):
    monkeypatch.setattr("hyperspace_explorer.storage.mongo.BATCH", 3)
    ids = store.enqueue([queued(fingerprint=f"f{i}") for i in range(8)]
                        + [queued(study="other", fingerprint="f8")])
    for doc in claim_all(store)[:3]:  # f0, f1, f2 end COMPLETED, FAILED, CANCELLED
        status = {0: COMPLETED, 1: FAILED, 2: CANCELLED}[int(doc["fingerprint"][1:])]
        store.finish(doc["_id"], doc["token"], status, {})
    assert store.requeue_finished(RunFilter(study="s", ids=ids[3:8])) == 0  # active ones
    assert store.sweep_finished() == 3
    wanted = [f"f{i}" for i in range(9)] + ["nope"]
    found = store.find_fingerprints("s", wanted, [QUEUED, RUNNING, COMPLETED])
    assert found == {"f0": ids[0], **{f"f{i}": ids[i] for i in range(3, 8)}}
    assert store.find_fingerprints("s", wanted, [FAILED]) == {"f1": ids[1]}
    assert store.find_fingerprints("s", [], [QUEUED]) == {}


def test_task_fingerprints_reads_a_task_whole_up_to_a_bound(store):
    ids = store.enqueue([queued(fingerprint=f"f{i}") for i in range(4)]
                        + [queued(task="u", fingerprint="g"), queued(study="o", fingerprint="h"),
                           queued(fingerprint=None)])
    doc = store.claim("s", ["t"], "w1", 60)
    store.finish(doc["_id"], doc["token"], FAILED, {})
    assert store.sweep_finished() == 1
    active = [QUEUED, RUNNING, COMPLETED]
    expected = {f"f{i}": ids[i] for i in range(4) if ids[i] != doc["_id"]}
    assert store.task_fingerprints("s", "t", active, at_most=5) == expected
    assert store.task_fingerprints("s", "t", [FAILED], 5) == {doc["fingerprint"]: doc["_id"]}
    assert store.task_fingerprints("s", "none", active, 0) == {}
    # more runs of the task than at_most in the queue (4): None, look them up instead
    assert store.task_fingerprints("s", "t", active, 3) is None


# ------------------------------------------------------------------ Sacred ids
def test_reserve_sacred_ids_gives_consecutive_non_overlapping_ranges(store):
    ranges = [store.reserve_sacred_ids(n) for n in (1, 8, 3, 8, 1, 5)]
    assert ranges == [range(1, 2), range(2, 10), range(10, 13), range(13, 21), range(21, 22),
                      range(22, 27)]
    assert store.reserve_sacred_ids() == range(27, 28)


def test_concurrent_sacred_id_reservations_never_overlap(mongo_uri, db_name):
    stores = [connect(mongo_uri, db_name) for _ in range(4)]
    try:
        def reserve(s):
            return [i for _ in range(6) for i in s.reserve_sacred_ids(3)]
        with ThreadPoolExecutor(len(stores)) as pool:
            ids = [i for part in pool.map(reserve, stores) for i in part]
    finally:
        for s in stores:
            s.close()
    assert sorted(ids) == list(range(1, 73))


# ------------------------------------------------------------------ reads
def test_get_run_by_run_id_and_by_sacred_id(store, raw):
    ids = store.enqueue([queued(i=i) for i in range(12)])
    for sacred_id, doc in enumerate(claim_all(store), start=1):
        store.finish(doc["_id"], doc["token"], COMPLETED, {"sacred_id": sacred_id})
    store.sweep_finished(limit=5)  # some in hse_done, some still in the queue
    assert raw.hse_queue.count_documents({}) == 7
    for sacred_id, run_id in enumerate(ids, start=1):
        assert store.get_run(run_id)["sacred_id"] == sacred_id
        assert store.get_run(sacred_id)["_id"] == run_id
        assert store.get_run(str(sacred_id))["_id"] == run_id
    with pytest.raises(RunNotFound, match="no run with id 'nope'"):
        store.get_run("nope")
    with pytest.raises(RunNotFound):
        store.get_run(999)
    with pytest.raises(KeyError):  # RunNotFound is also a KeyError
        store.get_run("abc")


def test_run_ids_are_never_all_digits():
    assert all(not new_run_id().isdigit() for _ in range(2000))


# ------------------------------------------------------------------ connecting
@pytest.mark.parametrize("uri, secret", [
    ("mongodb://bob:hunter2@db.example.com:27017/hse", "hunter2"),
    ("mongodb+srv://bob:hunter2@cluster0.example.net/?retryWrites=true", "hunter2"),
    ("mongodb://bob:hunter2@h1:1,h2:2/db?replicaSet=rs0", "hunter2"),
    ("mongodb://bob:p%40ss%2Fword@db.example.com", "p%40ss%2Fword"),
])
def test_redact_uri_hides_passwords(uri, secret):
    redacted = redact_uri(uri)
    assert secret not in redacted and "***@" in redacted
    assert redacted.split("@", 1)[1] == uri.split("@", 1)[1]  # the host part stays readable
    assert redact_uri("mongodb://127.0.0.1:27017") == "mongodb://127.0.0.1:27017"


def test_connect_to_an_unreachable_server_fails_fast_without_the_password():
    with pytest.raises(StoreError) as info:
        connect("mongodb://bob:hunter2@127.0.0.1:1", "hse_test_x", timeout_s=1)
    message = str(info.value)
    assert "cannot reach MongoDB" in message and "127.0.0.1:1" in message
    assert "hunter2" not in message and "bob:" not in message


@pytest.mark.parametrize("uri", ["http://example.com", "mongodb://", "mongodb://host:notaport",
                                 "mongodb://bob:hunter2@host:notaport"])
def test_invalid_uri_raises_store_error(uri):
    with pytest.raises(StoreError, match="invalid MongoDB URI") as info:
        connect(uri, "hse_test_x", timeout_s=1)
    assert "hunter2" not in str(info.value)


def test_unescaped_passwords_never_leak():
    # Users paste passwords with special characters unescaped: exactly the URIs that
    # pymongo rejects, so exactly the ones that end up in an error message.
    leaks = []
    for uri in ("mongodb://bob:se/cret@127.0.0.1:1",    # unescaped '/' in the password
                "mongodb://bob:se@cret@127.0.0.1:1"):   # unescaped '@' in the password
        if "cret" in redact_uri(uri):
            leaks.append(f"redact_uri({uri!r}) = {redact_uri(uri)!r}")
        with pytest.raises(StoreError) as info:
            MongoStorage(uri, "hse_test_x", timeout_s=1)
        if "cret" in str(info.value):
            leaks.append(f"MongoStorage({uri!r}) raised {str(info.value)!r}")
    assert not leaks, ("BUG (store.redact_uri): a password with an unescaped '/' or '@' "
                       "is not (fully) redacted:\n" + "\n".join(leaks))


@pytest.mark.parametrize("name", ["", "a.b", "has space", "x" * 64, "a/b", None])
def test_invalid_database_names_are_refused(mongo_uri, name):
    with pytest.raises(StoreError, match="invalid database name"):
        MongoStorage(mongo_uri, name)


def test_connect_creates_the_claim_indexes(store, mongo_uri, db_name):
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        def keys(collection):
            return [[k for k, _ in ix["key"]]
                    for ix in client[db_name][collection].index_information().values()]
        # by fields, not names: nx-27017 names indexes itself
        assert ["study", "status", "priority", "order"] in keys("hse_queue")
        assert ["study", "task", "req", "priority", "order"] in keys("hse_ready")
        assert ["study", "task", "req", "status", "priority", "order"] in keys("hse_queue")
        assert ["lease_until"] in keys("hse_leases")
        for coll in ("hse_queue", "hse_done"):
            assert ["study", "fingerprint"] in keys(coll)


def test_a_run_swept_during_a_read_is_reported_once(store):
    ids = _finish_all(store, 2)
    reading = store.find_runs(RunFilter(study="s"))
    first = next(reading)["_id"]  # read from the queue...
    assert store.sweep_finished() == 2  # ...then both move to hse_done
    rest = [d["_id"] for d in reading]
    assert sorted([first, *rest]) == sorted(ids)


# ------------------------------------------------------------------ malformed documents
def test_a_poison_document_at_the_head_is_quarantined_not_stalling_the_queue(store, raw):
    (good,) = store.enqueue([queued(i=1)])
    raw.hse_queue.insert_one({"_id": "poison", "study": "s", "task": "t", "task_spec": {},
                              "seed": 0, "status": QUEUED, "priority": 99, "order": 0,
                              "attempt": "x"})
    doc = store.claim("s", ["t"], "w", 60)
    assert doc is not None and doc["_id"] == good, "the run behind the poison doc starts"
    poison = raw.hse_queue.find_one({"_id": "poison"})
    assert poison["status"] == FAILED and poison["reason"] == "invalid"
    assert "'attempt'" in poison["error"] and "str 'x'" in poison["error"]


def test_documents_without_a_study_are_quarantined(store, raw):
    raw.hse_queue.insert_one({"_id": "orphan", "task": "t", "status": QUEUED, "attempt": 0})
    (kept,) = store.enqueue([queued()])
    assert store.quarantine_orphans() == 1
    orphan = raw.hse_queue.find_one({"_id": "orphan"})
    assert orphan["status"] == FAILED and "'study' is missing" in orphan["error"]
    assert raw.hse_queue.find_one({"_id": kept})["status"] == QUEUED
    assert store.quarantine_orphans() == 0


def test_claim_skips_excluded_runs(store):
    first, second = store.enqueue([queued(i=0), queued(i=1)])
    assert store.claim("s", ["t"], "w", 60, exclude=[first])["_id"] == second
    assert store.claim("s", ["t"], "w", 60, exclude=[first]) is None
    assert store.claim("s", ["t"], "w", 60)["_id"] == first


# ------------------------------------------------------------------ filters and counts
def test_run_filters_by_status_task_ids_and_config_path(store):
    ids = store.enqueue([queued(task="a", config={"model": {"className": "F", "n": 1}}),
                         queued(task="a", config={"model": {"className": "L"}}),
                         queued(task="b", config={"model": {"className": "F", "n": 2}})])
    claimed = store.claim("s", ["a"], "w", 60)
    store.finish(claimed["_id"], claimed["token"], FAILED, {})

    def found(**criteria):
        return sorted(d["_id"] for d in store.find_runs(RunFilter(study="s", **criteria)))
    assert found() == sorted(ids)
    assert found(task="a") == sorted(ids[:2])
    assert found(config={"model.className": "F"}) == sorted([ids[0], ids[2]])
    assert found(config={"model.n": 2}) == [ids[2]]
    assert found(status="failed") == [claimed["_id"]]
    assert found(status=["QUEUED", "FAILED"]) == sorted(ids)
    assert found(ids=[ids[1]]) == [ids[1]]
    counts = store.count_by_task_status(RunFilter(study="s"))
    assert counts == {("a", FAILED): 1, ("a", QUEUED): 1, ("b", QUEUED): 1}
    with pytest.raises(QueryError, match="unknown status 'DONE'"):
        RunFilter(status="DONE")
    with pytest.raises(QueryError, match="config filter path"):
        RunFilter(config={"model..x": 1})


# ------------------------------------------------------------------ Sacred records
def _record(sacred_id, run_id="r1", token="tok", status="RUNNING"):
    return {"_id": sacred_id, "status": status, "meta": {"hse": {"run_id": run_id,
                                                                  "token": token}},
            "captured_out": "", "result": None}


def test_sacred_records_are_never_resurrected_once_closed(store, raw):
    assert store.save_sacred_run(_record(1)) is True          # insert
    assert store.save_sacred_run(_record(1)) is True          # still RUNNING: replaced
    assert store.supersede_sacred_runs("r1", "tok", "superseded: lost") == 1
    closed = raw.runs.find_one({"_id": 1})
    assert closed["status"] == "FAILED" and closed["fail_trace"] == ["superseded: lost"]
    assert closed["stop_time"] is not None
    # the lost worker comes back: neither a heartbeat nor its COMPLETED write lands
    assert store.save_sacred_run(_record(1)) is False
    assert store.save_sacred_run(_record(1, status="COMPLETED")) is False
    assert raw.runs.find_one({"_id": 1})["status"] == "FAILED"


def test_a_final_record_write_retried_after_it_landed_counts_as_written(store):
    store.save_sacred_run(_record(2))
    final = {**_record(2, status="COMPLETED"), "result": 1.0}
    assert store.save_sacred_run(final) is True
    assert store.save_sacred_run(final) is True, "the same final write again is idempotent"


def test_supersede_closes_only_that_attempts_open_or_completed_records(store, raw):
    store.save_sacred_run(_record(3, token="old"))
    store.save_sacred_run(_record(4, token="old", status="COMPLETED"))
    store.save_sacred_run(_record(5, token="new", status="COMPLETED"))
    store.save_sacred_run(_record(6, token="old", status="TIMEOUT"))
    assert store.supersede_sacred_runs("r1", "old", "superseded") == 2
    statuses = {d["_id"]: d["status"] for d in raw.runs.find({})}
    assert statuses == {3: "FAILED", 4: "FAILED", 5: "COMPLETED", 6: "TIMEOUT"}


def test_metric_series_are_appended_and_reported_new_once(store):
    first = store.push_metrics(7, "loss", [0, 1], [1.0, 0.5], [None, None], stored=0)
    again = store.push_metrics(7, "loss", [2], [0.25], [None], stored=2)
    assert isinstance(first, str) and again is None
    (series,) = store.metric_series([7], "loss")
    assert series["steps"] == [0, 1, 2] and series["values"] == [1.0, 0.5, 0.25]


def test_a_metrics_push_retried_after_its_answer_was_lost_adds_no_point_twice(
        store, raw, monkeypatch):
    metrics = store._metrics
    monkeypatch.setattr(store, "_metrics", _AnswerLost(metrics, "update_one"))
    with pytest.raises(StoreUnavailable):  # the series' first points, stored
        store.push_metrics(8, "loss", [0, 1], [1.0, 0.5], [None, None], stored=0)
    series_id = store.push_metrics(8, "loss", [0, 1], [1.0, 0.5], [None, None], stored=0)
    assert series_id == str(raw.metrics.find_one({"run_id": 8})["_id"])  # noted all the same
    monkeypatch.setattr(store, "_metrics", _AnswerLost(metrics, "update_one"))
    with pytest.raises(StoreUnavailable):  # more points, stored
        store.push_metrics(8, "loss", [2], [0.25], [None], stored=2)
    assert store.push_metrics(8, "loss", [2], [0.25], [None], stored=2) is None
    assert store.push_metrics(8, "loss", [3], [0.125], [None], stored=3) is None
    (series,) = raw.metrics.find({"run_id": 8})
    assert series["steps"] == [0, 1, 2, 3] and series["values"] == [1.0, 0.5, 0.25, 0.125]


def test_orphan_records_of_attempts_that_lost_their_run_are_closed(store, raw):
    (run_id,) = store.enqueue([queued()])
    doc = store.claim("s", ["t"], "w", 60)
    store.save_sacred_run(_record(10, run_id=run_id, token=doc["token"]))   # current attempt
    store.save_sacred_run(_record(11, run_id=run_id, token="an-old-token"))  # a lost one
    store.save_sacred_run(_record(12, run_id="gone", token="x"))             # run requeued/absent
    raw.runs.insert_one({"_id": 13, "status": "RUNNING", "meta": {}})        # not ours
    assert store.close_orphan_sacred_runs() == 2
    statuses = {d["_id"]: d["status"] for d in raw.runs.find({})}
    assert statuses == {10: "RUNNING", 11: "FAILED", 12: "FAILED", 13: "RUNNING"}
    assert store.close_orphan_sacred_runs() == 0



# ------------------------------------------------------------------ the ready window
def test_claim_order_holds_across_a_backlog_many_windows_long(store, monkeypatch):
    """Priorities and age order hold exactly across refills of the ready window,
    with runs submitted, cancelled and requeued between claims."""
    from hyperspace_explorer.storage import mongo

    monkeypatch.setattr(mongo, "READY_WINDOW", 4)  # many refills with few runs
    import random
    rng = random.Random(7)
    store.enqueue([queued(priority=rng.choice([0, 1, 5]), i=i) for i in range(40)])
    taken, expected_pool = [], {}
    for d in store.find_runs(RunFilter(study="s"), fields=["priority", "order"]):
        expected_pool[d["_id"]] = (-d["priority"], d["order"])
    for step in range(30):
        if step == 5:   # a late, urgent grid jumps ahead of everything
            for i in store.enqueue([queued(priority=9, i=100 + k) for k in range(6)]):
                doc = store.get_run(i)
                expected_pool[i] = (-9, doc["order"])
        if step == 12:  # cancelled runs are skipped
            victims = sorted(expected_pool, key=expected_pool.get)[:3]
            store.request_cancel(RunFilter(ids=tuple(victims)))
            for v in victims:
                del expected_pool[v]
        doc = store.claim("s", ["t"], "w", 60)
        assert doc["_id"] == min(expected_pool, key=expected_pool.get), f"step {step}"
        del expected_pool[doc["_id"]]
        taken.append(doc)
        if step == 20:  # a run comes back (worker shutdown): first again, by its age
            store.requeue(taken[0]["_id"], taken[0]["token"], {"attempt": 0})
            expected_pool[taken[0]["_id"]] = (-taken[0]["priority"], taken[0]["order"])
    while (doc := store.claim("s", ["t"], "w", 60)) is not None:
        assert doc["_id"] == min(expected_pool, key=expected_pool.get)
        del expected_pool[doc["_id"]]
    assert not expected_pool


def test_expired_leases_are_found_without_scanning_the_queue(store, raw):
    store.enqueue([queued(i=i) for i in range(5)])
    live = store.claim("s", ["t"], "w1", 60)
    dead = store.claim("s", ["t"], "w2", -1)
    assert [d["_id"] for d in store.expired_leases()] == [dead["_id"]]
    assert raw.hse_leases.count_documents({}) == 2
    assert store.expire(dead["_id"], dead["token"], {}) is True
    assert store.finish(live["_id"], live["token"], COMPLETED, {}) is True
    assert raw.hse_leases.count_documents({}) == 0 and store.expired_leases() == []
    # a claimer that died between its lease document and the claim leaves no trace
    raw.hse_leases.insert_one({"_id": "ghost", "token": "t", "worker": "w", "lease_until": 0})
    assert store.expired_leases() == [] and raw.hse_leases.count_documents({}) == 0


def test_owns_says_whether_an_attempt_still_holds_its_run(store):
    (run_id,) = store.enqueue([queued()])
    first = store.claim("s", ["t"], "w1", -1)
    assert store.owns(run_id, first["token"]) is True
    assert store.expire(run_id, first["token"], {}) is True
    assert store.owns(run_id, first["token"]) is False
    second = store.claim("s", ["t"], "w2", 60)
    assert store.owns(run_id, second["token"]) is True
    store.finish(run_id, second["token"], COMPLETED, {})
    assert store.owns(run_id, second["token"]) is False


# ------------------------------------------------------------------ web page reads
def _sort_key(doc, path):
    value = doc
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return (0, 0) if value is None else (1, value)


def test_page_runs_pages_through_queue_and_archive_in_sort_order(store, raw):
    """Every run once, in the requested order, whether it waits in the queue or was
    archived: finished runs with metrics, cancelled ones without, queued ones."""
    ids = store.enqueue([queued(seed=i % 4) for i in range(9)])
    for i, doc in enumerate(claim_all(store)[:6]):
        store.finish(doc["_id"], doc["token"], COMPLETED,
                     {"metrics": {"score": float((i * 7) % 5)}, "ended_at": 100.0 + i})
    store.sweep_finished()
    store.request_cancel(RunFilter(ids=tuple(ids[6:8])))
    store.enqueue([queued(task="other", seed=0)])
    assert raw.hse_queue.count_documents({}) and raw.hse_done.count_documents({})
    runs = RunFilter(study="s", task="t")
    every = list(store.find_runs(runs))
    assert len(every) == 9
    for sort in ("order", "seed", "status", "metrics.score", "ended_at"):
        for descending in (True, False):
            pages = []
            for skip in range(0, 12, 4):
                pages += store.page_runs(runs, sort=sort, descending=descending, skip=skip,
                                         limit=4, fields=["seed", "status"])
            expected = sorted(every, key=lambda d: (_sort_key(d, sort), d["_id"]),
                              reverse=descending)
            assert [d["_id"] for d in pages] == [d["_id"] for d in expected], (sort, descending)
    page = store.page_runs(runs, sort="seed", limit=2, fields=["seed"])
    assert set(page[0]) <= {"_id", "seed"}
    with pytest.raises(QueryError, match="cannot sort runs by"):
        store.page_runs(runs, sort="$where")
    with pytest.raises(QueryError, match="limit"):
        store.page_runs(runs, limit=0)


def test_count_ended_since_counts_finished_runs_of_the_filter(store):
    ids = store.enqueue([queued() for _ in range(4)])
    for i, doc in enumerate(claim_all(store)[:3]):
        store.finish(doc["_id"], doc["token"], COMPLETED, {"ended_at": 1000.0 + i})
    store.sweep_finished()
    assert store.count_ended_since(RunFilter(study="s"), 1001.0) == 2
    assert store.count_ended_since(RunFilter(study="s", task="other"), 0) == 0
    assert store.count_ended_since(RunFilter(study="s", ids=(ids[0],)), 0) == 1


def test_page_runs_continues_after_and_before_a_run_without_skipping(store):
    ids = store.enqueue([queued(seed=i % 3) for i in range(11)])
    store.request_cancel(RunFilter(ids=tuple(ids[:4])))  # some archived, some queued
    runs = RunFilter(study="s")
    for sort in ("order", "seed"):
        for descending in (True, False):
            every = store.page_runs(runs, sort=sort, descending=descending, limit=100)
            pages, last = [], None
            while True:
                page = store.page_runs(runs, sort=sort, descending=descending, limit=3,
                                       after=last)
                if not page:
                    break
                pages += page
                last = [page[-1][sort], page[-1]["_id"]]
            assert [d["_id"] for d in pages] == [d["_id"] for d in every]
            back = store.page_runs(runs, sort=sort, descending=descending, limit=3,
                                   before=[every[7][sort], every[7]["_id"]])
            assert [d["_id"] for d in back] == [d["_id"] for d in every[4:7]]
    with pytest.raises(QueryError, match="after=/before="):
        store.page_runs(runs, sort="metrics.score", after=[1.0, ids[0]])


# ------------------------------------------------------------------ reproducing
def test_start_here_stores_a_leased_run_no_claim_takes(store):
    doc = store.start_here(queued(), "notebook:1:here", 0.0)
    assert doc["status"] == RUNNING and doc["attempt"] == 1 and doc["token"]
    assert store.claim("s", ["t"], "w1", 60) is None  # never offered to workers
    assert store.owns(doc["_id"], doc["token"])
    assert [d["_id"] for d in store.expired_leases()] == [doc["_id"]]  # recoverable
    assert store.finish(doc["_id"], doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
    assert store.get_run(doc["_id"])["status"] == COMPLETED


def test_replace_configs_keeps_the_first_original_and_updates_sacred_records(store, raw):
    [run_id] = store.enqueue([queued(config={"a": 1})])
    raw.runs.insert_one({"_id": 7, "config": {"a": 1, "seed": 3}})
    change = {"run_id": run_id, "sacred_id": 7, "seed": 3, "config": {"a": 1, "b": 2},
              "original": {"a": 1}}
    assert store.replace_configs([change]) == 1
    doc = store.get_run(run_id)
    assert doc["config"] == {"a": 1, "b": 2} and doc["config_original"] == {"a": 1}
    record = raw.runs.find_one({"_id": 7})
    assert record["config"] == {"a": 1, "b": 2, "seed": 3}
    assert record["config_original"] == {"a": 1, "seed": 3}
    store.replace_configs([{**change, "config": {"a": 1, "b": 3}, "original": None}])
    assert store.get_run(run_id)["config_original"] == {"a": 1}


def test_blobs_are_stored_once_per_key(store, raw):
    assert store.read_blob("diff:none") is None
    store.store_blob("diff:abc", b"+x = 1\n")
    store.store_blob("diff:abc", b"+x = 1\n")
    assert store.read_blob("diff:abc") == b"+x = 1\n"
    assert raw.hse_sources.count_documents({"_id": "diff:abc"}) == 1


# ------------------------------------------------------------------ results reads (packs)
def _as_results(store, runs):
    from hyperspace_explorer.storage.base import RESULT_FIELDS, result_fields

    return sorted((result_fields(d) for d in store.find_runs(runs, fields=RESULT_FIELDS)),
                  key=lambda d: d["_id"])


def _results(store, runs):
    found = list(store.find_results(runs))
    assert len({d["_id"] for d in found}) == len(found), "each run once"
    return sorted(found, key=lambda d: d["_id"])


def _finished(store, n, task="t", status=COMPLETED, **fields):
    ids = store.enqueue([queued(task=task, config={"k": i}, seed=i,
                                task_spec={"scenario": {"className": "S", "x": 1}},
                                code_version={"commit": "c" * 8, "dirty": False, "diff": "x"},
                                **fields) for i in range(n)])
    for doc in claim_all(store, tasks=(task,)):
        store.finish(doc["_id"], doc["token"], status, {"metrics": {"score": doc["seed"] / 2}})
    return ids


def test_find_results_answers_what_find_runs_does_cut_to_result_fields(store, raw):
    done = _finished(store, 30)
    failed = _finished(store, 5, status=FAILED)
    while store.sweep_finished(limit=7):  # several packs
        pass
    queued_now = store.enqueue([queued(config={"k": 99}, seed=99, task_spec={})])
    assert raw.hse_packs.count_documents({}) >= 5
    for runs in (RunFilter(study="s"), RunFilter(study="s", task="t"),
                 RunFilter(study="s", status=COMPLETED), RunFilter(study="s", status="FAILED,QUEUED"),
                 RunFilter(study="s", task="other"), RunFilter(study="s", config={"k": 3}),
                 RunFilter(study="s", ids=(done[0], queued_now[0]))):
        assert _results(store, runs) == _as_results(store, runs), runs
    entry = next(d for d in store.find_results(RunFilter(study="s", ids=(done[0],))))
    assert entry["code_version"] == {"commit": "c" * 8, "dirty": False}  # no diff
    assert entry["task_spec"] == {"scenario": {"className": "S"}}
    assert len(_results(store, RunFilter(study="s"))) == 36 and len(failed) == 5


def test_find_results_follows_requeues_config_rewrites_and_writes_behind_its_back(store, raw):
    ids = _finished(store, 12)
    store.sweep_finished()
    everything = RunFilter(study="s")
    # requeued: back in the queue, no longer in any pack
    assert store.requeue_finished(RunFilter(study="s", ids=(ids[0], ids[1]))) == 2
    assert _results(store, everything) == _as_results(store, everything)
    assert {d["_id"]: d["status"] for d in store.find_results(everything)}[ids[0]] == QUEUED
    assert not any(ids[0] in p["ids"] for p in raw.hse_packs.find({}, {"ids": 1}))
    # a rewritten config (back-fill) shows at once
    store.replace_configs([{"run_id": ids[2], "config": {"k": 2, "new": True}}])
    row = next(d for d in store.find_results(everything) if d["_id"] == ids[2])
    assert row["config"] == {"k": 2, "new": True}
    # documents archived by another client (or an older version), one removed by hand,
    # one rewritten by hand: the packs are found out of date and made again
    raw.hse_done.insert_one({**raw.hse_done.find_one({"_id": ids[3]}), "_id": "by-hand",
                             "order": 1, "ended_at": 1.0})
    raw.hse_done.delete_one({"_id": ids[4]})
    raw.hse_done.update_one({"_id": ids[5]}, {"$set": {"metrics": {"score": -1.0},
                                                        "updated_at": time.time()}})
    assert _results(store, everything) == _as_results(store, everything)
    rows = {d["_id"]: d for d in store.find_results(everything)}
    assert "by-hand" in rows and ids[4] not in rows and rows[ids[5]]["metrics"] == {"score": -1.0}
    assert raw.hse_packs.count_documents({}) == 1  # packed again, as one pack


def test_results_packs_of_many_small_sweeps_are_compacted(store, raw):
    for _ in range(8):
        _finished(store, 2)
        store.sweep_finished()
    assert raw.hse_packs.count_documents({}) == 8
    everything = RunFilter(study="s", task="t")
    assert _results(store, everything) == _as_results(store, everything)
    assert raw.hse_packs.count_documents({}) == 1
    assert _results(store, everything) == _as_results(store, everything)


def test_a_run_in_two_packs_counts_once_as_its_latest_state(store, raw):
    [run_id] = _finished(store, 1)
    store.sweep_finished()
    stale = raw.hse_packs.find_one({})
    # the run is requeued, runs again and is archived again; an old pack survived
    assert store.requeue_finished(RunFilter(study="s", ids=(run_id,))) == 1
    doc = store.claim("s", ["t"], "w", 60)
    store.finish(run_id, doc["token"], COMPLETED, {"metrics": {"score": 9.0}})
    store.sweep_finished()
    raw.hse_packs.insert_one({**stale, "_id": "0" + stale["_id"]})
    (row,) = store.find_results(RunFilter(study="s"))
    assert row["metrics"] == {"score": 9.0}


def test_a_pack_that_cannot_be_written_never_blocks_archiving(store, raw, monkeypatch):
    import pymongo.errors

    ids = _finished(store, 6)

    def refuse(*args, **kwargs):
        raise pymongo.errors.DocumentTooLarge("pack over the limit")

    monkeypatch.setattr(store, "_insert_entries", refuse)
    assert store.sweep_finished() == 6  # archived all the same
    assert raw.hse_queue.count_documents({}) == 0 and raw.hse_packs.count_documents({}) == 0
    everything = RunFilter(study="s")
    assert _results(store, everything) == _as_results(store, everything)  # from the archive
    assert store.requeue_finished(RunFilter(study="s", ids=(ids[0],))) == 1
    monkeypatch.undo()
    assert _results(store, everything) == _as_results(store, everything)
    assert raw.hse_packs.count_documents({}) == 1  # packed by that read


def test_runs_sharing_a_config_share_it_in_their_pack_and_read_back_as_stored(store, raw):
    import bson

    ids = store.enqueue([queued(config={"k": i % 2, "deep": {"x": [1, 2]}}, seed=i,
                                task_spec={"scenario": {"className": "S"}})
                         for i in range(6)])
    for doc in claim_all(store):
        store.finish(doc["_id"], doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
    store.sweep_finished()
    (pack,) = raw.hse_packs.find({})
    body = bson.decode(zlib.decompress(pack["d"]))
    assert len(body["v"]["config"]) == 2 and len(body["v"]["task_spec"]) == 1
    everything = RunFilter(study="s")
    assert _results(store, everything) == _as_results(store, everything)
    assert sorted(d["_id"] for d in _results(store, everything)) == sorted(ids)


@pytest.mark.parametrize("blob", [b"not zlib", zlib.compress(b"not bson"),
                                  zlib.compress(b"\x05\x00\x00\x00\x00")])  # an empty document
def test_a_pack_that_cannot_be_read_is_made_again_from_the_archive(store, raw, blob):
    _finished(store, 4)
    store.sweep_finished()
    raw.hse_packs.update_many({}, {"$set": {"d": blob}})
    everything = RunFilter(study="s")
    assert _results(store, everything) == _as_results(store, everything)
    (pack,) = raw.hse_packs.find({})
    assert pack["d"] != blob
    assert _results(store, everything) == _as_results(store, everything)


def test_an_older_versions_packs_are_neither_read_nor_touched(store, raw):
    _finished(store, 3)
    store.sweep_finished()
    old = {"_id": "0-old", "study": "s", "task": "t", "ids": ["x"], "d": b"older format"}
    raw.hse_results.insert_one(old)
    everything = RunFilter(study="s")
    assert _results(store, everything) == _as_results(store, everything)
    assert list(raw.hse_results.find({})) == [old]


def test_packs_written_twice_by_racing_readers_are_merged(store, raw):
    _finished(store, 5)
    store.sweep_finished()
    for pack in list(raw.hse_packs.find({})):  # a second reader packed the same runs
        raw.hse_packs.insert_one({**pack, "_id": pack["_id"] + "-again"})
    everything = RunFilter(study="s")
    assert _results(store, everything) == _as_results(store, everything)
    assert raw.hse_packs.count_documents({}) == 1
