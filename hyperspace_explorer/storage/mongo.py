"""`Storage` on MongoDB (or the embedded nx-27017 server): the only module that talks
to a database server.

Collections (no dots in names: the embedded server mishandles them):

- `hse_queue`    runs waiting or running. Workers claim from here, so it is kept small:
                 finished runs are swept out in batches to `hse_done`.
- `hse_done`     finished runs (completed, failed, timed out, cancelled), same shape.
- `hse_packs`    results packs: what a results frame reads (`result_fields`) of up to
                 PACK_RUNS archived runs of one task, as one compressed blob, written
                 with each sweep into `hse_done` (see `find_results`). An older
                 version's `hse_results` packs are not read (nor written).
- `hse_counters` atomic counters (Sacred run ids: the embedded server sorts integer
                 `_id`s as text, so Sacred's own "max id + 1" breaks after run 10).
- `hse_workers`  one document per live worker (host, pid, current run, heartbeat).
- `hse_sources`  (path, md5) -> GridFS id of source files already uploaded.
- `runs`, `metrics`, `fs.*`: Sacred's MongoObserver records, read by Omniboard/incense.

The queries stay on the subset that behaves the same on MongoDB and on nx-27017:
find/findAndModify/update/insert/delete with plain equality, $in, $lt, $exists and
sorts on non-`_id` fields; no $project on dotted paths, no date arithmetic, no $lookup,
and no datetimes written by `$set` (stored as strings by nx-27017): queue times are
epoch seconds, and Sacred records are rewritten whole.

Every client has deadlines (connect, server selection, socket), so no call can hang:
the embedded server never answers some reads (a plain find on its `fs_files`).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import bson
import bson.errors
import gridfs
import pymongo
import pymongo.errors
from pymongo import ReturnDocument

from ..errors import DocumentTooLarge, QueryError, RunNotFound, StoreError, StoreUnavailable
from ..status import (
    ACTIVE,
    CANCELLED_QUEUED,
    CANCELLED_RUNNING,
    FINAL,
    QUEUED,
    RUNNING,
    STATUSES,
    Reason,
    Status,
)
from .base import (
    KEYSET_SORTS,
    PAGE_SORTS,
    RESULT_FIELDS,
    RunFilter,
    Storage,
    bulk_objects,
    check_db_name,
    new_run_id,
    new_token,
    now_ts,
    now_utc,
    queue_document_problem,
    redact_uri,
    requeued_document,
    requirement,
    result_fields,
)

QUEUE, DONE, COUNTERS, WORKERS, SOURCES = (
    "hse_queue", "hse_done", "hse_counters", "hse_workers", "hse_sources")
READY, BOUNDS, LEASES = "hse_ready", "hse_ready_bounds", "hse_leases"
PACKS = "hse_packs"  # "hse_results" held an older version's packs: left alone
#: Runs per results pack when packs are (re)written in bulk; a sweep's pack holds what
#: that sweep archived. Fewer, larger packs: the embedded server's cost is per document.
PACK_RUNS = 2000
_PACK_BYTES = 8 << 20  # and at most this much BSON per pack (MongoDB's limit is 16 MiB)
CLAIMS = "hse_claims"  # one-off claims (tuners importing past runs)
#: Queued runs of a task the claim path points at (see "queue writes" below).
READY_WINDOW = 256
_INSERT_BATCH = 5000
STRAY_CHECK_S = 30.0  # how often an idle claimer looks for queued runs without a pointer
_READ_BATCH = 5000
_DEFAULT_REQ = requirement(0, ())
_CLAIM_ORDER = [("priority", pymongo.DESCENDING), ("order", pymongo.ASCENDING)]
RUNS, METRICS = "runs", "metrics"
#: Seconds a single operation may wait for an answer (HSE_STORE_TIMEOUT overrides).
DEFAULT_SOCKET_TIMEOUT_S = 60.0
#: Fingerprints per `$in` lookup, and runs per batch written by `requeue_finished`.
BATCH = 1000

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("hyperspace_explorer.storage")
_TRANSIENT = (pymongo.errors.ConnectionFailure,)  # AutoReconnect, timeouts, selection
# What the driver raises: its own errors, and bson's for documents it cannot encode
# (DocumentTooLarge is one of those, not a PyMongoError).
_DRIVER_ERRORS = (pymongo.errors.PyMongoError, bson.errors.InvalidDocument)
_LEASE_FIELDS = {"token": "", "lease_until": "", "worker": "", "started_at": "",
                 "ended_at": "", "ahead": ""}


def _first_line(exc: BaseException) -> str:
    text = redact_uri(str(exc)).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def translate_errors(uri: str, exc: BaseException) -> StoreError:
    """The package's error for a driver exception: StoreUnavailable when retrying can
    help (server down, network cut, no answer in time), StoreError otherwise."""
    where = f"MongoDB at {redact_uri(uri)}"
    if isinstance(exc, pymongo.errors.DocumentTooLarge):
        return DocumentTooLarge(f"{where}: document larger than 16 MB: {_first_line(exc)}")
    if isinstance(exc, bson.errors.InvalidDocument):
        return StoreError(f"{where}: cannot store the document: {_first_line(exc)}")
    if isinstance(exc, pymongo.errors.NetworkTimeout):
        return StoreUnavailable(f"{where} did not answer in time ({_first_line(exc)})")
    if isinstance(exc, _TRANSIENT):
        return StoreUnavailable(f"{where} unreachable ({_first_line(exc)})")
    return StoreError(f"{where} refused the operation: {_first_line(exc)}")


def _translated(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: MongoStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except _DRIVER_ERRORS as exc:
            raise translate_errors(self.uri, exc) from None
    return wrapper  # type: ignore[return-value]


def make_client(uri: str, timeout_s: float, *, socket_timeout_s: float | None = None,
                **options: Any) -> pymongo.MongoClient:
    """A client whose every wait is bounded (connect, server selection, each answer)."""
    socket_timeout_s = socket_timeout_s or float(
        os.environ.get("HSE_STORE_TIMEOUT") or DEFAULT_SOCKET_TIMEOUT_S)
    try:
        return pymongo.MongoClient(
            uri, serverSelectionTimeoutMS=int(timeout_s * 1000),
            connectTimeoutMS=int(timeout_s * 1000),
            socketTimeoutMS=int(socket_timeout_s * 1000), **options)
    except (pymongo.errors.ConfigurationError, pymongo.errors.InvalidURI, ValueError,
            TypeError) as exc:
        raise StoreError(f"invalid MongoDB URI {redact_uri(str(uri))}: "
                         f"{redact_uri(str(exc))}") from None


def server_pid(uri: str, timeout_s: float) -> int | None:
    """The pid a MongoDB-wire server at `uri` reports (None: no answer in time; 0: it
    answers but does not say). Used to tell our embedded server from another one."""
    client = make_client(uri, timeout_s, socket_timeout_s=timeout_s, directConnection=True)
    try:
        client.admin.command("ping")
        pid = client.admin.command("serverStatus").get("pid")
        return pid if isinstance(pid, int) else 0
    except pymongo.errors.PyMongoError:
        return None
    finally:
        client.close()


def _group(study: str, task: str, req: str) -> str:
    return f"{study}\n{task}\n{req}"


def _key(doc: Mapping[str, Any]) -> tuple[float, float]:
    """A run's place in claim order (smaller first): higher priority, then older."""
    return (-(doc.get("priority") or 0), doc.get("order") or 0)


def _bound_key(bound: Mapping[str, Any]) -> tuple[float, float]:
    return (math.inf, math.inf) if bound.get("complete") else _key(bound)


def _insert_ignoring_duplicates(coll: Any, docs: Sequence[Mapping[str, Any]]) -> None:
    try:
        coll.insert_many(list(docs), ordered=False)
    except pymongo.errors.BulkWriteError as exc:
        if any(err.get("code") != 11000 for err in exc.details.get("writeErrors", [])):
            raise


def _match(runs: RunFilter) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if runs.study is not None:
        query["study"] = runs.study
    if runs.task is not None:
        query["task"] = runs.task
    if runs.status is not None:
        query["status"] = {"$in": [str(s) for s in runs.status]}
    if runs.ids is not None:
        query["_id"] = {"$in": list(runs.ids)}
    for path, value in runs.config.items():
        query[f"config.{path}"] = value
    if runs.tuning_study is not None:
        query["tuning.study"] = runs.tuning_study
    return query


