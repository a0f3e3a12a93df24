"""The walkthrough notebook in examples/ runs from top to bottom (nbclient, a real
kernel), against the test server, with real workers it starts itself."""
from __future__ import annotations

from pathlib import Path

import pytest

from hyperspace_explorer.queue import RunQueue

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "walkthrough.ipynb"


def test_the_walkthrough_notebook_runs(mongo_uri, db_name, tmp_path, monkeypatch):
    pytest.importorskip("torch")  # its model part trains the example's torch MLP
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("HSE_MONGO_URI", mongo_uri)
    monkeypatch.setenv("HSE_DB", db_name)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []
    with RunQueue(mongo_uri, db_name) as q:
        status = q.status_by_task()
        tuned = [d for d in q.store.find_runs(q.runs("digits"), fields=["tuning"])
                 if d.get("tuning")]
        assert 1 <= len(tuned) <= 4  # a proposal equal to a finished run is not run again
        # 1 run here + 8 grid runs (the 9th is the run here: skipped as its duplicate)
        # + 1 rerun + the tuned trials; 1 torch run
        assert status["digits"] == {"COMPLETED": 10 + len(tuned)}
        assert status["digits_torch"] == {"COMPLETED": 1}
        reruns = [d for d in q.store.find_runs(q.runs("digits"), fields=["reproduces"])
                  if d.get("reproduces")]
        assert len(reruns) == 1
