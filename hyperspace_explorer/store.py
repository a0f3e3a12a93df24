"""The storage layer: every MongoDB query the package makes goes through `Store`.

Collections (no dots in names: the embedded server mishandles them):

- `hse_queue`   runs waiting or running. Workers claim from here, so it is kept small:
                finished runs are swept out in batches to `hse_done`.
- `hse_done`    finished runs (completed, failed, timed out, cancelled), same shape.
- `hse_counters` atomic counters (Sacred run ids: the embedded server sorts integer
                `_id`s as text, so Sacred's own "max id + 1" breaks after run 10).
- `hse_workers` one document per live worker (host, pid, current run, heartbeat).
- `hse_sources` (path, md5) -> GridFS id of source files already uploaded.
- `runs`, `metrics`, `fs.*`: Sacred's MongoObserver records, read by Omniboard/incense.

The queries stay on the subset that behaves the same on MongoDB and on nx-27017:
find/findAndModify/update/insert/delete with plain equality, $in, $lt, $exists and
sorts on non-`_id` fields; no $project on dotted paths, no date arithmetic, no $lookup,
and no datetimes written by `$set` (stored as strings by nx-27017): queue times are
epoch seconds, and Sacred records are rewritten whole.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import pymongo
import pymongo.errors
from pymongo import ReturnDocument

from .errors import RunNotFound, StoreError

QUEUED, RUNNING = "QUEUED", "RUNNING"
COMPLETED, FAILED, TIMEOUT, CANCELLED = "COMPLETED", "FAILED", "TIMEOUT", "CANCELLED"
ACTIVE = (QUEUED, RUNNING)
FINAL = (COMPLETED, FAILED, TIMEOUT, CANCELLED)
STATUSES = ACTIVE + FINAL

# Why a run ended, so that users and retry rules can act on the difference.
REASON_ERROR = "error"              # the code raised
REASON_KILLED = "killed"            # killed by a signal / out of memory / exited
REASON_TIMEOUT = "timeout"          # ran past max_runtime
REASON_WORKER_LOST = "worker lost"  # lease expired max_attempts times
REASON_CANCELLED = "cancelled"
REASON_INVALID = "invalid"          # task or config rejected by the worker

DEFAULT_MAX_ATTEMPTS = 3

QUEUE, DONE, COUNTERS, WORKERS, SOURCES = (
    "hse_queue", "hse_done", "hse_counters", "hse_workers", "hse_sources")

_DB_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,63}$")
T = TypeVar("T")
log = logging.getLogger("hyperspace_explorer.store")

# Errors after which retrying the same operation can succeed (server restarting,
# network blip). Anything else is a bug or bad input and is raised at once.
TRANSIENT = (pymongo.errors.AutoReconnect, pymongo.errors.ServerSelectionTimeoutError,
             pymongo.errors.NetworkTimeout, pymongo.errors.ConnectionFailure)


def now_utc() -> datetime:
    """Current time, truncated to BSON's millisecond resolution (for Sacred records)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def now_ts() -> float:
    """Current time as UTC epoch seconds: how queue documents store time.

    nx-27017 turns a datetime written by `$set` into a string (which then never
    matches a date comparison), so times the queue updates in place are numbers.
    """
    return round(time.time(), 3)


def new_run_id() -> str:
    """Short random id users can type (`hse show 3f9a0c1b2d4e`); never all digits,
    which are read as Sacred run ids."""
    while True:
        run_id = secrets.token_hex(6)
        if not run_id.isdigit():
            return run_id


def redact_uri(uri: str) -> str:
    """The URI with any password removed: URIs must never reach logs or messages."""
    # Greedy up to the last '@': an unescaped '@' or '/' in a password must not leak.
    return re.sub(r"([A-Za-z][\w+.-]*://)(\S*)@", lambda m: f"{m.group(1)}***@", uri)


def check_db_name(db_name: str) -> str:
    if not isinstance(db_name, str) or not _DB_NAME.match(db_name):
        raise StoreError(f"invalid database name {db_name!r}: use 1-63 letters, digits, "
                         f"'_' or '-'")
    return db_name


