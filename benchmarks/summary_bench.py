"""Time `summarize` + `to_latex` on a synthetic results frame.

    python benchmarks/summary_bench.py --runs 10000

The frame follows the results(...) contract: one row per run with run_id, sacred_id,
task, status, seed, config.* (one column per config leaf, some constant, some varying,
one only set for one model class, one tuple-valued), metrics.* (float), times, host,
code_version. Runs are spread over `--runs / --seeds` configurations x `--seeds` seeds;
`--failed` of them are FAILED without metrics.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

try:
    import hyperspace_explorer  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hyperspace_explorer.analysis import summarize  # noqa: E402
from hyperspace_explorer.export import to_latex  # noqa: E402


def synthetic_results(runs: int = 10_000, seeds: int = 20, metrics: int = 3,
                      failed: float = 0.02, rng_seed: int = 0) -> pd.DataFrame:
    """A results frame with `runs` rows: runs // seeds configurations x `seeds` seeds."""
    rng = np.random.default_rng(rng_seed)
    n_configs = max(1, runs // seeds)
    cfg = np.arange(runs) % n_configs
    seed = np.arange(runs) // n_configs
    # cfg -> (C, class, kernel or penalty, hidden, lr) is one-to-one, so every
    # configuration is its own group of `seeds` runs.
    c_values = np.logspace(-3, 3, 25)
    c = c_values[cfg % 25]
    svc = (cfg // 25) % 2 == 1
    model = np.where(svc, "SVC", "LogisticRegression")
    flag = (cfg // 50) % 2 == 0
    kernel = np.where(svc, np.where(flag, "rbf", "linear"), None)
    penalty = np.where(svc, None, np.where(flag, "l2", "l1"))
    layers = [((16,), (32, 16), (64, 32))[i] for i in (cfg // 100) % 3]
    lr = 10.0 ** -(1 + cfg // 300)
    quality = 0.6 + 0.3 * np.sin(cfg / n_configs * np.pi)
    status = np.where(rng.random(runs) < failed, "FAILED", "COMPLETED")
    start = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(np.arange(runs), unit="s")
    duration = rng.gamma(2.0, 10.0, runs)
    frame = {
        "run_id": [f"r{i:06d}" for i in range(runs)],
        "sacred_id": np.arange(1, runs + 1),
        "task": "iris",
        "status": status,
        "seed": seed,
        "config.model.className": model,
        "config.model.C": c,
        "config.model.kernel": pd.array(kernel, dtype="str"),
        "config.model.penalty": pd.array(penalty, dtype="str"),
        "config.optimizer.lr": lr,
        "config.model.hidden": pd.Series(layers, dtype=object),
        "config.test_size": 0.2,
        "config.dataset.name": "iris",
        "config.seed": seed,
    }
    for j in range(metrics):
        name = ("accuracy", "f1_macro", "loss")[j] if j < 3 else f"metric_{j}"
        noise = rng.normal(0.0, 0.03, runs)
        value = (1.0 - quality if name == "loss" else quality) + noise
        frame[f"metrics.{name}"] = np.where(status == "COMPLETED", value, np.nan)
    frame.update({
        "start_time": start,
        "stop_time": start + pd.to_timedelta(duration, unit="s"),
        "duration": duration,
        "host": np.where(seed % 2 == 0, "node-a", "node-b"),
        "code_version": "abc1234",
        "queued_at": start - pd.Timedelta(minutes=5),
    })
    return pd.DataFrame(frame)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="number of runs (rows)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per configuration")
    parser.add_argument("--metrics", type=int, default=3, help="number of metric columns")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    df = synthetic_results(args.runs, args.seeds, args.metrics)
    build = time.perf_counter() - t0
    print(f"built {len(df)} runs x {df.shape[1]} columns "
          f"({df['status'].eq('COMPLETED').sum()} COMPLETED) in {build:.3f} s")

    summarize(df, "accuracy")  # warm-up (imports, scipy caches)
    t_sum, t_tex = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        summary = summarize(df, "accuracy", "maximize")
        t1 = time.perf_counter()
        latex = to_latex(summary, "accuracy", "maximize")
        t2 = time.perf_counter()
        t_sum.append(t1 - t0)
        t_tex.append(t2 - t1)
    total = [a + b for a, b in zip(t_sum, t_tex)]
    print(f"{len(summary)} groups, {summary.shape[1]} summary columns, "
          f"{len(latex.splitlines())} LaTeX lines")
    print(f"summarize: median {statistics.median(t_sum):.3f} s (min {min(t_sum):.3f})")
    print(f"to_latex : median {statistics.median(t_tex):.3f} s (min {min(t_tex):.3f})")
    print(f"total    : median {statistics.median(total):.3f} s over {args.repeat} repeats")


if __name__ == "__main__":
    main()
