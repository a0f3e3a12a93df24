"""Quality of tuning through the queue, on a known function with a known optimum.

The test Study's `QuadraticScenario` (task `quadratic`: minimise
(x-1)^2 + (y+2)^2 under shape Bowl, 1 + width + (x-1)^2 under shape Ridge; optimum 0 at
Bowl, x=1, y=-2) is tuned by `Tuner` through real worker processes on a private
embedded server, and compared in the same run with:

1. Optuna's own `study.optimize` with the same sampler (TPE, constant liar), seed and
   budget, in memory: best values and their gap (K=1: the tuner should follow the very
   same proposals);
2. a warm start from 50 earlier runs (random configs submitted by hand): how many new
   trials the tuner needs to reach a target loss, with and without the warm start;
3. K=4 proposals in flight: the number of duplicate proposals (target 0) and the best
   value reached with the same budget.

    python benchmarks/tuning.py [--trials 60] [--target 0.3] [--seed 0]
"""
from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "tests" / "study"
TASKS = STUDY / "tasks"
sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402

from hyperspace_explorer.queue import RunQueue  # noqa: E402
from hyperspace_explorer.server import EmbeddedServer  # noqa: E402
from hyperspace_explorer.tuning import ClassChoice, Float, Space, Tuner  # noqa: E402

SPACE = Space({
    "shape.className": ClassChoice({"Bowl": {"y": Float(-5.0, 5.0)},
                                    "Ridge": {"shape.width": Float(0.0, 1.0)}}),
    "x": Float(-5.0, 5.0),
})


def loss_of(config: dict) -> float:
    """What QuadraticScenario returns for a config built by SPACE (same formula)."""
    if config["shape"]["className"] == "Bowl":
        return (config["x"] - 1) ** 2 + (config["y"] + 2) ** 2
    return (config["x"] - 1) ** 2 + 1 + config["shape"]["width"]


def sampler(seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def workers(uri: str, db: str, n: int, logs: Path) -> list[subprocess.Popen]:
    return [subprocess.Popen(
        [sys.executable, "-m", "hyperspace_explorer.worker", str(TASKS), db, "--mongo-uri", uri,
         "--study-dir", str(STUDY), "--interval", "0.02"],
        stdout=open(logs / f"worker{i}.log", "ab"), stderr=subprocess.STDOUT) for i in range(n)]


def trials_to_target(tuner: Tuner, target: float) -> int | None:
    """New (proposed) trials until the study's best is <= target (imports count from
    the start); None if never reached."""
    trials = tuner.study.get_trials()
    best = min((t.value for t in trials if t.user_attrs.get("hse_source") == "imported"
                and t.value is not None), default=float("inf"))
    if best <= target:
        return 0
    proposed = sorted((t for t in trials if t.user_attrs.get("hse_source") == "proposed"),
                      key=lambda t: t.number)
    for i, t in enumerate(proposed, 1):
        if t.value is not None and t.value <= target:
            return i
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--target", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm-runs", type=int, default=50)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="hse_tuning_bench_"))
    server = EmbeddedServer(tmp / "data")
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        db = "bench_tuning"
        procs = workers(server.uri, db, 4, tmp)
        quiet = {"progress": False, "poll": 0.02, "say": lambda text: None}
        with RunQueue(server.uri, db, TASKS, study_dir=STUDY) as q:
            # 2. warm start from earlier runs (random configs submitted by hand)
            rng = random.Random(args.seed + 1)
            ids = []
            for _ in range(args.warm_runs):
                if rng.random() < 0.8:
                    conf = {"shape": {"className": "Bowl"}, "x": rng.uniform(-5, 5),
                            "y": rng.uniform(-5, 5)}
                else:
                    conf = {"shape": {"className": "Ridge", "width": rng.uniform(0, 1)},
                            "x": rng.uniform(-5, 5)}
                ids += q.submit("quadratic", conf)
            q.wait(ids, progress=False, timeout=600)
            warm = Tuner(q, "quadratic", SPACE, n_trials=args.trials, parallel=1,
                         sampler=sampler(args.seed), study_name="warm", **quiet)
            warm_result = warm.run()
            cold = Tuner(q, "quadratic", SPACE, n_trials=args.trials, parallel=1,
                         sampler=sampler(args.seed), study_name="cold", warm_start=False,
                         **quiet)
            cold.run()
            print(f"[2] warm start: {warm_result.imported} earlier runs imported "
                  f"(of {len(ids)}; skipped: {warm_result.skipped or 'none'})")
            for name, t in (("with warm start", warm), ("without warm start", cold)):
                n = trials_to_target(t, args.target)
                print(f"    {name}: new trials to reach loss <= {args.target}: "
                      f"{n if n is not None else f'not within {args.trials}'}")
            # 1. the tuner (K=1) vs Optuna's own loop, same sampler, seed and budget
            started = time.monotonic()
            tuner = Tuner(q, "quadratic", SPACE, n_trials=args.trials, parallel=1,
                          sampler=sampler(args.seed), study_name="k1", warm_start=False, **quiet)
            ours = tuner.run()
            ours_s = time.monotonic() - started
            reference = optuna.create_study(direction="minimize", sampler=sampler(args.seed))
            reference.optimize(lambda t: loss_of(SPACE.sample(t)), n_trials=args.trials)
            same = sum(a.params == b.params for a, b in zip(
                sorted(tuner.study.get_trials(), key=lambda t: t.number), reference.trials))
            print(f"[1] budget {args.trials} trials, TPE seed {args.seed}, K=1")
            print(f"    tuner through the queue: best {ours.best_value:.6f} "
                  f"({ours_s:.1f}s, {ours_s / args.trials * 1000:.0f} ms/trial)")
            print(f"    optuna study.optimize:   best {reference.best_value:.6f}")
            print(f"    gap: {ours.best_value - reference.best_value:+.6f}; identical "
                  f"proposals: {same}/{args.trials}")

            # 3. K=4 in flight: duplicate proposals
            tuner4 = Tuner(q, "quadratic", SPACE, n_trials=args.trials, parallel=4,
                           sampler=sampler(args.seed), study_name="k4", warm_start=False, **quiet)
            k4 = tuner4.run()
            configs = [tuple(sorted(t.params.items())) for t in tuner4.study.get_trials()
                       if t.user_attrs.get("hse_source") == "proposed"]
            print(f"[3] K=4 in flight, same budget: best {k4.best_value:.6f}; duplicate "
                  f"proposals discarded: {k4.discarded}; identical configs among the "
                  f"{len(configs)} trials run: {len(configs) - len(set(configs))}")

    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        server.stop()


if __name__ == "__main__":
    main()
