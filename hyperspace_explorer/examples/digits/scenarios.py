"""Digits: a small, real Study on scikit-learn's bundled handwritten digits (no download).

Two model families (a linear and a tree ensemble) and a preprocessing step are
Configurables, so switching between them is just another config::

    {"model": {"className": "LogisticModel", "C": 0.5}}
    {"model": {"className": "ForestModel", "n_estimators": 80},
     "preprocessing": {"className": "NoScaling"}}

Each run takes a fraction of a second, which makes the Study suitable for demos and
for trying out a cluster of workers.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from hyperspace_explorer import Configurable, Scenario


# --------------------------------------------------------------------------- models
@dataclass
class Model(Configurable):
    """A classifier family; configs choose one by `className`."""

    __abstract_config__ = True

    def build(self, seed: int) -> Any:
        """A fresh, unfitted scikit-learn estimator seeded with `seed`."""
        raise NotImplementedError

    def fit_stages(self, estimator: Any, X: np.ndarray, y: np.ndarray) -> Iterator[int]:
        """Fit `estimator`, yielding a step number whenever it can be evaluated.

        Models that grow (forests) yield several times, so the run logs a curve of
        accuracy over the growth; the others fit once.
        """
        estimator.fit(X, y)
        yield 1


@dataclass
class LogisticModel(Model):
    """Multinomial logistic regression; `C` is the inverse regularisation strength."""

    C: float = 1.0
    max_iter: int = 200

    def build(self, seed: int) -> LogisticRegression:
        return LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=seed)


@dataclass
class ForestModel(Model):
    """Random forest; grown 10 trees at a time so accuracy is logged as it grows."""

    n_estimators: int = 50
    max_depth: int | None = None

    STEP = 10  # trees added per logged stage (not a config field: no annotation)

    def build(self, seed: int) -> RandomForestClassifier:
        return RandomForestClassifier(n_estimators=min(self.STEP, self.n_estimators),
                                      max_depth=self.max_depth, random_state=seed,
                                      warm_start=True, n_jobs=1)

    def fit_stages(self, estimator: RandomForestClassifier, X: np.ndarray,
                   y: np.ndarray) -> Iterator[int]:
        trees = 0
        while trees < self.n_estimators:
            trees = min(trees + self.STEP, self.n_estimators)
            estimator.set_params(n_estimators=trees)  # warm_start: only adds new trees
            estimator.fit(X, y)
            yield trees


# --------------------------------------------------------------------------- preprocessing
@dataclass
class Preprocessing(Configurable):
    """How pixel features are transformed before the model sees them."""

    __abstract_config__ = True

    def build(self) -> Any:
        """A fresh transformer with `fit_transform` / `transform`."""
        raise NotImplementedError


@dataclass
class StandardScaling(Preprocessing):
    """Zero mean, unit variance per pixel (what linear models need to converge fast)."""

    def build(self) -> StandardScaler:
        return StandardScaler()


class _Identity:
    def fit_transform(self, X: np.ndarray) -> np.ndarray:
        return X

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X


@dataclass
class NoScaling(Preprocessing):
    """Raw pixel intensities (0-16): trees do not care about scale."""

    def build(self) -> _Identity:
        return _Identity()


# --------------------------------------------------------------------------- run config
@dataclass
class DigitsConfig:
    """The hyper-parameters explored by the runs of a digits task."""

    model: Model
    preprocessing: Preprocessing = field(  # a config default: {"className": ...}
        default_factory=lambda: {"className": "StandardScaling"})  # type: ignore[assignment]
    train_fraction: float = 1.0  # of the training split actually used (learning curves)


# --------------------------------------------------------------------------- scenario
@dataclass
class DigitsScenario(Scenario):
    """Classify 8x8 digit images; the task fixes the train/test split.

    The split depends only on `split_seed`, never on the run's seed, so every run of a
    task is evaluated on the same test images and runs are comparable; the run's seed
    changes model initialisation and the `train_fraction` subsample.
    """

    config_class = DigitsConfig
    test_size: float = 0.25
    split_seed: int = 0

    def single_run(self, params: dict[str, Any]) -> dict[str, float]:
        fraction = params["train_fraction"]
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
        model = Model.from_config(params["model"], "model")
        preprocessing = Preprocessing.from_config(params["preprocessing"], "preprocessing")
        # The worker seeded NumPy with the run's seed: derive everything else from it.
        seed = int(np.random.randint(0, 2**31 - 1))

        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=self.test_size, random_state=self.split_seed, stratify=y)
        if fraction < 1.0:
            keep = np.random.default_rng(seed).permutation(len(y_train))
            keep = keep[:max(10, int(round(fraction * len(y_train))))]
            X_train, y_train = X_train[keep], y_train[keep]
        transform = preprocessing.build()
        X_train = transform.fit_transform(X_train)
        X_test = transform.transform(X_test)

        estimator = model.build(seed)
        for step in model.fit_stages(estimator, X_train, y_train):
            self.log_scalar("test_accuracy", accuracy_score(y_test, estimator.predict(X_test)),
                            step)
        predicted = estimator.predict(X_test)
        print(f"{type(model).__name__} on {len(y_train)} training images: "
              f"{accuracy_score(y_test, predicted):.4f} test accuracy")
        return {"accuracy": accuracy_score(y_test, predicted),
                "f1_macro": f1_score(y_test, predicted, average="macro")}


# --------------------------------------------------------------------------- torch
@dataclass
class MLPConfig:
    """A small multi-layer perceptron trained with Adam on the digits' pixels."""

    hidden: int = 64
    epochs: int = 20
    lr: float = 0.01
    batch_size: int = 64


