"""Trained models out of runs: saved as Sacred artifacts, loaded in plain Python,
exported with everything needed to trust them.

A model a run saves with `Scenario.save_model(obj)` becomes an artifact of the run's
Sacred record (`<name>.pt` for torch, `<name>.pkl` for anything else, e.g. scikit-learn
estimators) with a content type saying how to read it back, so it is usable without
the queue, a worker or the Study's runner: `load_model(run_id, db=...)`.

Loading unpickles: load models only from a database you trust (as with any pickle or
`torch.load(weights_only=False)`). A torch module saved whole needs its class
importable where it is loaded (the Study's package on the path); a state dict does not.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import HSEError

if TYPE_CHECKING:
    from .queue import RunQueue

TORCH_TYPE = "application/x-pytorch"
PICKLE_TYPE = "application/x-pickle"
_SUFFIX = {TORCH_TYPE: ".pt", PICKLE_TYPE: ".pkl"}


def to_bytes(obj: Any) -> tuple[bytes, str]:
    """`obj` serialised, and its content type: torch's format for torch modules,
    state dicts and tensors (`torch.save`), a pickle for anything else."""
    torch = sys.modules.get("torch")
    buffer = io.BytesIO()
    if torch is not None and _is_torch(torch, obj):
        torch.save(obj, buffer)
        return buffer.getvalue(), TORCH_TYPE
    pickle.dump(obj, buffer, protocol=pickle.HIGHEST_PROTOCOL)
    return buffer.getvalue(), PICKLE_TYPE


def from_bytes(data: bytes, content_type: str, what: str) -> Any:
    """The object `to_bytes` serialised (`what` names it in errors)."""
    if content_type == TORCH_TYPE:
        try:
            import torch
        except ImportError:
            raise HSEError(f"{what} was saved with torch, which is not installed here "
                           f"(pip install \"hyperspace_explorer[torch]\")") from None
        return torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
    return pickle.loads(data)


def save_model(scenario: Any, obj: Any, name: str = "model") -> None:
    """Store `obj` as the artifact `name` of the scenario's current run (see
    `Scenario.save_model`)."""
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise HSEError(f"save_model: name must be a plain file name like 'model', got {name!r}")
    data, content_type = to_bytes(obj)
    torch = sys.modules.get("torch")
    kind = ("module" if isinstance(obj, torch.nn.Module) else "state_dict") \
        if content_type == TORCH_TYPE and torch is not None else "object"
    metadata = {"hse_model": name, "format": content_type, "kind": kind,
                "class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
    with tempfile.TemporaryDirectory() as tmp:  # add_artifact reads it before returning
        path = os.path.join(tmp, name + _SUFFIX[content_type])
        with open(path, "wb") as f:
            f.write(data)
        scenario.add_artifact(path, name=os.path.basename(path), content_type=content_type,
                              metadata=metadata)


def _is_torch(torch: Any, obj: Any) -> bool:
    """A torch module, or tensors possibly inside dicts and lists (state dicts, a
    checkpoint of model and optimizer states)."""
    return isinstance(obj, torch.nn.Module) or _has_tensor(torch, obj)


def _has_tensor(torch: Any, obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(torch, v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(torch, v) for v in obj)
    return False


def model_artifacts(queue: RunQueue, run_id: str | int) -> list[dict[str, Any]]:
    """The model artifacts of a run's Sacred record (`name`, `file_id`, `content_type`)."""
    doc = queue.get(run_id)
    sacred_id = doc.get("sacred_id")
    record = queue.store.sacred_run(sacred_id) if sacred_id is not None else None
    if record is None:
        raise HSEError(f"run {doc['_id']} has no Sacred record (status {doc.get('status')}): "
                       f"it never ran, so it saved no model")
    return [a for a in record.get("artifacts") or []
            if a.get("content_type") in _SUFFIX and isinstance(a.get("name"), str)]


def _artifact(queue: RunQueue, run_id: str | int, name: str) -> dict[str, Any]:
    found = model_artifacts(queue, run_id)
    for artifact in found:
        if artifact["name"] == name + _SUFFIX[artifact["content_type"]]:
            return artifact
    known = ", ".join(a["name"] for a in found) or "none"
    raise HSEError(f"run {run_id} saved no model named {name!r} (its models: {known}); "
                   f"a scenario saves one with self.save_model(obj, name=...)")


def read_model(queue: RunQueue, run_id: str | int, name: str = "model") -> Any:
    """The model `name` that the run saved, deserialised (see the module docstring)."""
    artifact = _artifact(queue, run_id, name)
    data = queue.store.read_file(artifact["file_id"])
    if data is None:
        raise HSEError(f"run {run_id}: the stored file of model {name!r} is gone")
    return from_bytes(data, artifact["content_type"], f"run {run_id}: model {name!r}")


def load_model(run_id: str | int, *, uri: str | None = None, db: str | None = None,
               name: str = "model") -> Any:
    """The model a run saved (`Scenario.save_model`), in plain Python: no queue, no
    worker. `uri` as for `RunQueue` ($HSE_MONGO_URI, else the embedded server), `db`
    the Study's database (default: $HSE_DB)."""
    from .queue import RunQueue

    db = db or os.environ.get("HSE_DB")
    if not db:
        raise HSEError("load_model: say which database holds the run (db=..., or $HSE_DB)")
    with RunQueue(uri, db) as queue:
        return read_model(queue, run_id, name)


def export_run(queue: RunQueue, run_id: str | int, directory: str | Path) -> Path:
    """Write a run's models and everything needed to trust them to `directory` (new or
    empty): each model file, `config.json` (the complete config it ran with and its
    seed), `code_version.json`, `metrics.json`, `run.json` (ids, task, status, times,
    how to load each model)."""
    doc = queue.get(run_id)
    out = Path(directory)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HSEError(f"export: {out} exists and is not an empty directory; choose a new one")
    models = model_artifacts(queue, run_id)
    if not models:
        raise HSEError(f"run {doc['_id']} saved no model (status {doc.get('status')}); a "
                       f"scenario saves one with self.save_model(obj)")
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for artifact in models:
        data = queue.store.read_file(artifact["file_id"])
        if data is None:
            raise HSEError(f"run {doc['_id']}: the stored file of {artifact['name']} is gone")
        (out / artifact["name"]).write_bytes(data)
        loader = "torch.load(f, weights_only=False)" if artifact["content_type"] == TORCH_TYPE \
            else "pickle.load(f)"
        files.append({"file": artifact["name"], "content_type": artifact["content_type"],
                      "load": f"with open({artifact['name']!r}, 'rb') as f: model = {loader}"})

    def dump(filename: str, value: Any) -> None:
        (out / filename).write_text(json.dumps(value, indent=2, sort_keys=True, default=str)
                                    + "\n")

    dump("config.json", {"task": doc.get("task"), "seed": doc.get("seed"),
                         "config": doc.get("config"), "scenario": doc.get("task_spec")})
    dump("code_version.json", doc.get("code_version"))
    dump("metrics.json", doc.get("metrics"))
    dump("run.json", {"run_id": doc["_id"], "sacred_id": doc.get("sacred_id"),
                      "task": doc.get("task"), "status": doc.get("status"),
                      "started_at": doc.get("started_at"), "ended_at": doc.get("ended_at"),
                      "host": doc.get("host"), "reproduces": doc.get("reproduces"),
                      "models": files})
    return out
