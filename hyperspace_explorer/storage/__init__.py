"""Storage: the one boundary between the package and its database.

`connect(uri, db_name)` gives a `Storage` (see `storage.base` for the interface and
`storage.mongo` for the MongoDB implementation, the only module that talks to a
server). Callers describe runs with a `RunFilter`, never with database queries.
"""
from __future__ import annotations

from .base import (
    DEFAULT_MAX_ATTEMPTS,
    KEYSET_SORTS,
    PAGE_SORTS,
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
    requirement,
)

__all__ = ["DEFAULT_MAX_ATTEMPTS", "KEYSET_SORTS", "PAGE_SORTS", "RunFilter", "Storage",
           "bulk_objects", "check_db_name", "connect",
           "new_run_id", "new_token", "now_ts", "now_utc", "queue_document_problem", "redact_uri",
           "requirement", "server_pid"]


def connect(uri: str, db_name: str, *, timeout_s: float = 5.0) -> Storage:
    """A `Storage` on database `db_name` at `uri` whose server answered, indexes in place.

    Raises StoreUnavailable when nothing answers within `timeout_s`, StoreError for a
    bad URI or database name.
    """
    from .mongo import MongoStorage  # pymongo is imported only when a store is needed

    return MongoStorage.connect(uri, db_name, timeout_s=timeout_s)


def server_pid(uri: str, timeout_s: float) -> int | None:
    """The pid a MongoDB-wire server at `uri` reports (None: no answer in time)."""
    from .mongo import server_pid as _server_pid

    return _server_pid(uri, timeout_s)
