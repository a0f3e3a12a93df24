"""The README's notebook examples run as written (against the test server)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pymongo
import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_notebook_quickstart_runs_as_written(mongo_uri, tmp_path):
    quickstart, typo, plotting = python_blocks("Notebook quickstart")
    # The README's database is "digits"; the test runs it in a database of its own, so
    # that a real MongoDB (HSE_TEST_MONGO_URI) never loses a user's "digits" data.
    db = f"hse_test_readme_{uuid.uuid4().hex[:12]}"
    opening = 'RunQueue(None, "digits",'
    assert opening in quickstart
    quickstart = quickstart.replace(opening, f'RunQueue(None, "{db}",')
    env = {**os.environ, "HSE_MONGO_URI": mongo_uri, "MPLBACKEND": "Agg"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", "../../tasks", db,
         "--idle-exit", "5", "--interval", "0.1"],
        cwd=ROOT / "examples" / "digits_study", env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = tmp_path / "notebook.py"
    script.write_text(
        quickstart
        + "\nassert q.status()['CANCELLED'] == 0 and q.status()['COMPLETED'] == len(ids)\n"
        + "from hyperspace_explorer.errors import ConfigError\n"
        + "try:\n" + "".join(f"    {line}\n" for line in typo.splitlines() if line.strip()
                             and not line.startswith("#"))
        + "except ConfigError as exc:\n    assert 'n_trees' in str(exc)\n"
        + "else:\n    raise AssertionError('the typo was accepted')\n"
        + plotting + "\nprint('README OK')\n")
    try:
        out = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    finally:
        worker.terminate()
        worker.wait(60)
        with pymongo.MongoClient(mongo_uri) as client:
            client.drop_database(db)  # only the database this test created
    assert out.returncode == 0, out.stderr[-3000:]
    assert "README OK" in out.stdout


@pytest.mark.parametrize("line", ["python3 -m venv .venv && .venv/bin/pip install -e . && "
                                  ".venv/bin/hse demo",
                                  'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" '
                                  "&& .venv/bin/python -m pytest -q"])
def test_setup_commands_are_the_documented_ones(line):
    """CI runs the README's test command; keep the two in step."""
    readme = (ROOT / "README.md").read_text()
    assert line in readme
    if "pytest" in line:
        ci = (ROOT / ".ci" / "run").read_text()
        assert '.venv/bin/pip install --quiet -e ".[test]" && .venv/bin/python -m pytest -q' in ci
        assert "-p no:cacheprovider" in ci and '-e ".[torch]"' in ci  # tests with torch
        assert "find_python 3.11" in ci and "find_python 3.13" in ci and "hse\" demo" in ci
        assert "collected no tests" in ci  # pytest's exit status 5 is a failure
