"""The example Study's digits runs under a worker, beside the same `single_run` calls
in a plain loop in one process.

The example Study is `hyperspace_explorer/examples/digits/scenarios.py` with its task
`tasks/digits.json` beside it (in a checkout, `examples/digits_study/scenarios.py` and
`tasks/digits.json` link to them). For a grid of configs x seeds (logistic regressions and random
forests, each run a fraction of a second), prints:
- reference: a fresh process that loads the Study and calls `single_run` for each
  (config, seed) in turn, with the config completed and the seed set as a worker does
  (imports not counted);
- measured: one `hyperspace_worker` executing the same runs, first start to last end;
and the worker's extra time in percent (target <= +5%). `--repeat R` measures R pairs,
the loop first in even pairs and the worker first in odd ones (so that a machine
getting slower or faster during the benchmark favours neither side), and the target is
judged on the median of the R ratios of the worker's time to the loop's in each pair.
It also prints the fastest of each side, compared: on a shared machine whose speed
swings by 1.5-2x for seconds at a time (see benchmarks/README, "Noise"), that figure
moved from -15.9% to +22.5% between passes of the same code with R = 6, while the
median of 20 pairs was +3.4%, the time the worker spends outside the runs.

`--blas-threads N` sets the thread variables (`worker.THREAD_VARIABLES`) for both sides (default: left as
the environment has them, as a user would run). The loop keeps OpenBLAS's spin after each
call (about 0.1 s) unless the environment sets `OPENBLAS_THREAD_TIMEOUT`; the worker's runs
get the worker's own setting (`worker.OPENBLAS_SPIN`), as any worker's runs do.

`--concurrency N` runs N runs at once in each worker; above 1 it also measures the same
workers with `--threads-per-run` set to the CPU count, each run then starting a thread
pool as large as the machine (what workers did before they sized the pools to the
CPUs / N), and prints the ratio.

`--cpu` also prints the CPU time per run of each process involved: the loop's process
beside the runs' processes under the worker, the worker itself and the database server
(the workers then get one warm-up run first, not counted), and how long the run's own
thread waited for a CPU (runnable, not running: /proc/PID/schedstat), in the loop and in
the worker's runner. On a machine with few cores, what the worker and the server spend
is taken from the runs.

With one worker it also prints how much of the worker's time falls outside the runs
(first start to last end, less each run's Sacred start -> stop): what the worker itself
adds between runs, apart from the runs' own slowdown (CPU shared with the worker and
the server, on 2 cores). And each run's best (and median) time of the `--repeat`
measurements, summed, on both sides (in the loop: building the Scenario, completing the config and
`single_run`; under the worker: the run's Sacred start -> stop, the first two being
done before it), alone and with the least time the worker spent outside the runs: a
spell of noise then costs only the runs it covers, where it moves a whole
measurement's best. `--timeline` prints where a run's time goes under the worker
(from the queue documents and the Sacred records).

    python benchmarks/digits.py [--seeds 3] [--repeat 20] [--workers 1] [--blas-threads 1]
                                [--timeline] [--concurrency 2] [--cpu]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics

from _common import (
    DIGITS_STUDY,
    DIGITS_TASKS,
    cpu_seconds,
    embedded_server,
    run_python,
    runners_cpu_wait,
    scratch_queue,
    server_pid,
    span,
    verdict,
    wait_done,
    workers,
)

from hyperspace_explorer.worker import THREAD_VARIABLES, usable_cpus

TARGET_PCT = 5.0
CONFIGS = [{"model": {"className": "LogisticModel", "C": c}} for c in (0.1, 1.0, 10.0)] + [
    {"model": {"className": "ForestModel", "n_estimators": n},
     "preprocessing": {"className": "NoScaling"}} for n in (20, 50)]

LOOP = """
import json, sys, time
from hyperspace_explorer.configurable import resolve_class
from hyperspace_explorer.scenario import Scenario, normalize_metrics, seed_everything
from hyperspace_explorer.study import load_scenarios
from hyperspace_explorer.task import load_task

load_scenarios(STUDY)
task = load_task(TASKS, "digits")
cls = resolve_class(Scenario, task.scenario_class_name, "Scenario")
runs = json.loads(RUNS)


