"""Cost of logging metric points in a run, beside a bare Sacred run logging the same.

A worker sends each point to its parent as it is logged (so that a run stopped from
outside keeps its points) instead of queueing it for Sacred's next heartbeat. This
prints, on a private embedded server, the wall time of:

- a bare Sacred run + MongoObserver (lean settings: capture "sys", quiet logger) that
  logs `--points` points with `_run.log_scalar` (the reference);
- one worker's run of the test Study's toy scenario logging as many points with
  `self.log_scalar` (its start to its end, as the worker records them);

and the worker's ratio to the reference, then the same for a run logging no point
(what the two cost per run without points), so the difference is the points' cost.

    python benchmarks/metric_points.py [--points 100000]
"""
from __future__ import annotations

import argparse

from _common import embedded_server, ms, run_python, scratch_queue, span, wait_done, workers

BARE = """
import logging, time
from hyperspace_explorer.sacred_compat import import_sacred
import_sacred()
from sacred import Experiment, SETTINGS
from sacred.observers import MongoObserver
SETTINGS.CAPTURE_MODE = "sys"
ex = Experiment("bare")
ex.logger = logging.getLogger("quiet"); ex.logger.setLevel(40)
@ex.main
def main(_run):
    for step in range(POINTS):
        _run.log_scalar("loss", 1.0 / (step + 1), step)
    return 1.0
ex.observers.append(MongoObserver(url="URI", db_name="DB"))
t = time.perf_counter()
ex.run(options={"--id": ID})
print(time.perf_counter() - t)
"""


def bare_run(uri: str, db: str, points: int, run_id: int) -> float:
    code = BARE.replace("POINTS", str(points)).replace("URI", uri).replace("DB", db)
    return float(run_python(code.replace("ID", str(run_id))).strip().splitlines()[-1])


def worker_run(q, points: int) -> float:
    (run_id,) = q.submit("toy", {"model": {"className": "Linear"}, "epochs": points},
                         force=True)
    wait_done(q, [run_id])
    return span(q, [run_id])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=100_000)
    args = parser.parse_args()
    with embedded_server() as uri, scratch_queue(uri, "bench_points") as q, \
            workers(uri, q.store.db_name, 1):
        worker_run(q, 0)  # warm-up: the worker's first run builds the experiment
        bare_db = f"{q.store.db_name}_bare"
        try:
            rows = []
            for n, points in enumerate((args.points, 0)):
                bare = bare_run(uri, bare_db, points, 10 + n)
                ours = worker_run(q, points)
                rows.append((points, bare, ours))
        finally:
            q.store.client.drop_database(bare_db)
    print("metric points per run; worker vs a bare Sacred run (lean settings)")
    for points, bare, ours in rows:
        print(f"{points:>7} points: bare Sacred {ms(bare):>10}, worker run {ms(ours):>10}"
              f"  ({ours / bare:.2f}x)")
    (p, bare_p, ours_p), (_, bare_0, ours_0) = rows
    if p:
        print(f"per point, without the per-run cost: bare Sacred "
              f"{(bare_p - bare_0) / p * 1e6:.1f} us, worker {(ours_p - ours_0) / p * 1e6:.1f} us"
              f" ({(ours_p - ours_0) / max(bare_p - bare_0, 1e-9):.2f}x)")


if __name__ == "__main__":
    main()
