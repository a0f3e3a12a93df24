"""The Optuna journal on MongoDB (`storage.journal`): Optuna's own storage conformance
suite, concurrent appends from several processes, and a writer dying between
reserving its log numbers and inserting its logs."""
from __future__ import annotations

import multiprocessing
import os

import optuna  # in the test extra: a missing optuna fails loudly
import pytest
from helpers import raw_db  # noqa: E402
from optuna.testing.pytest_storages import StorageTestCase  # noqa: E402

from hyperspace_explorer.storage import connect  # noqa: E402
from hyperspace_explorer.storage.journal import COUNTER_ID, JOURNAL, NOOP_LOG, backend_class, journal_storage  # noqa: E402


@pytest.fixture
def storage(mongo_uri, db_name):
    """Optuna's conformance suite asks for this fixture: a journal storage on a fresh
    database of the test server."""
    store = connect(mongo_uri, db_name)
    try:
        yield store.optuna_storage()
    finally:
        store.close()


class TestMongoJournalConformance(StorageTestCase):
    """Every test of `optuna.testing.pytest_storages.StorageTestCase`."""


def _numbers(mongo_uri, db_name):
    store = connect(mongo_uri, db_name)
    try:
        docs = list(raw_db(store)[JOURNAL].find({}))
        counter = raw_db(store)["hse_counters"].find_one({"_id": COUNTER_ID})
        return docs, counter
    finally:
        store.close()


def _append_many(uri, db, writer, n):
    backend = backend_class()(uri, db)
    for i in range(n):
        backend.append_logs([{"writer": writer, "i": i}])
    backend.close()


def test_concurrent_appends_are_dense_ordered_and_complete(mongo_uri, db_name):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(mongo_uri, db_name, w, 25))
             for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    docs, counter = _numbers(mongo_uri, db_name)
    assert counter["next"] == 100
    assert sorted(d["n"] for d in docs) == list(range(100))  # dense, no duplicate number
    logs = list(backend_class()(mongo_uri, db_name).read_logs(0))
    assert len(logs) == 100
    for w in range(4):  # every log once, each writer's logs in its own order
        assert [log["i"] for log in logs if log["writer"] == w] == list(range(25))
    assert list(backend_class()(mongo_uri, db_name).read_logs(60)) == logs[60:]


def test_writer_dying_after_reserving_leaves_a_filled_hole(mongo_uri, db_name):
    backend = backend_class()(mongo_uri, db_name, hole_timeout_s=0.3)
    backend.append_logs([{"a": 0}])
    pid = os.fork()
    if pid == 0:  # a writer that reserves two numbers, then dies before inserting
        try:
            backend_class()(mongo_uri, db_name)._reserve(2)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    backend.append_logs([{"a": 3}])  # numbered after the dead writer's block
    logs = list(backend.read_logs(0))
    assert logs == [{"a": 0}, NOOP_LOG, NOOP_LOG, {"a": 3}]
    docs, counter = _numbers(mongo_uri, db_name)
    assert counter["next"] == 4
    assert sorted(d["n"] for d in docs) == [0, 1, 2, 3]
    assert [d["n"] for d in docs if d.get("filler")] == [1, 2]


def test_a_writer_slower_than_the_hole_timeout_re_appends_its_log(mongo_uri, db_name):
    backend = backend_class()(mongo_uri, db_name, hole_timeout_s=0.0)
    slow = backend_class()(mongo_uri, db_name)
    first = slow._reserve(1)          # reserved, not inserted yet
    backend.append_logs([{"b": 1}])
    assert list(backend.read_logs(0)) == [NOOP_LOG, {"b": 1}]  # the reader filled it
    lost = slow._insert([{"_id": first, "n": first, "log": '{"late": 1}', "writer": "t"}], "t")
    assert lost == ['{"late": 1}']    # the filler owns the number: the writer must re-append
    slow.append_logs([{"late": 1}])
    assert list(backend.read_logs(0)) == [NOOP_LOG, {"b": 1}, {"late": 1}]


def test_the_journal_survives_pickling_and_a_fresh_process_sees_the_study(mongo_uri, db_name):
    storage = journal_storage(mongo_uri, db_name)
    study = optuna.create_study(storage=storage, study_name="s", direction="minimize")
    study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2, n_trials=5)
    again = optuna.load_study(study_name="s", storage=journal_storage(mongo_uri, db_name))
    assert len(again.trials) == 5
    assert again.best_value == study.best_value
