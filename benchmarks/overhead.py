"""Per-run overhead of one worker, beside bare Sacred runs of the same no-op.

On a private embedded server, prints the wall time per no-op run of:
- a bare Sacred run + MongoObserver with Sacred's DEFAULT settings (CAPTURE_MODE "fd",
  host info with CPU/GPU, sources saved): the reference (target <= 1.2x);
- a bare Sacred run with the lean settings the worker itself uses (CAPTURE_MODE "sys",
  quiet logger): the baseline the worker was first compared with;
- one `hyperspace_worker` executing runs back to back (claim, fill defaults, fork,
  Sacred record through the parent, lease, finish), first start to last end;
and the worker's ratio to each.

`--profile FILE` also runs one worker under cProfile for `--runs` runs (it exits
through --max-runs) and prints where the worker parent spends its time per run.

    python benchmarks/overhead.py [--runs 300] [--bare 100] [--profile worker.prof]
"""
from __future__ import annotations

import argparse
import pstats
import sys

from _common import STUDY, TASKS, bare_sacred, embedded_server, ms, noop_span, scratch_queue, verdict, workers

TARGET = 1.2


def worker_per_run(uri: str, runs: int) -> float:
    with scratch_queue(uri, "bench_overhead") as q, workers(uri, q.store.db_name, 1):
        return noop_span(q, runs, warm=3) / runs


def profile_worker(uri: str, runs: int, out: str) -> None:
    """One worker under cProfile for `runs` queued no-op runs; prints the top entries."""
    import subprocess

    with scratch_queue(uri, "bench_profile") as q:
        q.submit("noop", {}, seeds=runs, force=True)
        subprocess.run([sys.executable, "-m", "cProfile", "-o", out, "-m",
                        "hyperspace_explorer.worker", str(TASKS), q.store.db_name,
                        "--mongo-uri", uri, "--study-dir", str(STUDY), "--max-runs", str(runs)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=STUDY,
                       timeout=600, check=True)
    print(f"\nworker parent under cProfile, {runs} runs (cumulative, top 30; {out}):")
    pstats.Stats(out).sort_stats("cumulative").print_stats(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="worker runs (default %(default)s)")
    parser.add_argument("--bare", type=int, default=100,
                        help="bare Sacred runs per baseline (default %(default)s)")
    parser.add_argument("--profile", metavar="FILE", help="also profile one worker")
    args = parser.parse_args()
    with embedded_server() as uri:
        default = bare_sacred(uri, args.bare, lean=False)
        lean = bare_sacred(uri, args.bare, lean=True)
        worker = worker_per_run(uri, args.runs)
        print(f"bare Sacred run, DEFAULT settings (reference): {ms(default)}/run")
        print(f"bare Sacred run, lean settings (capture 'sys'):  {ms(lean)}/run "
              f"({lean / default:.2f}x the default)")
        print(f"one worker, per run:                           {ms(worker)}/run")
        print(f"  vs bare Sacred DEFAULT: {worker / default:.2f}x "
              f"(target <= {TARGET}x: {verdict(worker / default, TARGET)})")
        print(f"  vs bare Sacred lean:    {worker / lean:.2f}x")
        if args.profile:
            profile_worker(uri, args.runs, args.profile)


if __name__ == "__main__":
    main()
