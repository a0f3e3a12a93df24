"""A small Study used by the test suite: scenarios that succeed, fail and misbehave."""
from __future__ import annotations

import ctypes
import os
import random
import subprocess
import time
from dataclasses import dataclass, field

import numpy as np

from hyperspace_explorer import Configurable, Scenario


@dataclass
class Model(Configurable):
    __abstract_config__ = True


@dataclass
class Linear(Model):
    lr: float = 0.1
    layers: list[int] = field(default_factory=lambda: [8])


@dataclass
class Forest(Model):
    n_trees: int = 10
    depth: int | None = None


@dataclass
class RunConfig:
    model: Model
    epochs: int = 3
    noise: float = 0.0
    options: dict = field(default_factory=lambda: {"verbose": False})
    behaviour: str = "ok"
    duration: float = 0.0


@dataclass
class ToyScenario(Scenario):
    """Returns a deterministic function of the config and seed; `behaviour` makes it
    misbehave in the ways a worker must survive."""

    config_class = RunConfig
    dataset: str = "toy"
    size: int = 10

    def single_run(self, params):
        behaviour = params["behaviour"]
        if behaviour == "raise":
            raise RuntimeError("boom from user code")
        if behaviour == "segfault":
            ctypes.string_at(0)
        if behaviour == "exit":
            os._exit(3)
        if behaviour == "sleep":
            time.sleep(params["duration"])
        if behaviour == "gpus":  # which devices the run was given
            print(f"devices [{os.environ.get('CUDA_VISIBLE_DEVICES')}]", flush=True)
            time.sleep(params["duration"])
        if behaviour == "spawn":  # leaves a process behind, as DataLoader workers can
            helper = subprocess.Popen(["sleep", "900"])
            print(f"spawned pid {helper.pid}", flush=True)
            time.sleep(params["duration"])
        if behaviour == "nan":
            return float("nan")
        if behaviour == "string":
            return "not a number"
        if behaviour == "huge":
            return {"score": 1.0, **{f"m{i}": float(i) for i in range(1_200_000)}}
        if behaviour == "print":
            for i in range(int(params["duration"])):
                print("x" * 99)
        for step in range(params["epochs"]):
            self.log_scalar("loss", 1.0 / (step + 1), step)
        print(f"training {params['model']['className']} on {self.dataset}")
        score = 0.5 + 0.01 * params["epochs"] + params["noise"] * random.random()
        return {"score": score, "draw": float(np.random.rand())}


@dataclass
class NoopScenario(Scenario):
    """Does nothing: measures the queue's own overhead."""

    def single_run(self, params):
        return 1.0
