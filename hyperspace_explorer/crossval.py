"""K-fold cross-validation inside a scenario, seeded by the run's seed.

One run then measures a config on every fold, so the spread over folds sits beside
the spread over seeds, and each fold's score is logged as a curve point (`q.curves`)::

    from hyperspace_explorer.crossval import cross_validate

    def single_run(self, params):
        cv = cross_validate(self, LogisticRegression(C=params["C"]), X, y, folds=5)
        return {"accuracy": cv.mean, "accuracy_std": cv.std}

`model` is a scikit-learn estimator (cloned and fitted per fold, scored with `scoring`
or its own `score`), or any callable `fit_score(X_train, y_train, X_test, y_test) ->
float`, which is how a torch model is cross-validated: the callable builds, trains and
evaluates a fresh model on the fold it is given.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from .errors import HSEError


@dataclasses.dataclass(frozen=True)
class CVResult:
    """Scores per fold, their mean and (sample) standard deviation."""

    scores: tuple[float, ...]
    mean: float
    std: float


def cross_validate(scenario: Any, model: Any, X: Any, y: Any, *, folds: int = 5,
                   stratified: bool = True, scoring: Callable[..., float] | None = None,
                   metric: str = "cv_score", seed: int | None = None) -> CVResult:
    """Score `model` on `folds` (stratified by `y` unless `stratified=False`) folds of
    (X, y); logs fold i's score as step i of the series `metric` on `scenario`'s run.

    The folds are shuffled with `seed`, default the run's seed (`scenario.run_seed`),
    so a run's folds are the same every time it is run again and differ across seeds.
    `scoring(estimator, X_test, y_test)` overrides an estimator's `score`.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise HSEError(f"cross_validate: folds must be an int >= 2, got {folds!r}")
    if seed is None:
        seed = getattr(scenario, "run_seed", None)
    splitter_cls = StratifiedKFold if stratified else KFold
    splitter = splitter_cls(n_splits=folds, shuffle=True,
                            random_state=None if seed is None else int(seed) % 2**32)
    fit_score = _fit_score(model, scoring)
    scores = []
    for fold, (train, test) in enumerate(splitter.split(X, y)):
        score = float(fit_score(_take(X, train), _take(y, train), _take(X, test),
                                _take(y, test)))
        if not math.isfinite(score):
            raise HSEError(f"cross_validate: fold {fold} scored {score!r}, not a finite number")
        scenario.log_scalar(metric, score, fold)
        scores.append(score)
    mean = sum(scores) / len(scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1))
    return CVResult(tuple(scores), mean, std)


def _fit_score(model: Any, scoring: Callable[..., float] | None
               ) -> Callable[[Any, Any, Any, Any], float]:
    if hasattr(model, "fit") and hasattr(model, "get_params"):  # a scikit-learn estimator
        from sklearn.base import clone

        def fit_score(X_train: Any, y_train: Any, X_test: Any, y_test: Any) -> float:
            fitted = clone(model).fit(X_train, y_train)
            return scoring(fitted, X_test, y_test) if scoring else fitted.score(X_test, y_test)

        return fit_score
    if callable(model):
        return model
    raise HSEError(f"cross_validate: model must be a scikit-learn estimator or a callable "
                   f"fit_score(X_train, y_train, X_test, y_test), got {type(model).__name__}")


def _take(data: Any, index: Any) -> Any:
    """Rows of a NumPy array, a pandas object or a torch tensor."""
    if hasattr(data, "iloc"):
        return data.iloc[index]
    if type(data).__module__.startswith("torch"):
        import torch

        return data[torch.as_tensor(index)]
    return data[index]
