"""The worker's side of pruning: a tuned run's `report` / `should_prune`, applied to
its Optuna trial (the run document's `tuning: {"study", "trial"}`).

The child sends ("report", value, step) and ("should_prune",) over its pipe; the
worker (`execution.supervisor`) hands them here. The study is opened lazily, once per
worker, through the Study database's journal storage. A run whose trial is gone or
already finished (told by a tuner meanwhile) reports nothing and is never pruned: the
run itself must not fail because of the tuner's bookkeeping.
"""
from __future__ import annotations

import logging
from typing import Any

from ..storage import Storage

log = logging.getLogger("hyperspace_explorer.worker")


class TrialLinks:
    """Optuna trials of the tuned runs one worker executes."""

    def __init__(self, store: Storage):
        self.store = store
        self._storage: Any = None
        self._studies: dict[str, Any] = {}

    def _trial(self, tuning: dict[str, Any]) -> Any:
        import optuna

        if self._storage is None:
            self._storage = self.store.optuna_storage()
        name = tuning["study"]
        study = self._studies.get(name)
        if study is None:  # with the pruner its tuner chose (a study attribute)
            from .tuner import make_pruner

            spec = optuna.load_study(study_name=name, storage=self._storage).user_attrs.get(
                "hse_pruner")
            study = self._studies[name] = optuna.load_study(
                study_name=name, storage=self._storage, pruner=make_pruner(spec))
        trial_id = self._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, int(tuning["trial"]))
        return optuna.trial.Trial(study, trial_id)

    def handle(self, tuning: dict[str, Any], kind: str, *args: Any) -> bool:
        try:
            trial = self._trial(tuning)
            if kind == "report":
                value, step = args
                trial.report(value, step)
                return False
            return bool(trial.should_prune())
        except Exception as exc:  # noqa: BLE001 - a tuner problem never fails the run
            log.warning("tuning study %r trial %r: %s %s", tuning.get("study"),
                        tuning.get("trial"), kind, f"ignored ({type(exc).__name__}: {exc})")
            return False