def _archived_counts(stamp: Iterable[Sequence[Any]]) -> dict[str, tuple[Any, ...]]:
    """From the archive's `_status_stamp` rows, per status: (runs, latest order, end, update), which
    `_packs_current` compares with the packs' entries."""
    return {row[0]: (row[1], row[2], row[4], row[5]) for row in stamp}


def _pack_meta(doc: Mapping[str, Any]) -> list[Any]:
    """What a pack keeps of an archived run beside its result fields, to tell whether
    the packs still hold what the archive holds (`_packs_current`)."""
    return [doc.get("order"), doc.get("updated_at")]


def _pack_age(entry: Mapping[str, Any], meta: Sequence[Any]) -> tuple[float, float]:
    """Which of two packed states of a run is the later one (a requeued run archived
    again ended later; a rewritten config was updated later)."""
    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
            else 0.0
    return number(meta[1] if len(meta) > 1 else None), number(entry.get("ended_at"))


#: Result fields that runs of a task mostly share (a grid has a few dozen configs for
#: thousands of runs): a pack stores each distinct value once, and its entries share it.
_SHARED_FIELDS = ("config", "task_spec", "code_version")


def _pack(study: Any, task: Any, members: Sequence[tuple[dict[str, Any], list[Any]]]
          ) -> dict[str, Any]:
    """One results pack. Its `_id` starts with the time it was written, so packs read
    in `_id` order give the runs in archive order. Its body is compressed BSON with
    each distinct `_SHARED_FIELDS` value once: on the embedded server a read costs
    per byte stored, and on the client per object decoded (a tenth of both here)."""
    values: dict[str, list[Any]] = {f: [] for f in _SHARED_FIELDS}
    known: dict[str, dict[bytes, int]] = {f: {} for f in _SHARED_FIELDS}
    index: dict[str, list[int]] = {f: [] for f in _SHARED_FIELDS}
    rest = []
    for entry, _ in members:
        entry = dict(entry)
        for field in _SHARED_FIELDS:
            if field not in entry:
                index[field].append(-1)
                continue
            value = entry.pop(field)
            key = bson.encode({"v": value})
            at = known[field].get(key)
            if at is None:
                at = known[field][key] = len(values[field])
                values[field].append(value)
            index[field].append(at)
        rest.append(entry)
    body = bson.encode({"r": rest, "m": [meta for _, meta in members], "v": values,
                        "i": index})
    return {"_id": f"{time.time_ns():020d}-{secrets.token_hex(4)}", "study": study,
            "task": task, "ids": [entry["_id"] for entry, _ in members],
            "d": bson.Binary(zlib.compress(body, 1))}


def _unpack(pack: Mapping[str, Any], options: Any) -> tuple[list[dict[str, Any]], list[Any]]:
    """A pack's entries (result fields; those of `_SHARED_FIELDS` shared between
    entries, so read-only) and metas, in the order packed. A pack that cannot be read
    (written by hand, cut short) has none: the runs it was to hold are then missing
    from the packs, so the reader packs the archive again and drops it."""
    try:
        body = bson.decode(zlib.decompress(pack["d"]), codec_options=options)
        entries, metas = body["r"], body["m"]
        for field in _SHARED_FIELDS:
            values = body["v"][field]
            for entry, at in zip(entries, body["i"][field], strict=True):
                if at >= 0:
                    entry[field] = values[at]
        if len(metas) != len(entries) or not all(
                isinstance(e, dict) and "_id" in e and isinstance(m, list) and len(m) == 2
                for e, m in zip(entries, metas)):
            raise ValueError("not a pack")
    except (zlib.error, bson.errors.BSONError, KeyError, TypeError, IndexError,
            ValueError):
        return [], []
    return entries, metas


