"""How fast `hse ui` answers with 100,000 runs in the database, beside its reference.

On a private embedded server (nx-27017), fills a Study with `--runs` runs (90% COMPLETED
with metrics and 1% FAILED, archived; 9% QUEUED), then times, through the real
application (Starlette's in-process HTTP client, so the figures are the server's work):
the overview and its JSON twin, the runs list (first page, the middle page through
the previous page's "next" link, the last page, sorted by a metric, filtered by
status), and prints each as a ratio to one `q.status()` call (the reference: one count
of the Study's runs by status). The budget: every page a link leads to within
`--budget` times that reference (default 10x). The middle page typed as a number into
the URL (`?page=N`, no link leads there) is printed outside the budget. A plain read of every run's id is
printed too: what a page that loaded all runs would at least cost.

    python benchmarks/ui.py [--runs 100000] [--budget 10]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings
from urllib.parse import urlencode

from _common import STUDY, TASKS, embedded_server
from pymongo import MongoClient

from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.storage import new_run_id

REPEAT = 5


def fill(uri: str, db: str, n: int, spec: dict) -> None:
    """`n` runs of task `toy`, inserted directly (the queue's own documents)."""
    rng = random.Random(0)
    raw = MongoClient(uri)[db]
    queue, done = [], []
    for i in range(n):
        status = "QUEUED" if i % 100 < 9 else "FAILED" if i % 100 == 9 else "COMPLETED"
        doc = {"_id": new_run_id(), "study": db, "task": "toy", "task_spec": spec,
               "config": {"model": {"className": "Linear", "lr": [0.01, 0.1, 1.0][i % 3]},
                          "epochs": 3 + i % 5},
               "seed": i // 15, "status": status, "order": i, "priority": 0,
               "queued_at": 1.7e9 + i, "attempt": 0 if status == "QUEUED" else 1,
               "max_attempts": 3}
        if status != "QUEUED":
            doc.update(started_at=1.7e9 + i, ended_at=1.7e9 + i + 1, duration=1.0,
                       host="bench", sacred_id=i + 1)
        if status == "COMPLETED":
            doc["metrics"] = {"score": rng.random(), "draw": rng.random()}
        (queue if status == "QUEUED" else done).append(doc)
    for coll, docs in ((raw.hse_queue, queue), (raw.hse_done, done)):
        for i in range(0, len(docs), 5000):
            coll.insert_many(docs[i:i + 5000])


def best_of(fn) -> float:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) if len(times) < 3 else statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--budget", type=float, default=10.0,
                        help="allowed ratio of a page to one q.status() call")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

    from hyperspace_explorer.web.app import create_app

    with embedded_server() as uri:
        db = f"bench_ui_{args.runs}"
        with RunQueue(uri, db, TASKS, study_dir=STUDY) as q:
            try:
                t = time.perf_counter()
                fill(uri, db, args.runs, q.task("toy").to_doc())
                print(f"inserted {args.runs:,} runs in {time.perf_counter() - t:.1f} s")
                reference = best_of(lambda: q.status())
                print(f"reference: one q.status() call: {reference * 1000:.0f} ms")
                raw = MongoClient(uri)[db]
                everything = best_of(lambda: [list(c.find({}, {"_id": 1}))
                                              for c in (raw.hse_queue, raw.hse_done)])
                print(f"(a read of every run's id alone: {everything * 1000:.0f} ms, "
                      f"{everything / reference:.1f}x)")
                deep = max(1, args.runs // 50 // 2)
                last = max(1, -(-args.runs // 50))
                (middle,) = q.runs_page(offset=(deep - 1) * 50 - 1, limit=1, fields=["order"])
                after = urlencode({"page": deep, "after": json.dumps([middle["order"],
                                                                      middle["_id"]])})
                pages = {"overview /": "/", "overview JSON /api/": "/api/",
                         "runs, first page": "/runs",
                         f"runs, page {deep:,} by 'next'": f"/runs?{after}",
                         f"runs, last page ({last:,})": f"/runs?page={last}",
                         "runs sorted by score": "/runs?sort=metric:score",
                         "runs FAILED only": "/runs?status=FAILED",
                         "runs JSON /api/runs": "/api/runs"}
                worst = 0.0
                with TestClient(create_app(q), base_url="http://127.0.0.1:8765") as http:
                    for name, path in pages.items():
                        answer = http.get(path)
                        assert answer.status_code == 200, (path, answer.text[:300])
                        took = best_of(lambda: http.get(path))
                        worst = max(worst, took / reference)
                        print(f"{name:<32} {took * 1000:8.0f} ms  ({took / reference:5.1f}x "
                              f"q.status(); budget <= {args.budget:g}x)")
                    # Not a page any link leads to: the middle page typed as a number
                    # reads the sort keys of half the runs (the worst case of `skip`).
                    path = f"/runs?page={deep}"
                    took = best_of(lambda: http.get(path))
                    print(f"(runs, page {deep:,} typed into the URL: {took * 1000:.0f} ms, "
                          f"{took / reference:.1f}x; outside the budget: no link leads there)")
                verdict = "within" if worst <= args.budget else "OVER"
                print(f"worst page: {worst:.1f}x one q.status() call: {verdict} the budget "
                      f"of {args.budget:g}x")
            finally:
                q.store.drop_database()


if __name__ == "__main__":
    main()
