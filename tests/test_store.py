"""The storage subset that must behave the same on nx-27017 and on a real MongoDB.

Runs against the session's real server (`mongo_uri`: embedded nx-27017, or the MongoDB
named by HSE_TEST_MONGO_URI), talking to it only through `Store` and plain pymongo.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from pymongo import MongoClient

from hyperspace_explorer.errors import RunNotFound, StoreError
from hyperspace_explorer.store import (CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Store,
                                       new_run_id, redact_uri)


@pytest.fixture
def store(mongo_uri, db_name):
    s = Store.connect(mongo_uri, db_name)
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


def test_claim_sets_the_lease_and_a_fresh_token(store):
    (run_id,) = store.enqueue([queued()])
    before = time.time()
    doc = store.claim("s", ["t"], "worker-1", 30)
    assert doc["_id"] == run_id and doc["status"] == RUNNING and doc["attempt"] == 1
    assert doc["worker"] == "worker-1" and len(doc["token"]) == 16
    assert before - 1 <= doc["started_at"] <= time.time() + 1
    assert doc["lease_until"] == pytest.approx(doc["started_at"] + 30)
    assert store.queue.find_one({"_id": run_id})["status"] == RUNNING


def test_claim_returns_none_on_an_empty_queue(store):
    assert store.claim("s", ["t"], "w", 60) is None
    # nothing claimable: other study, other task, not QUEUED
    store.enqueue([queued(study="other"), queued(task="other")])
    store.queue.insert_one({"_id": "done1", "study": "s", "task": "t", "status": COMPLETED,
                            "priority": 5, "order": 1})
    assert store.claim("s", ["t"], "w", 60) is None
    assert store.claim("s", [], "w", 60) is None
    assert store.queue.count_documents({"status": RUNNING}) == 0


def test_claim_filters_by_study_and_task(store):
    store.enqueue([queued(study="A", task="t1"), queued(study="B", task="t1"),
                   queued(study="A", task="t2")])
    doc = store.claim("A", ["t2", "t3"], "w", 60)
    assert (doc["study"], doc["task"]) == ("A", "t2")
    doc = store.claim("A", ["t1"], "w", 60)
    assert (doc["study"], doc["task"]) == ("A", "t1")
    assert store.claim("A", ["t1", "t2"], "w", 60) is None
    assert store.queue.find_one({"study": "B"})["status"] == QUEUED


def test_concurrent_claims_take_each_run_exactly_once(mongo_uri, db_name, store):
    ids = store.enqueue([queued(i=i) for i in range(60)])
    stores = [Store.connect(mongo_uri, db_name) for _ in range(6)]
    try:
        def drain(s):
            return [d["_id"] for d in claim_all(s)]
        with ThreadPoolExecutor(len(stores)) as pool:
            taken = [i for part in pool.map(drain, stores) for i in part]
    finally:
        for s in stores:
            s.close()
    assert sorted(taken) == sorted(ids), "every run claimed exactly once"
    assert store.queue.count_documents({"status": RUNNING, "attempt": 1}) == 60


# ------------------------------------------------------------------ fencing
def test_stale_token_cannot_finish_or_renew(store):
    (run_id,) = store.enqueue([queued()])
    first = store.claim("s", ["t"], "w1", -1)  # lease already expired: w1 looks dead
    assert store.expire(run_id, first["token"], {"last_error": "worker lost"}) is True
    second = store.claim("s", ["t"], "w2", 60)
    assert second["_id"] == run_id and second["attempt"] == 2
    assert second["token"] != first["token"]
    snapshot = store.queue.find_one({"_id": run_id})

    assert store.finish(run_id, first["token"], COMPLETED, {"metrics": {"score": 1.0}}) is False
    assert store.renew_lease(run_id, first["token"], 60, {"sacred_id": 99}) is None
    assert store.expire(run_id, first["token"], {"last_error": "x"}) is False
    assert store.queue.find_one({"_id": run_id}) == snapshot, "a stale token changed the run"

    # the current attempt is not expired: expire() must leave it alone too
    assert store.expire(run_id, second["token"], {"last_error": "x"}) is False
    renewed = store.renew_lease(run_id, second["token"], 60, {"sacred_id": 7})
    assert renewed is not None and renewed["attempt"] == 2
    assert store.finish(run_id, second["token"], COMPLETED, {"metrics": {"score": 2.0}}) is True
    doc = store.queue.find_one({"_id": run_id})
    assert doc["status"] == COMPLETED and doc["metrics"] == {"score": 2.0}
    assert doc["sacred_id"] == 7 and doc["ended_at"] >= doc["started_at"]
    # finished: not even the right token can write again
    assert store.finish(run_id, second["token"], FAILED, {}) is False
    assert store.renew_lease(run_id, second["token"], 60) is None


def test_finish_back_to_queued_clears_the_attempt(store):
    (run_id,) = store.enqueue([queued()])
    doc = store.claim("s", ["t"], "w1", 60)
    assert store.finish(run_id, doc["token"], QUEUED, {"attempt": 0}) is True
    doc = store.queue.find_one({"_id": run_id})
    assert doc["status"] == QUEUED and doc["attempt"] == 0
    assert not {"token", "worker", "lease_until", "started_at"} & set(doc)
    assert store.claim("s", ["t"], "w2", 60)["_id"] == run_id


def test_cancel_requests(store):
    ids = store.enqueue([queued(i=i) for i in range(3)])
    running = store.claim("s", ["t"], "w", 60)
    assert store.request_cancel({"study": "s"}) == (2, 1)
    statuses = {d["_id"]: d for d in store.queue.find({})}
    assert statuses[running["_id"]]["status"] == RUNNING
    # truthy, not `is True`: nx-27017 stores a top-level boolean written by $set as 1
    assert statuses[running["_id"]]["cancel_requested"]
    assert sorted(i for i, d in statuses.items() if d["status"] == CANCELLED) == \
        sorted(set(ids) - {running["_id"]})
    renewed = store.renew_lease(running["_id"], running["token"], 60)
    assert renewed["cancel_requested"]
    # cancelling again changes nothing: the cancelled runs are final, the running one flagged
    assert store.request_cancel({"study": "s"})[0] == 0


# ------------------------------------------------------------------ sweeping
def _finish_all(store, n, status=COMPLETED):
    ids = store.enqueue([queued(i=i) for i in range(n)])
    for doc in claim_all(store):
        assert store.finish(doc["_id"], doc["token"], status, {"metrics": {"score": 1.0}})
    return ids


def test_sweep_moves_final_docs_to_done(store):
    final = _finish_all(store, 3)
    (waiting,) = store.enqueue([queued(task="later")])
    assert store.sweep_finished() == 3
    assert [d["_id"] for d in store.queue.find({})] == [waiting]
    done = {d["_id"]: d for d in store.done.find({})}
    assert sorted(done) == sorted(final)
    assert all(d["status"] == COMPLETED and d["metrics"] == {"score": 1.0} for d in done.values())
    assert store.sweep_finished() == 0
    # reads see runs wherever they are
    assert store.get_run(final[0])["status"] == COMPLETED
    assert store.count_by_status({"study": "s"})[COMPLETED] == 3
    assert store.count_by_status({"study": "s"})[QUEUED] == 1


def test_interrupted_sweep_is_idempotent(store):
    ids = _finish_all(store, 4)
    # a sweep crashed after copying one doc to hse_done, before deleting it from the queue
    store.done.insert_one(store.queue.find_one({"_id": ids[1]}))
    assert store.sweep_finished() == 4
    assert store.queue.count_documents({}) == 0
    assert sorted(d["_id"] for d in store.done.find({})) == sorted(ids), "one copy of each"
    assert store.sweep_finished() == 0


def test_sweep_leaves_active_runs(store):
    ids = store.enqueue([queued(i=i) for i in range(3)])
    store.claim("s", ["t"], "w", 60)
    assert store.sweep_finished() == 0
    assert sorted(d["_id"] for d in store.queue.find({})) == sorted(ids)


# ------------------------------------------------------------------ Sacred ids
def test_reserve_sacred_ids_gives_consecutive_non_overlapping_ranges(store):
    ranges = [store.reserve_sacred_ids(n) for n in (1, 8, 3, 8, 1, 5)]
    assert ranges == [range(1, 2), range(2, 10), range(10, 13), range(13, 21), range(21, 22),
                      range(22, 27)]
    assert store.reserve_sacred_ids() == range(27, 28)


def test_concurrent_sacred_id_reservations_never_overlap(mongo_uri, db_name):
    stores = [Store.connect(mongo_uri, db_name) for _ in range(4)]
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
def test_get_run_by_run_id_and_by_sacred_id(store):
    ids = store.enqueue([queued(i=i) for i in range(12)])
    for sacred_id, doc in enumerate(claim_all(store), start=1):
        store.finish(doc["_id"], doc["token"], COMPLETED, {"sacred_id": sacred_id})
    store.sweep_finished(limit=5)  # some in hse_done, some still in the queue
    assert store.queue.count_documents({}) == 7
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
    with pytest.raises(StoreError) as info:  # how fast: benchmarks/latency.py
        Store.connect("mongodb://bob:hunter2@127.0.0.1:1", "hse_test_x", timeout_s=1)
    message = str(info.value)
    assert "cannot reach MongoDB" in message and "127.0.0.1:1" in message
    assert "hunter2" not in message and "bob:" not in message


@pytest.mark.parametrize("uri", ["http://example.com", "mongodb://", "mongodb://host:notaport",
                                 "mongodb://bob:hunter2@host:notaport"])
def test_invalid_uri_raises_store_error(uri):
    with pytest.raises(StoreError, match="invalid MongoDB URI") as info:
        Store.connect(uri, "hse_test_x", timeout_s=1)
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
            Store(uri, "hse_test_x", timeout_s=1)
        if "cret" in str(info.value):
            leaks.append(f"Store({uri!r}) raised {str(info.value)!r}")
    assert not leaks, ("BUG (store.redact_uri): a password with an unescaped '/' or '@' "
                       "is not (fully) redacted:\n" + "\n".join(leaks))


@pytest.mark.parametrize("name", ["", "a.b", "has space", "x" * 64, "a/b", None])
def test_invalid_database_names_are_refused(mongo_uri, name):
    with pytest.raises(StoreError, match="invalid database name"):
        Store(mongo_uri, name)


def test_connect_creates_the_claim_indexes(store, mongo_uri, db_name):
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000) as client:
        keys = [[k for k, _ in ix["key"]]
                for ix in client[db_name]["hse_queue"].index_information().values()]
    # by fields, not names: nx-27017 names indexes itself
    assert ["study", "status", "priority", "order"] in keys
    assert ["status", "lease_until"] in keys


def test_a_run_swept_during_a_read_is_reported_once(store):
    ids = _finish_all(store, 2)
    reading = store.find_runs({"study": "s"})
    first = next(reading)["_id"]  # read from the queue...
    assert store.sweep_finished() == 2  # ...then both move to hse_done
    rest = [d["_id"] for d in reading]
    assert sorted([first, *rest]) == sorted(ids)