class MongoStorage(Storage):
    """`Storage` on one MongoDB database. Cheap to share; create one per process."""

    def __init__(self, uri: str, db_name: str, *, timeout_s: float = 5.0):
        self.uri = uri
        self.db_name = check_db_name(db_name)
        self.client = make_client(uri, timeout_s, tz_aware=True,
                                  appname="hyperspace_explorer")
        db = self.client[self.db_name]
        self._db = db
        self._queue, self._done, self._packs = db[QUEUE], db[DONE], db[PACKS]
        self._counters, self._workers, self._sources = db[COUNTERS], db[WORKERS], db[SOURCES]
        self._runs, self._metrics = db[RUNS], db[METRICS]
        self._ready, self._bounds_coll, self._leases = db[READY], db[BOUNDS], db[LEASES]
        self._finished: set[str] = set()  # runs this process ended, to archive by id
        self._unanswered: dict[str, str] = {}  # claim token -> the run it was leasing
        self._default_groups: set[str] = set()  # tasks whose default group we ensured
        self._strays_checked = -math.inf  # monotonic time of the last `_stray_groups`
        self._fs: gridfs.GridFS | None = None

    @classmethod
    def connect(cls, uri: str, db_name: str, *, timeout_s: float = 5.0) -> MongoStorage:
        """A storage whose server answered a ping, with indexes in place."""
        storage = cls(uri, db_name, timeout_s=timeout_s)
        try:
            storage.ping()
            storage.ensure_indexes()
        except BaseException:
            storage.close()  # no client threads left retrying an unusable server
            raise
        return storage

    def close(self) -> None:
        self.client.close()

    @property
    def fs(self) -> gridfs.GridFS:
        if self._fs is None:
            self._fs = gridfs.GridFS(self._db)
        return self._fs

    def ping(self) -> None:
        try:
            self.client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            raise StoreUnavailable(
                f"cannot reach MongoDB at {redact_uri(self.uri)}: {_first_line(exc)}. Check "
                f"--mongo-uri / HSE_MONGO_URI, or unset both to use the embedded server"
            ) from None
        except KeyError:
            # pymongo's authentication handshake fails this way against a server that
            # does not implement it (the embedded nx-27017 has no users).
            raise StoreError(
                f"MongoDB at {redact_uri(self.uri)} did not complete the authentication "
                f"handshake: the URI has credentials but the server does not support "
                f"authentication (the embedded server has no users: drop 'user:password@' "
                f"from the URI)") from None

    @_translated
    def ensure_indexes(self) -> None:
        """Indexes that keep the claim one index-served query on a real MongoDB."""
        self._queue.create_index([("study", 1), ("status", 1), ("priority", -1),
                                  ("order", 1)], name="claim")
        self._queue.create_index([("study", 1), ("task", 1), ("req", 1), ("status", 1),
                                  ("priority", -1), ("order", 1)], name="refill")
        self._ready.create_index([("study", 1), ("task", 1), ("req", 1), ("priority", -1),
                                  ("order", 1)], name="claim")
        self._bounds_coll.create_index([("study", 1), ("task", 1)], name="groups")
        self._leases.create_index([("lease_until", 1)], name="expiry")
        self._done.create_index([("study", 1), ("task", 1)], name="by_task")
        self._done.create_index([("sacred_id", 1)], name="by_sacred_id")
        for coll in (self._queue, self._done):  # duplicate detection at submit
            coll.create_index([("study", 1), ("fingerprint", 1)], name="by_fingerprint")
        self._runs.create_index([("meta.hse.run_id", 1)], name="by_hse_run_id")
        self._runs.create_index([("status", 1)], name="by_status")
        self._metrics.create_index([("run_id", 1), ("name", 1)], name="by_series")
        for coll in (self._queue, self._done):  # the web page's runs list and throughput
            coll.create_index([("study", 1), ("order", -1)], name="page")
            coll.create_index([("study", 1), ("task", 1), ("order", -1)], name="page_by_task")
        self._done.create_index([("study", 1), ("ended_at", -1)], name="by_end")
        self._packs.create_index([("study", 1), ("task", 1)], name="by_task")
        self._packs.create_index([("ids", 1)], name="by_run")  # packs holding given runs

    @_translated
    def drop_database(self) -> None:
        self.client.drop_database(self.db_name)

    # ------------------------------------------------------------------ queue writes
    # The claim path never scans the queue. Two small collections make it so:
    # - `hse_ready` holds pointers to the first READY_WINDOW queued runs of each
    #   (study, task) in claim order, and `hse_ready_bounds` the claim-order key below
    #   which every queued run of that task has a pointer. A claim takes the first
    #   pointer below the bound; when none is left, the window is refilled with one
    #   sorted, limited read of the queue (one scan per READY_WINDOW claims on
    #   nx-27017, index-served on MongoDB). Pointers are hints: a run changes state only
    #   by a conditional update of its own document, so a stale pointer (a cancelled run)
    #   costs a retry, never a second execution.
    # - `hse_leases` has one document per leased run, so finding expired leases reads
    #   as many documents as there are running runs, not the whole backlog.
    @_translated
    def enqueue(self, docs: Sequence[dict[str, Any]]) -> list[str]:
        if not docs:
            return []
        base = time.time_ns()
        for i, doc in enumerate(docs):
            doc.setdefault("_id", new_run_id())
            doc["order"] = base + i  # age tie-breaker: a grid keeps its submission order
            doc.setdefault("gpus", 0)
            doc.setdefault("tags", [])
            doc.update(status=QUEUED.value, attempt=0,
                       req=requirement(doc["gpus"], doc["tags"]))
        for i in range(0, len(docs), _INSERT_BATCH):
            self._queue.insert_many(list(docs[i:i + _INSERT_BATCH]), ordered=True)
        self._offer(docs)
        return [d["_id"] for d in docs]

    def _offer(self, docs: Iterable[Mapping[str, Any]]) -> None:
        """Register the groups (task, requirements) of newly queued runs, and give the
        runs a pointer when they come before their group's bound (so each ready window
        stays the exact head of its group's claim order)."""
        groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
        for doc in docs:
            if isinstance(doc.get("study"), str) and isinstance(doc.get("task"), str):
                req = doc.get("req") or _DEFAULT_REQ
                groups.setdefault((doc["study"], doc["task"], req), []).append(doc)
        for (study, task, req), members in groups.items():
            group_id = _group(study, task, req)
            # update_one, not findAndModify: nx-27017 ignores $setOnInsert in an
            # upserting findAndModify.
            self._bounds_coll.update_one(
                {"_id": group_id},
                {"$setOnInsert": {"study": study, "task": task, "req": req,
                                  "gpus": members[0].get("gpus") or 0,
                                  "tags": sorted(members[0].get("tags") or []),
                                  "state": "unbuilt"}}, upsert=True)
            bound = self._bounds_coll.find_one({"_id": group_id})
            if bound is None or bound.get("state") == "unbuilt":
                continue  # no window yet: the first claim builds it from the queue
            ahead = sorted((d for d in members if _key(d) < _bound_key(bound)), key=_key)
            if not ahead:
                continue
            self._insert_pointers(ahead[:READY_WINDOW], req)
            if len(ahead) > READY_WINDOW:  # the window stays small: lower the bound
                self._set_bound(bound, ahead[READY_WINDOW])

    def _insert_pointers(self, docs: Sequence[Mapping[str, Any]], req: str) -> None:
        pointers = [{"_id": d["_id"], "study": d["study"], "task": d["task"], "req": req,
                     "priority": d.get("priority") or 0, "order": d.get("order") or 0}
                    for d in docs]
        if pointers:
            _insert_ignoring_duplicates(self._ready, pointers)

    def _set_bound(self, group: Mapping[str, Any], first_outside: Mapping[str, Any] | None
                   ) -> None:
        bound = {key: group[key] for key in ("_id", "study", "task", "req", "gpus", "tags")}
        if first_outside is None:
            bound["complete"] = True  # every queued run of the group has a pointer
        else:
            bound.update(priority=first_outside.get("priority") or 0,
                         order=first_outside.get("order") or 0)
        self._bounds_coll.replace_one({"_id": bound["_id"]}, bound, upsert=True)

    def _refill(self, group: Mapping[str, Any]) -> None:
        """Point at the first READY_WINDOW queued runs of the group, in claim order."""
        # Documents written by other clients have no `req`: they need nothing special.
        req = group["req"] if group["req"] != _DEFAULT_REQ else {"$in": [_DEFAULT_REQ, None]}
        head = list(self._queue.find({"study": group["study"], "task": group["task"],
                                      "req": req, "status": QUEUED.value},
                                     {"study": 1, "task": 1, "priority": 1, "order": 1})
                    .sort(_CLAIM_ORDER).limit(READY_WINDOW + 1))
        self._insert_pointers(head[:READY_WINDOW], group["req"])
        self._set_bound(group, head[READY_WINDOW] if len(head) > READY_WINDOW else None)

    def _next_pointer(self, study: str, tasks: Sequence[str], exclude: Sequence[str],
                      gpus: int, tags: frozenset[str]) -> dict[str, Any] | None:
        """The first pointer in claim order among the groups of `tasks` this worker can
        run (enough GPUs, every required tag), refilling windows that ran out (at most
        once per group and call). Two reads however many groups: the groups, and the
        first pointer of all of them. A group whose window is incomplete must then have
        its bound above that pointer (else runs of it could come first: refill it)."""
        refilled: set[str] = set()
        while True:
            known = list(self._bounds_coll.find({"study": study, "task": {"$in": list(tasks)}}))
            unseen = set(tasks) - {g["task"] for g in known} - self._default_groups
            if unseen:  # runs written by other clients: the default group finds them
                self._offer([{"study": study, "task": t} for t in sorted(unseen)])
                self._default_groups.update(unseen)
                continue
            groups = [g for g in known
                      if (g.get("gpus") or 0) <= gpus and set(g.get("tags") or ()) <= tags]
            if not groups:
                return None
            pointer: dict[str, Any] | None = None
            if not any(g.get("state") == "unbuilt" for g in groups):
                query: dict[str, Any] = {"study": study, "task": {"$in": list(tasks)},
                                         "req": {"$in": sorted({g["req"] for g in groups})}}
                if exclude:
                    query["_id"] = {"$nin": list(exclude)}
                pointer = next(iter(self._ready.find(query).sort(_CLAIM_ORDER).limit(1)), None)
            stale = [g for g in groups if g["_id"] not in refilled and (
                g.get("state") == "unbuilt" or (not g.get("complete") and (
                    pointer is None or _bound_key(g) <= _key(pointer))))]
            if not stale and pointer is None:
                stale = self._stray_groups(study, tasks, exclude, groups, refilled)
            if not stale:
                return pointer
            for group in stale:
                self._refill(group)
                refilled.add(group["_id"])

    def _stray_groups(self, study: str, tasks: Sequence[str], exclude: Sequence[str],
                      groups: Sequence[Mapping[str, Any]], refilled: set[str]
                      ) -> list[Mapping[str, Any]]:
        """The group of a queued run that has no pointer although the windows say every
        run before their bounds has one, as a list to refill; checked when a claim
        finds no pointer, at most once per `STRAY_CHECK_S` (one read). Such a run is
        left by a writer that died between queueing it and pointing at it (a submit
        cut off after its insert, a client that wrote the queue by hand); it would
        wait for ever."""
        now = time.monotonic()
        if now - self._strays_checked < STRAY_CHECK_S:
            return []
        self._strays_checked = now
        reqs: list[str | None] = sorted({g["req"] for g in groups})
        if _DEFAULT_REQ in reqs:
            reqs.append(None)  # documents written by other clients have no `req`
        query: dict[str, Any] = {"study": study, "task": {"$in": list(tasks)},
                                 "req": {"$in": reqs}, "status": QUEUED.value}
        if exclude:
            query["_id"] = {"$nin": list(exclude)}
        stray = self._queue.find_one(query, {"task": 1, "req": 1})
        if stray is None:
            return []
        req = stray.get("req") or _DEFAULT_REQ
        log.warning("run %s is queued but no claim could find it; its group (task %s) is "
                    "read again from the queue", stray["_id"], stray["task"])
        return [g for g in groups if (g["task"], g["req"]) == (stray["task"], req)
                and g["_id"] not in refilled]

    @_translated
    def claim(self, study: str, tasks: Iterable[str], worker_id: str, lease_s: float, *,
              exclude: Iterable[str] = (), gpus: int = 0, tags: Iterable[str] = (),
              ahead: bool = False, token: str | None = None) -> dict[str, Any] | None:
        token = token or new_token()
        if token in self._unanswered:  # an earlier try of this claim got no answer
            doc = self._claimed_unanswered(token)
            if doc is not None:
                return doc
        doc = self._claim(study, tasks, worker_id, lease_s, token, exclude=exclude,
                          gpus=gpus, tags=tags, ahead=ahead)
        self._unanswered.pop(token, None)
        return doc

    def _claimed_unanswered(self, token: str) -> dict[str, Any] | None:
        """The run that the unanswered try of the claim with `token` leased, its
        pointer dropped; None (its lease, if any, dropped) when that try leased none,
        or the lease has since expired and the run gone to another attempt."""
        run_id = self._unanswered[token]
        doc = self._queue.find_one({"_id": run_id, "token": token, "status": RUNNING.value})
        if doc is None:
            self._leases.delete_one({"_id": run_id, "token": token})
        else:
            self._ready.delete_one({"_id": run_id})
        del self._unanswered[token]
        return doc

    def _claim(self, study: str, tasks: Iterable[str], worker_id: str, lease_s: float,
               token: str, *, exclude: Iterable[str], gpus: int, tags: Iterable[str],
               ahead: bool) -> dict[str, Any] | None:
        tasks, exclude, offered = sorted(set(tasks)), sorted(set(exclude)), frozenset(tags)
        for _ in range(10 * READY_WINDOW):  # bounded: each pass drops one stale pointer
            pointer = self._next_pointer(study, tasks, exclude, gpus, offered)
            if pointer is None:
                return None
            run_id, now = pointer["_id"], now_ts()
            self._unanswered[token] = run_id  # until this try answers
            # The lease document first: a claimer that dies after the claim leaves a
            # lease that recovery finds; its _id also makes racing claimers back off.
            try:
                self._leases.insert_one({"_id": run_id, "token": token, "worker": worker_id,
                                         "lease_until": now + lease_s})
            except pymongo.errors.DuplicateKeyError:
                exclude.append(run_id)  # another worker is claiming it right now
                continue
            update: dict[str, Any] = {
                "$set": {"status": RUNNING.value, "token": token, "worker": worker_id,
                         "started_at": now, "heartbeat": now, "lease_until": now + lease_s},
                "$inc": {"attempt": 1}}
            # Every claim says whether it is ahead: a mark left by an attempt that
            # ended otherwise (expired to FAILED, then requeued) must not mislead
            # recovery about this one.
            if ahead:
                update["$set"]["ahead"] = 1
            else:
                update["$unset"] = {"ahead": ""}
            try:
                doc = self._queue.find_one_and_update(
                    {"_id": run_id, "status": QUEUED.value}, update,
                    return_document=ReturnDocument.AFTER)
            except pymongo.errors.OperationFailure:  # MongoDB: e.g. $inc on a string
                doc = None
            self._ready.delete_one({"_id": run_id})
            if doc is not None:
                return doc
            self._leases.delete_one({"_id": run_id, "token": token})
            # Not QUEUED any more (a stale pointer), or the server refused the update
            # (nx-27017 answers None then): a document that cannot be claimed is
            # quarantined rather than left to stall the queue.
            current = self._queue.find_one({"_id": run_id, "status": QUEUED.value})
            if current is not None:
                problem = queue_document_problem(current) or \
                    "the database refused to lease this run (malformed document?)"
                self.quarantine(run_id, problem)
                log.error("run %s quarantined: %s", run_id, problem)
        return None

    @_translated
    def start_here(self, doc: dict[str, Any], worker_id: str, lease_s: float) -> dict[str, Any]:
        run_id, token, now = doc.setdefault("_id", new_run_id()), new_token(), now_ts()
        doc.setdefault("gpus", 0)
        doc.setdefault("tags", [])
        doc.update(order=time.time_ns(), status=RUNNING.value, attempt=1, token=token,
                   worker=worker_id, started_at=now, heartbeat=now, lease_until=now + lease_s,
                   req=requirement(doc["gpus"], doc["tags"]))
        self._leases.insert_one({"_id": run_id, "token": token, "worker": worker_id,
                                 "lease_until": now + lease_s})
        self._queue.insert_one(doc)
        return doc

    @_translated
    def renew_lease(self, run_id: str, token: str, lease_s: float,
                    fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        now = now_ts()
        doc = self._queue.find_one_and_update(
            {"_id": run_id, "token": token, "status": RUNNING.value},
            {"$set": {"heartbeat": now, "lease_until": now + lease_s, **(fields or {})}},
            projection={"cancel_requested": 1, "attempt": 1},
            return_document=ReturnDocument.AFTER)
        if doc is not None:
            self._leases.update_one({"_id": run_id, "token": token},
                                    {"$set": {"lease_until": now + lease_s}})
        return doc

    @_translated
    def owns(self, run_id: str, token: str) -> bool:
        return self._queue.find_one({"_id": run_id, "token": token, "status": RUNNING.value},
                                    {"_id": 1}) is not None

    def _release(self, run_id: str, token: str, final: bool) -> None:
        self._leases.delete_one({"_id": run_id, "token": token})
        if final:
            self._finished.add(run_id)

    @_translated
    def finish(self, run_id: str, token: str, status: Status,
               fields: Mapping[str, Any]) -> bool:
        if Status(status) not in FINAL:
            raise StoreError(f"finish() takes a final status, got {status}")
        res = self._queue.update_one(
            {"_id": run_id, "token": token, "status": RUNNING.value},
            {"$set": {"status": Status(status).value, "ended_at": now_ts(), **fields},
             "$unset": {"ahead": ""}})
        ours = {"_id": run_id, "token": token, "status": Status(status).value}
        done = res.matched_count == 1 or any(  # else our earlier try's write, unanswered?
            coll.find_one(ours, {"_id": 1}) is not None for coll in (self._queue, self._done))
        if done:
            self._release(run_id, token, final=True)
        return done

    def _back_in_queue(self, match: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
        """The leased attempt `match` back in the queue with `fields`; ended CANCELLED
        instead when its cancel was requested meanwhile (`request_cancel` flags leased
        runs, a run claimed ahead among them until it starts): back in the queue with
        its flag, the next worker would run it, and a run shorter than a lease beat
        would complete despite the cancel. The flag is only ever set, so `$exists`
        tells it on both servers (nx-27017 stores a `$set` boolean as 1).

        The run's pointer is written first, while its lease keeps claims off it: a
        requeue whose answer is lost (its retry then finds nothing to requeue), or
        whose process dies right after it, must not leave a queued run that no claim
        finds. A pointer to a run that is not queued after all is a stale hint."""
        waiting = {**match, "cancel_requested": {"$exists": False}}
        doc = self._queue.find_one(waiting, {"study": 1, "task": 1, "priority": 1,
                                             "order": 1, "req": 1, "gpus": 1, "tags": 1})
        if doc is not None:
            self._offer([doc])
            res = self._queue.update_one(waiting, {"$set": {"status": QUEUED.value, **fields},
                                                   "$unset": _LEASE_FIELDS})
            if res.matched_count == 1:
                self._release(match["_id"], match["token"], final=False)
                return True
        started = self.attempt_started(match["_id"], match["token"])  # it has a record
        res = self._queue.update_one(
            {**match, "cancel_requested": {"$exists": True}},
            {"$set": {**fields, "status": Status.CANCELLED.value,
                      "reason": Reason.CANCELLED.value, "ended_at": now_ts(),
                      "error": CANCELLED_RUNNING if started else CANCELLED_QUEUED},
             "$unset": {"ahead": ""} if started else {"ahead": "", "started_at": ""}})
        if res.matched_count != 1:
            # Not this attempt's to end (any more). If it is not this attempt's at all
            # (e.g. our own earlier try requeued it, and its answer was lost), neither
            # is the lease, which would keep claims off the run until it expired.
            if not self.owns(match["_id"], match["token"]):
                self._leases.delete_one({"_id": match["_id"], "token": match["token"]})
            return False
        self._release(match["_id"], match["token"], final=True)
        return True

    @_translated
    def requeue(self, run_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        return self._back_in_queue({"_id": run_id, "token": token, "status": RUNNING.value},
                                   fields)

    @_translated
    def expire(self, run_id: str, token: str, fields: Mapping[str, Any],
               final_status: Status | None = None) -> bool:
        match = {"_id": run_id, "token": token, "status": RUNNING.value,
                 "lease_until": {"$lt": now_ts()}}
        if final_status is None:
            return self._back_in_queue(match, fields)
        res = self._queue.update_one(match, {"$set": {"status": Status(final_status).value,
                                                      "ended_at": now_ts(), **fields}})
        if res.matched_count == 1:
            self._release(run_id, token, final=True)
        return res.matched_count == 1

    @_translated
    def expired_leases(self) -> list[dict[str, Any]]:
        now, expired = now_ts(), []
        for lease in self._leases.find({"lease_until": {"$lt": now}}):
            doc = self._queue.find_one(
                {"_id": lease["_id"]},
                {"token": 1, "attempt": 1, "max_attempts": 1, "sacred_id": 1, "worker": 1,
                 "cancel_requested": 1, "status": 1, "lease_until": 1, "ahead": 1})
            if doc is None or doc.get("status") != RUNNING.value or \
                    doc.get("token") != lease["token"]:
                # A claim that never happened, or an attempt already ended: no lease.
                self._leases.delete_one({"_id": lease["_id"], "token": lease["token"]})
            elif (doc.get("lease_until") or 0) < now:
                expired.append(doc)
        return expired

    @_translated
    def quarantine(self, run_id: str, problem: str) -> bool:
        res = self._queue.update_one(
            {"_id": run_id, "status": {"$in": [s.value for s in ACTIVE]}},
            {"$set": {"status": Status.FAILED.value, "reason": Reason.INVALID.value,
                      "error": problem, "ended_at": now_ts()}})
        if res.modified_count == 1:
            self._finished.add(run_id)
        return res.modified_count == 1

    @_translated
    def queued_groups(self, study: str) -> list[dict[str, Any]]:
        out = []
        for group in self._bounds_coll.find({"study": study}):
            queued = self._queue.count_documents({"study": study, "task": group["task"],
                                                  "req": group["req"],
                                                  "status": QUEUED.value})
            if queued:
                out.append({"task": group["task"], "gpus": group.get("gpus") or 0,
                            "tags": list(group.get("tags") or []), "queued": queued})
        return out

    @_translated
    def quarantine_orphans(self) -> int:
        # {"study": None} matches a missing or null study, served by the claim index.
        res = self._queue.update_many(
            {"study": None, "status": QUEUED.value},
            {"$set": {"status": Status.FAILED.value, "reason": Reason.INVALID.value,
                      "error": "malformed queue document: field 'study' is missing, so no "
                               "worker could ever claim it", "ended_at": now_ts()}})
        return res.modified_count

    @_translated
    def sweep_finished(self, limit: int = 500, *, everything: bool = False) -> int:
        final = {"$in": [s.value for s in FINAL]}
        if everything:
            docs = list(self._queue.find({"status": final}).limit(limit))
        else:  # the runs this process ended: found by id, never by a scan
            ids = sorted(self._finished)[:limit]
            docs = list(self._queue.find({"_id": {"$in": ids}, "status": final})) if ids else []
            self._finished.difference_update(ids)
        if not docs:
            return 0
        try:
            self._done.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            # Duplicates are docs a crashed sweep had already copied (the same), or the
            # earlier outcome of a requeued run whose archived copy a crashed requeue
            # left behind (stale): the queue's copy is the newer one, so it wins.
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != 11000 for err in errors):
                raise
            by_id = {d["_id"]: d for d in docs}
            for err in errors:
                run_id = (err.get("op") or {}).get("_id")
                if run_id in by_id:
                    self._done.replace_one({"_id": run_id}, by_id[run_id])
        # Their results pack after the archive: a crash between the two leaves runs
        # without one, which `find_results` notices (and repacks).
        self._quietly_packed(lambda: self._write_packs(docs))
        self._queue.delete_many({"_id": {"$in": [d["_id"] for d in docs]}, "status": final})
        return len(docs)

    @_translated
    def requeue_finished(self, runs: RunFilter) -> int:
        statuses = runs.status if runs.status is not None else FINAL
        if any(s not in FINAL for s in statuses):
            raise StoreError(f"requeue_finished() takes final statuses, got "
                             f"{', '.join(map(str, statuses))}")
        query = _match(runs.narrowed(status=statuses))
        order = time.time_ns()
        requeued = 0
        offered: list[dict[str, Any]] = []  # pointers for the ready window (a hint)
        # In the queue: replaced in place, fenced on the outcome that was read (a run
        # requeued, run and finished again meanwhile is left alone). The queue is
        # read first: a run swept to the archive meanwhile is then met there.
        docs = list(self._queue.find(query))
        for start in range(0, len(docs), BATCH):
            ops = []
            for doc in docs[start:start + BATCH]:
                fence = {"_id": doc["_id"], "status": doc["status"],
                         "ended_at": doc.get("ended_at"), "attempt": doc.get("attempt")}
                fresh = requeued_document(doc, order, now_ts())
                ops.append(pymongo.ReplaceOne(fence, fresh))
                offered.append(fresh)
                order += 1
            requeued += self._queue.bulk_write(ops, ordered=False).matched_count
        # In the archive: insert into the queue, then delete from the archive. A run
        # already in the queue (a concurrent or crashed requeue, a crashed sweep) is
        # not inserted again, and its archived copy, older or the same, goes.
        archived = [d["_id"] for d in self._done.find(query, {"_id": 1})]
        for start in range(0, len(archived), BATCH):
            batch = list(self._done.find({**query, "_id": {"$in": archived[start:start + BATCH]}}))
            if not batch:
                continue
            new = []
            for doc in batch:
                new.append(requeued_document(doc, order, now_ts()))
                order += 1
            offered += new
            try:
                self._queue.insert_many(new, ordered=False)
                requeued += len(new)
            except pymongo.errors.BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if any(err.get("code") != 11000 for err in errors):
                    raise
                requeued += len(new) - len(errors)
            ids = [d["_id"] for d in batch]
            in_queue = [d["_id"] for d in self._queue.find({"_id": {"$in": ids}}, {"_id": 1})]
            self._done.delete_many({"_id": {"$in": in_queue}})
            self._quietly_packed(lambda: self._repack(in_queue))
        self._offer(offered)
        return requeued

    @_translated
    def find_fingerprints(self, study: str, fingerprints: Iterable[str],
                          statuses: Sequence[Status]) -> dict[str, str]:
        wanted = sorted(set(fingerprints))
        found: dict[str, str] = {}
        for start in range(0, len(wanted), BATCH):
            query = {"study": study, "fingerprint": {"$in": wanted[start:start + BATCH]},
                     "status": {"$in": [Status(s).value for s in statuses]}}
            for coll in (self._queue, self._done):
                for doc in coll.find(query, {"fingerprint": 1}):
                    found.setdefault(doc["fingerprint"], doc["_id"])
        return found

    @_translated
    def task_fingerprints(self, study: str, task: str, statuses: Sequence[Status],
                          at_most: int) -> dict[str, str] | None:
        values = {Status(s).value for s in statuses}
        found: dict[str, str] = {}
        # The queue first: a run in both places (a requeue cut short) is the queue's.
        for coll in (self._queue, self._done):  # one bounded read of each's task index
            runs = list(coll.find({"study": study, "task": task}, {"fingerprint": 1, "status": 1})
                        .limit(at_most + 1))
            if len(runs) > at_most:
                return None
            for doc in runs:
                if isinstance(doc.get("fingerprint"), str) and doc.get("status") in values:
                    found.setdefault(doc["fingerprint"], doc["_id"])
        return found

    @_translated
    def request_cancel(self, runs: RunFilter) -> tuple[int, int]:
        base = _match(runs)
        # By id, so that the cancelled runs are archived by id too (one read of the
        # queue, however many runs a cancel ends).
        ids = [d["_id"] for d in self._queue.find({**base, "status": QUEUED.value}, {"_id": 1})]
        cancelled = 0
        for start in range(0, len(ids), BATCH):
            cancelled += self._queue.update_many(
                {"_id": {"$in": ids[start:start + BATCH]}, "status": QUEUED.value},
                {"$set": {"status": Status.CANCELLED.value, "reason": Reason.CANCELLED.value,
                          "error": CANCELLED_QUEUED,
                          "ended_at": now_ts()}}).modified_count
        running = self._queue.update_many({**base, "status": RUNNING.value},
                                          {"$set": {"cancel_requested": True}})
        self._finished.update(ids)
        while self.sweep_finished():
            pass
        return cancelled, running.modified_count

    @_translated
    def reserve_sacred_ids(self, n: int = 1) -> range:
        doc = self._counters.find_one_and_update(
            {"_id": "sacred_run_id"}, {"$inc": {"seq": n}}, upsert=True,
            return_document=ReturnDocument.AFTER)
        if doc is None:
            raise StoreUnavailable("the database did not return the next Sacred run ids")
        return range(int(doc["seq"]) - n + 1, int(doc["seq"]) + 1)

    # ------------------------------------------------------------------ reads
    @_translated
    def get_run(self, run_id: str | int) -> dict[str, Any]:
        if isinstance(run_id, int) or (isinstance(run_id, str) and run_id.isdigit()):
            query: dict[str, Any] = {"sacred_id": int(run_id)}
        else:
            query = {"_id": run_id}
        doc = self._queue.find_one(query) or self._done.find_one(query)
        if doc is None:
            raise RunNotFound(f"no run with id {run_id!r} in database '{self.db_name}'")
        return doc

    def find_runs(self, runs: RunFilter, *, fields: Sequence[str] | None = None,
                  newest_first: bool = False, limit: int = 0) -> Iterator[dict[str, Any]]:
        # The queue is read first: a run swept to `hse_done` meanwhile is then seen in
        # both and reported once, where the other order could miss it.
        query = _match(runs)
        projection = None if fields is None else {f: 1 for f in fields}
        seen: set[str] = set()
        try:
            for coll in (self._queue, self._done):
                # big batches: reading a Study's results is thousands of documents
                cursor = coll.find(query, projection, batch_size=_READ_BATCH)
                if newest_first:
                    cursor = cursor.sort("order", pymongo.DESCENDING)
                if limit:
                    cursor = cursor.limit(limit)
                for doc in cursor:
                    if doc["_id"] not in seen:
                        seen.add(doc["_id"])
                        yield doc
        except _DRIVER_ERRORS as exc:
            raise translate_errors(self.uri, exc) from None

    def find_results(self, runs: RunFilter, *, stamp: Any = None) -> Iterator[dict[str, Any]]:
        # The queue's runs are read whole (it is swept: few); the archive's through
        # its results packs, once those are known to hold exactly what the archive
        # holds: per status, as many runs with the same latest `order`, `ended_at`
        # and `updated_at` (one small aggregate, answered by the server). When they
        # do not (runs archived by an older version or by another client, a crash
        # between the archive's write and its pack's, a rewrite behind our back),
        # the archive is read whole, as before packs, and packed again.
        if runs.study is None or runs.ids is not None or runs.config \
                or runs.tuning_study is not None:  # what packs cannot select by
            for doc in self.find_runs(runs, fields=RESULT_FIELDS):
                yield result_fields(doc)
            return
        scope = _match(RunFilter(study=runs.study, task=runs.task))
        wanted = None if runs.status is None else {str(s) for s in runs.status}
        seen: set[str] = set()
        try:
            for doc in self._queue.find(_match(runs), batch_size=_READ_BATCH):
                seen.add(doc["_id"])
                yield result_fields(doc)
            # The archive's counts: those of the caller's `change_stamp` when it is of
            # this very scope (taken before the packs are read), else counted now.
            archived = _archived_counts(stamp[1]) if stamp is not None and runs.status is None \
                else None
            for _ in range(2):  # twice: a sweep between its two writes, seen once
                packs, entries, decoded = self._read_packs(scope)
                current = self._packs_current(scope, entries, archived)
                if current or not packs:  # none yet (runs of an older version): pack them
                    break
                archived = None
            if not current:
                entries = self._pack_again(scope, packs)
                decoded = len(entries)
            if len(packs) > 2 * (len(entries) // PACK_RUNS + 1) or decoded > 1.2 * len(entries):
                self._replace_packs(runs.study, packs, entries)  # small sweeps', repeats
        except _DRIVER_ERRORS as exc:
            raise translate_errors(self.uri, exc) from None
        for entry, _ in entries.values():
            if entry["_id"] not in seen and (wanted is None or str(entry.get("status")) in wanted):
                yield entry

    @staticmethod
    def _quietly_packed(write: Callable[[], None]) -> None:
        """Keep packs in step with a write to the archive that has already landed. If
        that fails (a pack over the size limit, the server gone), the write stands:
        the next results read finds the packs out of date and makes them again."""
        try:
            write()
        except _DRIVER_ERRORS as exc:
            log.warning("results packs not updated (%s): the next results read packs "
                        "the archive again", _first_line(exc))

    def _read_packs(self, scope: dict[str, Any]
                    ) -> tuple[list[Any], dict[str, tuple[dict[str, Any], list[Any]]], int]:
        """The ids of the packs in `scope`, their entries by run id: (result fields,
        [order, updated_at]), in archive order, and how many entries were decoded. A
        run in two packs (a repack or a sweep racing another) counts once, as its
        latest state."""
        options = self._db.codec_options
        packs = sorted(self._packs.find(scope, {"d": 1}, batch_size=4), key=lambda p: p["_id"])
        entries: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        decoded = 0
        with bulk_objects():
            for pack in packs:
                pack_entries, metas = _unpack(pack, options)
                decoded += len(pack_entries)
                for entry, meta in zip(pack_entries, metas):
                    known = entries.get(entry["_id"])
                    if known is None or _pack_age(entry, meta) >= _pack_age(*known):
                        entries[entry["_id"]] = (entry, meta)
        return [p["_id"] for p in packs], entries, decoded

    def _packs_current(self, scope: dict[str, Any],
                       entries: Mapping[str, tuple[dict[str, Any], list[Any]]],
                       archived: dict[str, tuple[Any, ...]] | None = None) -> bool:
        """Whether `entries` are the archived runs of `scope`: per status as many,
        with the same latest `order`, `ended_at` and `updated_at` (`archived`: those
        of the archive, when known)."""
        if archived is None:
            archived = _archived_counts(self._status_stamp(self._done, scope))
        packed: dict[str, list[Any]] = {}
        for entry, (order, updated) in entries.values():
            row = packed.setdefault(str(entry.get("status")), [0, None, None, None])
            row[0] += 1
            for i, value in ((1, order), (2, entry.get("ended_at")), (3, updated)):
                if value is not None and (row[i] is None or value > row[i]):
                    row[i] = value
        try:
            return archived == {k: tuple(v) for k, v in packed.items()}
        except TypeError:  # values of types Python cannot compare: not ours
            return False

    def _pack_again(self, scope: dict[str, Any], packs: Sequence[Any]
                    ) -> dict[str, tuple[dict[str, Any], list[Any]]]:
        """Read the archived runs of `scope` whole and replace the packs `packs` (the
        ones read) by new ones. A pack a sweep wrote meanwhile is kept (its runs are
        then in two packs: the reader counts them once)."""
        with bulk_objects():
            entries = {doc["_id"]: (result_fields(doc), _pack_meta(doc))
                       for doc in self._done.find(scope, batch_size=_READ_BATCH)}
        self._replace_packs(scope["study"], packs, entries)
        return entries

    def _replace_packs(self, study: str, packs: Sequence[Any],
                       entries: Mapping[str, tuple[dict[str, Any], list[Any]]]) -> None:
        """New large packs of `entries`, then the packs `packs` deleted (a pack
        rewritten, or the small packs of many short sweeps merged). A failure to
        write (a user allowed to read only) leaves the packs for the next read."""
        try:
            self._insert_entries(study, entries.values())
            self._packs.delete_many({"_id": {"$in": list(packs)}})
        except _DRIVER_ERRORS as exc:
            log.debug("results packs not rewritten: %s", _first_line(exc))

    def _write_packs(self, docs: Sequence[Mapping[str, Any]]) -> None:
        """The results packs of documents `docs` a sweep archived: one per task."""
        by_study: dict[Any, list[tuple[dict[str, Any], list[Any]]]] = {}
        for doc in docs:
            by_study.setdefault(doc.get("study"), []).append((result_fields(doc),
                                                               _pack_meta(doc)))
        for study, members in by_study.items():
            self._insert_entries(study, members)

    def _insert_entries(self, study: Any,
                        entries: Iterable[tuple[dict[str, Any], list[Any]]]) -> None:
        """Packs of `entries` (result fields, meta): per task, PACK_RUNS runs or
        _PACK_BYTES at most each."""
        by_task: dict[Any, list[tuple[dict[str, Any], list[Any]]]] = {}
        for entry, meta in entries:
            by_task.setdefault(entry.get("task"), []).append((entry, meta))
        for task, members in by_task.items():
            current: list[tuple[dict[str, Any], list[Any]]] = []
            used = 0
            for entry, meta in members:
                encoded = len(bson.encode(entry)) + 64
                if current and (len(current) >= PACK_RUNS or used + encoded > _PACK_BYTES):
                    self._packs.insert_one(_pack(study, task, current))
                    current, used = [], 0
                current.append((entry, meta))
                used += encoded
            if current:
                self._packs.insert_one(_pack(study, task, current))

    def _repack(self, ids: Sequence[str]) -> None:
        """The packs holding runs `ids` rewritten with those runs as archived now
        (left out when they are no longer archived: requeued)."""
        if not ids:
            return
        options, wanted = self._db.codec_options, set(ids)
        fresh = {d["_id"]: d for d in self._done.find({"_id": {"$in": list(ids)}})}
        # $in, not equality: nx-27017 matches an array field by $in only
        for pack in list(self._packs.find({"ids": {"$in": list(ids)}})):
            members = []
            for entry, meta in zip(*_unpack(pack, options)):
                if entry["_id"] not in wanted:
                    members.append((entry, meta))
                elif entry["_id"] in fresh:
                    doc = fresh[entry["_id"]]
                    members.append((result_fields(doc), _pack_meta(doc)))
            if members:  # the new pack first: a reader meanwhile sees both, counts once
                self._insert_entries(pack.get("study"), members)
            self._packs.delete_one({"_id": pack["_id"]})

    @_translated
    def change_stamp(self, runs: RunFilter) -> Any:
        query = _match(runs)
        return tuple(tuple(self._status_stamp(coll, query)) for coll in (self._queue, self._done))

    def _status_stamp(self, coll: Any, query: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Per status of the runs `query` matches in `coll`: (status, runs, latest
        order, start, end and update), sorted."""
        # One-letter names: nx-27017 answers 20x slower when an accumulator is
        # named like "order" (measured: 0.7 s against 0.04 s for 10,000 runs).
        rows = coll.aggregate([{"$match": query}, {"$group": {
            "_id": "$status", "n": {"$sum": 1}, "o": {"$max": "$order"},
            "s": {"$max": "$started_at"}, "e": {"$max": "$ended_at"},
            "u": {"$max": "$updated_at"}}}])
        return sorted((str(r["_id"]), r["n"], r.get("o"), r.get("s"), r.get("e"), r.get("u"))
                      for r in rows)

    @_translated
    def count_by_status(self, runs: RunFilter) -> dict[Status, int]:
        counts = {s: 0 for s in STATUSES}
        for coll in (self._queue, self._done):
            for row in coll.aggregate([{"$match": _match(runs)},
                                       {"$group": {"_id": "$status", "n": {"$sum": 1}}}]):
                if row["_id"] in Status.__members__:
                    counts[Status(row["_id"])] += row["n"]
        return counts

    @_translated
    def count_by_task_status(self, runs: RunFilter) -> dict[tuple[str, Status], int]:
        # Per task: nx-27017 mishandles a `$group` on a compound key.
        base = _match(runs)
        tasks = {t for coll in (self._queue, self._done) for t in coll.distinct("task", base)
                 if isinstance(t, str)}
        counts: dict[tuple[str, Status], int] = {}
        for task in sorted(tasks):
            for status, n in self.count_by_status(runs.narrowed(task=task)).items():
                if n:
                    counts[(task, status)] = n
        return counts

    # ------------------------------------------------------------------ workers
    @_translated
    def register_worker(self, doc: dict[str, Any]) -> None:
        self._workers.replace_one({"_id": doc["_id"]}, doc, upsert=True)

    @_translated
    def worker_heartbeat(self, worker_id: str, fields: Mapping[str, Any]) -> None:
        self._workers.update_one({"_id": worker_id},
                                 {"$set": {"heartbeat": now_ts(), **fields}})

    @_translated
    def remove_worker(self, worker_id: str) -> None:
        self._workers.delete_one({"_id": worker_id})

    @_translated
    def list_workers(self) -> list[dict[str, Any]]:
        return list(self._workers.find({}))

    # ------------------------------------------------------------------ Sacred records
    @_translated
    def save_sacred_run(self, entry: dict[str, Any], *, new: bool = False) -> bool:
        if not new:
            res = self._runs.replace_one({"_id": entry["_id"], "status": "RUNNING"}, entry)
            if res.matched_count == 1:
                return True
        try:
            self._runs.insert_one(entry)
        except pymongo.errors.DuplicateKeyError:
            if new:  # it exists already (an earlier try of this insert landed)
                return self.save_sacred_run(entry)
            # It has ended: by our own earlier try of this very write (a retry after a
            # dropped connection), or closed by someone else.
            stored = self._runs.find_one({"_id": entry["_id"]}, {"status": 1, "fail_trace": 1})
            return stored is not None and all(
                stored.get(key) == entry.get(key) for key in ("status", "fail_trace"))
        return True

    @_translated
    def attempt_started(self, run_id: str, token: str) -> bool:
        return self._runs.find_one({"meta.hse.run_id": run_id, "meta.hse.token": token},
                                   {"_id": 1}) is not None

    @_translated
    def supersede_sacred_runs(self, run_id: str, token: str, reason: str) -> int:
        closed = 0
        for doc in self._runs.find({"meta.hse.run_id": run_id, "meta.hse.token": token}):
            previous = doc.get("status")
            if previous not in ("RUNNING", "COMPLETED", "QUEUED"):
                continue
            # Rewritten whole: nx-27017 stores a datetime written by $set as a string.
            doc.update(status="FAILED", fail_trace=[reason], result=None,
                       stop_time=doc.get("stop_time") or now_utc())
            closed += self._runs.replace_one({"_id": doc["_id"], "status": previous},
                                             doc).modified_count
        return closed

    @_translated
    def close_orphan_sacred_runs(self) -> int:
        closed = 0
        for record in self._runs.find({"status": "RUNNING"}, {"meta": 1}):
            hse = (record.get("meta") or {}).get("hse") or {}
            run_id, token = hse.get("run_id"), hse.get("token")
            if not isinstance(run_id, str) or not isinstance(token, str):
                continue  # not one of ours (or from before tokens were recorded)
            doc = self._queue.find_one({"_id": run_id}, {"token": 1, "status": 1}) or \
                self._done.find_one({"_id": run_id}, {"token": 1, "status": 1})
            if doc is not None and doc.get("token") == token:
                continue  # its attempt still owns the run
            closed += self.supersede_sacred_runs(
                run_id, token, "superseded: its worker lost the run to another attempt "
                               "and stopped before closing this record")
        return closed

    @_translated
    def push_metrics(self, sacred_id: int, name: str, steps: list[Any], values: list[Any],
                     timestamps: list[Any], *, stored: int) -> str | None:
        series = {"run_id": sacred_id, "name": name}
        points = {"steps": steps, "values": values, "timestamps": timestamps}
        if stored == 0:  # created with its first points, unless an earlier try did
            res = self._metrics.update_one(series, {"$setOnInsert": points}, upsert=True)
            if res.upserted_id is not None:
                return str(res.upserted_id)
            made = self._metrics.find_one(series, {"_id": 1})
            return None if made is None else str(made["_id"])
        # $size, not "steps.<stored>" $exists: nx-27017 answers the latter wrongly.
        self._metrics.update_one({**series, "steps": {"$size": stored}},
                                 {"$push": {key: {"$each": v} for key, v in points.items()}})
        return None

    @_translated
    def store_source(self, path: str, md5: str) -> Any:
        key = f"{md5}:{path}"
        known = self._sources.find_one({"_id": key})
        if known is not None:
            return known["file_id"]
        with open(path, "rb") as f:
            file_id = self.fs.put(f, filename=path)
        self._sources.replace_one({"_id": key}, {"_id": key, "file_id": file_id}, upsert=True)
        return file_id

    @_translated
    def store_artifact(self, sacred_id: int, name: str, path: str, metadata: Any,
                       content_type: str) -> Any:
        with open(path, "rb") as f:
            return self.fs.put(f, filename=f"artifact://{RUNS}/{sacred_id}/{name}",
                               metadata=metadata, content_type=content_type)

    @_translated
    def read_file(self, file_id: Any) -> bytes | None:
        try:
            return self.fs.get(file_id).read()
        except gridfs.errors.NoFile:
            return None

    @_translated
    def replace_configs(self, changes: Sequence[Mapping[str, Any]]) -> int:
        runs_ops, sacred_ops = [], []
        for change in changes:
            fields = {"config": change["config"], "updated_at": now_ts()}
            sacred_fields = {"config": {**change["config"], "seed": change.get("seed")}}
            if change.get("original") is not None:
                fields["config_original"] = change["original"]
                sacred_fields["config_original"] = {**change["original"],
                                                    "seed": change.get("seed")}
            runs_ops.append(pymongo.UpdateOne({"_id": change["run_id"]}, {"$set": fields}))
            if isinstance(change.get("sacred_id"), int):
                sacred_ops.append(pymongo.UpdateOne({"_id": change["sacred_id"]},
                                                    {"$set": sacred_fields}))
        updated = 0
        for start in range(0, len(runs_ops), _INSERT_BATCH):
            batch = runs_ops[start:start + _INSERT_BATCH]
            for coll in (self._done, self._queue):  # archived or not: one of them has it
                updated += coll.bulk_write(batch, ordered=False).matched_count
        for start in range(0, len(sacred_ops), _INSERT_BATCH):
            self._runs.bulk_write(sacred_ops[start:start + _INSERT_BATCH], ordered=False)
        ids = [change["run_id"] for change in changes]
        for start in range(0, len(ids), BATCH):
            batch_ids = ids[start:start + BATCH]
            self._quietly_packed(lambda: self._repack(batch_ids))
        return updated

    @_translated
    def save_checkpoint(self, run_id: str, token: str, data: bytes,
                        meta: Mapping[str, Any]) -> bool:
        owned = {"_id": run_id, "token": token, "status": RUNNING.value}
        before = self._queue.find_one(owned, {"checkpoint": 1})
        if before is None:
            return False
        file_id = self.fs.put(data, filename=f"checkpoint://{run_id}")
        res = self._queue.update_one(owned, {"$set": {"checkpoint": {
            **meta, "file_id": file_id, "saved_at": now_ts(), "bytes": len(data)}}})
        stale = (before.get("checkpoint") or {}).get("file_id") if res.matched_count == 1 \
            else file_id
        if stale is not None:
            self.fs.delete(stale)
        return res.matched_count == 1

    @_translated
    def load_checkpoint(self, run_id: str) -> tuple[bytes, dict[str, Any]] | None:
        for coll in (self._queue, self._done):
            doc = coll.find_one({"_id": run_id}, {"checkpoint": 1})
            if doc is not None:
                meta = doc.get("checkpoint")
                if not isinstance(meta, dict) or meta.get("file_id") is None:
                    return None
                data = self.read_file(meta["file_id"])
                return None if data is None else (data, meta)
        return None

    @_translated
    def store_blob(self, key: str, content: bytes) -> None:
        if self._sources.find_one({"_id": key}, {"_id": 1}) is not None:
            return
        file_id = self.fs.put(content, filename=key)
        self._sources.replace_one({"_id": key}, {"_id": key, "file_id": file_id}, upsert=True)

    @_translated
    def read_blob(self, key: str) -> bytes | None:
        known = self._sources.find_one({"_id": key})
        return None if known is None else self.read_file(known["file_id"])

    @_translated
    def sacred_run(self, sacred_id: int) -> dict[str, Any] | None:
        return self._runs.find_one({"_id": sacred_id})

    # ------------------------------------------------------------------ tuning
    def optuna_storage(self, **options: Any) -> Any:
        from .journal import journal_storage  # imports Optuna: tuning only

        return journal_storage(self.uri, self.db_name, **options)

    @_translated
    def claim_once(self, key: str, owner: str, stale_after_s: float) -> bool:
        claims = self._db[CLAIMS]
        now = now_ts()
        try:
            claims.insert_one({"_id": key, "owner": owner, "at": now, "done": 0})
            return True
        except pymongo.errors.DuplicateKeyError:
            pass
        held = claims.find_one({"_id": key})
        if held is None or held.get("done") or held.get("owner") == owner:
            return held is not None and held.get("owner") == owner and not held.get("done")
        if now - float(held.get("at") or 0) < stale_after_s:
            return False
        res = claims.update_one({"_id": key, "owner": held.get("owner"), "at": held.get("at"),
                                 "done": 0}, {"$set": {"owner": owner, "at": now}})
        return res.modified_count == 1

    @_translated
    def mark_claim_done(self, key: str, owner: str) -> None:
        self._db[CLAIMS].update_one({"_id": key, "owner": owner}, {"$set": {"done": 1}})

    @_translated
    def metric_series(self, sacred_ids: Sequence[int],
                      name: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"run_id": {"$in": list(sacred_ids)}}
        if name is not None:
            query["name"] = name
        return list(self._metrics.find(query))

    # ------------------------------------------------------------------ web page reads
    @_translated
    def page_runs(self, runs: RunFilter, *, sort: str = "order", descending: bool = True,
                  skip: int = 0, limit: int = 50, fields: Sequence[str] | None = None,
                  after: Sequence[Any] | None = None,
                  before: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        top = _sort_field(sort)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < lo
               for n, lo in ((skip, 0), (limit, 1))):
            raise QueryError(f"skip must be >= 0 and limit >= 1, got skip={skip!r}, "
                             f"limit={limit!r}")
        queries = [_match(runs)]
        backward = before is not None
        bound = before if backward else after
        if bound is not None:
            if sort not in KEYSET_SORTS or len(bound) != 2 or isinstance(bound, str):
                raise QueryError(f"after=/before= take [value, run id] and a sort by one of "
                                 f"{', '.join(KEYSET_SORTS)}, got {bound!r} with {sort!r}")
            descending = descending != backward  # before: the other way, then turned
            op = "$lt" if descending else "$gt"
            value, run_id = bound
            # Runs past the bound's value, then the bound value's other runs past its
            # id: two plain reads (nx-27017 scans and sorts for an $or, and is slow
            # on a range of _id), the ids compared here.
            queries = [{**queries[0], sort: {op: value}}, {**queries[0], sort: value}]
        direction = pymongo.DESCENDING if descending else pymongo.ASCENDING
        # Pass 1: the sort keys of the first skip+limit runs of each collection (the
        # queue first: a run swept to the archive meanwhile is then seen once).
        keys: dict[str, tuple[Any, ...]] = {}
        for i, query in enumerate(queries):
            for coll in (self._queue, self._done):
                cursor = coll.find(query, {top: 1}).sort([(sort, direction), ("_id", direction)])
                if i == 0:
                    cursor = cursor.limit(skip + limit)
                taken = 0
                for doc in cursor:
                    if i == 1 and bound is not None and (
                            doc["_id"] >= bound[1] if descending else doc["_id"] <= bound[1]):
                        continue  # a tie of the bound on the side already shown
                    keys.setdefault(doc["_id"], (_sort_value(doc, sort), doc["_id"]))
                    taken += 1
                    if taken >= skip + limit:
                        break
        ranked = sorted(keys, key=lambda run_id: keys[run_id], reverse=descending)
        page = ranked[skip:skip + limit]
        if not page:
            return []
        # Pass 2: the page's documents, by id.
        projection = None if fields is None else {f: 1 for f in {*fields, top}}
        found: dict[str, dict[str, Any]] = {}
        for coll in (self._queue, self._done):
            for doc in coll.find({"_id": {"$in": page}}, projection):
                found.setdefault(doc["_id"], doc)
        docs = [found[run_id] for run_id in page if run_id in found]
        return docs[::-1] if backward else docs

    @_translated
    def count_ended_since(self, runs: RunFilter, since: float) -> int:
        # Grouped by status, as count_by_status: nx-27017 answers count_documents
        # with a range condition an order of magnitude slower.
        pipeline = [{"$match": {**_match(runs), "ended_at": {"$gte": since}}},
                    {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return sum(row["n"] for coll in (self._queue, self._done)
                   for row in coll.aggregate(pipeline))


def _sort_field(sort: str) -> str:
    """The top-level field of a `page_runs` sort key (QueryError for an unknown one)."""
    name = sort[len("metrics."):] if isinstance(sort, str) and sort.startswith("metrics.") else None
    if sort in PAGE_SORTS:
        return sort
    if name and "$" not in name and "." not in name:
        return "metrics"
    raise QueryError(f"cannot sort runs by {sort!r}: use one of {', '.join(PAGE_SORTS)} "
                     f"or metrics.<name>")


def _sort_value(doc: Mapping[str, Any], sort: str) -> tuple[int, Any]:
    """A document's sort key, comparable across types in MongoDB's order: missing and
    null first, then numbers, then strings, then anything else (as text)."""
    value: Any = doc
    for part in sort.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, str(value))
