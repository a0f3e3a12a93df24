"""A small Study used by the test suite: scenarios that succeed, fail and misbehave."""
from __future__ import annotations

import ctypes
import json
import os
import random
import subprocess
import tempfile
import threading
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
        if behaviour == "pid":  # which process ran it (a runner executes several runs)
            print(f"pid {os.getpid()}", flush=True)
            time.sleep(params["duration"])
        if behaviour == "gpus":  # which devices the run was given
            print(f"devices [{os.environ.get('CUDA_VISIBLE_DEVICES')}]", flush=True)
            time.sleep(params["duration"])
        if behaviour == "threads":  # the thread pools the run was given
            from threadpoolctl import threadpool_info

            blas = sorted({pool["num_threads"] for pool in threadpool_info()
                           if pool["internal_api"] == "openblas"})
            names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            print(f"threads {json.dumps({n: os.environ.get(n) for n in names})} "
                  f"openblas {json.dumps(blas)}", flush=True)
            # The CPU that OpenBLAS's idle helper threads take after a call (the
            # process's CPU time while its own thread sleeps 0.2 s).
            matrix = np.ones((300, 300))
            matrix @ matrix
            cpu = time.process_time()
            time.sleep(0.2)
            spin = {"OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
                    "idle_cpu_ms": (time.process_time() - cpu) * 1000}
            print(f"spin {json.dumps(spin)}", flush=True)
        if behaviour == "spawn":  # leaves a process behind, as DataLoader workers can
            helper = subprocess.Popen(["sleep", "900"])
            print(f"spawned pid {helper.pid}", flush=True)
            time.sleep(params["duration"])
        if behaviour == "thread":  # leaves a thread running, as some libraries' pools do
            threading.Thread(target=time.sleep, args=(900,), daemon=True).start()
            print(f"left a thread in pid {os.getpid()}", flush=True)
        if behaviour == "nan":
            return float("nan")
        if behaviour == "string":
            return "not a number"
        if behaviour == "huge":
            return {"score": 1.0, **{f"m{i}": float(i) for i in range(1_200_000)}}
        if behaviour == "block":  # logs, says so, then waits to be stopped from outside
            for step in range(params["epochs"]):
                self.log_scalar("loss", 1.0 / (step + 1), step)
            print(f"logged {params['epochs']} points in pid {os.getpid()}", flush=True)
            time.sleep(params["duration"])
        if behaviour == "stream":  # logs points without pause until stopped
            step = 0
            while True:
                self.log_scalar("loss", 1.0 / (step + 1), step)
                step += 1
        if behaviour == "artifact":  # a file with a content type and metadata
            with tempfile.TemporaryDirectory() as tmp:  # removed once stored
                path = os.path.join(tmp, "predictions.csv")
                with open(path, "w") as f:
                    f.write("id,label\n1,0\n")
                self.add_artifact(path, content_type="text/csv", metadata={"rows": 1})
        if behaviour == "echo":  # prints what it is told, and names a metric so
            print(params["options"]["text"], flush=True)
            return {"score": 0.5, params["options"]["metric"]: 1.0}
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


@dataclass
class Shape(Configurable):
    __abstract_config__ = True


@dataclass
class Bowl(Shape):
    """(x - 1)^2 + (y + 2)^2 + offset: minimum `offset` at x=1, y=-2."""

    offset: float = 0.0


@dataclass
class Ridge(Shape):
    """A worse family: its minimum is 1 + width at x=1."""

    width: float = 0.5


@dataclass
class QuadConfig:
    shape: Shape = field(default_factory=lambda: {"className": "Bowl"})
    x: float = 0.0
    y: float = 0.0
    epochs: int = 1          # report() steps: the value falls towards the final loss
    behaviour: str = "ok"    # "raise": fail, "sleep": wait `duration` s per epoch
    duration: float = 0.0


@dataclass
class QuadraticScenario(Scenario):
    """A known function with a known optimum (loss 0 at shape Bowl, x=1, y=-2), for
    tuning tests and benchmarks/tuning.py. It reports a decreasing curve per epoch
    and stops when the tuner's pruner says so."""

    config_class = QuadConfig

    def single_run(self, params):
        from hyperspace_explorer.errors import Pruned

        shape = params["shape"]
        if shape["className"] == "Bowl":
            loss = (params["x"] - 1) ** 2 + (params["y"] + 2) ** 2 + shape["offset"]
        else:
            loss = (params["x"] - 1) ** 2 + 1 + shape["width"]
        if params["behaviour"] == "raise":
            raise RuntimeError("boom from a tuned run")
        for step in range(params["epochs"]):
            if params["behaviour"] == "sleep":
                time.sleep(params["duration"])
            self.report(loss + 1.0 / (step + 1), step)
            if self.should_prune():
                raise Pruned(f"pruned at epoch {step}")
        return {"loss": loss}


@dataclass
class TrainConfig:
    epochs: int = 6
    hidden: int = 8
    stop_after: int = -1   # attempt 1 stops itself (SIGSTOP) right after this epoch's checkpoint
    pidfile: str = ""      # where it writes its pid before stopping


@dataclass
class TorchTrainer(Scenario):
    """A multi-epoch torch training that checkpoints every epoch and resumes from the
    latest checkpoint: for the checkpoint/resume tests (torch imported lazily)."""

    config_class = TrainConfig

    def single_run(self, params):
        import signal as _signal

        import torch

        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, params["hidden"]), torch.nn.ReLU(),
                                    torch.nn.Linear(params["hidden"], 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        x = torch.linspace(-1, 1, 64).reshape(16, 4)
        y = x.sum(dim=1, keepdim=True)
        start = 0
        checkpoint = self.load_checkpoint()
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            start = checkpoint["epoch"] + 1
        for epoch in range(start, params["epochs"]):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            self.log_scalar("loss", float(loss), epoch)
            self.save_checkpoint({"epoch": epoch, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict()})
            if epoch == params["stop_after"] and checkpoint is None:
                with open(params["pidfile"], "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), _signal.SIGSTOP)
        self.save_model(model)
        return {"score": -float(loss), "start_epoch": float(start)}