@dataclass
class TorchDigitsScenario(Scenario):
    """The same digits and split as `DigitsScenario`, learnt by a torch MLP on the CPU
    (a few seconds per run; `pip install "hyperspace_explorer[torch]"`).

    It checkpoints every epoch (model and optimizer), so a run whose worker is lost
    resumes where it stopped, logs `test_accuracy` and `train_loss` per epoch, and saves
    its model (`hyperspace_explorer.load_model(run_id, db=...)`, `hse export`). torch is
    imported inside the run: the Study loads without it.
    """

    config_class = MLPConfig
    test_size: float = 0.25
    split_seed: int = 0

    def single_run(self, params: dict[str, Any]) -> dict[str, float]:
        import torch

        torch.set_num_threads(1)  # small batches: threads cost more than they bring
        X, y = load_digits(return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=self.test_size, random_state=self.split_seed, stratify=y)
        scaler = StandardScaler().fit(X_train)
        X_train_t = torch.tensor(scaler.transform(X_train), dtype=torch.float32)
        X_test_t = torch.tensor(scaler.transform(X_test), dtype=torch.float32)
        y_train_t = torch.tensor(y_train)
        model = torch.nn.Sequential(  # torch's own classes: loadable anywhere
            torch.nn.Linear(X.shape[1], params["hidden"]), torch.nn.ReLU(),
            torch.nn.Linear(params["hidden"], 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"])
        generator = torch.Generator().manual_seed(int(np.random.randint(0, 2**31 - 1)))
        start = 0
        checkpoint = self.load_checkpoint()
        if checkpoint is not None:  # an earlier attempt was interrupted: go on from there
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            generator.set_state(checkpoint["generator"])
            start = checkpoint["epoch"] + 1
            print(f"resuming after epoch {checkpoint['epoch']}")
        for epoch in range(start, params["epochs"]):
            model.train()
            order = torch.randperm(len(y_train_t), generator=generator)
            total = 0.0
            for i in range(0, len(order), params["batch_size"]):
                batch = order[i:i + params["batch_size"]]
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(X_train_t[batch]),
                                                         y_train_t[batch])
                loss.backward()
                optimizer.step()
                total += float(loss) * len(batch)
            model.eval()
            with torch.no_grad():
                predicted = model(X_test_t).argmax(dim=1).numpy()
            self.log_scalar("train_loss", total / len(order), epoch)
            self.log_scalar("test_accuracy", accuracy_score(y_test, predicted), epoch)
            self.save_checkpoint({"epoch": epoch, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(),
                                  "generator": generator.get_state()})
        model.eval()
        with torch.no_grad():
            predicted = model(X_test_t).argmax(dim=1).numpy()
        self.save_model(model)
        print(f"MLP({params['hidden']}) after {params['epochs']} epochs: "
              f"{accuracy_score(y_test, predicted):.4f} test accuracy")
        return {"accuracy": accuracy_score(y_test, predicted),
                "f1_macro": f1_score(y_test, predicted, average="macro")}