def waited():  # seconds this thread was runnable but waiting for a CPU
    with open("/proc/thread-self/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


t, cpu, wait = time.perf_counter(), time.process_time(), waited()
each = []
for conf, seed in runs:
    scenario = cls.from_config(task.scenario, "Scenario")
    scenario.run_seed = seed
    params = cls.complete_run_config(conf)
    seed_everything(seed)
    normalize_metrics(scenario.single_run(params), task.metric)
    each.append(time.perf_counter())
print(json.dumps([b - a for a, b in zip([t] + each, each)]))
print(time.perf_counter() - t, time.process_time() - cpu, waited() - wait)
"""


def loop_seconds(runs: list[tuple[dict, int]]) -> tuple[float, float, float, list[float]]:
    """Wall and CPU seconds (all threads of its process) of the plain loop, the
    seconds its thread waited for a CPU, and each run's seconds."""
    code = (LOOP.replace("STUDY", repr(str(DIGITS_STUDY))).replace("TASKS", repr(str(DIGITS_TASKS)))
            .replace("RUNS", repr(json.dumps(runs))))
    *_, each, totals = run_python(code, cwd=DIGITS_STUDY).strip().splitlines()
    wall, cpu, wait = totals.split()
    return float(wall), float(cpu), float(wait), json.loads(each)


def run_times(q, ids: list[str]) -> list[tuple[float, float, float, float]]:
    """(started_at, Sacred start, Sacred stop, ended_at) of each run, in the order of
    `ids`."""
    out = []
    for doc in (q.get(i) for i in ids):
        record = q.store.sacred_run(doc["sacred_id"])
        out.append((doc["started_at"], record["start_time"].timestamp(),
                    record["stop_time"].timestamp(), doc["ended_at"]))
    return out


def timeline(times: list[tuple[float, float, float, float]]) -> str:
    """Where a run's time goes under the worker (means): its start in the queue ->
    Sacred start -> Sacred stop -> the next run's Sacred start (what lies between two
    runs), and Sacred stop -> its outcome written (off that path)."""
    times = sorted(times)
    parts: dict[str, list[float]] = {"start -> Sacred start": [], "Sacred start -> stop": [],
                                     "stop -> next run's Sacred start": [],
                                     "stop -> outcome written": []}
    for i, (started, start, stop, ended) in enumerate(times):
        parts["start -> Sacred start"].append(start - started)
        parts["Sacred start -> stop"].append(stop - start)
        parts["stop -> outcome written"].append(ended - stop)
        if i + 1 < len(times):
            parts["stop -> next run's Sacred start"].append(times[i + 1][1] - stop)
    gaps = parts["stop -> next run's Sacred start"]
    outside = (f"; outside the runs: the first run's start -> Sacred start "
               f"{parts['start -> Sacred start'][0] * 1000:.1f} ms, {len(gaps)} gaps between "
               f"runs {sum(gaps) * 1000:.1f} ms (median {statistics.median(gaps) * 1000:.2f} ms), "
               f"the last run's stop -> outcome written "
               f"{parts['stop -> outcome written'][-1] * 1000:.1f} ms" if gaps else "")
    return "; ".join(f"{name} {statistics.mean(xs) * 1000:.0f} ms"
                     for name, xs in parts.items() if xs) + outside


def worker_seconds(uri: str, seeds: int, k: int, attempt: int, show_timeline: bool = False,
                   extra: tuple[str, ...] = (), cpu: dict[str, list[float]] | None = None
                   ) -> tuple[float, float, list[float]]:
    """Seconds from the first start to the last end, how much of it falls outside
    the runs' Sacred start -> stop, and each run's Sacred start -> stop, in submission
    order (meaningful with one worker running one run at a time); `extra`: options of
    the workers. With `cpu`, the workers first run one
    warm-up run, and the CPU seconds the runs then cost each process are appended to
    `cpu["server"]`, `cpu["workers"]` (without their runners) and `cpu["runs"]` (the
    runners), and the seconds the runners' own threads waited for a CPU to
    `cpu["waits"]`."""
    with scratch_queue(uri, f"bench_digits_{attempt}", DIGITS_STUDY, DIGITS_TASKS) as q, \
            workers(uri, q.store.db_name, k, *extra, study=DIGITS_STUDY,
                    tasks=DIGITS_TASKS) as procs:
        if cpu is not None:
            wait_done(q, q.submit("digits", CONFIGS[0], seeds=k, force=True), poll=0.2)
            before = _cpu_split([p.pid for p in procs])
        waiting = (runners_cpu_wait([p.pid for p in procs]) if cpu is not None
                   else contextlib.nullcontext([0.0]))
        with waiting as waited:
            ids = [i for conf in CONFIGS
                   for i in q.submit("digits", conf, seeds=seeds, force=True)]
            wait_done(q, ids, poll=1.0)
        if cpu is not None:
            for name, after in _cpu_split([p.pid for p in procs]).items():
                cpu.setdefault(name, []).append(after - before[name])
            cpu.setdefault("waits", []).append(waited[0])
        times = run_times(q, ids)
        if show_timeline:
            print(f"  timeline, worker attempt {attempt + 1} (means): {timeline(times)}")
        total = span(q, ids)
        each = [stop - start for _, start, stop, _ in times]
        return total, total - sum(each), each


def _cpu_split(pids: list[int]) -> dict[str, float]:
    """CPU seconds so far of the server, of the workers `pids` alone and of their runners."""
    trees = sum(cpu_seconds(pid) for pid in pids)
    own = sum(cpu_seconds(pid, descendants=False) for pid in pids)
    return {"server": cpu_seconds(server_pid()), "workers": own, "runs": trees - own}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per config (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=20,
                        help="pairs of measurements (loop, worker), each pair in turn loop "
                             "first or worker first; the target is judged on the median of "
                             "the pairs' ratios (default %(default)s: on a shared machine one "
                             "pair's ratio moves by 10%% or more)")
    parser.add_argument("--workers", type=int, default=1,
                        help="workers (the loop is always one process; default %(default)s)")
    parser.add_argument("--timeline", action="store_true",
                        help="also print where a run's time goes under the worker")
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="threads of the BLAS / OpenMP pools, both sides")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="runs at once per worker (default %(default)s)")
    parser.add_argument("--cpu", action="store_true",
                        help="also print the CPU time per run of each process involved")
    args = parser.parse_args()
    if args.blas_threads is not None:  # inherited by the loop's process and the workers
        os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(args.blas_threads)))
    runs = [(conf, seed) for conf in CONFIGS for seed in range(args.seeds)]  # task seed 0
    loops, under, whole = [], [], []
    cpu: dict[str, list[float]] | None = {} if args.cpu else None
    concurrent = ("--concurrency", str(args.concurrency))
    whole_pools = (*concurrent, "--threads-per-run", str(usable_cpus()))
    with embedded_server() as uri:
        for attempt in range(args.repeat):
            if attempt % 2 == 0:
                loops.append(loop_seconds(runs))
            under.append(worker_seconds(uri, args.seeds, args.workers, attempt, args.timeline,
                                        concurrent, cpu))
            if args.concurrency > 1:
                whole.append(worker_seconds(uri, args.seeds, args.workers, attempt,
                                            extra=whole_pools)[0])
            if attempt % 2 == 1:
                loops.append(loop_seconds(runs))
    (loop, *_), (worker, outside, _) = min(loops), min(under)
    extra = (worker / loop - 1) * 100
    paired = statistics.median(w[0] / lp[0] - 1 for lp, w in zip(loops, under)) * 100
    threads = "default" if args.blas_threads is None else args.blas_threads
    print(f"{len(runs)} digits runs ({len(CONFIGS)} configs x {args.seeds} seeds), "
          f"{args.repeat} pair(s) of measurements, best of each side, BLAS threads: {threads}:")
    print(f"  plain loop of single_run in one process (reference): {loop:.2f} s "
          f"({loop / len(runs) * 1000:.0f} ms/run; all: {', '.join(f'{x[0]:.2f}' for x in loops)})")
    at_once = f" x {args.concurrency} runs at once" if args.concurrency > 1 else ""
    print(f"  {args.workers} worker(s){at_once}, first start to last end:            {worker:.2f} s "
          f"({worker / len(runs) * 1000:.0f} ms/run; all: {', '.join(f'{x[0]:.2f}' for x in under)})")
    if whole:
        print(f"  the same with {' '.join(whole_pools[2:])} (each run a pool as large as the "
              f"machine): {min(whole):.2f} s (all: {', '.join(f'{x:.2f}' for x in whole)}); "
              f"{min(whole) / worker:.2f}x the time with the worker's pools")
    if cpu is not None:
        def per_run(seconds: list[float]) -> str:
            return f"{statistics.median(seconds) / len(runs) * 1000:.1f} ms"

        print(f"  CPU per run (medians of {args.repeat}; all threads): loop "
              f"{per_run([x[1] for x in loops])}; under the worker: the runs "
              f"{per_run(cpu['runs'])}, the worker(s) {per_run(cpu['workers'])}, the database "
              f"server {per_run(cpu['server'])} ({usable_cpus()} usable CPUs)")
        print(f"  waiting for a CPU per run (the run's own thread, medians): loop "
              f"{per_run([x[2] for x in loops])}; under the worker {per_run(cpu['waits'])}")
    if args.workers == 1 and args.concurrency == 1:
        median_outside = statistics.median(x[1] for x in under)
        least_outside = min(x[1] for x in under)
        print(f"    of which outside the runs' Sacred start -> stop: {outside * 1000:.0f} ms "
              f"({outside / loop * 100:.1f}% of the loop; the rest is the runs themselves); "
              f"median of the {args.repeat}: {median_outside * 1000:.0f} ms "
              f"({median_outside / statistics.median(x[0] for x in loops) * 100:.1f}% of the "
              f"loop's median)")
        # Each run's best (and median), then summed: a spell of noise costs only the runs
        # it covers
        for name, pick in (("best", min), ("median", statistics.median)):
            in_loop = sum(map(pick, zip(*(x[3] for x in loops))))
            in_worker = sum(map(pick, zip(*(x[2] for x in under))))
            least = f"; with the least time outside them ({least_outside * 1000:.0f} ms): " \
                    f"{((in_worker + least_outside) / in_loop - 1) * 100:+.1f}%" \
                if pick is min else ""
            print(f"  each run's {name} of {args.repeat}, summed: loop {in_loop:.2f} s, the runs "
                  f"under the worker {in_worker:.2f} s ({(in_worker / in_loop - 1) * 100:+.1f}%)"
                  f"{least}")
    print(f"  worker vs loop, best of each side: {extra:+.1f}%")
    judged = f" ({args.concurrency} runs at once)" if args.concurrency > 1 else \
        f" (target <= +{TARGET_PCT:g}%: {verdict(paired, TARGET_PCT)})"  # for runs one at a time
    print(f"  worker vs loop, median of the {args.repeat} pairs' ratios (loop first in even "
          f"pairs, worker first in odd ones): {paired:+.1f}%{judged}")


if __name__ == "__main__":
    main()
