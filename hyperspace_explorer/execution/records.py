"""The Sacred record of an attempt, written by the worker through `Storage`.

`RecordWriter` is Sacred's own MongoObserver (so records have exactly the shape
Omniboard and incense expect), with every database access replaced by a `Storage`
call that is retried through outages. Records are fenced like queue writes: after
its first insert, a record is only ever replaced while it is still RUNNING, so a
worker that lost its lease (recovery closed the record as superseded) can neither
resurrect it nor mark it COMPLETED; the writer then reports itself `superseded`.

Where the record differs from a bare Sacred run's, it is on purpose, so that a run the
worker had to stop keeps what it produced:

- metric points reach the worker as they are logged (`child.StreamedMetrics`), and are
  pushed to the `metrics` collection at the worker's writes and lease beats, not only
  at Sacred's 10-second heartbeats: a run that times out, is cancelled or is killed
  keeps every point it logged;
- such a run's `captured_out` is the tail of its log file (which also has C-level
  output), its `heartbeat` the moment it was stopped or seen dead;
- `result` is the task's main metric as a number, as in any Sacred run returning one;
  every metric the run returned is kept in `info.metrics_values`;
- an artifact's entry also names its `content_type` (GridFS keeps it as `contentType`
  on MongoDB only: the embedded server drops that file field).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DocumentTooLarge
from ..logs import cut_note
from ..storage import Storage
from .sacred_settings import (
    DISABLED_HOST_INFO,
    MongoObserver,
    apply_backspaces_and_linefeeds,
    guess_content_type,
)

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


def logged_output(log_path: str | os.PathLike[str], limit: int = OUTPUT_LIMIT) -> str:
    """The captured output of a run that did not end by itself: the tail of its log
    file, filtered like Sacred's (Sacred's own copy is only as fresh as its last
    heartbeat, every 10 s); "" when the log cannot be read."""
    try:
        with open(log_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    if size > limit:  # make room for the note (characters never outnumber bytes)
        note = cut_note(limit)
        text = note + text[len(note):]
    return output_filter(text)


def stored_sources(store: Storage, cache: dict[tuple[str, str], Any],
                   ex_info: Mapping[str, Any], patience_s: float | None = None
                   ) -> list[list[Any]]:
    """The `[name, file id]` of each source of a Sacred experiment (`ex_info`), each
    uploaded once per content and remembered in `cache` ({(path, md5): file id}), as
    the record's `experiment.sources` lists them; `patience_s` as in `Storage.retry`."""
    saved = []
    for name, md5 in ex_info["sources"]:
        path = os.path.join(ex_info["base_dir"], name)
        file_id = cache.get((path, md5))
        if file_id is None:
            file_id = store.retry(lambda: store.store_source(path, md5), patience_s=patience_s)
            cache[(path, md5)] = file_id
        saved.append([name, file_id])
    return saved


