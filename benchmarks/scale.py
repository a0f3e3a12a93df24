"""What the queue costs as it grows, each figure beside its reference in the same run.

On a private embedded server (nx-27017), prints:
- claim + finish with 1k / 10k / 100k runs QUEUED, and with 1k / 100k runs finished,
  as ratios to the 1k-queued figure (target <= 1.5x);
- `submit_grid` of N configs vs a raw `insert_many` of the same documents into the
  queue collection with the indexes the store keeps on it (target <= 1.5x; the best of
  `--grid-repeat` rounds of each, 2 by default, each in a fresh database); the same
  insert into a bare collection without them, the same grid submitted again (every run
  a duplicate) and a grid of N / 100 configs beside the N runs are printed for
  information;
- `q.results()` + `q.summary()` over 10k and 100k finished runs (targets: < 1.5 s and
  < 10 s).

    python benchmarks/scale.py [--sizes 1000,10000,100000] [--grid 100000] [--grid-repeat 2]
                               [--results 10000,100000]
"""
from __future__ import annotations

import argparse
import os
import random
import time
import warnings
from typing import Any

from pymongo import MongoClient

from _common import STUDY, TASKS, embedded_server

from hyperspace_explorer.queue import RunQueue
from hyperspace_explorer.status import COMPLETED
from hyperspace_explorer.storage import bulk_objects, connect, new_run_id

CLAIMS = 200  # claim+finish cycles timed per figure


def _raw(uri: str, db: str):
    return MongoClient(uri)[db]


def _queue_docs(study: str, n: int, status: str = "QUEUED") -> list[dict]:
    base = {"study": study, "task": "noop", "task_spec": {"name": "noop"}, "config": {},
            "seed": 0, "priority": 0, "max_attempts": 3, "max_runtime": None,
            "status": status, "attempt": 0}
    return [{**base, "_id": new_run_id(), "order": i, "priority": random.choice([0, 0, 1])}
            for i in range(n)]


