"""Dispatch: end-to-end no-op runs/s through real worker processes, beside the raw
claim+complete limit of the store.

On a private embedded server, for each worker count K (default 1, 2, 4, 8):
- reference: K client processes claim and finish no-op runs through the storage API
  directly (`Storage.claim` over the same task names + `Storage.finish`, a sweep every
  50), as fast as they can;
- measured: K `hyperspace_worker` processes execute the same number of no-op runs
  (claim, fork, Sacred record, lease, finish), after a warm-up;
and prints both rates and their ratio (target >= 0.3x).

    python benchmarks/dispatch.py [--workers 1,2,4,8] [--runs 300]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time

from _common import TASKS, embedded_server, noop_span, scratch_queue, verdict, workers

from hyperspace_explorer.status import COMPLETED
from hyperspace_explorer.storage import connect
from hyperspace_explorer.task import task_names

TARGET = 0.3


def _raw_client(uri: str, db: str, go: float, results) -> None:
    """One client process of the reference: claim+finish until the queue is empty."""
    store = connect(uri, db)
    me, names = f"raw-{os.getpid()}", task_names(TASKS)  # the claim a worker makes
    while time.time() < go:  # every client starts at the same moment
        time.sleep(0.001)
    done, first, last = 0, time.time(), time.time()
    while True:
        doc = store.claim(db, names, me, 60)
        if doc is None:
            break
        store.finish(doc["_id"], doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
        done += 1
        last = time.time()
        if done % 50 == 0:
            store.sweep_finished()
    store.sweep_finished()
    store.close()
    results.put((done, first, last))


def raw_rate(uri: str, k: int, runs: int) -> float:
    """Claim+finish cycles/s of `k` client processes sharing `runs` queued runs."""
    with scratch_queue(uri, f"bench_raw_{k}") as q:
        db = q.store.db_name
        q.submit("noop", {}, seeds=runs, force=True)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        go = time.time() + 3.0 + 0.5 * k  # after every client has started
        procs = [ctx.Process(target=_raw_client, args=(uri, db, go, results)) for _ in range(k)]
        for p in procs:
            p.start()
        try:
            rows = [results.get(timeout=600) for _ in procs]
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        assert sum(r[0] for r in rows) == runs, rows
        return runs / (max(r[2] for r in rows) - min(r[1] for r in rows))


def worker_rate(uri: str, k: int, runs: int) -> float:
    """No-op runs/s of `k` worker processes, first start to last end."""
    with scratch_queue(uri, f"bench_dispatch_{k}") as q, workers(uri, q.store.db_name, k):
        return runs / noop_span(q, runs, warm=2 * k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts (default %(default)s)")
    parser.add_argument("--runs", type=int, default=300, help="runs per figure (default %(default)s)")
    args = parser.parse_args()
    with embedded_server() as uri:
        print(f"no-op runs, {args.runs} per figure; {os.cpu_count()} CPU(s)")
        for k in (int(x) for x in args.workers.split(",")):
            raw = raw_rate(uri, k, args.runs)
            real = worker_rate(uri, k, args.runs)
            print(f"{k} worker(s): {real:6.1f} runs/s; raw claim+finish with {k} client(s): "
                  f"{raw:6.1f} /s; {real / raw:.2f}x (target >= {TARGET}x: "
                  f"{verdict(real / raw, TARGET, at_most=False)})", flush=True)


if __name__ == "__main__":
    main()
