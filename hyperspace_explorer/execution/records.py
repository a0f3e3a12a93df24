"""The Sacred record of an attempt, written by the worker through `Storage`.

`RecordWriter` is Sacred's own MongoObserver (so records have exactly the shape
Omniboard and incense expect), with every database access replaced by a `Storage`
call that is retried through outages. Records are fenced like queue writes: after
its first insert, a record is only ever replaced while it is still RUNNING, so a
worker that lost its lease (recovery closed the record as superseded) can neither
resurrect it nor mark it COMPLETED; the writer then reports itself `superseded`.
"""
from __future__ import annotations

import os
import time
from typing import Any

from ..errors import DocumentTooLarge
from ..logs import cut_note
from ..storage import Storage
from .sacred_settings import MongoObserver, apply_backspaces_and_linefeeds

TOO_LARGE = ("the run's result or info is too large for a MongoDB document (16 MB): return "
             "a few summary metrics and store large outputs with add_artifact()")
OUTPUT_LIMIT = 1 << 20  # characters of captured output kept per run (its tail)


def cut_output(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """Keep the tail of a run's output so its record stays far below 16 MB."""
    if len(text) <= limit:
        return text
    note = cut_note(limit)
    return note + text[len(text) - limit + len(note):]


def output_filter(text: str) -> str:
    """Sacred's captured-output filter for every experiment the worker builds."""
    return apply_backspaces_and_linefeeds(cut_output(text))


class RecordWriter(MongoObserver):
    """Applies one attempt's Sacred events to its record (see the module docstring)."""

    HEARTBEAT_WRITE_S = 2.0  # a heartbeat right before completion is not worth a write

    def __init__(self, store: Storage, source_cache: dict[tuple[str, str], Any],
                 host_facts: dict[str, Any]):
        # MongoObserver.__init__ would connect a client of its own: set up by hand.
        self.store = store
        self._source_cache = source_cache
        self._host_facts = host_facts
        self._last_write = 0.0
        self._metric_notes: list[dict[str, str]] = []
        self.run_entry: dict[str, Any] = {}  # filled by started_event
        self.overwrite = None
        self.superseded = False  # the record was closed by someone else: we lost the run

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        return super().started_event(ex_info, command, {**host_info, **self._host_facts},
                                     start_time, config, meta_info, _id)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        if time.monotonic() - self._last_write >= self.HEARTBEAT_WRITE_S:
            super().heartbeat_event(info, captured_out, beat_time, result)
        else:  # keep it for the final write
            self.run_entry.update(info=info, captured_out=captured_out, heartbeat=beat_time,
                                  result=result)

    def save_sources(self, ex_info):
        base_dir = ex_info["base_dir"]
        saved = []
        for name, md5 in ex_info["sources"]:
            path = os.path.join(base_dir, name)
            key = (path, md5)
            file_id = self._source_cache.get(key)
            if file_id is None:
                file_id = self.store.retry(lambda: self.store.store_source(path, md5))
                self._source_cache[key] = file_id
            saved.append([name, file_id])
        return saved

    def _write(self) -> None:
        entry = self.run_entry
        if not entry or self.superseded:
            return
        if self._metric_notes:
            entry["info"] = {**(entry.get("info") or {}), "metrics": self._metric_notes}
        if entry.get("captured_out"):
            entry["captured_out"] = cut_output(entry["captured_out"])
        try:
            written = self.store.retry(lambda: self.store.save_sacred_run(entry))
        except DocumentTooLarge:
            # Keep the record (and the run's status) rather than lose it: drop what
            # made it too large and say so.
            entry.update(result=None, info={}, status="FAILED",
                         captured_out=cut_output(entry.get("captured_out") or "", 100_000),
                         fail_trace=[TOO_LARGE])
            written = self.store.retry(lambda: self.store.save_sacred_run(entry))
        self.superseded = not written
        self._last_write = time.monotonic()

    def insert(self):
        self._write()
        return self.run_entry.get("_id")

    def save(self):
        self._write()

    def final_save(self, attempts):
        self._write()

    def resource_event(self, filename):
        from sacred.dependencies import get_digest

        resource = (filename, get_digest(filename))
        if resource not in self.run_entry["resources"]:
            self.run_entry["resources"].append(resource)
            self._write()

    def log_metrics(self, metrics_by_name, info):
        # Sacred notes each new series in info["metrics"] (Omniboard finds series
        # through it); the child's info is a copy, so keep the notes here.
        sacred_id = self.run_entry["_id"]
        for name, series in metrics_by_name.items():
            new_id = self.store.retry(lambda: self.store.push_metrics(
                sacred_id, name, series["steps"], series["values"], series["timestamps"]))
            if new_id is not None:
                self._metric_notes.append({"name": name, "id": new_id})

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        content_type = content_type or self._try_to_detect_content_type(filename) \
            or "application/octet-stream"
        sacred_id = self.run_entry["_id"]
        file_id = self.store.retry(lambda: self.store.store_artifact(
            sacred_id, name, filename, metadata, content_type))
        self.run_entry["artifacts"].append({"name": name, "file_id": file_id})
        self._write()

    def close(self, sacred_status: str, message: str, stop_time: Any) -> None:
        """End a record the run itself could not end (killed, timed out, cancelled,
        interrupted): status and reason, unless it already ended."""
        if not self.run_entry or self.run_entry.get("status") not in ("RUNNING", None):
            return
        self.run_entry.update(stop_time=stop_time, status=sacred_status, fail_trace=[message])
        self._write()
