"""Helpers shared by the benchmark scripts: a private embedded server, worker processes
that are never left behind, bare Sacred references, timing and reporting.

Every figure a script prints is measured beside its reference in the same run and
printed as a ratio: the machines these run on are often shared, so absolute figures
from two runs are not comparable, ratios from one run are.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "tests" / "study"          # the test Study: `noop`, `toy`, `slow` tasks
TASKS = STUDY / "tasks"
# The example Study ships in the package (examples/digits_study/scenarios.py and
# tasks/digits.json in a checkout are links to these files).
DIGITS_STUDY = ROOT / "hyperspace_explorer" / "examples" / "digits"
DIGITS_TASKS = DIGITS_STUDY / "tasks"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hyperspace_explorer.queue import RunQueue  # noqa: E402
from hyperspace_explorer.server import EmbeddedServer  # noqa: E402

#: The worker's entry points, by the name users type: two console scripts (the script's
#: name, the module whose `main` it calls) and the checkout's script (run by this
#: interpreter; no module).
ENTRY_POINTS = {
    "hyperspace_worker": ("hyperspace_worker", "hyperspace_explorer.cli.worker"),
    "hse worker": ("hse", "hyperspace_explorer.cli"),
    "bin/hyperspace_worker.py": ("bin/hyperspace_worker.py", None),
}


@contextlib.contextmanager
def embedded_server() -> Iterator[str]:
    """A private nx-27017 server for one benchmark, and HSE_HOME in the same temporary
    directory (worker logs go there, never to the user's home). Yields its URI."""
    with tempfile.TemporaryDirectory(prefix="hse-bench-") as tmp:
        previous = os.environ.get("HSE_HOME")
        os.environ["HSE_HOME"] = str(Path(tmp) / "home")
        try:
            with EmbeddedServer(Path(tmp) / "data") as server:
                yield server.uri
        finally:
            if previous is None:
                os.environ.pop("HSE_HOME", None)
            else:
                os.environ["HSE_HOME"] = previous


def worker_command(entry: str = "hyperspace_worker") -> list[str]:
    """The command line of a worker entry point: the installed console script next to
    this interpreter, else the same `main` called through the interpreter; the
    checkout's script through the interpreter."""
    script, module = ENTRY_POINTS[entry]
    if module is None:
        return [sys.executable, str(ROOT / script)]
    installed = Path(sys.executable).parent / script
    prefix = [] if entry == "hyperspace_worker" else ["worker"]
    if installed.exists():
        return [str(installed), *prefix]
    return [sys.executable, "-c", f"import sys; from {module} import main; sys.exit(main())",
            *prefix]


@contextlib.contextmanager
def workers(uri: str, db: str, k: int, *extra: str, entry: str = "hyperspace_worker",
            study: Path = STUDY, tasks: Path = TASKS) -> Iterator[list[subprocess.Popen]]:
    """`k` worker processes of `study` on database `db`. Whatever happens, they are
    killed on the way out (a worker retries forever when its database is gone), and
    their forked children die with them (PR_SET_PDEATHSIG)."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(k):
            procs.append(subprocess.Popen(
                [*worker_command(entry), str(tasks), db, "--mongo-uri", uri,
                 "--study-dir", str(study), *extra],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=study))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()


@contextlib.contextmanager
def scratch_queue(uri: str, name: str, study: Path = STUDY,
                  tasks: Path = TASKS) -> Iterator[RunQueue]:
    """A RunQueue on a fresh database `name_PID`, dropped on the way out."""
    q = RunQueue(uri, f"{name}_{os.getpid()}", tasks, study_dir=study)
    try:
        yield q
    finally:
        q.store.drop_database()
        q.close()


def noop_span(q: RunQueue, runs: int, warm: int = 0) -> float:
    """Seconds the running workers take for `runs` no-op runs (after `warm` more)."""
    if warm:
        wait_done(q, q.submit("noop", {}, seeds=warm, force=True))
    ids = q.submit("noop", {}, seeds=runs, force=True)
    wait_done(q, ids, poll=1.0)
    return span(q, ids)


def wait_done(q: RunQueue, ids: Sequence[str], poll: float = 0.2) -> None:
    """Until every run finished; light polling (the embedded server has one lock)."""
    q.wait(list(ids), progress=False, poll=poll)


def span(q: RunQueue, ids: Sequence[str]) -> float:
    """Seconds from the first run's start to the last run's end, as the workers
    recorded them (what end-to-end throughput is measured over)."""
    docs = [q.get(i) for i in ids]
    bad = [d["status"] for d in docs if d["status"] != "COMPLETED"]
    if bad:
        raise SystemExit(f"{len(bad)} run(s) did not complete: {sorted(set(bad))}")
    return max(d["ended_at"] for d in docs) - min(d["started_at"] for d in docs)


def rss_mb(pid: int) -> float:
    """Resident set size of one process (not its children), from /proc/PID/statm."""
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3, the state, first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    """{pid: parent pid} of every process now running."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue  # ended meanwhile
    return parents


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """CPU time (user + system) of process `pid` and its threads; with `descendants`,
    plus that of its children that ended and were waited for and of its live
    descendants (a worker's forked runners). 0 for a process that is gone."""
    parents = _parents() if descendants else {}
    tree, ticks = [pid], 0
    while tree:
        current = tree.pop()
        try:
            fields = _stat(current)
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15 if descendants else 13])  # u/stime, cu/cstime
        tree.extend(child for child, parent in parents.items() if parent == current)
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def runners_cpu_wait(pids: Sequence[int], every_s: float = 0.02) -> Iterator[list[float]]:
    """Seconds the main threads of the children of processes `pids` (a worker's
    runners) spent runnable but waiting for a CPU (/proc/PID/schedstat) while the block
    runs; the one-element list it yields holds the total once the block ended. A
    worker replaces its runner when it goes idle, so the children are sampled every
    `every_s` (from /proc/PID/task/*/children: cheap) and each one's last sample
    counts, from 0 for a child forked meanwhile."""
    def sample() -> dict[int, float]:
        waits: dict[int, float] = {}
        for pid in pids:
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    listed = children.read_text().split()
                except OSError:  # the thread ended meanwhile
                    continue
                for child in listed:
                    with contextlib.suppress(OSError):  # the child ended meanwhile
                        stat = Path(f"/proc/{child}/schedstat").read_text()
                        waits[int(child)] = int(stat.split()[1]) / 1e9
        return waits

    first, last, done = sample(), {}, threading.Event()

    def sampling() -> None:
        while not done.wait(every_s):
            last.update(sample())

    sampler = threading.Thread(target=sampling, daemon=True)
    sampler.start()
    total = [0.0]
    try:
        yield total
    finally:
        done.set()
        sampler.join()
        last.update(sample())
        total[0] = sum(wait - first.get(child, 0.0) for child, wait in last.items())


