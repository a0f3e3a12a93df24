"""Optuna-driven tuning through the queue (`pip install -e ".[optuna]"`).

- `space`: search spaces on dotted config paths (`Space`, `Float`, `Int`,
  `Categorical`, `ClassChoice`, `load_space`), validated against the Study's classes.
- `tuner`: `Tuner` asks Optuna for configs, submits them as ordinary runs, tells Optuna
  their outcomes; `tune()` is the function behind `hse tune`.
- `dashboard`: `open_dashboard()` serves optuna-dashboard on the Study's database.

The Optuna study itself lives in the runs' MongoDB (`storage.journal`). Importing this
package does not import Optuna; building a study or sampling does.
"""
from __future__ import annotations

from .space import Categorical, ClassChoice, Float, Int, Space, load_space

__all__ = ["Categorical", "ClassChoice", "Float", "Int", "Space", "load_space", "Tuner",
           "TuneResult", "tune", "open_dashboard"]


def __getattr__(name: str):
    if name in ("Tuner", "TuneResult", "tune"):
        from . import tuner

        return getattr(tuner, name)
    if name == "open_dashboard":
        from .dashboard import open_dashboard

        return open_dashboard
    raise AttributeError(f"module 'hyperspace_explorer.tuning' has no attribute {name!r}")
