"""Time a summary of 10,000 stored runs of one task, read from the database.

Builds a database on a private embedded server whose `hse_done` holds `--runs`
finished runs shaped as workers store them (500 configurations x 20 seeds of the
test Study's `toy` task), then times `RunQueue.results` (read + flatten + complete
configs with today's defaults), `RunQueue.summary` and the LaTeX export.

    python benchmarks/results_db_bench.py [--runs 10000]
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hyperspace_explorer.export import to_latex  # noqa: E402
from hyperspace_explorer.queue import RunQueue  # noqa: E402
from hyperspace_explorer.server import EmbeddedServer  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from hyperspace_explorer.status import COMPLETED  # noqa: E402
from hyperspace_explorer.storage import new_run_id  # noqa: E402
from hyperspace_explorer.task import load_task  # noqa: E402

STUDY = ROOT / "tests" / "study"


def build(q: RunQueue, runs: int, seeds: int = 20) -> None:
    task = load_task(STUDY / "tasks", "toy")
    rng = random.Random(0)
    docs = []
    for i in range(runs):
        cfg, seed = i % (runs // seeds), i // (runs // seeds)
        model = ({"className": "Linear", "lr": 10 ** -(cfg % 5), "layers": [8, cfg % 7]}
                 if cfg % 2 else {"className": "Forest", "n_trees": 10 + cfg, "depth": None})
        config = {"model": model, "epochs": cfg % 10, "noise": 0.0,
                  "options": {"verbose": False}, "behaviour": "ok", "duration": 0.0}
        t = 1.7e9 + i
        docs.append({"_id": new_run_id(), "study": q.study, "task": "toy",
                     "task_spec": task.to_doc(), "config": config, "config_given": config,
                     "seed": 100 + seed, "priority": 0, "max_attempts": 3, "order": i,
                     "status": COMPLETED, "attempt": 1, "queued_at": t, "started_at": t + 1,
                     "ended_at": t + 2, "duration": 1.0, "host": "bench", "sacred_id": i + 1,
                     "metrics": {"score": rng.gauss(0.5 + cfg / runs, 0.05),
                                 "draw": rng.random(), "loss": rng.random()},
                     "code_version": {"commit": "0" * 40, "dirty": False, "url": None}})
    for i in range(0, runs, 2000):
        MongoClient(q.store.uri)[q.store.db_name].hse_done.insert_many(docs[i:i + 2000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp)) as server:
        q = RunQueue(server.uri, "bench_results", STUDY / "tasks", study_dir=STUDY)
        t = time.perf_counter()
        build(q, args.runs)
        print(f"stored {args.runs} finished runs in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        frame = q.results("toy")
        read = time.perf_counter() - t
        t = time.perf_counter()
        summary = q.summary("toy")
        total = time.perf_counter() - t
        t = time.perf_counter()
        to_latex(summary)
        latex = time.perf_counter() - t
        print(f"results frame ({len(frame)} rows x {frame.shape[1]} columns): {read:.2f}s")
        print(f"summary over seeds ({len(summary)} groups), read included: {total:.2f}s "
              f"(target: a few seconds at most)")
        print(f"LaTeX export: {latex:.3f}s")


if __name__ == "__main__":
    main()
