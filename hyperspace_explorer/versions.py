"""The code a run ran with: the Study's git state, a content hash of its sources, the
versions of the packages it imports, Python's and this package's versions.

A result is only reproducible when we know which code produced it. Workers record
`code_version(...)` on every run; `hse show` prints it, `hse diff` and `q.rerun` compare
it with another run's or with today's code. The diff of uncommitted changes is stored
once per distinct content (a content-addressed blob), not once per run: a dirty tree
that runs a 10,000-config grid stores its diff once.

Outside a git repository the Study's source digest stands in for the commit, so two
runs' code can still be told apart.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .study import source_digest, source_files, source_stamp

GIT_TIMEOUT_S = 10.0
DIFF_LIMIT = 8 * 1024 * 1024  # a larger diff is stored cut, with a note

_CACHE: dict[Path, tuple[Any, dict[str, Any]]] = {}


def code_version(study_dir: str | Path, store_diff: Callable[[str, bytes], None] | None = None
                 ) -> dict[str, Any]:
    """What identifies the Study's code now (computed again only when its sources or
    its git state changed):

    - `commit`, `branch`, `dirty`, `url`: the git repository holding the Study (`vcs`
      "git"); outside git `commit` is the source digest and `vcs` is "none";
    - `diff`: sha256 of `git diff HEAD` when dirty (the text goes to `store_diff(key,
      content)` once per content), `changed`: the files it touches, untracked ones too;
    - `source_digest`, `packages` ({distribution: version} of what the Study imports),
      `python`, `hyperspace_explorer` (this package's version).
    """
    base = Path(study_dir).resolve()
    key = (source_stamp(base), _git_stamp(base))
    known = _CACHE.get(base)
    if known is not None and known[0] == key:
        return known[1]
    from . import __version__

    digest = source_digest(base)
    version: dict[str, Any] = {"vcs": "none", "commit": digest, "branch": None, "dirty": False,
                               "url": None, "diff": None, "changed": []}
    git = _git_state(base)
    if git is not None:
        diff_text = git.pop("diff_text")
        version.update(git, vcs="git")
        if diff_text:
            data = diff_text.encode("utf-8", "replace")
            if len(data) > DIFF_LIMIT:
                data = data[:DIFF_LIMIT] + b"\n[diff cut at 8 MiB]\n"
            version["diff"] = "diff:" + hashlib.sha256(data).hexdigest()
            if store_diff is not None:
                store_diff(version["diff"], data)
    version.update(source_digest=digest, packages=imported_packages(base),
                   python=platform.python_version(), hyperspace_explorer=__version__)
    _CACHE[base] = (key, version)
    return version


def short(version: Any) -> str | None:
    """One line naming a code version: `1a2b3c4d5e6f (dirty, 2 files changed)`."""
    if not isinstance(version, dict) or not version.get("commit"):
        return None
    text = str(version["commit"])[:12]
    if version.get("vcs") == "none":
        text = f"sources {text} (no git)"
    notes = []
    if version.get("branch"):
        notes.append(f"on {version['branch']}")
    if version.get("dirty"):
        changed = version.get("changed") or []
        notes.append(f"dirty, {len(changed)} file(s) changed" if changed else "dirty")
    return text + (f" ({', '.join(notes)})" if notes else "")


def differences(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """(what, in a, in b) for every part of two code versions that differs:
    commit, dirty state, diff, Python, this package and each imported package."""
    a = a if isinstance(a, dict) else {}
    b = b if isinstance(b, dict) else {}
    out = [(key, a.get(key), b.get(key)) for key in
           ("commit", "branch", "dirty", "diff", "source_digest", "python", "hyperspace_explorer")
           if a.get(key) != b.get(key)]
    pa, pb = a.get("packages") or {}, b.get("packages") or {}
    out += [(f"package {name}", pa.get(name), pb.get(name)) for name in sorted(set(pa) | set(pb))
            if pa.get(name) != pb.get(name)]
    return out


def imported_packages(study_dir: str | Path) -> dict[str, str]:
    """{distribution: version} of the installed packages the Study's sources import
    (read from their import statements, so what the worker itself imports does not
    count); the standard library and the Study's own modules are left out."""
    base = Path(study_dir).resolve()
    files = source_files(base)
    own = {p.stem for p in files} | {p.name for p in base.iterdir() if p.is_dir()}
    names: set[str] = set()
    for path in files:
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    names -= own | set(sys.stdlib_module_names)
    dists = dict(importlib.metadata.packages_distributions())
    if names - set(dists):
        dists = _inferred_distributions(dists)
    out: dict[str, str] = {}
    for name in sorted(names):
        for dist in dists.get(name, []):
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def _inferred_distributions(known: dict[str, list[str]]) -> dict[str, list[str]]:
    """`known` completed from the installed files of each distribution: Python 3.10's
    `packages_distributions` reads only `top_level.txt`, which many wheels (numpy's)
    no longer ship."""
    out = {name: list(dists) for name, dists in known.items()}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        for path in dist.files or ():
            top = path.parts[0] if path.parts else ""
            top = top[:-3] if top.endswith(".py") else top
            if top.isidentifier() and name and name not in out.setdefault(top, []):
                out[top].append(name)
    return out


def _git(base: Path, *args: str) -> str | None:
    """git's output, or None when it fails. Without optional locks: `git status` would
    otherwise rewrite a stale index, which takes the lock the user's own git commands
    need and changes the index's stamp (`_git_stamp`), so that the next run of a worker
    computed the same code version again (about 0.4 s after each edit of the Study)."""
    try:
        done = subprocess.run(["git", "-C", str(base), *args], capture_output=True,
                              env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace") if done.returncode == 0 else None


def _git_stamp(base: Path) -> tuple[Any, ...]:
    """Changes when a commit, checkout or `git add` happens (the index and HEAD)."""
    top = _toplevel(base)
    if top is None:
        return ()
    stamp: list[tuple[int, int] | None] = []
    for name in ("HEAD", "index"):
        try:
            st = (top / ".git" / name).stat()
            stamp.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stamp.append(None)
    return tuple(stamp)


_TOPLEVELS: dict[Path, Path | None] = {}


def _toplevel(base: Path) -> Path | None:
    if base not in _TOPLEVELS:
        out = _git(base, "rev-parse", "--show-toplevel")
        _TOPLEVELS[base] = Path(out.strip()) if out and out.strip() else None
    return _TOPLEVELS[base]


def _git_state(base: Path) -> dict[str, Any] | None:
    """The repository's state as far as the Study is concerned; None outside git or
    in a repository without commits."""
    if _toplevel(base) is None:
        return None
    commit = _git(base, "rev-parse", "HEAD")
    if not commit:
        return None
    branch = (_git(base, "rev-parse", "--abbrev-ref", "HEAD") or "").strip()
    url = (_git(base, "config", "--get", "remote.origin.url") or "").strip()
    status = _git(base, "status", "--porcelain", "--", ".") or ""
    changed = sorted(line[3:] for line in status.splitlines() if len(line) > 3)
    return {"commit": commit.strip(), "branch": None if branch in ("", "HEAD") else branch,
            "dirty": bool(changed), "url": _redacted(url) if url else None,
            "changed": changed,
            "diff_text": _git(base, "diff", "HEAD", "--", ".") if changed else None}


def _redacted(url: str) -> str:
    from .storage import redact_uri

    return redact_uri(url) if "@" in url and "://" in url else url
