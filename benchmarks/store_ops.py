"""Store operations per run: what one worker sends to the database for each run.

Runs a worker in this process with a pymongo command listener and counts every
command it sends, by command and collection, for `--small` and for `--large` no-op
runs in two fresh workers; the difference divided by (large - small) is the marginal
count per run (start-up work cancels out). The reference is the raw claim+finish
that `dispatch.py` measures. The figures feed the paper estimate in README.md
("Beyond one machine"). Counted on the embedded server: the claim path's pointer
window refill (one sorted read per 256 claims) is included, amortised.

An idle worker's commands per second, with 1 and with 8 slots, follow (`--idle S`:
the difference between idling S and 2S seconds, divided by S).

    python benchmarks/store_ops.py [--small 10] [--large 110] [--idle 5]
"""
from __future__ import annotations

import argparse
import collections
import logging

from _common import STUDY, TASKS, embedded_server, scratch_queue
from pymongo import monitoring

COUNTS: collections.Counter = collections.Counter()


class _Listener(monitoring.CommandListener):
    def started(self, event):
        if event.command_name in ("ping", "hello", "isMaster", "ismaster", "endSessions"):
            return
        coll = event.command.get(event.command_name)
        COUNTS[(event.command_name, coll if isinstance(coll, str) else "")] += 1

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


def count(uri: str, runs: int) -> collections.Counter:
    from hyperspace_explorer.worker import Worker

    with scratch_queue(uri, f"bench_ops_{runs}") as q:
        q.submit("noop", {}, seeds=runs, force=True)
        worker = Worker(TASKS, q.store.db_name, uri, study_dir=STUDY, max_runs=runs)
        COUNTS.clear()
        worker.run()
        worker.store.close()
        assert q.status()["COMPLETED"] == runs
        return collections.Counter(COUNTS)


def idle_count(uri: str, concurrency: int, seconds: float) -> int:
    """Commands a worker with `concurrency` slots sends over its life on an empty queue
    when it exits after `seconds` idle."""
    from hyperspace_explorer.worker import Worker

    with scratch_queue(uri, f"bench_ops_idle_{concurrency}") as q:
        worker = Worker(TASKS, q.store.db_name, uri, study_dir=STUDY, idle_exit=seconds,
                        concurrency=concurrency)
        COUNTS.clear()
        worker.run()
        worker.store.close()
        return sum(COUNTS.values())


def idle_rate(uri: str, concurrency: int, seconds: float) -> float:
    """Commands per second of an idle worker: marginal, between idling `seconds` and
    twice as long (start-up and exit cancel out)."""
    return (idle_count(uri, concurrency, 2 * seconds)
            - idle_count(uri, concurrency, seconds)) / seconds


def count_raw(uri: str, runs: int) -> collections.Counter:
    """The reference: claim (over the same task names) + finish through the store."""
    from hyperspace_explorer.status import COMPLETED
    from hyperspace_explorer.task import task_names

    with scratch_queue(uri, "bench_ops_raw") as q:
        db = q.store.db_name
        q.submit("noop", {}, seeds=runs + 1, force=True)
        names = task_names(TASKS)
        doc = q.store.claim(db, names, "raw", 60)  # builds the ready window
        q.store.finish(doc["_id"], doc["token"], COMPLETED, {})
        COUNTS.clear()
        for _ in range(runs):
            doc = q.store.claim(db, names, "raw", 60)
            q.store.finish(doc["_id"], doc["token"], COMPLETED, {"metrics": {"score": 1.0}})
        return collections.Counter(COUNTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--large", type=int, default=110)
    parser.add_argument("--idle", type=float, default=5.0, metavar="SECONDS",
                        help="also count what an idle worker sends per second (idling S "
                             "and 2S seconds), with 1 and with 8 slots (default "
                             "%(default)s; 0: skip)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    monitoring.register(_Listener())
    with embedded_server() as uri:
        small, large = count(uri, args.small), count(uri, args.large)
        raw = count_raw(uri, args.large - args.small)
    n = args.large - args.small
    raw_total = sum(raw.values()) / n
    per = {key: (large[key] - small.get(key, 0)) / n for key in large}
    print(f"database commands per no-op run (marginal, ({args.large} - {args.small}) runs):")
    for (name, coll), value in sorted(per.items(), key=lambda kv: -kv[1]):
        if value >= 0.005:
            print(f"  {value:6.2f}  {name:<16} {coll}")
    total = sum(per.values())
    print(f"  {total:6.2f}  in all; reference, a raw claim+finish through the store: "
          f"{raw_total:.2f} ({total / raw_total:.2f}x)")
    print("per worker and heartbeat (5 s), run or idle: lease renewal while running "
          "(findAndModify hse_queue + update hse_leases), worker heartbeat (update "
          "hse_workers); between runs: expired-lease scan (find hse_leases) and a sweep "
          "(find hse_queue + insert hse_done + delete hse_queue)")
    if args.idle > 0:
        with embedded_server() as uri:
            rates = {n: idle_rate(uri, n, args.idle) for n in (1, 8)}
        print(f"idle worker, empty queue, --interval 0.5 (marginal, {args.idle:g} s more): "
              f"{rates[1]:.1f} commands/s with --concurrency 1, {rates[8]:.1f}/s with 8 "
              f"({rates[8] / rates[1]:.2f}x: one poll per interval, whatever the slots)")


if __name__ == "__main__":
    main()
