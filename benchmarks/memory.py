"""Worker memory: RSS of the worker parent process idle and after 1,000 runs, for each
entry point (`hyperspace_worker`, `hse worker` and the checkout's
`bin/hyperspace_worker.py`).

On a private embedded server, for each entry point: start a worker, give it one run,
let it go idle, read its RSS (/proc/PID/statm; the parent only, not its forked run
children); run `--runs` no-op runs, let it go idle again, read it again. The reference
is a bare interpreter that only imports what a worker imports (the worker module and
Sacred). Targets: idle <= 120 MB, growth < 5 MB over 1,000 runs.

    python benchmarks/memory.py [--runs 1000] [--idle 3]
"""
from __future__ import annotations

import argparse

from _common import (
    ENTRY_POINTS,
    embedded_server,
    noop_span,
    rss_mb,
    run_python,
    scratch_queue,
    settle,
    verdict,
    workers,
)

IDLE_MB, GROWTH_MB = 120.0, 5.0


def imports_only_mb() -> float:
    out = run_python("""
        import os, hyperspace_explorer.worker, hyperspace_explorer.execution
        pages = int(open(f"/proc/{os.getpid()}/statm").read().split()[1])
        print(pages * os.sysconf("SC_PAGE_SIZE") / 2**20)
    """)
    return float(out.strip().splitlines()[-1])


def worker_rss(uri: str, entry: str, runs: int, idle_s: float) -> tuple[float, float]:
    with scratch_queue(uri, "bench_memory") as q, \
            workers(uri, q.store.db_name, 1, entry=entry) as (proc,):
        noop_span(q, 1)
        settle(idle_s)
        idle = rss_mb(proc.pid)
        for start in range(0, runs, 250):  # a bounded queue, as in real use
            noop_span(q, min(250, runs - start))
        settle(idle_s)
        return idle, rss_mb(proc.pid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="default %(default)s")
    parser.add_argument("--idle", type=float, default=3.0,
                        help="seconds to let the worker go idle before reading (default "
                             "%(default)s)")
    args = parser.parse_args()
    base = imports_only_mb()
    print(f"reference: an interpreter that imports the worker and Sacred: {base:.1f} MB")
    with embedded_server() as uri:
        for entry in ENTRY_POINTS:
            idle, after = worker_rss(uri, entry, args.runs, args.idle)
            growth = after - idle
            print(f"{entry:>24}: idle {idle:.1f} MB ({idle / base:.2f}x the reference; "
                  f"target <= {IDLE_MB:g} MB: {verdict(idle, IDLE_MB)}); after {args.runs:,} "
                  f"runs {after:.1f} MB (growth {growth:+.1f} MB; target < {GROWTH_MB:g} MB: "
                  f"{verdict(growth, GROWTH_MB)})", flush=True)


if __name__ == "__main__":
    main()
