"""Study: the user's project, found through its `scenarios` module.

Importing the scenarios module is what registers the Study's Configurable classes;
only those can then be named by `className` in a queued run.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from .errors import StudyError

MODULE = "scenarios"


def scenarios_file(study_dir: str | Path) -> Path | None:
    """Path of the Study's scenarios module in `study_dir`, if it has one."""
    base = Path(study_dir)
    for candidate in (base / f"{MODULE}.py", base / MODULE / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def load_scenarios(study_dir: str | Path | None = None) -> ModuleType:
    """Import `scenarios` from `study_dir` (default: the current directory)."""
    base = Path(study_dir) if study_dir is not None else Path.cwd()
    path = scenarios_file(base)
    if path is None:
        raise StudyError(
            f"no {MODULE}.py in {base.resolve()}: start workers from the Study directory "
            f"(the one containing {MODULE}.py), or pass --study-dir")
    loaded = sys.modules.get(MODULE)
    if loaded is not None:
        loaded_file = getattr(loaded, "__file__", None)
        if loaded_file and Path(loaded_file).resolve() == path:
            return loaded
        raise StudyError(f"another '{MODULE}' module ({getattr(loaded, '__file__', '?')}) is "
                         f"already imported in this process; one Study per process")
    root = str(path.parent if path.name != "__init__.py" else path.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module(MODULE)
    except Exception as exc:
        sys.modules.pop(MODULE, None)
        raise StudyError(f"importing {path} failed:\n{traceback.format_exc()}") from exc


def study_root(module: ModuleType) -> Path:
    """The Study directory a loaded scenarios module (or any module of it) comes from."""
    path = Path(module.__file__ or ".").resolve()
    return path.parent.parent if path.name == "__init__.py" else path.parent


def study_candidates(study_dir: str | Path | None = None,
                     tasks_dir: str | Path | None = None) -> list[Path]:
    """Where a notebook or command looks for the Study: `study_dir` when given, else the
    tasks directory's parent, then the current directory."""
    if study_dir is not None:
        return [Path(study_dir)]
    return ([Path(tasks_dir).resolve().parent] if tasks_dir is not None else []) + [Path.cwd()]


def find_study(study_dir: str | Path | None = None,
               tasks_dir: str | Path | None = None) -> ModuleType | None:
    """Import the scenarios module of the first of `study_candidates` that has one;
    None when none has (StudyError when it fails to import)."""
    for candidate in study_candidates(study_dir, tasks_dir):
        if scenarios_file(candidate) is not None:
            return load_scenarios(candidate)
    return None


_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages", "venv", "env"}


def source_files(study_dir: str | Path) -> list[Path]:
    """The Study's Python sources: every .py file under its directory, skipping hidden
    directories, virtual environments and caches."""
    base = Path(study_dir).resolve()
    found = []
    for root, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        found += [Path(root) / name for name in sorted(files) if name.endswith(".py")]
    return found


def source_stamp(study_dir: str | Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of every source file: cheap to take between two runs, and
    different as soon as a file is edited, added or removed."""
    stamp = []
    for path in source_files(study_dir):
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(stamp)


_DIGESTS: dict[Path, tuple[tuple[tuple[str, int, int], ...], str]] = {}


def source_digest(study_dir: str | Path) -> str:
    """A content hash of the Study's sources (paths relative to the Study directory):
    equal on two machines exactly when they hold the same Study code. Files are read
    again only when their `source_stamp` changed (a notebook submits many times)."""
    base = Path(study_dir).resolve()
    stamp = source_stamp(base)
    known = _DIGESTS.get(base)
    if known is not None and known[0] == stamp:
        return known[1]
    digest = hashlib.sha256()
    for path in source_files(base):
        try:
            content = path.read_bytes()
        except OSError:
            continue
        digest.update(str(path.relative_to(base)).encode() + b"\0")
        digest.update(hashlib.sha256(content).digest())
    _DIGESTS[base] = (stamp, digest.hexdigest()[:16])
    return _DIGESTS[base][1]
