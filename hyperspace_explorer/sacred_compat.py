"""Import Sacred on any Python, with or without setuptools' `pkg_resources`.

Sacred (0.8.7, its latest release) imports `pkg_resources` in two modules:

- `sacred.dependencies`: `pkg_resources.working_set` (iterated; each distribution's
  `project_name`, `version` and `_get_metadata("top_level.txt")`) and
  `working_set.by_key.get(name)`, to record the versions of the packages a run imported;
- `sacred.observers.mongo`: `pkg_resources.resource_filename("sacred", "data/mime.types")`.

`pkg_resources` comes with setuptools, which venvs on Python 3.12+ do not contain and
setuptools >= 82 no longer ships (and `torch` pulls in the newest setuptools). Pinning
an old setuptools would fight every package that needs a newer one, so instead, when
`import pkg_resources` fails, `import_sacred()` puts the small stand-in below, built on
`importlib.metadata` / `importlib.resources`, into `sys.modules` for as long as Sacred's
modules are being imported (they keep their own reference to it), and removes it again
so that no other code mistakes it for the real `pkg_resources`. When the real one is
importable nothing is replaced.

Every import of Sacred in this package goes through `import_sacred()`.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import re
import sys
import types
from collections.abc import Iterator
from typing import Any

# The Sacred modules that import pkg_resources, and the ones this package uses.
SACRED_MODULES = ("sacred", "sacred.dependencies", "sacred.observers",
                  "sacred.observers.mongo", "sacred.host_info", "sacred.utils")


def _safe_name(name: str) -> str:
    """pkg_resources.safe_name: runs of other characters than letters, digits and '.'
    become '-'."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name)


def _project_name(dist: importlib.metadata.Distribution) -> str:
    """The name as pkg_resources reports it: taken from the name of the metadata
    directory (`PyYAML` installed as `pyyaml-6.0.dist-info` is `pyyaml`), so that runs
    record the same dependency names with and without the real pkg_resources."""
    path = getattr(dist, "_path", None)
    name = getattr(path, "name", "")
    if name.endswith((".dist-info", ".egg-info")):
        return name.rsplit(".", 1)[0].split("-")[0]
    return dist.metadata["Name"] or ""


class Distribution:
    """The part of `pkg_resources.Distribution` Sacred uses."""

    def __init__(self, dist: importlib.metadata.Distribution):
        self._dist = dist
        self.project_name = _safe_name(_project_name(dist))
        self.key = self.project_name.lower()
        self.version = dist.version

    def _get_metadata(self, name: str) -> Iterator[str]:
        """Non-empty, stripped lines of a metadata file (none if it does not exist)."""
        text = self._dist.read_text(name) or ""
        return (line.strip() for line in text.splitlines() if line.strip())

    def __repr__(self) -> str:
        return f"{self.project_name} {self.version}"


class WorkingSet:
    """`pkg_resources.working_set`: the installed distributions, read when first used
    (not at import) and then kept while `sys.path` stays the same, as pkg_resources
    keeps the set it read at import; first on sys.path wins, as in pkg_resources.

    Sacred asks for it at every run (the versions of the experiment's dependencies):
    reading every installed distribution's metadata each time cost ~80 ms per run
    with 800 distributions installed."""

    def __init__(self) -> None:
        self._read: tuple[tuple[str, ...], list[Distribution]] | None = None

    def _distributions(self) -> list[Distribution]:
        path = tuple(sys.path)
        if self._read is None or self._read[0] != path:
            self._read = (path, self._read_distributions())
        return self._read[1]

    def _read_distributions(self) -> list[Distribution]:
        seen: dict[str, Distribution] = {}
        for found in importlib.metadata.distributions():
            try:
                dist = Distribution(found)
            except Exception:  # unreadable metadata: pkg_resources skips it too
                continue
            if dist.key and dist.key not in seen:
                seen[dist.key] = dist
        return list(seen.values())

    def __iter__(self) -> Iterator[Distribution]:
        return iter(self._distributions())

    @property
    def by_key(self) -> dict[str, Distribution]:
        return {dist.key: dist for dist in self._distributions()}


def resource_filename(package: str, resource: str) -> str:
    """`pkg_resources.resource_filename` for a package installed as files."""
    return str(importlib.resources.files(package).joinpath(resource))


def make_stand_in() -> types.ModuleType:
    """A module object offering what Sacred uses of `pkg_resources`."""
    module = types.ModuleType("pkg_resources", "hyperspace_explorer's stand-in for the "
                                               "parts of pkg_resources that Sacred uses")
    vars(module).update(working_set=WorkingSet(), resource_filename=resource_filename,
                        Distribution=Distribution, WorkingSet=WorkingSet)
    return module


def import_sacred() -> types.ModuleType:
    """Import Sacred (and the submodules this package uses); returns `sacred`.

    Raises ImportError as Sacred does when something else than pkg_resources is missing.
    """
    if "sacred.observers.mongo" in sys.modules and "sacred.dependencies" in sys.modules:
        return sys.modules["sacred"]
    try:
        import pkg_resources  # noqa: F401  (the real one, when setuptools provides it)
    except ImportError:
        pass
    else:
        return _import_all()
    stand_in = make_stand_in()
    sys.modules["pkg_resources"] = stand_in
    try:
        return _import_all()
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


def _import_all() -> Any:
    for name in SACRED_MODULES:
        importlib.import_module(name)
    return sys.modules["sacred"]


# Distributions to install for modules whose import name differs from it.
_DISTRIBUTION_OF = {"bson": "pymongo", "gridfs": "pymongo", "git": "GitPython",
                    "pkg_resources": "setuptools", "sklearn": "scikit-learn", "yaml": "PyYAML"}


def missing_module_message(module: str, exc: BaseException) -> str:
    """One line naming the module that cannot be imported and how to fix it."""
    detail = " ".join(str(exc).split()) or type(exc).__name__
    top = module.split(".")[0]
    dist = _DISTRIBUTION_OF.get(top, top)
    return (f"cannot import '{module}' ({detail}), which workers need to execute runs; "
            f"install it into this Python ({sys.executable} -m pip install {dist}) or "
            f"reinstall hyperspace_explorer with its dependencies")


def check_worker_imports() -> None:
    """Import everything a worker needs to execute runs (Sacred, the MongoDB driver, the
    execution module), before it registers or claims anything. A failure becomes one
    HSEError line naming the missing module and the fix."""
    from .errors import HSEError

    steps = (("pymongo", lambda: importlib.import_module("pymongo")),
             ("gridfs", lambda: importlib.import_module("gridfs")),
             ("sacred", import_sacred),
             ("hyperspace_explorer.execution",
              lambda: importlib.import_module("hyperspace_explorer.execution")))
    for name, step in steps:
        try:
            step()
        except ImportError as exc:
            raise HSEError(missing_module_message(exc.name or name, exc)) from None
