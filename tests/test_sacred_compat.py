"""Sacred without pkg_resources (Python 3.12+, setuptools >= 82), and a worker that cannot
import what it needs: one clear line, exit status 2, the queue untouched."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import error_lines, raw_db

from hyperspace_explorer.sacred_compat import make_stand_in
from hyperspace_explorer.status import QUEUED
from hyperspace_explorer.storage import connect

STUDY = Path(__file__).resolve().parent / "study"


def _blocked_env(tmp_path: Path, **modules: str) -> dict[str, str]:
    """An environment whose `import NAME` raises the given ImportError text for each
    NAME: a module of that name, first on sys.path, that raises when imported."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name, message in modules.items():
        (blocked / f"{name}.py").write_text(
            f"raise ImportError({message!r}, name={name!r})\n")
    path = os.pathsep.join(p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_stand_in_matches_the_real_pkg_resources():
    real = pytest.importorskip("pkg_resources")  # only where setuptools still ships it
    stand_in = make_stand_in()

    def table(working_set):
        return {d.key: (d.project_name, d.version, sorted(d._get_metadata("top_level.txt")))
                for d in working_set if d.version != "0.0.0"}

    real_table = {d.key: (d.project_name, d.version,
                          sorted(d._get_metadata("top_level.txt"))
                          if d.has_metadata("top_level.txt") else [])
                  for d in real.working_set if d.version != "0.0.0"}
    assert table(stand_in.working_set) == real_table
    assert stand_in.working_set.by_key.get("numpy").version == \
        real.working_set.by_key.get("numpy").version
    assert stand_in.working_set.by_key.get("no-such-module") is None
    assert stand_in.resource_filename("sacred", "data/mime.types") == \
        real.resource_filename("sacred", "data/mime.types")


def test_sacred_runs_without_pkg_resources(tmp_path, mongo_uri, db_name):
    """With `import pkg_resources` failing, Sacred still records a run with its
    dependencies through MongoObserver, and pkg_resources stays unimportable."""
    script = textwrap.dedent(f"""
        import sys
        from hyperspace_explorer.sacred_compat import import_sacred
        import_sacred()
        from sacred import Experiment
        from sacred.observers import MongoObserver
        import numpy
        ex = Experiment("compat", save_git_info=False)
        ex.observers.append(MongoObserver(url={mongo_uri!r}, db_name={db_name!r}))
        @ex.main
        def main():
            return 1.5
        run = ex.run()
        deps = run.experiment_info["dependencies"]
        assert any(d.startswith("numpy==" + numpy.__version__) for d in deps), deps
        assert "pkg_resources" not in sys.modules
        try:
            import pkg_resources
        except ImportError:
            print("COMPAT OK", run.result)
        """)
    (tmp_path / "experiment.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "experiment.py")], cwd=tmp_path,
                         capture_output=True, text=True,
                         env=_blocked_env(tmp_path, pkg_resources="simulated: no setuptools"),
                         timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "COMPAT OK 1.5" in out.stdout
    store = connect(mongo_uri, db_name)
    try:
        (record,) = raw_db(store).runs.find({})
        assert record["status"] == "COMPLETED" and record["result"] == 1.5
    finally:
        store.close()


def test_worker_without_sacred_says_why_and_touches_nothing(tmp_path, mongo_uri, db_name):
    store = connect(mongo_uri, db_name)
    try:
        (run_id,) = store.enqueue([{"study": db_name, "task": "toy", "config": {}, "seed": 0}])
        proc = subprocess.run(
            [sys.executable, "-m", "hyperspace_explorer.worker", str(STUDY / "tasks"), db_name,
             "--study-dir", str(STUDY), "--mongo-uri", mongo_uri, "--idle-exit", "0"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env=_blocked_env(tmp_path, sacred="simulated: sacred is not installed"))
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = error_lines(proc.stderr)
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("hyperspace_worker: error: cannot import 'sacred' "
                                   "(simulated: sacred is not installed)")
        assert "-m pip install sacred" in lines[0]
        run = store.get_run(run_id)
        assert run["status"] == QUEUED and run["attempt"] == 0
        assert store.list_workers() == []
    finally:
        store.close()
