"""Start-up time of the `hse` CLI, beside `python -c "import pymongo"` measured in the same run.

    python benchmarks/cli_startup.py [--repeat 7]

Each command runs as a fresh subprocess `--repeat` times (after one unmeasured warm-up
run that fills the OS file cache); the median wall time is reported with its ratio to
the reference. Target: `hse --help` within 2x of importing pymongo.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 2.0
REFERENCE = ("python -c 'import pymongo'", ["-c", "import pymongo"])
COMMANDS = (["--help"], ["status", "--help"], ["ls", "--help"])


def hse_command() -> list[str]:
    """The installed `hse` script next to this Python, else `python -m
    hyperspace_explorer.cli` (what the script runs) from the checkout."""
    script = Path(sys.executable).with_name("hse")
    return [str(script)] if script.is_file() else [sys.executable, "-m",
                                                   "hyperspace_explorer.cli"]


def wall_time(cmd: list[str], repeat: int) -> float:
    """Median seconds of the command over `repeat` runs."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    reference = wall_time([sys.executable, *REFERENCE[1]], args.repeat)
    hse = hse_command()
    print(f"hse: {' '.join(Path(part).name if os.sep in part else part for part in hse)}")
    print(f"{REFERENCE[0]:<28} {reference * 1000:8.0f} ms  (reference, median of "
          f"{args.repeat})")
    worst = 0.0
    for argv in COMMANDS:
        label = "hse " + " ".join(argv)
        seconds = wall_time(hse + argv, args.repeat)
        ratio = seconds / reference
        worst = max(worst, ratio)
        print(f"{label:<28} {seconds * 1000:8.0f} ms  {ratio:5.2f}x the reference "
              f"(target <= {TARGET:g}x)")
    print(f"worst ratio {worst:.2f}x: {'within' if worst <= TARGET else 'ABOVE'} the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
