"""End-to-end throughput and per-run overhead of workers on the embedded server.

Prints, for no-op runs:
- a bare Sacred run (Experiment + MongoObserver, ids assigned) per run, as the baseline;
- one worker's per-run wall time (claim, fork, Sacred record, finish) and its ratio to
  the baseline (target <= 1.5);
- runs/s end to end with N workers (target >= 40 with 2 workers on 2 cores);
- claim cost with 1k and with 100k finished runs in history (target ratio <= 1.5);
- idle pickup latency (target < 1 s) and an idle worker's RSS (target <= 120 MB).

    python benchmarks/throughput.py [--runs 400] [--workers 2] [--history 100000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "tests" / "study"
TASKS = STUDY / "tasks"
sys.path.insert(0, str(ROOT))

from hyperspace_explorer.queue import RunQueue  # noqa: E402
from hyperspace_explorer.server import EmbeddedServer  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from hyperspace_explorer.status import COMPLETED  # noqa: E402
from hyperspace_explorer.storage import connect  # noqa: E402


def bare_sacred(uri: str, n: int) -> float:
    """Seconds per run of a bare Sacred no-op run with MongoObserver."""
    code = f"""
import time, pymongo
from hyperspace_explorer.sacred_compat import import_sacred
import_sacred()  # Sacred without pkg_resources (Python 3.12+, setuptools >= 82)
from sacred import Experiment, SETTINGS
from sacred.observers import MongoObserver
SETTINGS.CAPTURE_MODE = "sys"
ex = Experiment("bare")
ex.logger = __import__("logging").getLogger("quiet"); ex.logger.setLevel(40)
@ex.main
def main():
    return 1.0
obs = MongoObserver(url="{uri}", db_name="bench_bare")
ex.observers.append(obs)
ex.run()  # warm-up
t = time.perf_counter()
for i in range({n}):
    obs.overwrite = None
    ex.run(options={{"--id": 1000 + i}})
print((time.perf_counter() - t) / {n})
"""
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "bare_sacred.py"
        script.write_text(code)
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             cwd=tmp)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return float(out.stdout.strip().splitlines()[-1])


def start_workers(uri: str, db: str, k: int, *extra: str) -> list[subprocess.Popen]:
    return [subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db, "--mongo-uri", uri,
         "--study-dir", str(STUDY), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(k)]


def stop(procs: list[subprocess.Popen]) -> None:
    """Workers retry forever when the database is gone: never leave them behind."""
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def wait_done(q: RunQueue, ids: list[str], poll: float = 0.05) -> None:
    q.wait(ids, progress=False, poll=poll)


def throughput(uri: str, runs: int, workers: int) -> float:
    db = f"bench_tp_{workers}_{os.getpid()}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    procs = start_workers(uri, db, workers, "--idle-exit", "2")
    try:
        warm = q.submit("noop", {}, seeds=workers * 2)
        wait_done(q, warm)
        ids = q.submit("noop", {}, seeds=runs)
        wait_done(q, ids, poll=1.0)  # light polling: the server has one global lock
        docs = [q.get(i) for i in ids]
        elapsed = max(d["ended_at"] for d in docs) - min(d["started_at"] for d in docs)
        for p in procs:
            p.wait(60)
    finally:
        stop(procs)
    counts = q.status()
    assert counts[COMPLETED] == runs + len(warm), counts
    q.store.drop_database()
    return runs / elapsed


def claim_cost(uri: str, history: int) -> float:
    """Seconds per claim+finish with `history` finished runs already stored."""
    db = f"bench_claim_{history}_{os.getpid()}"
    store = connect(uri, db)
    base = {"study": db, "task": "noop", "task_spec": {}, "config": {}, "seed": 0,
            "priority": 0, "max_attempts": 3, "max_runtime": None, "status": COMPLETED,
            "metrics": {"score": 1.0}}
    raw = MongoClient(uri)[db]  # seeding the history directly is not what is measured
    for i in range(0, history, 5000):
        raw.hse_done.insert_many([{**base, "_id": f"h{j}"} for j in range(i, min(history, i + 5000))])
    n = 200
    store.enqueue([{**base, "status": None} for _ in range(n)])
    t = time.perf_counter()
    for _ in range(n):
        doc = store.claim(db, ["noop"], "bench", 60)
        store.finish(doc["_id"], doc["token"], COMPLETED, {})
    per = (time.perf_counter() - t) / n
    store.drop_database()
    store.close()
    return per


def idle_pickup(uri: str) -> tuple[float, float]:
    """Latency from submit to start on an idle worker, and the idle worker's RSS (MB)."""
    db = f"bench_idle_{os.getpid()}"
    q = RunQueue(uri, db, TASKS, study_dir=STUDY)
    (proc,) = start_workers(uri, db, 1)
    try:
        return _idle_pickup(q, proc)
    finally:
        stop([proc])
        q.store.drop_database()


def _idle_pickup(q: RunQueue, proc: subprocess.Popen) -> tuple[float, float]:
    wait_done(q, q.submit("noop", {}))  # worker is up and warm
    time.sleep(2)  # let it go idle: this is the state being measured
    rss = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    latencies = []
    for _ in range(8):
        t = time.time()
        (run_id,) = q.submit("noop", {})
        wait_done(q, [run_id])
        doc = q.get(run_id)
        latencies.append(doc["started_at"] - t)
        time.sleep(0.7)  # idle again, at a random phase of the polling interval
    print("  pickup latencies (ms):", ", ".join(f"{x * 1000:.0f}" for x in latencies))
    return max(latencies), rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--history", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServer(Path(tmp)) as server:
        uri = server.uri
        bare = bare_sacred(uri, 100)
        print(f"bare Sacred run + MongoObserver: {bare * 1000:.1f} ms/run")
        one = throughput(uri, args.runs // 2, 1)
        print(f"1 worker: {one:.1f} runs/s = {1000 / one:.1f} ms/run "
              f"({1 / one / bare:.2f}x a bare Sacred run; target <= 1.5x)")
        many = throughput(uri, args.runs, args.workers)
        print(f"{args.workers} workers: {many:.1f} runs/s end to end (target >= 40)")
        small, large = claim_cost(uri, 1000), claim_cost(uri, args.history)
        print(f"claim+finish: {small * 1000:.2f} ms with 1k past runs, {large * 1000:.2f} ms "
              f"with {args.history // 1000}k ({large / small:.2f}x; target <= 1.5x)")
        latency, rss = idle_pickup(uri)
        print(f"idle pickup: {latency * 1000:.0f} ms worst of 8 (target < 1000); "
              f"idle worker RSS {rss:.0f} MB (target <= 120)")


if __name__ == "__main__":
    main()
