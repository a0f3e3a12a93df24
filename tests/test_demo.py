"""`hse demo` end to end: real server, real worker processes, the bundled digits Study."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import hyperspace_explorer
from hyperspace_explorer.cli import main
from hyperspace_explorer.demo import GRIDS, SEEDS, locate_example
from hyperspace_explorer.errors import HSEError
from hyperspace_explorer.status import COMPLETED
from hyperspace_explorer.storage import RunFilter, connect

EXPECTED_RUNS = sum(len(values) for _, grid in GRIDS for values in grid.values()) * SEEDS


def test_demo_runs_ranks_and_replaces_a_previous_demo(mongo_uri, db_name, tmp_path: Path):
    store = connect(mongo_uri, db_name)
    try:
        # A run left by an earlier demo: it must be dropped, and the demo must say so.
        store.enqueue([{"study": db_name, "task": "digits", "config": {}, "seed": 0}])
        proc = subprocess.run(  # from elsewhere than the repo: it must find the example
            [sys.executable, "-m", "hyperspace_explorer.cli", "demo", "--mongo-uri", mongo_uri,
             "--db", db_name], cwd=tmp_path, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = proc.stdout
        assert f"database '{db_name}': dropped 1 run(s) of a previous demo" in out

        ranking = [line for line in out.splitlines() if re.match(r"│\s+\d+ │", line)]
        assert len(ranking) == EXPECTED_RUNS // SEEDS
        assert any("LogisticModel" in row for row in ranking)
        assert any("ForestModel" in row for row in ranking)
        assert [int(row.split("│")[1]) for row in ranking] == [1, 2, 3, 4]
        assert all(f"│ {SEEDS} │" in row for row in ranking)  # n: every seed completed
        assert "next steps:" in out and f"hse --mongo-uri {mongo_uri} --db {db_name} ls" in out

        counts = store.count_by_status(RunFilter(study=db_name))
        assert counts[COMPLETED] == EXPECTED_RUNS
        assert sum(counts.values()) == EXPECTED_RUNS
    finally:
        store.close()


def test_demo_refuses_to_drop_a_database_with_other_runs(mongo_uri, db_name, capsys):
    store = connect(mongo_uri, db_name)
    try:
        (kept,) = store.enqueue([{"study": "real_study", "task": "toy", "config": {},
                                  "seed": 0}])
        assert main(["demo", "--mongo-uri", mongo_uri, "--db", db_name]) == 2
        err = capsys.readouterr().err
        assert "holds 1 run(s) that are not from the demo" in err and "--db" in err
        assert store.get_run(kept)["status"] == "QUEUED"  # nothing was dropped
    finally:
        store.close()


def test_example_study_ships_inside_the_package():
    example = locate_example()
    package = Path(hyperspace_explorer.__file__).resolve().parent
    assert example.study_dir == package / "examples" / "digits"
    assert (example.study_dir / "scenarios.py").is_file()
    assert (example.tasks_dir / "digits.json").is_file()
    # The checkout's paths (README, docker) are the same files, not copies.
    root = package.parent
    assert (root / "examples" / "digits_study" / "scenarios.py").resolve() == \
        example.study_dir / "scenarios.py"
    assert (root / "tasks" / "digits.json").resolve() == example.tasks_dir / "digits.json"


def test_missing_example_study_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(hyperspace_explorer, "__file__",
                        str(tmp_path / "site-packages" / "hyperspace_explorer" / "__init__.py"))
    with pytest.raises(HSEError, match="example Study is missing.*Reinstall"):
        locate_example()


def test_demo_reports_why_its_workers_could_not_start(mongo_uri, db_name, tmp_path: Path):
    """Workers that cannot import Sacred: the demo names the cause, not just
    'cancelled'."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "sacred.py").write_text(
        "raise ImportError('simulated: sacred is not installed', name='sacred')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(blocked), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "hyperspace_explorer.cli", "demo", "--mongo-uri", mongo_uri,
         "--db", db_name], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert ("every demo worker exited before running anything: hyperspace_worker: error: "
            "cannot import 'sacred' (simulated: sacred is not installed)") in proc.stderr