def claim_finish(uri: str, queued: int, finished: int) -> float:
    """Seconds per claim+finish with `queued` runs waiting and `finished` archived."""
    db = f"bench_scale_{queued}_{finished}_{os.getpid()}"
    store = connect(uri, db)
    raw = _raw(uri, db)
    try:
        for docs, coll in ((_queue_docs(db, queued), raw.hse_queue),
                           (_queue_docs(db, finished, COMPLETED), raw.hse_done)):
            for i in range(0, len(docs), 5000):
                coll.insert_many(docs[i:i + 5000])
        store.enqueue(_queue_docs(db, CLAIMS + 1))  # the runs claimed below
        store.claim(db, ["noop"], "bench", 60)  # builds the ready window once
        t = time.perf_counter()
        for _ in range(CLAIMS):
            doc = store.claim(db, ["noop"], "bench", 60)
            store.finish(doc["_id"], doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
            if _ % 50 == 49:
                store.sweep_finished()
        return (time.perf_counter() - t) / CLAIMS
    finally:
        store.drop_database()
        store.close()


def submit_vs_insert(uri: str, n: int, repeat: int) -> dict[str, Any]:
    """Seconds for `submit_grid` of n configs into an empty task, and for inserting the
    same documents into the queue collection as the store keeps it (its indexes: claim
    order, duplicate detection, the web page's sorts), which is the store's own limit:
    `repeat` rounds of both, each in a fresh database (the server's own speed moves by
    a fifth from one 100k insert to the next here). For information, from the first
    round: the same insert into a bare collection without those indexes, the same grid
    submitted again (every run a duplicate: the task's runs are read whole) and a grid
    of n / 100 configs beside the n runs (its fingerprints looked up, since the task
    holds more runs than it has)."""
    db = f"bench_submit_{os.getpid()}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    raw = _raw(uri, db)
    base = {"model": {"className": "Linear"}}
    grid = {"model.lr": [i / n for i in range(n)]}
    out: dict[str, Any] = {"submit": [], "insert": []}

    def submit(configs: dict[str, list[float]]) -> tuple[list[str], float]:
        t = time.perf_counter()
        ids = q.submit_grid("toy", base, configs, progress=False)
        return ids, time.perf_counter() - t

    def insert(docs: list[dict[str, Any]], indexed: bool) -> float:
        q.store.drop_database()
        if indexed:
            q.store.ensure_indexes()
        with bulk_objects():  # as submit_grid does: Python's collector not in the figure
            t = time.perf_counter()
            for i in range(0, n, 5000):
                raw.hse_queue.insert_many(docs[i:i + 5000])
            return time.perf_counter() - t

    try:
        for round_ in range(repeat):
            q.store.drop_database()
            q.store.ensure_indexes()  # as a RunQueue finds a new database
            ids, took = submit(grid)
            assert len(ids) == n
            out["submit"].append(took)
            docs = list(raw.hse_queue.find({}))  # the documents it queued
            if round_ == 0:
                again, out["again"] = submit(grid)
                assert again == []
                beside = {"model.lr": [1 + i / n for i in range(max(n // 100, 1))]}
                ids, out["looked_up"] = submit(beside)
                assert len(ids) == len(beside["model.lr"])
                out["bare"] = insert(docs, indexed=False)
            out["insert"].append(insert(docs, indexed=True))
        return out
    finally:
        q.store.drop_database()
        q.close()


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) + " s"


def results_summary(uri: str, n: int) -> tuple[float, float]:
    """Seconds for q.results() + q.summary() over n finished runs of a task, archived
    the way every run is (the queue's sweep, which also packs their results); and for
    the first results() after the packs were lost (runs archived by another client or
    an older version: the archive is read whole and packed again)."""
    db = f"bench_results_{n}_{os.getpid()}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    try:
        spec = q.task("toy").to_doc()
        rng = random.Random(0)
        docs = []
        for i in range(n):
            config = {"model": {"className": "Linear", "lr": [0.01, 0.1, 1.0][i % 3],
                                "layers": [8]}, "epochs": 3 + i % 5, "noise": 0.0,
                      "options": {"verbose": False}, "behaviour": "ok", "duration": 0.0}
            docs.append({"_id": new_run_id(), "study": db, "task": "toy", "task_spec": spec,
                         "config": config, "seed": i // 15, "status": COMPLETED,
                         "metrics": {"score": rng.random(), "draw": rng.random()},
                         "queued_at": 1.7e9 + i, "started_at": 1.7e9 + i,
                         "ended_at": 1.7e9 + i + 1, "duration": 1.0, "attempt": 1,
                         "order": i, "sacred_id": i + 1, "host": "bench",
                         "code_version": {"commit": "0" * 40, "dirty": False}})
        raw = _raw(uri, db)
        for i in range(0, n, 5000):
            raw.hse_queue.insert_many(docs[i:i + 5000])
            while q.store.sweep_finished(limit=5000, everything=True):
                pass
        import pandas  # noqa: F401 - a notebook has imported them already: not measured
        import scipy.stats  # noqa: F401
        t = time.perf_counter()
        list(raw.hse_done.find({"task": "toy"}, {"config": 1, "metrics": 1, "seed": 1}))
        read = time.perf_counter() - t
        print(f"  (reference: a plain pymongo read of the {n:,} runs' config, metrics and "
              f"seed takes {read:.2f} s)")
        t = time.perf_counter()
        frame = q.results("toy")
        q.summary("toy")
        assert len(frame) == n
        took = time.perf_counter() - t
        raw.hse_packs.drop()
        with RunQueue(uri, db, TASKS, study_dir=STUDY) as fresh:
            t = time.perf_counter()
            assert len(fresh.results("toy")) == n
            cold = time.perf_counter() - t
        return took, cold
    finally:
        q.store.drop_database()
        q.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--grid", type=int, default=100_000)
    parser.add_argument("--grid-repeat", type=int, default=2,
                        help="rounds of submit_grid and of the raw insert (best of each)")
    parser.add_argument("--results", default="10000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    warnings.simplefilter("ignore")
    with embedded_server() as uri:
        base = claim_finish(uri, sizes[0], 0)
        print(f"claim+finish with {sizes[0]:>7,} queued: {base * 1000:6.2f} ms (reference)")
        for n in sizes[1:]:
            cost = claim_finish(uri, n, 0)
            print(f"claim+finish with {n:>7,} queued: {cost * 1000:6.2f} ms "
                  f"({cost / base:.2f}x; target <= 1.5x)")
        for n in (sizes[0], sizes[-1]):
            cost = claim_finish(uri, 0, n)
            print(f"claim+finish with {n:>7,} finished: {cost * 1000:6.2f} ms "
                  f"({cost / base:.2f}x; target <= 1.5x)")
        if args.grid:
            got = submit_vs_insert(uri, args.grid, args.grid_repeat)
            submit, insert = min(got["submit"]), min(got["insert"])
            print(f"submit_grid of {args.grid:,} configs: {submit:.1f} s; raw insert_many "
                  f"of the same documents into the indexed queue: {insert:.1f} s "
                  f"({submit / insert:.2f}x; target <= 1.5x; best of {args.grid_repeat} "
                  f"each, all: {_seconds(got['submit'])} and {_seconds(got['insert'])})")
            print(f"  (into a bare collection without the queue's indexes: "
                  f"{got['bare']:.1f} s; {submit / got['bare']:.2f}x)")
            print(f"  (the same grid again, every run a duplicate, nothing queued: "
                  f"{got['again']:.1f} s; {max(args.grid // 100, 1):,} new configs beside "
                  f"the {args.grid:,} runs, looked up: {got['looked_up']:.2f} s)")
        for n in (int(x) for x in args.results.split(",") if x):
            took, cold = results_summary(uri, n)
            target = 1.5 if n <= 10_000 else 10.0
            print(f"results() + summary() over {n:,} finished runs: {took:.2f} s "
                  f"(target < {target:g} s)")
            print(f"  (first results() after their packs were lost, packing them again: "
                  f"{cold:.2f} s)")


if __name__ == "__main__":
    main()