class Store:
    """Access to one Study database. Cheap to share; create one per process."""

    def __init__(self, uri: str, db_name: str, *, timeout_s: float = 5.0):
        self.uri = uri
        self.db_name = check_db_name(db_name)
        try:
            self.client: pymongo.MongoClient = pymongo.MongoClient(
                uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
                connectTimeoutMS=int(timeout_s * 1000), tz_aware=True,
                appname="hyperspace_explorer")
        except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError,
                TypeError) as exc:
            raise StoreError(f"invalid MongoDB URI {redact_uri(str(uri))}: "
                             f"{redact_uri(str(exc))}") from None
        self.db = self.client[self.db_name]
        self.queue = self.db[QUEUE]
        self.done = self.db[DONE]
        self.counters = self.db[COUNTERS]
        self.workers = self.db[WORKERS]
        self.sources = self.db[SOURCES]
        self.runs = self.db["runs"]
        self.metrics = self.db["metrics"]

    @classmethod
    def connect(cls, uri: str, db_name: str, *, timeout_s: float = 5.0) -> "Store":
        """A Store whose server answered a ping, with indexes in place."""
        store = cls(uri, db_name, timeout_s=timeout_s)
        try:
            store.ping()
            store.ensure_indexes()
        except BaseException:
            store.close()  # no client threads left retrying an unusable server
            raise
        return store

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ plumbing
    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            raise StoreError(
                f"cannot reach MongoDB at {redact_uri(self.uri)}: "
                f"{redact_uri(str(exc)).splitlines()[0][:300]}. Check --mongo-uri / "
                f"HSE_MONGO_URI, or unset both to use the embedded server") from None

    def ensure_indexes(self) -> None:
        """Indexes that keep the claim one index-served query on a real MongoDB."""
        self.queue.create_index([("study", 1), ("status", 1), ("priority", -1),
                                 ("order", 1)], name="claim")
        self.queue.create_index([("status", 1), ("lease_until", 1)], name="leases")
        self.done.create_index([("study", 1), ("task", 1)], name="by_task")
        self.done.create_index([("sacred_id", 1)], name="by_sacred_id")
        self.runs.create_index([("meta.hse.run_id", 1)], name="by_hse_run_id")

    def retry(self, op: Callable[[], T], *, patience_s: float | None = None,
              give_up: Callable[[], bool] | None = None) -> T:
        """Run `op`, retrying transient errors with exponential backoff.

        `patience_s=None` retries forever: a worker holding a finished run must not
        drop it because the database is briefly away. `give_up()` returning True
        (e.g. the worker was asked to stop) ends the wait with a StoreError.
        """
        delay, start = 0.2, time.monotonic()
        while True:
            try:
                result = op()
            except TRANSIENT as exc:
                waited = time.monotonic() - start
                if (patience_s is not None and waited >= patience_s) or (give_up and give_up()):
                    raise StoreError(f"MongoDB at {redact_uri(self.uri)} unreachable for "
                                     f"{waited:.0f}s: {redact_uri(str(exc))[:200]}") from None
                if delay == 0.2 or delay >= 5.0:  # first failure, then every 5 s
                    log.warning("MongoDB at %s unreachable (%s); retrying with backoff",
                                redact_uri(self.uri), redact_uri(str(exc)).splitlines()[0][:120])
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                if delay > 0.2:
                    log.warning("MongoDB reachable again after %.1fs", time.monotonic() - start)
                return result

    # ------------------------------------------------------------------ queue writes
    def enqueue(self, docs: list[dict[str, Any]]) -> list[str]:
        """Insert fully formed QUEUED documents (see queue.RunQueue)."""
        if not docs:
            return []
        base = time.time_ns()
        for i, doc in enumerate(docs):
            doc.setdefault("_id", new_run_id())
            doc["order"] = base + i  # age tie-breaker: a grid keeps its submission order
            doc.update(status=QUEUED, attempt=0)
        self.queue.insert_many(docs, ordered=True)
        return [d["_id"] for d in docs]

    def claim(self, study: str, tasks: Iterable[str], worker_id: str,
              lease_s: float) -> dict[str, Any] | None:
        """Atomically take the next QUEUED run (priority, then age) and lease it.

        The returned document carries a fresh `token`: every later write of this
        attempt is conditioned on it, so a worker that lost its lease cannot
        overwrite a newer attempt (fencing).
        """
        match = {"study": study, "status": QUEUED, "task": {"$in": sorted(tasks)}}
        for _ in range(3):
            now = now_ts()
            doc = self.queue.find_one_and_update(
                match,
                {"$set": {"status": RUNNING, "token": secrets.token_hex(8),
                          "worker": worker_id, "started_at": now, "heartbeat": now,
                          "lease_until": now + lease_s},
                 "$inc": {"attempt": 1}},
                sort=[("priority", pymongo.DESCENDING), ("order", pymongo.ASCENDING)],
                return_document=ReturnDocument.AFTER)
            if doc is not None:
                return doc
            # nx-27017 answers None when findAndModify fails server-side: only call
            # the queue empty when a plain read agrees.
            if self.queue.find_one(match, {"_id": 1}) is None:
                return None
        return None

    def renew_lease(self, run_id: str, token: str, lease_s: float,
                    fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Extend the lease of our attempt; None when we lost it (fenced out).

        Returns the current document, so the caller sees `cancel_requested`.
        """
        now = now_ts()
        return self.queue.find_one_and_update(
            {"_id": run_id, "token": token, "status": RUNNING},
            {"$set": {"heartbeat": now, "lease_until": now + lease_s,
                      **(fields or {})}},
            projection={"cancel_requested": 1, "attempt": 1},
            return_document=ReturnDocument.AFTER)

    def finish(self, run_id: str, token: str, status: str, fields: Mapping[str, Any]) -> bool:
        """Record the outcome of our attempt. False if a newer attempt owns the run."""
        assert status in FINAL or status == QUEUED
        update: dict[str, Any] = {"$set": {"status": status, "ended_at": now_ts(), **fields}}
        if status == QUEUED:
            update = {"$set": {"status": QUEUED, **fields},
                      "$unset": {"token": "", "lease_until": "", "worker": "",
                                 "started_at": "", "ended_at": ""}}
        res = self.queue.update_one({"_id": run_id, "token": token, "status": RUNNING}, update)
        return res.matched_count == 1

    def expire(self, run_id: str, token: str, fields: Mapping[str, Any],
               final_status: str | None = None) -> bool:
        """Requeue (or, with `final_status`, end) an attempt whose lease expired.

        Conditioned on the token *and* the expired lease, so a worker that renewed
        in the meantime keeps its run.
        """
        match = {"_id": run_id, "token": token, "status": RUNNING,
                 "lease_until": {"$lt": now_ts()}}
        if final_status is not None:
            update = {"$set": {"status": final_status, "ended_at": now_ts(), **fields}}
        else:
            update = {"$set": {"status": QUEUED, **fields},
                      "$unset": {"token": "", "lease_until": "", "worker": "", "started_at": ""}}
        return self.queue.update_one(match, update).matched_count == 1

    def sweep_finished(self, limit: int = 500) -> int:
        """Move finished runs from the queue to `hse_done` (idempotent, crash-safe:
        insert first, delete only what is already safely stored)."""
        docs = list(self.queue.find({"status": {"$in": list(FINAL)}}).limit(limit))
        if not docs:
            return 0
        try:
            self.done.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            # Duplicates are docs a crashed sweep had already copied: fine.
            if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
                raise
        self.queue.delete_many({"_id": {"$in": [d["_id"] for d in docs]},
                                "status": {"$in": list(FINAL)}})
        return len(docs)

    def expired_leases(self) -> list[dict[str, Any]]:
        """RUNNING runs whose worker stopped renewing their lease."""
        return list(self.queue.find({"status": RUNNING, "lease_until": {"$lt": now_ts()}},
                                    {"token": 1, "attempt": 1, "max_attempts": 1,
                                     "sacred_id": 1, "worker": 1, "cancel_requested": 1}))

    def request_cancel(self, match: Mapping[str, Any]) -> tuple[int, int]:
        """Cancel QUEUED runs at once; flag RUNNING ones for their worker to stop.

        Returns (cancelled_now, running_flagged).
        """
        base = dict(match)
        queued = self.queue.update_many(
            {**base, "status": QUEUED},
            {"$set": {"status": CANCELLED, "reason": REASON_CANCELLED,
                      "error": "cancelled before it started", "ended_at": now_ts()}})
        running = self.queue.update_many({**base, "status": RUNNING},
                                         {"$set": {"cancel_requested": True}})
        return queued.modified_count, running.modified_count

    def reserve_sacred_ids(self, n: int = 1) -> range:
        """Reserve `n` consecutive Sacred run ids from an atomic counter (see the
        module docstring). Workers reserve a few at a time to save a round trip per
        run; ids a worker did not use are simply skipped."""
        doc = self.counters.find_one_and_update(
            {"_id": "sacred_run_id"}, {"$inc": {"seq": n}}, upsert=True,
            return_document=ReturnDocument.AFTER)
        if doc is None:
            raise StoreError("the database did not return the next Sacred run ids; retry")
        return range(int(doc["seq"]) - n + 1, int(doc["seq"]) + 1)

    # ------------------------------------------------------------------ reads
    def get_run(self, run_id: str | int) -> dict[str, Any]:
        """A run by queue id, or by Sacred id (an int, or digits)."""
        if isinstance(run_id, int) or (isinstance(run_id, str) and run_id.isdigit()):
            query: dict[str, Any] = {"sacred_id": int(run_id)}
        else:
            query = {"_id": run_id}
        doc = self.queue.find_one(query) or self.done.find_one(query)
        if doc is None:
            raise RunNotFound(f"no run with id {run_id!r} in database '{self.db_name}'")
        return doc

    def find_runs(self, match: Mapping[str, Any] | None = None, *,
                  projection: Mapping[str, Any] | None = None,
                  sort_recent: bool = False, limit: int = 0) -> Iterator[dict[str, Any]]:
        """Queued/running runs, then finished ones, matching `match`.

        The queue is read first: a run swept to `hse_done` meanwhile is then seen in
        both and reported once, where the other order could miss it.
        """
        seen: set[str] = set()
        for coll in (self.queue, self.done):
            cursor = coll.find(dict(match or {}), projection)
            if sort_recent:
                cursor = cursor.sort("order", pymongo.DESCENDING)
            if limit:
                cursor = cursor.limit(limit)
            for doc in cursor:
                if doc["_id"] not in seen:
                    seen.add(doc["_id"])
                    yield doc

    def count_by_task_status(self, match: Mapping[str, Any] | None = None
                             ) -> dict[tuple[str, str], int]:
        """Number of runs per (task, status), counted by the server (per task: nx-27017
        mishandles a `$group` on a compound key)."""
        base = dict(match or {})
        tasks = set(self.queue.distinct("task", base)) | set(self.done.distinct("task", base))
        counts: dict[tuple[str, str], int] = {}
        for task in sorted(tasks):
            for status, n in self.count_by_status({**base, "task": task}).items():
                if n:
                    counts[(task, status)] = n
        return counts

    def drop_database(self) -> None:
        """Delete this Study's database: its queue, results and Sacred records."""
        self.client.drop_database(self.db_name)

    def count_by_status(self, match: Mapping[str, Any] | None = None) -> dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for coll in (self.queue, self.done):
            for row in coll.aggregate([{"$match": dict(match or {})},
                                       {"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
                counts[row["_id"]] = counts.get(row["_id"], 0) + row["n"]
        return counts

    def sacred_runs(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """Sacred records by id (without captured output, which can be large)."""
        out = {}
        for i in range(0, len(ids), 1000):
            for doc in self.runs.find({"_id": {"$in": ids[i:i + 1000]}}, {"captured_out": 0}):
                out[doc["_id"]] = doc
        return out

    def sacred_run(self, sacred_id: int) -> dict[str, Any] | None:
        return self.runs.find_one({"_id": sacred_id})

    def metric_series(self, sacred_ids: list[int], name: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"run_id": {"$in": sacred_ids}}
        if name is not None:
            query["name"] = name
        return list(self.metrics.find(query))

    # ------------------------------------------------------------------ workers
    def register_worker(self, doc: dict[str, Any]) -> None:
        self.workers.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    def worker_heartbeat(self, worker_id: str, fields: Mapping[str, Any]) -> None:
        self.workers.update_one({"_id": worker_id},
                                {"$set": {"heartbeat": now_ts(), **fields}})

    def remove_worker(self, worker_id: str) -> None:
        self.workers.delete_one({"_id": worker_id})

    def list_workers(self) -> list[dict[str, Any]]:
        return list(self.workers.find({}))

    # ------------------------------------------------------------------ Sacred side
    def known_source(self, path: str, md5: str) -> Any:
        doc = self.sources.find_one({"_id": f"{md5}:{path}"})
        return doc["file_id"] if doc else None

    def remember_source(self, path: str, md5: str, file_id: Any) -> None:
        self.sources.replace_one({"_id": f"{md5}:{path}"}, {"_id": f"{md5}:{path}",
                                                             "file_id": file_id}, upsert=True)

    def read_source(self, file_id: Any) -> bytes | None:
        """Content of a source file Sacred recorded (None if it is gone)."""
        import gridfs

        try:
            return gridfs.GridFS(self.db).get(file_id).read()
        except gridfs.errors.NoFile:
            return None

    def close_lost_sacred_runs(self, run_id: str, attempt: int, reason: str) -> int:
        """Close the Sacred record of an attempt whose worker died, so no dashboard
        shows it RUNNING forever. Found by the run id and attempt the worker put in
        the record's meta (the queue learns the Sacred id only at the end)."""
        closed = 0
        for doc in self.runs.find({"meta.hse.run_id": run_id, "meta.hse.attempt": attempt,
                                   "status": "RUNNING"}):
            doc.update(status="FAILED", fail_trace=[reason], stop_time=now_utc())
            closed += self.runs.replace_one({"_id": doc["_id"], "status": "RUNNING"},
                                            doc).modified_count
        return closed