def server_pid() -> int:
    """The pid of the nx-27017 server that `embedded_server` started in this process."""
    for pid, parent in _parents().items():
        try:
            if parent == os.getpid() and b"nx_27017" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    raise SystemExit("no embedded nx-27017 server found among this process's children")


def run_python(code: str, cwd: Path | None = None, timeout: float = 600) -> str:
    """Run `code` in a fresh interpreter (from a file, so Sacred finds its source);
    returns its stdout, or stops the benchmark with its stderr."""
    with tempfile.TemporaryDirectory(prefix="hse-bench-") as tmp:
        script = Path(tmp) / "bench_script.py"
        script.write_text(textwrap.dedent(code))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             cwd=cwd or tmp, env=env, timeout=timeout)
    if out.returncode != 0:
        raise SystemExit(f"benchmark subprocess failed:\n{out.stderr[-3000:]}")
    return out.stdout


BARE_SACRED = """
import logging, time
from hyperspace_explorer.sacred_compat import import_sacred
import_sacred()  # Sacred 0.8.7 needs it where setuptools >= 82 has no pkg_resources
from sacred import Experiment, SETTINGS
from sacred.observers import MongoObserver
# LEAN: SETTINGS.CAPTURE_MODE = "sys"
ex = Experiment("bare")
# LEAN: ex.logger = logging.getLogger("quiet"); ex.logger.setLevel(40)
@ex.main
def main():
    return 1.0
obs = MongoObserver(url="URI", db_name="DB")
ex.observers.append(obs)
ex.run(options={"--id": 1})  # warm-up
t = time.perf_counter()
for i in range(N_RUNS):
    obs.overwrite = None
    ex.run(options={"--id": 1000 + i})
print((time.perf_counter() - t) / N_RUNS)
__import__("pymongo").MongoClient("URI").drop_database("DB")
"""


def bare_sacred(uri: str, n: int, *, lean: bool) -> float:
    """Seconds per run of a bare Sacred no-op run with its MongoObserver (run ids given,
    as the embedded server sorts integer ids as text), in a fresh process.

    lean=False: Sacred's defaults (CAPTURE_MODE "fd" on Linux, host info with CPU and
    GPU, sources saved, Sacred's logger). lean=True: the baseline the worker was first
    compared with: CAPTURE_MODE "sys" and a quiet logger."""
    db = f"bench_bare_{'lean' if lean else 'default'}_{os.getpid()}"
    code = BARE_SACRED.replace("DB", db).replace("URI", uri).replace("N_RUNS", str(n))
    if lean:
        code = code.replace("# LEAN: ", "")
    out = run_python(code)
    return float(out.strip().splitlines()[-1])


def verdict(value: float, limit: float, *, at_most: bool = True) -> str:
    """'met' or 'MISSED' for a figure against its target."""
    ok = value <= limit if at_most else value >= limit
    return "met" if ok else "MISSED"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (the worker finishes its run and exits), SIGKILL if it does not."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def settle(seconds: float) -> None:
    """Let workers go idle (the state some figures are about)."""
    time.sleep(seconds)