class RecordWriter(MongoObserver):
    """Applies one attempt's Sacred events to its record (see the module docstring)."""

    HEARTBEAT_WRITE_S = 2.0  # a heartbeat right before completion is not worth a write
    METRICS_WRITE_S = 2.0  # metric points are pushed at most this often between beats

    def __init__(self, store: Storage, source_cache: dict[tuple[str, str], Any],
                 host_facts: dict[str, Any], log_path: Path | None = None):
        # MongoObserver.__init__ would connect a client of its own: set up by hand.
        self.store = store
        self._source_cache = source_cache
        self._host_facts = host_facts
        self._log_path = log_path  # the run's log: the output of a run stopped from outside
        self._last_write = 0.0
        self._last_push = time.monotonic()  # a short run's points: one push, at its end
        self._points: dict[str, dict[str, list[Any]]] = {}  # logged, not pushed yet
        self._counts: dict[str, int] = {}  # points per series in this record
        self._pushed: dict[str, int] = {}  # of them, in the metrics collection
        self._metric_notes: list[dict[str, str]] = []
        self.run_entry: dict[str, Any] = {}  # filled by started_event
        self.overwrite = None
        self.superseded = False  # the record was closed by someone else: we lost the run
        self._stored = False  # whether a write of the record has landed
        self._too_large = False  # its info or result had to be dropped (see _write)

    def started_event(self, ex_info, command, host_info, start_time, config, meta_info, _id):
        # The facts the child did not gather come from the worker; a fact this machine
        # lacks (no nvidia-smi: no `gpus`) is left out, as Sacred leaves it out.
        host = {key: value for key, value in host_info.items()
                if key not in DISABLED_HOST_INFO}
        return super().started_event(ex_info, command, {**host, **self._host_facts},
                                     start_time, config, meta_info, _id)

    def heartbeat_event(self, info, captured_out, beat_time, result):
        if time.monotonic() - self._last_write >= self.HEARTBEAT_WRITE_S:
            super().heartbeat_event(info, captured_out, beat_time, result)
        else:  # keep it for the final write
            self.run_entry.update(info=info, captured_out=captured_out, heartbeat=beat_time,
                                  result=result)

    def save_sources(self, ex_info):
        return stored_sources(self.store, self._source_cache, ex_info)

    def _write(self) -> None:
        entry = self.run_entry
        if not entry or self.superseded:
            return
        self._push_points()  # the record's info.metrics then names every series
        if self._too_large and entry.get("status") == "COMPLETED":  # without what it made
            entry.update(status="FAILED", fail_trace=[TOO_LARGE], result=None)
        if self._metric_notes:
            entry["info"] = {**(entry.get("info") or {}), "metrics": self._metric_notes}
        if entry.get("captured_out"):
            entry["captured_out"] = cut_output(entry["captured_out"])
        try:
            written = self.store.retry(lambda: self.store.save_sacred_run(
                entry, new=not self._stored))
        except DocumentTooLarge:
            # Keep the record (and the run's status) rather than lose it: drop what
            # made it too large and say so. A heartbeat's write leaves it RUNNING: a
            # closed record could not take the run's final write.
            entry.update(result=None, info={"metrics": self._metric_notes},
                         captured_out=cut_output(entry.get("captured_out") or "", 100_000))
            self._too_large = True
            if entry.get("status") != "RUNNING":
                entry.update(status="FAILED", fail_trace=[TOO_LARGE])
            written = self.store.retry(lambda: self.store.save_sacred_run(entry))
        self.superseded = not written
        self._stored = True
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
        """Points of several series ({name: {steps, values, timestamps}}, Sacred's
        shape): kept, and pushed once `METRICS_WRITE_S` passed since the last push
        (else at the next write, lease beat or end of the run)."""
        for name, series in metrics_by_name.items():
            pending = self._pending(name)
            for key in pending:
                pending[key].extend(series[key])
        self._push_if_due()

    def log_point(self, name: str, step: Any, timestamp: Any, value: Any) -> None:
        """One point, as `child.StreamedMetrics` sends each when it is logged."""
        pending = self._pending(name)
        pending["steps"].append(step)
        pending["values"].append(value)
        pending["timestamps"].append(timestamp)
        self._counts[name] = self._counts.get(name, 0) + 1
        self._push_if_due()

    def point_counts(self) -> dict[str, int]:
        """Points per series so far: what a checkpoint saved now covers."""
        return dict(self._counts)

    def carry_over(self, series: Mapping[str, Mapping[str, list[Any]]]) -> None:
        """Start the record with an earlier attempt's points (those its checkpoint
        covers), so that a resumed run's curves continue instead of restarting."""
        for name, points in series.items():
            pending = self._pending(name)
            for key in ("steps", "values", "timestamps"):
                pending[key][:0] = list(points.get(key) or [])
            self._counts[name] = self._counts.get(name, 0) + len(points.get("steps") or [])

    def _pending(self, name: str) -> dict[str, list[Any]]:
        return self._points.setdefault(name, {"steps": [], "values": [], "timestamps": []})

    def _push_if_due(self) -> None:
        if time.monotonic() - self._last_push >= self.METRICS_WRITE_S:
            self.push_metrics()

    def push_metrics(self) -> None:
        """Push the points not pushed yet to the `metrics` collection; when that
        started a series, write the record too, so that its info.metrics names the
        series while the run goes on (Omniboard finds series through it)."""
        if self._push_points():
            self._write()

    def _push_points(self) -> bool:
        """Append the pending points to the run's series; whether a series was new.
        Sacred notes each new series in info["metrics"]; the child's info is a copy,
        so the notes are kept here."""
        self._last_push = time.monotonic()
        if not self._points or not self.run_entry or self.superseded:
            return False
        sacred_id = self.run_entry["_id"]
        new_series = False
        for name in list(self._points):
            series = self._points[name]
            stored = self._pushed.get(name, 0)
            new_id = self.store.retry(lambda: self.store.push_metrics(
                sacred_id, name, series["steps"], series["values"], series["timestamps"],
                stored=stored))
            self._pushed[name] = stored + len(series["steps"])
            del self._points[name]  # only once pushed: a failed push keeps them
            if new_id is not None:
                self._metric_notes.append({"name": name, "id": new_id})
                new_series = True
        return new_series

    def artifact_event(self, name, filename, metadata=None, content_type=None):
        content_type = content_type or guess_content_type(filename)
        sacred_id = self.run_entry["_id"]
        file_id = self.store.retry(lambda: self.store.store_artifact(
            sacred_id, name, filename, metadata, content_type))
        self.run_entry["artifacts"].append(
            {"name": name, "file_id": file_id, "content_type": content_type})
        self._write()

    def close(self, sacred_status: str, message: str, stop_time: Any) -> None:
        """End a record the run itself could not end (killed, timed out, cancelled,
        interrupted), unless it already ended: status and reason, and what the run
        produced until then (its metric points, its log's tail as `captured_out`),
        with `stop_time` as its last heartbeat (it was alive until stopped, or seen
        dead then)."""
        if not self.run_entry or self.run_entry.get("status") not in ("RUNNING", None):
            return
        self.run_entry.update(stop_time=stop_time, heartbeat=stop_time, status=sacred_status,
                              fail_trace=[message])
        self.run_entry.setdefault("result", None)  # as after any Sacred heartbeat
        if self._log_path is not None:  # else (or unreadable) Sacred's last copy stays
            self.run_entry["captured_out"] = logged_output(self._log_path) \
                or self.run_entry.get("captured_out", "")
        self._write()
