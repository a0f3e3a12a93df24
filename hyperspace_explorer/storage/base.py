"""The storage interface: everything the package reads or writes in its database.

`Storage` is deliberately small and typed, in the spirit of Optuna's `BaseStorage`:
callers (RunQueue, workers, the CLI, analysis) say *what* they need (claim the next
run, finish this attempt, the runs of a task) and never build database queries. The
MongoDB implementation (`storage.mongo.MongoStorage`) is the only module that talks to
a server; a conformance test suite (`tests/test_storage.py`) pins the behaviour every
implementation must have.

Queue documents (one per run) carry: `_id` (run id), `study`, `task`, `task_spec`,
`config` (as given at submit; completed by the worker), `config_given`, `seed`,
`priority`, `order` (age tie-breaker), `status`, `attempt`, `max_attempts`,
`max_runtime`, `queued_at`; while leased `token`, `worker`, `started_at`, `heartbeat`,
`lease_until`; when finished `ended_at`, `reason`, `error`, `metrics`, `sacred_id`,
`code_version`, `host`, `duration`. Times are UTC epoch seconds. `fingerprint`
(set at submit) identifies the task + complete config + seed, to skip duplicates;
`previous_attempts` (a list, after `requeue_finished`) keeps the outcome of each
earlier round of attempts (see `attempt_record`). `tuning` (`{"study": name, "trial":
number}`, runs submitted by a `Tuner`) names the Optuna trial a run answers.
"""
from __future__ import annotations

import abc
import contextlib
import dataclasses
import gc
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TypeVar

from ..errors import QueryError, StoreError, StoreUnavailable
from ..status import Status, parse_statuses
from ..task import MAX_SEED

T = TypeVar("T")
log = logging.getLogger("hyperspace_explorer.storage")

DEFAULT_MAX_ATTEMPTS = 3
#: What `Storage.page_runs` sorts by, besides "metrics.<name>": queue order (the age of
#: a run), when it started or ended, how long it ran, its seed, status and task.
PAGE_SORTS = ("order", "started_at", "ended_at", "duration", "seed", "status", "task")
#: The sorts whose field every run has: `page_runs` can continue after (or before) a
#: run of a page without reading the pages before it.
KEYSET_SORTS = ("order", "seed", "status", "task")
_DB_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,63}$")


