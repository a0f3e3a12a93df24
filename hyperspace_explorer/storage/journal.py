"""Optuna's journal storage on the Study's own MongoDB: `MongoJournalBackend`.

Optuna's `JournalStorage` keeps a study as an append-only log of operations and
replays it; a backend only has to `append_logs(logs)` and `read_logs(k)` (every log
numbered `>= k`, in order). Optuna counts the logs it has read to know where to read
next, so the log must be **dense** (numbers 0, 1, 2, ... with no hole) and every
reader must see the same log at the same number. This module gives that on MongoDB
and on nx-27017, with any number of concurrent processes on any machines, using only
an atomic counter and inserts that fail on a duplicate key.

Collections (no dots in names: the embedded server mishandles them):

- `hse_counters`, document `_id: "optuna_journal"`: `next` = how many log numbers
  have been reserved so far (numbers `0 .. next-1` are taken).
- `hse_optuna_journal`: one document per log number `n`: `{_id: n, n: n, log: <JSON
  text>, writer: <token>}`, or a filler `{_id: n, n: n, filler: true}`. `_id` makes
  each number unique; reads query the indexed numeric `n` field and sort in Python
  (nx-27017 sorts integer `_id`s as text). The log is stored as JSON text, so
  attribute keys with dots or `$` and non-finite floats survive.

Protocol
--------
Append (a writer with logs L1..Lm):

1. Reserve a block: `findAndModify(counter, {$inc: {next: m}}, upsert, new)` returns
   `next`; the block is `next-m .. next-1`. If the answer is lost (connection cut,
   nx-27017 answering None), the writer reserves again: a block reserved but never
   used is a hole, which readers fill (below), so a retry can never corrupt the log.
2. Insert one document per log at its number (unordered insert, one round trip),
   each carrying the writer's fresh token.
3. A number whose insert failed on the duplicate key was either inserted by this very
   writer before a dropped connection (the stored document carries its token: done)
   or taken by a reader's filler: that log was *not* published, and the writer
   appends it again from step 1 with new numbers. Exactly one of (real log, filler)
   owns each number, because both are inserts on the same unique `_id`.

Read from k:

1. Read `next` (the reserved count) and every document with `n >= k`.
2. Yield documents in number order from k while they are contiguous; a filler is
   yielded as a log Optuna applies as a no-op (a study attribute for study id -1,
   which never exists, from a worker id no JournalStorage has), so that Optuna's own
   count of logs read stays equal to the log numbers.
3. At a missing number below `next` (a writer reserved it and has not inserted yet),
   wait for it, polling; once the hole has been seen for `hole_timeout_s`, insert a
   filler there. Its insert fails if the real log arrived meanwhile: either way the
   number is now owned and the read goes on. A writer slower than the timeout thus
   loses its numbers and re-appends (step 3 above) instead of blocking readers
   forever; a writer that died after reserving leaves a filler instead of a hole.

Consequences: the log is dense and totally ordered; every log appended is published
exactly once (possibly at a later number than first reserved, after a filler took its
first one); logs of one multi-log append keep their order unless a filler takes part
of the block (Optuna's `JournalStorage` appends one log per call, so its order is the
order of its calls). A writer's `append_logs` returns only once its logs are stored,
and its next `read_logs` (Optuna syncs right after writing) sees them.
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pymongo.errors
from pymongo import ReturnDocument

from ..errors import StoreUnavailable
from .mongo import _DRIVER_ERRORS, COUNTERS, make_client, translate_errors

JOURNAL = "hse_optuna_journal"
COUNTER_ID = "optuna_journal"
#: A hole older than this is filled (the writer that reserved it is presumed dead).
DEFAULT_HOLE_TIMEOUT_S = 10.0
#: What a filler is replayed as: a no-op for Optuna's JournalStorage (any version).
NOOP_LOG: dict[str, Any] = {"op_code": 2, "worker_id": "hse-journal-filler",
                            "study_id": -1, "user_attr": {}}
_POLL_S = 0.02


def _import_base() -> type:
    from optuna.storages.journal import BaseJournalBackend

    return BaseJournalBackend


class _Backend:
    """The implementation; `MongoJournalBackend` mixes in Optuna's base class."""

    def __init__(self, uri: str, db_name: str, *, hole_timeout_s: float = DEFAULT_HOLE_TIMEOUT_S,
                 timeout_s: float = 5.0, patience_s: float = 300.0):
        self.uri, self.db_name = uri, db_name
        self.patience_s = patience_s
        self.hole_timeout_s = hole_timeout_s
        self.timeout_s = timeout_s
        self._connect()

    def _connect(self) -> None:
        self._client = make_client(self.uri, self.timeout_s, appname="hyperspace_explorer-optuna")
        db = self._client[self.db_name]
        self._log, self._counters = db[JOURNAL], db[COUNTERS]
        self._holes: dict[int, float] = {}  # number -> when this reader first saw it missing
        try:
            self._log.create_index([("n", pymongo.ASCENDING)], name="by_n")
        except _DRIVER_ERRORS as exc:
            raise translate_errors(self.uri, exc) from None

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "db_name": self.db_name, "hole_timeout_s": self.hole_timeout_s,
                "timeout_s": self.timeout_s, "patience_s": self.patience_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._connect()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ append
    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        pending = [json.dumps(log) for log in logs]
        while pending:
            pending = self._retry(lambda: self._append_once(pending))

    def _reserve(self, m: int) -> int:
        """First number of a fresh block of `m` numbers."""
        doc = self._counters.find_one_and_update(
            {"_id": COUNTER_ID}, {"$inc": {"next": m}}, upsert=True,
            return_document=ReturnDocument.AFTER)
        if doc is None:  # lost answer: reserve again (the lost block is a hole, filled)
            raise StoreUnavailable("the database did not return a journal block")
        return int(doc["next"]) - m

    def _append_once(self, texts: list[str]) -> list[str]:
        """Publish `texts` in a new block; those a filler took, to be appended again."""
        first = self._reserve(len(texts))
        token = secrets.token_hex(8)
        docs = [{"_id": first + i, "n": first + i, "log": text, "writer": token}
                for i, text in enumerate(texts)]
        return self._insert(docs, token)

    def _insert(self, docs: list[dict[str, Any]], token: str) -> list[str]:
        lost: list[str] = []
        while docs:
            try:
                self._log.insert_many(docs, ordered=False)
                return lost
            except pymongo.errors.BulkWriteError as exc:
                if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
                    raise
            except pymongo.errors.ConnectionFailure:
                time.sleep(0.2)  # unknown which inserts landed: look, then insert the rest
            try:
                stored = {d["_id"]: d.get("writer") for d in self._log.find(
                    {"_id": {"$in": [d["_id"] for d in docs]}}, {"writer": 1})}
            except pymongo.errors.ConnectionFailure:
                continue
            # ours (a landed insert) or a filler's (that log must be appended again)
            lost += [d["log"] for d in docs if d["_id"] in stored and stored[d["_id"]] != token]
            docs = [d for d in docs if d["_id"] not in stored]
        return lost

    # ------------------------------------------------------------------ read
    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        for doc in self._retry(lambda: self._read(log_number_from)):
            yield NOOP_LOG if doc.get("filler") else json.loads(doc["log"])

    def _read(self, k: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            counter = self._counters.find_one({"_id": COUNTER_ID}) or {}
            reserved = int(counter.get("next", 0))
            if k >= reserved:
                return out
            docs = sorted(self._log.find({"n": {"$gte": k}}), key=lambda d: d["n"])
            for doc in docs:
                if doc["n"] != k:
                    break
                out.append(doc)
                self._holes.pop(k, None)
                k += 1
            if k >= reserved:
                return out
            # A hole at k: a writer reserved it and has not inserted (yet).
            seen = self._holes.setdefault(k, time.monotonic())
            if time.monotonic() - seen >= self.hole_timeout_s:
                try:
                    self._log.insert_one({"_id": k, "n": k, "filler": True,
                                          "filled_at": time.time()})
                except pymongo.errors.DuplicateKeyError:
                    pass  # the real log arrived first: it owns the number
                continue
            time.sleep(_POLL_S)

    def _retry(self, op):
        """`op()`, retried while the server is unreachable, for `patience_s`."""
        delay, start = 0.2, time.monotonic()
        while True:
            try:
                return op()
            except StoreUnavailable:
                pass
            except pymongo.errors.ConnectionFailure:
                pass
            except _DRIVER_ERRORS as exc:
                raise translate_errors(self.uri, exc) from None
            if time.monotonic() - start > self.patience_s:
                raise StoreUnavailable(f"the Optuna journal in '{self.db_name}' is unreachable "
                                       f"(gave up after {self.patience_s:.0f}s)")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


_CLASS: type | None = None


def backend_class() -> type:
    """`MongoJournalBackend`: `_Backend` as an `optuna.storages.journal.BaseJournalBackend`
    (built on first use, so that importing this module does not import Optuna)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = type("MongoJournalBackend", (_Backend, _import_base()),
                      {"__module__": __name__, "__doc__": _Backend.__doc__})
    return _CLASS


def __getattr__(name: str) -> Any:
    if name == "MongoJournalBackend":
        return backend_class()
    raise AttributeError(name)


def journal_storage(uri: str, db_name: str, **options: Any) -> Any:
    """`optuna.storages.JournalStorage` on the journal of database `db_name`."""
    from optuna.storages import JournalStorage

    return JournalStorage(backend_class()(uri, db_name, **options))
