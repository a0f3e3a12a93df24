"""Latencies that tests check only functionally, each beside a reference measured in the
same run (tests assert no wall-clock limits; this script reports the figures).

- an unreachable MongoDB: `Store.connect(timeout_s=1)` failing, beside pymongo's own
  ping failing with serverSelectionTimeoutMS=1000;
- a malformed URI: `Store.connect` failing, beside `pymongo.MongoClient` rejecting it;
- `RunQueue.wait(timeout=0.3)` on runs nobody executes, beside the 0.3 s asked for;
- a worker (heartbeat 0.1 s) ending a run past `max_runtime=0.3`, from the run's start to
  TIMEOUT, and stopping a running run, from `cancel()` to CANCELLED, beside the wall
  time of a no-op run through the same worker (submit to COMPLETED);
- `summarize` of 10,000 runs, beside a pandas groupby mean/std of the same frame;
- idle pickup: submit -> `started_at` on an idle worker (default polling interval),
  worst of `--samples`, each submitted at a random phase of its polling (target < 1 s),
  beside the polling interval (an idle worker looks at the queue that often).

    python benchmarks/latency.py [--samples 8]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

import pymongo
import pymongo.errors
from _common import embedded_server, noop_span, scratch_queue, settle, verdict, wait_done, workers

from hyperspace_explorer.errors import StoreError
from hyperspace_explorer.storage import connect

UNREACHABLE = "mongodb://bob:hunter2@127.0.0.1:1"
SLEEP = {"model": {"className": "Linear"}, "behaviour": "sleep", "duration": 60.0}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _expect(exc_type, fn):
    def run():
        try:
            fn()
        except exc_type:
            return
        raise AssertionError(f"{fn} did not raise {exc_type.__name__}")
    return run


def _ping_unreachable():
    with pymongo.MongoClient(UNREACHABLE, serverSelectionTimeoutMS=1000) as client:
        client.admin.command("ping")


def row(what: str, seconds: float, ref_what: str, ref: float) -> None:
    print(f"{what:<48} {seconds * 1000:8.1f} ms   {ref_what}: {ref * 1000:7.1f} ms "
          f"({seconds / ref:5.2f}x)")


def until(predicate, timeout: float = 120.0, every: float = 0.01) -> float:
    """Poll until `predicate()`; returns the time it took."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("timed out")
        time.sleep(every)  # polling interval of a measurement
    return time.perf_counter() - start


def worker_latencies(uri: str) -> None:
    with scratch_queue(uri, "bench_latency") as q, workers(
            uri, q.store.db_name, 1, "--interval", "0.01", "--heartbeat", "0.1", "--lease", "1"):
        _worker_latencies(q)


def _worker_latencies(q) -> None:
    status = lambda run_id: q.get(run_id)["status"]  # noqa: E731
    (warm,) = q.submit("noop", {}, seeds=[0])  # the worker is up and warm
    until(lambda: status(warm) == "COMPLETED")
    noop = []
    for seed in range(1, 6):
        start = time.perf_counter()
        (run_id,) = q.submit("noop", {}, seeds=[seed])
        until(lambda: status(run_id) == "COMPLETED")
        noop.append(time.perf_counter() - start)
    reference = statistics.median(noop)
    (slow,) = q.submit("toy", SLEEP, max_runtime=0.3)
    until(lambda: status(slow) == "RUNNING")
    over = until(lambda: status(slow) == "TIMEOUT")
    row("max_runtime=0.3 s: RUNNING seen -> TIMEOUT", over,
        "no-op run, submit -> COMPLETED", reference)
    (doomed,) = q.submit("toy", SLEEP)
    until(lambda: status(doomed) == "RUNNING")
    start = time.perf_counter()
    q.cancel([doomed])
    until(lambda: status(doomed) == "CANCELLED")
    row("cancel() of a running run -> CANCELLED", time.perf_counter() - start,
        "no-op run, submit -> COMPLETED", reference)


def wait_timeout(uri: str) -> None:
    with scratch_queue(uri, "bench_latency_wait") as q:
        ids = q.submit("noop", {}, seeds=2)
        seconds = timed(_expect(TimeoutError,
                                lambda: q.wait(ids, timeout=0.3, poll=0.05, progress=False)))
        print(f"{'RunQueue.wait(timeout=0.3) on idle runs':<48} {seconds * 1000:8.0f} ms   "
              f"asked for: {300:7.0f} ms ({seconds / 0.3:5.2f}x)")


PICKUP_TARGET_S = 1.0
INTERVAL_S = 0.5  # the worker's default --interval


def idle_pickup(uri: str, samples: int) -> None:
    with scratch_queue(uri, "bench_pickup") as q, workers(uri, q.store.db_name, 1):
        noop_span(q, 1)  # up and warm
        latencies = []
        for _ in range(samples):
            settle(1.0 + random.uniform(0, INTERVAL_S))  # idle, at a random phase
            t = time.time()
            (run_id,) = q.submit("noop", {}, force=True)
            wait_done(q, [run_id], poll=0.05)
            latencies.append(q.get(run_id)["started_at"] - t)
    worst = max(latencies)
    print(f"{f'idle pickup, submit -> started, worst of {samples}':<48} {worst * 1000:8.1f} ms   "
          f"polling interval: {INTERVAL_S * 1000:7.1f} ms ({worst / INTERVAL_S:5.2f}x); "
          f"target < {PICKUP_TARGET_S:g} s: {verdict(worst, PICKUP_TARGET_S)}")
    print("  each (ms):", ", ".join(f"{x * 1000:.0f}" for x in latencies))


def summary_speed() -> None:
    from summary_bench import synthetic_results

    from hyperspace_explorer.analysis import summarize

    df = synthetic_results(10_000)
    summarize(df, "accuracy")  # warm-up (imports, caches)
    config = [c for c in df.columns if c.startswith("config.")]
    keyed = df.assign(**{c: df[c].astype(str) for c in config})
    ref = min(timed(lambda: keyed.groupby(config)["metrics.accuracy"].agg(["mean", "std"]))
              for _ in range(3))
    seconds = min(timed(lambda: summarize(df, "accuracy")) for _ in range(3))
    row("summarize 10,000 runs (best of 3)", seconds, "pandas groupby mean/std", ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8,
                        help="idle pickups measured (default %(default)s)")
    args = parser.parse_args()
    ref = timed(_expect(pymongo.errors.PyMongoError, _ping_unreachable))
    row("storage.connect(unreachable, timeout_s=1) fails",
        timed(_expect(StoreError, lambda: connect(UNREACHABLE, "x", timeout_s=1))),
        "pymongo ping, 1 s selection timeout", ref)
    bad = "mongodb://bob:hunter2@host:notaport"
    row("storage.connect(malformed URI) fails",
        timed(_expect(StoreError, lambda: connect(bad, "x", timeout_s=1))),
        "pymongo.MongoClient(malformed URI)",
        timed(_expect(Exception, lambda: pymongo.MongoClient(bad, connect=False))))
    summary_speed()
    with embedded_server() as uri:
        wait_timeout(uri)
        worker_latencies(uri)
        idle_pickup(uri, args.samples)


if __name__ == "__main__":
    main()