# ---------------------------------------------------------------------------- values
@dataclasses.dataclass(frozen=True)
class RunFilter:
    """Which runs a read or an action applies to; every criterion given must hold.

    `config` maps dotted config paths to the value they must equal
    (`{"model.className": "ForestModel"}`). `ids` are run ids (not Sacred ids).
    `tuning_study` keeps the runs a tuner submitted for that Optuna study.
    """

    study: str | None = None
    task: str | None = None
    # given as "FAILED", "failed,TIMEOUT" or a sequence; stored as a tuple of Status
    status: str | Sequence[str] | tuple[Status, ...] | None = None
    ids: tuple[str, ...] | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: Runs proposed by the Optuna study of this name (their `tuning.study`).
    tuning_study: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", parse_statuses(self.status))
        if self.ids is not None:
            if isinstance(self.ids, str):
                object.__setattr__(self, "ids", (self.ids,))
            object.__setattr__(self, "ids", tuple(self.ids))
            if not all(isinstance(i, str) for i in self.ids):
                raise QueryError(f"run ids must be strings, got {list(self.ids)!r}")
        if not isinstance(self.config, Mapping):
            raise QueryError(f"config= must map dotted config paths to values, "
                             f"got {type(self.config).__name__}")
        for path in self.config:
            if not isinstance(path, str) or not all(path.split(".")) or "$" in path:
                raise QueryError(f"config filter path {path!r}: use a dotted path of "
                                 f"config keys, e.g. 'model.className'")

    def narrowed(self, **criteria: Any) -> RunFilter:
        """This filter with more criteria (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in criteria.items() if v is not None})


# ---------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def bulk_objects() -> Iterator[None]:
    """Python's cyclic garbage collector paused while the block builds many small
    objects (a results read decodes a hundred thousand runs' dicts, a submit builds a
    grid's documents): each of its collections walks every object still alive, so a
    bulk build with it on took more than twice as long. Decoded documents and checked
    configs hold no reference cycles, so nothing is left for it; it runs again after
    the block if it was on before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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


def new_token() -> str:
    """The fencing token of one attempt."""
    return secrets.token_hex(8)


def redact_uri(uri: str) -> str:
    """The URI with any password removed: URIs must never reach logs or messages."""
    # Greedy up to the last '@': an unescaped '@' or '/' in a password must not leak.
    return re.sub(r"([A-Za-z][\w+.-]*://)(\S*)@", lambda m: f"{m.group(1)}***@", uri)


def check_db_name(db_name: str) -> str:
    if not isinstance(db_name, str) or not _DB_NAME.match(db_name):
        raise StoreError(f"invalid database name {db_name!r}: use 1-63 letters, digits, "
                         f"'_' or '-'")
    return db_name


def requirement(gpus: int, tags: Iterable[str]) -> str:
    """What a run needs of a worker, as one comparable string ("gpus=2;tags=big-mem"):
    runs with the same requirement form one group in the claim path."""
    return f"gpus={gpus};tags={','.join(sorted(tags))}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def queue_document_problem(doc: Mapping[str, Any]) -> str | None:
    """What makes a queue document unrunnable (a field missing or of the wrong type),
    or None. Documents written by `RunQueue` never have one; documents written by hand
    or by another client may, and are quarantined with this message instead of
    stalling the queue or failing later with a traceback."""
    checks: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
        ("study", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
        ("task", lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
        ("task_spec", lambda v: isinstance(v, dict), "an object (the task file's content)"),
        ("config", lambda v: v is None or isinstance(v, dict), "an object (the run config)"),
        ("seed", lambda v: _is_int(v) and 0 <= v <= MAX_SEED,
         "an integer from 0 to 2**32 - 1 (Sacred seeds NumPy with it)"),
        ("attempt", lambda v: v is None or _is_int(v), "an integer"),
        ("priority", lambda v: v is None or _is_number(v), "a number"),
        ("max_attempts", lambda v: v is None or (_is_int(v) and v >= 1), "a positive integer"),
        ("max_runtime", lambda v: v is None or (_is_number(v) and v > 0),
         "a positive number of seconds or null"),
        ("gpus", lambda v: v is None or (_is_int(v) and v >= 0), "a non-negative integer"),
        ("tags", lambda v: v is None or (isinstance(v, list)
                                         and all(isinstance(t, str) and t for t in v)),
         "a list of tag names"),
    )
    for name, ok, expected in checks:
        if name not in doc and name in ("study", "task", "task_spec", "seed"):
            return f"malformed queue document: field '{name}' is missing (expected {expected})"
        if name in doc and not ok(doc[name]):
            value = repr(doc[name])
            value = value if len(value) <= 80 else value[:77] + "..."
            return (f"malformed queue document: field '{name}' must be {expected}, "
                    f"got {type(doc[name]).__name__} {value}")
    return None


#: What a results frame reads of a run (`find_results`): not its logs, given config or
#: earlier attempts; of `code_version` only `commit` and `dirty`, of `task_spec` only
#: its Scenario's `className` (the rest is the same for every run of the task).
RESULT_FIELDS = ("sacred_id", "task", "status", "reason", "seed", "queued_at", "started_at",
                 "ended_at", "duration", "host", "attempt", "error", "code_version", "config",
                 "metrics", "task_spec")


def result_fields(doc: Mapping[str, Any]) -> dict[str, Any]:
    """`doc` cut to `_id` and RESULT_FIELDS, as `find_results` answers it."""
    out = {key: doc[key] for key in ("_id", *RESULT_FIELDS) if key in doc}
    version = out.get("code_version")
    if isinstance(version, Mapping):
        out["code_version"] = {k: version[k] for k in ("commit", "dirty") if k in version}
    spec = out.get("task_spec")
    if isinstance(spec, Mapping):
        scenario = spec.get("scenario")
        out["task_spec"] = {"scenario": {k: scenario[k] for k in ("className",) if k in scenario}
                            if isinstance(scenario, Mapping) else scenario}
    return out


#: What `attempt_record` keeps of a finished round of attempts when it is requeued.
ATTEMPT_FIELDS = ("status", "reason", "error", "metrics", "sacred_id", "attempt", "worker",
                  "host", "queued_at", "started_at", "ended_at", "duration", "code_version",
                  "config", "log_file")
#: Fields of a finished attempt that a requeued run must not carry into its next one
#: (`cancel_requested` would stop it at once, `config_given` restores `config`).
_ATTEMPT_STATE = ATTEMPT_FIELDS + ("token", "lease_until", "heartbeat", "cancel_requested",
                                   "last_rejection", "config_given")


def attempt_record(doc: Mapping[str, Any], requeued_at: float) -> dict[str, Any]:
    """The outcome of a finished run's last round of attempts, as kept in its
    `previous_attempts` list when it is requeued (its Sacred record stays as it is)."""
    record = {key: doc[key] for key in ATTEMPT_FIELDS if key in doc}
    record["requeued_at"] = requeued_at
    return record


def requeued_document(doc: Mapping[str, Any], order: int, now: float) -> dict[str, Any]:
    """A finished run document put back in the queue: QUEUED with a fresh attempt count
    and the config as submitted, its earlier outcome appended to `previous_attempts`."""
    out = {key: value for key, value in doc.items() if key not in _ATTEMPT_STATE}
    given = doc.get("config_given")
    out["config"] = given if isinstance(given, dict) else doc.get("config")
    previous = doc.get("previous_attempts")
    out["previous_attempts"] = [*(previous if isinstance(previous, list) else []),
                                attempt_record(doc, now)]
    out.update(status=Status.QUEUED.value, attempt=0, order=order, queued_at=now)
    return out


# ---------------------------------------------------------------------------- interface
class Storage(abc.ABC):
    """One Study database: its run queue, its workers and its Sacred records.

    Every method raises `StoreUnavailable` when the server cannot be reached (retry
    later; `retry()` does it with backoff), `StoreError` for anything else the server
    refused, and never a driver exception.
    """

    uri: str
    db_name: str

    # -------------------------------------------------------------- lifecycle
    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    @abc.abstractmethod
    def drop_database(self) -> None:
        """Delete this Study's database: its queue, results and Sacred records."""

    def retry(self, op: Callable[[], T], *, patience_s: float | None = None,
              give_up: Callable[[], bool] | None = None) -> T:
        """Run `op`, retrying `StoreUnavailable` with exponential backoff.

        `patience_s=None` retries forever: a worker holding a finished run must not
        drop it because the database is briefly away. `give_up()` returning True
        (e.g. the worker was asked to stop) ends the wait with the StoreUnavailable.
        """
        delay, start = 0.2, time.monotonic()
        while True:
            try:
                result = op()
            except StoreUnavailable as exc:
                waited = time.monotonic() - start
                if (patience_s is not None and waited >= patience_s) or (give_up and give_up()):
                    raise StoreUnavailable(f"{exc} (gave up after {waited:.0f}s)") from None
                if delay == 0.2 or delay >= 5.0:  # first failure, then every 5 s
                    log.warning("%s; retrying with backoff", str(exc).splitlines()[0][:200])
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                if delay > 0.2:
                    log.warning("MongoDB reachable again after %.1fs", time.monotonic() - start)
                return result

    # -------------------------------------------------------------- queue writes
    @abc.abstractmethod
    def enqueue(self, docs: Sequence[dict[str, Any]]) -> list[str]:
        """Insert new runs (QUEUED, attempt 0, in the given age order); their ids."""

    @abc.abstractmethod
    def claim(self, study: str, tasks: Iterable[str], worker_id: str, lease_s: float, *,
              exclude: Iterable[str] = (), gpus: int = 0, tags: Iterable[str] = (),
              ahead: bool = False, token: str | None = None) -> dict[str, Any] | None:
        """Atomically lease the next QUEUED run of `study` among `tasks` (highest
        priority, then oldest) that needs at most `gpus` GPUs and only `tags` this
        worker has, other than the run ids in `exclude`, to `worker_id`; None when
        there is none. `ahead`: the worker claims it before it needs it (the run is
        marked so until it ends; see `attempt_started`).

        The returned document carries the lease's `token` (`token`, else a fresh one):
        every later write of this attempt is conditioned on it (fencing). A claim that
        raised StoreUnavailable may have leased a run all the same (the link dropped
        before its answer came): called again with the same `token`, on the same
        Storage, it returns that run, rather than leave it leased to nobody until its
        lease expires. Malformed documents met on the way are quarantined (FAILED,
        reason invalid) instead of stalling the queue.
        """

    @abc.abstractmethod
    def start_here(self, doc: dict[str, Any], worker_id: str, lease_s: float) -> dict[str, Any]:
        """Store a new run already leased to `worker_id` (RUNNING, attempt 1, with a
        fresh token, as `claim` leaves a run): `RunQueue.run_here` executes it in the
        caller's process, and no worker may take it meanwhile. If the caller dies, the
        run's lease expires and recovery requeues it like any lost run's."""

    @abc.abstractmethod
    def renew_lease(self, run_id: str, token: str, lease_s: float,
                    fields: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Extend our attempt's lease; None when a newer attempt owns the run. The
        answer holds `cancel_requested` so the worker sees cancellations."""

    @abc.abstractmethod
    def owns(self, run_id: str, token: str) -> bool:
        """Whether the attempt holding `token` still owns the run (RUNNING with that
        token): one read, for a check that need not extend the lease."""

    @abc.abstractmethod
    def finish(self, run_id: str, token: str, status: Status,
               fields: Mapping[str, Any]) -> bool:
        """Record the final outcome of our attempt; False if we no longer own it. True
        also when an earlier try of this very call recorded it (the link dropped
        before its answer came, and the caller retried)."""

    @abc.abstractmethod
    def requeue(self, run_id: str, token: str, fields: Mapping[str, Any]) -> bool:
        """Put our running attempt back in the queue (worker shutdown, a run claimed
        ahead given back), or end it CANCELLED when its cancel was requested meanwhile;
        False if we no longer own it."""

    @abc.abstractmethod
    def expire(self, run_id: str, token: str, fields: Mapping[str, Any],
               final_status: Status | None = None) -> bool:
        """Requeue (or end with `final_status`) an attempt whose lease expired, as
        `requeue` does; False when its worker renewed meanwhile or another process got
        there first."""

    @abc.abstractmethod
    def expired_leases(self) -> list[dict[str, Any]]:
        """RUNNING runs whose worker stopped renewing their lease."""

    @abc.abstractmethod
    def quarantine(self, run_id: str, problem: str) -> bool:
        """End a QUEUED or RUNNING run that can never execute (malformed document) as
        FAILED/invalid with `problem` as its error."""

    @abc.abstractmethod
    def quarantine_orphans(self) -> int:
        """Quarantine QUEUED documents that no worker could ever claim (no study)."""

    @abc.abstractmethod
    def sweep_finished(self, limit: int = 500, *, everything: bool = False) -> int:
        """Archive up to `limit` finished runs out of the claim path (idempotent and
        crash-safe); how many were moved. By default the runs this process ended,
        found by id; `everything=True` looks for any finished run (a scan)."""

    @abc.abstractmethod
    def requeue_finished(self, runs: RunFilter) -> int:
        """Put the matching finished runs (of `runs.status`, default every final
        status) back in the queue (`requeued_document`), wherever they are (queue or
        archive: archived runs are inserted in the queue before they are deleted from
        the archive, so a crash leaves a run at most in both, never in neither, and
        readers see it once); how many were requeued. Active runs are never touched."""

    @abc.abstractmethod
    def find_fingerprints(self, study: str, fingerprints: Iterable[str],
                          statuses: Sequence[Status]) -> dict[str, str]:
        """{fingerprint: run id} of runs of `study` in one of `statuses` whose
        `fingerprint` is among `fingerprints` (one run id each), looked up in batches."""

    @abc.abstractmethod
    def task_fingerprints(self, study: str, task: str, statuses: Sequence[Status],
                          at_most: int) -> dict[str, str] | None:
        """{fingerprint: run id} of every run of `study`'s `task` in one of `statuses`,
        read whole; None when the queue or the archive holds more than `at_most` runs
        of the task (then looking fingerprints up is the cheaper way)."""

    @abc.abstractmethod
    def request_cancel(self, runs: RunFilter) -> tuple[int, int]:
        """Cancel matching QUEUED runs now and flag RUNNING ones for their worker;
        (cancelled now, flagged)."""

    @abc.abstractmethod
    def reserve_sacred_ids(self, n: int = 1) -> range:
        """`n` consecutive, never reused Sacred run ids."""

    @abc.abstractmethod
    def queued_groups(self, study: str) -> list[dict[str, Any]]:
        """The requirement groups of a Study with runs waiting: `task`, `gpus`, `tags`
        and `queued` (how many), so that runs no worker can take can be reported."""

    # -------------------------------------------------------------- reads
    @abc.abstractmethod
    def get_run(self, run_id: str | int) -> dict[str, Any]:
        """A run by run id, or by Sacred id (an int, or digits); RunNotFound else."""

    @abc.abstractmethod
    def find_runs(self, runs: RunFilter, *, fields: Sequence[str] | None = None,
                  newest_first: bool = False, limit: int = 0) -> Iterator[dict[str, Any]]:
        """Matching runs, active ones first, each once; `fields` limits what is read
        (`_id` always comes)."""

    @abc.abstractmethod
    def find_results(self, runs: RunFilter, *, stamp: Any = None) -> Iterator[dict[str, Any]]:
        """`result_fields` of every matching run, each once, active ones first: what a
        results frame is built from. Read in bulk (tens of thousands of runs at
        once), where the cost of each document read decides. `stamp`: the
        `change_stamp(runs)` the caller took just before, if any (it spares the
        store counting the runs again)."""

    @abc.abstractmethod
    def change_stamp(self, runs: RunFilter) -> Any:
        """A value that changes whenever a matching run is added, claimed, ended,
        requeued, moved or has its config rewritten (counted by the server per status:
        runs, latest `order`, `started_at`, `ended_at`, `updated_at`). Equal stamps:
        what `find_runs` answers for the filter has not changed, so a reader may reuse
        what it read (`RunQueue.results`) at the cost of one small aggregate."""

    @abc.abstractmethod
    def count_by_status(self, runs: RunFilter) -> dict[Status, int]:
        """Number of matching runs in each status (every status present)."""

    @abc.abstractmethod
    def count_by_task_status(self, runs: RunFilter) -> dict[tuple[str, Status], int]:
        """Number of matching runs per (task, status), zero counts left out."""

    # -------------------------------------------------------------- workers
    @abc.abstractmethod
    def register_worker(self, doc: dict[str, Any]) -> None:
        """Announce a worker (`_id`, host, pid, study, ...)."""

    @abc.abstractmethod
    def worker_heartbeat(self, worker_id: str, fields: Mapping[str, Any]) -> None:
        """Refresh a worker's heartbeat and state fields."""

    @abc.abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker that stopped cleanly."""

    @abc.abstractmethod
    def list_workers(self) -> list[dict[str, Any]]:
        """Every registered worker document."""

    # -------------------------------------------------------------- Sacred records
    @abc.abstractmethod
    def save_sacred_run(self, entry: dict[str, Any], *, new: bool = False) -> bool:
        """Insert a Sacred run record, or replace it while the stored one is still
        RUNNING (idempotent under retries). False when the stored record has already
        ended: someone else (recovery) closed it, and it must not be resurrected.
        `new` says the record is probably not stored yet (its first write: one round
        trip instead of two)."""

    @abc.abstractmethod
    def attempt_started(self, run_id: str, token: str) -> bool:
        """Whether the attempt holding `token` wrote a Sacred record: recovery gives a
        run claimed ahead whose worker died before starting it back to the queue
        without counting that attempt."""

    @abc.abstractmethod
    def supersede_sacred_runs(self, run_id: str, token: str, reason: str) -> int:
        """Close every not-yet-closed or COMPLETED Sacred record of the attempt holding
        `token` as FAILED with `reason`: that attempt lost the run to a newer one."""

    @abc.abstractmethod
    def close_orphan_sacred_runs(self) -> int:
        """Close as superseded every RUNNING Sacred record whose attempt no longer owns
        its run (the queue document has another token or none): the safety net for a
        worker that died between writing a record and learning it had lost the run."""

    @abc.abstractmethod
    def push_metrics(self, sacred_id: int, name: str, steps: list[Any], values: list[Any],
                     timestamps: list[Any], *, stored: int) -> str | None:
        """Append points to a run's metric series, which holds `stored` points before
        them; the series' id when this call started it (Sacred notes it in the record's
        `info.metrics`), else None. Appending is conditioned on `stored`: a retry of a
        push whose answer was lost (the link dropped after the server wrote) finds the
        points there and adds none twice."""

    @abc.abstractmethod
    def store_source(self, path: str, md5: str) -> Any:
        """Upload a source file once per content; its file id."""

    @abc.abstractmethod
    def store_artifact(self, sacred_id: int, name: str, path: str,
                       metadata: Any, content_type: str) -> Any:
        """Upload an artifact file of a run; its file id."""

    @abc.abstractmethod
    def read_file(self, file_id: Any) -> bytes | None:
        """Content of a stored source or artifact (None if it is gone)."""

    @abc.abstractmethod
    def replace_configs(self, changes: Sequence[Mapping[str, Any]]) -> int:
        """Write back-filled configs (`RunQueue.backfill`): each change names a
        `run_id`, its `sacred_id` (or None), the new `config` and, the first time only,
        the `original` config, kept in `config_original` in the same single-document
        write (so an interrupted back-fill never loses an original). Updates the run's
        queue document and its Sacred record's `config` (with its `seed`) in bulk;
        returns how many runs were updated."""

    @abc.abstractmethod
    def save_checkpoint(self, run_id: str, token: str, data: bytes,
                        meta: Mapping[str, Any]) -> bool:
        """Keep `data` as the run's latest checkpoint, only while the attempt holding
        `token` owns the run (False otherwise: nothing kept). The run's document points
        at the new checkpoint (with `meta`) in one conditional write, then the previous
        one is removed: a reader always finds a complete checkpoint."""

    @abc.abstractmethod
    def load_checkpoint(self, run_id: str) -> tuple[bytes, dict[str, Any]] | None:
        """The run's latest checkpoint and its meta, None when it saved none."""

    @abc.abstractmethod
    def store_blob(self, key: str, content: bytes) -> None:
        """Keep `content` under `key` (a content hash, e.g. a code version's diff) once:
        storing the same key again is free, so per-run callers cost one read."""

    @abc.abstractmethod
    def read_blob(self, key: str) -> bytes | None:
        """What `store_blob` kept under `key` (None when nothing is)."""

    @abc.abstractmethod
    def sacred_run(self, sacred_id: int) -> dict[str, Any] | None:
        """A Sacred run record by id."""

    # -------------------------------------------------------------- tuning
    def optuna_storage(self, **options: Any) -> Any:
        """An `optuna.storages.JournalStorage` kept in this database (see
        `storage.journal`); imports Optuna."""
        raise NotImplementedError(f"{type(self).__name__} keeps no Optuna journal")

    def claim_once(self, key: str, owner: str, stale_after_s: float) -> bool:
        """Claim `key` for `owner`: True when nobody held it, or when its holder's claim
        is older than `stale_after_s` and not marked done (then it passes to `owner`).
        Tuners use it so that concurrent tuners import each past run once."""
        raise NotImplementedError(f"{type(self).__name__} keeps no claims")

    def mark_claim_done(self, key: str, owner: str) -> None:
        """The holder of `key` finished what it claimed it for: the claim never goes stale."""
        raise NotImplementedError(f"{type(self).__name__} keeps no claims")

    @abc.abstractmethod
    def metric_series(self, sacred_ids: Sequence[int],
                      name: str | None = None) -> list[dict[str, Any]]:
        """Metric series (`run_id`, `name`, `steps`, `values`) of the given runs."""

    # -------------------------------------------------------------- web page reads
    @abc.abstractmethod
    def page_runs(self, runs: RunFilter, *, sort: str = "order", descending: bool = True,
                  skip: int = 0, limit: int = 50, fields: Sequence[str] | None = None,
                  after: Sequence[Any] | None = None,
                  before: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """One page of the matching runs, ordered by `sort` (one of `PAGE_SORTS`, or
        "metrics.<name>"; ties by run id; runs without the field come last when
        descending, first otherwise): the `limit` runs after the first `skip`.

        The web page lists runs with it: a database of 100,000 runs must not be read
        whole to show 50 of them. The sort keys of at most `skip + limit` runs per
        collection are read (index-served for `order`), then the page's documents by
        id, limited to `fields`. With a sort of `KEYSET_SORTS`, `after=[value, run_id]`
        (the last run of a page: its sort field's value and id) gives the runs that
        follow it and `before=` those that precede it, in the same order, without
        reading the runs in between: the next and previous pages cost the first's."""

    @abc.abstractmethod
    def count_ended_since(self, runs: RunFilter, since: float) -> int:
        """Number of matching runs that ended at or after `since` (epoch seconds): the
        queue's recent throughput, counted by the server."""
