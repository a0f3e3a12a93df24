"""`Tuner`: Optuna proposes configs, the queue runs them, Optuna learns the outcomes.

    from hyperspace_explorer import RunQueue
    from hyperspace_explorer.tuning import Tuner, load_space

    q = RunQueue(None, "digits", "tasks", study_dir="examples/digits_study")
    result = Tuner(q, "digits", load_space("examples/digits_study/space.json"),
                   n_trials=40, parallel=4).run()
    result.best_value, result.best_config

Every proposal is an ordinary run (`RunQueue.submit(..., force=True, tuning={"study":
name, "trial": n})`), executed by the Study's workers, visible in `hse ls`, Sacred and
`results()`. The Optuna study lives in the same database (`storage.journal`), so:

- **nothing is lost when a tuner dies**: a restarted tuner (same study name, any
  machine) finds its runs by their stored trial number and tells Optuna every outcome
  it has not been told yet, including runs that finished while no tuner ran;
- **several tuners cooperate** on one study: Optuna's journal serialises them, each
  proposal slot (`n_trials` of them) is claimed once (`Storage.claim_once`), and a
  trial is told only while it is still running (told twice: the second is skipped);
- **every past run helps** (warm start): before its first proposal each tuner adds
  every COMPLETED run of the task whose complete config lies in the space as a finished
  trial, once per run id (a claim per run, then the trial's `hse_run_id` attribute).

Outcomes: COMPLETED -> the task metric's value (the study has the task's direction);
FAILED / TIMEOUT / CANCELLED (worker lost included) -> FAIL, with `hse_status`,
`hse_reason`, `hse_error` user attributes; PRUNED -> PRUNED. Trials in flight stay
RUNNING in the study, so samplers account for them (TPE with `constant_liar=True` by
default); a proposal whose config equals one in flight is discarded (told FAIL with
`hse_discarded`) and asked again.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import MAX_INT, HSEError, bounded_int, positive_int, seconds
from ..status import CANCELLED, COMPLETED, FAILED, PRUNED, TIMEOUT
from ..storage import RunFilter
from ..task import MAX_SEED
from .space import Space, load_space

log = logging.getLogger("hyperspace_explorer.tuning")

#: A proposal slot or import claimed by a tuner that stopped before finishing it
#: is taken over after this long.
CLAIM_STALE_S = 60.0
#: A RUNNING trial without a run this long after it started lost its tuner between
#: `ask` and `submit`: it is told FAIL.
ORPHAN_TRIAL_S = 60.0
DUPLICATE_RETRIES = 10
PRUNERS = ("MedianPruner", "SuccessiveHalvingPruner", "HyperbandPruner", "NopPruner",
           "PercentilePruner", "ThresholdPruner", "PatientPruner", "WilcoxonPruner")


@dataclasses.dataclass
class TuneResult:
    """What a tuning session did."""

    study_name: str
    task: str
    metric: str
    direction: str
    trials: int                    # proposed trials finished (all tuners, this study)
    counts: dict[str, int]         # Optuna trial state -> number (imported included)
    best_value: float | None
    best_params: dict[str, Any]
    best_config: dict[str, Any] | None
    best_run_id: str | None
    imported: int                  # past runs added as trials by this tuner
    skipped: dict[str, int]        # why past runs were left out -> how many
    discarded: int                 # proposals equal to a config in flight, asked again
    run_ids: list[str]             # runs this tuner submitted
    elapsed_s: float


def pruner_spec(pruner: Any) -> dict[str, Any] | None:
    """A JSON description of an Optuna pruner (stored in the study, so that workers
    build the same pruner): "median", "hyperband", ..., a dict {"name", "kwargs"}, or
    an instance of one of Optuna's pruners (its constructor arguments read back)."""
    if pruner is None:
        return None
    if isinstance(pruner, str):
        name = {"median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner",
                "sha": "SuccessiveHalvingPruner", "hyperband": "HyperbandPruner",
                "none": "NopPruner", "nop": "NopPruner",
                "percentile": "PercentilePruner"}.get(pruner.lower(), pruner)
        spec: dict[str, Any] = {"name": name, "kwargs": {}}
    elif isinstance(pruner, Mapping):
        spec = {"name": pruner.get("name"), "kwargs": dict(pruner.get("kwargs") or {})}
    else:
        cls = type(pruner)
        kwargs = {}
        for param in inspect.signature(cls.__init__).parameters.values():
            if param.name == "self":
                continue
            value = getattr(pruner, f"_{param.name}", param.default)
            if value is inspect.Parameter.empty:
                continue
            try:
                json.dumps(value)
            except TypeError:
                continue
            kwargs[param.name] = value
        spec = {"name": cls.__name__, "kwargs": kwargs}
    if spec["name"] not in PRUNERS:
        raise HSEError(f"unknown pruner {spec['name']!r}; valid: median, successive_halving, "
                       f"hyperband, none, or one of {', '.join(PRUNERS)}")
    make_pruner(spec)  # fails now on bad arguments
    return spec


def make_pruner(spec: Mapping[str, Any] | None) -> Any:
    import optuna

    if not spec:
        return optuna.pruners.NopPruner()
    if spec.get("name") not in PRUNERS:
        raise HSEError(f"unknown pruner {spec.get('name')!r}")
    try:
        return getattr(optuna.pruners, spec["name"])(**(spec.get("kwargs") or {}))
    except (TypeError, ValueError) as exc:
        raise HSEError(f"pruner {spec['name']}: {exc}") from None


def default_sampler(seed: int | None = None) -> Any:
    import optuna

    return optuna.samplers.TPESampler(constant_liar=True, seed=seed)


class Tuner:
    """Tune `task` of `queue`'s Study over `space` with Optuna (see the module)."""

    def __init__(self, queue: Any, task: str, space: Space | str | Path | Mapping[str, Any], *,
                 n_trials: int, parallel: int = 1, sampler: Any = None, pruner: Any = None,
                 study_name: str | None = None, warm_start: bool = True, seed: int | None = None,
                 priority: int = 0, max_runtime: float | None = None, poll: float = 0.5,
                 progress: bool = True, say: Callable[[str], None] | None = None):
        positive_int(n_trials, "n_trials")  # before importing Optuna (half a second)
        positive_int(parallel, "parallel")
        bounded_int(priority, "priority", -MAX_INT)  # as submit would, before any trial
        if max_runtime is not None:
            seconds(max_runtime, "max_runtime")
        seconds(poll, "poll")
        if seed is not None:  # Optuna's samplers seed NumPy with it
            bounded_int(seed, "seed", 0, MAX_SEED)
        import optuna

        self.queue, self.store = queue, queue.store
        self.task = queue.task(task)
        self.space = load_space(space)
        self.scenario_cls = queue.scenario_class(self.task)
        if self.scenario_cls is not None:
            self.space.validate(self.scenario_cls)  # ConfigError naming the path, now
        self.n_trials, self.parallel = n_trials, parallel
        self.study_name = study_name or f"{queue.study}-{self.task.name}"
        self.warm_start, self.seed = warm_start, seed
        self.priority, self.max_runtime = priority, max_runtime
        self.poll, self.progress = poll, progress
        self.say = say or (lambda text: log.info("%s", text))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.storage = self.store.optuna_storage()
        spec = pruner_spec(pruner)
        self.study = optuna.create_study(
            storage=self.storage, study_name=self.study_name, direction=self.task.direction,
            sampler=sampler if sampler is not None else default_sampler(seed),
            pruner=make_pruner(spec), load_if_exists=True)
        directions = [d.name.lower() for d in self.study.directions]
        if directions != [self.task.direction]:
            raise HSEError(f"Optuna study '{self.study_name}' exists with direction "
                           f"{directions}, but task '{self.task.name}' says "
                           f"{self.task.direction}: choose another study name")
        attrs = self.study.user_attrs
        if attrs.get("hse_task") not in (None, self.task.name):
            raise HSEError(f"Optuna study '{self.study_name}' tunes task "
                           f"'{attrs['hse_task']}', not '{self.task.name}'")
        for key, value in (("hse_task", self.task.name), ("hse_metric", self.task.metric),
                           ("hse_space", self.space.to_dict()), ("hse_pruner", spec)):
            if attrs.get(key) != value:
                self.study.set_user_attr(key, value)
        self.imported, self.discarded = 0, 0
        self.skipped: dict[str, int] = {}
        self.run_ids: list[str] = []

    # ---------------------------------------------------------------- session
    def run(self) -> TuneResult:
        """Propose, submit and tell until `n_trials` proposed trials of the study have
        finished; returns what was done. Safe to interrupt and to run again."""
        from tqdm.auto import tqdm

        started = time.monotonic()
        self.sync()
        if self.warm_start:
            self.import_past_runs()
        with tqdm(total=self.n_trials, disable=not self.progress, desc="trials",
                  unit="trial") as bar:
            while True:
                runs = self.sync()
                proposed = [t for t in self._trials() if t.user_attrs.get("hse_source") == "proposed"]
                finished = sum(t.state.is_finished() for t in proposed)
                flight = [t for t in proposed if not t.state.is_finished()]
                while len(flight) < self.parallel and self._propose(runs, flight):
                    flight = [t for t in self._trials()
                              if t.user_attrs.get("hse_source") == "proposed"
                              and not t.state.is_finished()]
                bar.n = min(finished, self.n_trials)
                bar.set_postfix({"in flight": len(flight), "best": self._best_text()},
                                refresh=True)
                if not flight and not self._slots_left():
                    break
                time.sleep(self.poll)
        return self.result(time.monotonic() - started)

    def result(self, elapsed_s: float = 0.0) -> TuneResult:
        trials = self._trials()
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        best = self._best()
        config = None
        if best is not None:
            config = self.space.config_of(best.params)
        return TuneResult(
            study_name=self.study_name, task=self.task.name, metric=self.task.metric,
            direction=self.task.direction,
            trials=sum(t.state.is_finished() for t in trials
                       if t.user_attrs.get("hse_source") == "proposed"),
            counts=counts, best_value=None if best is None else best.value,
            best_params={} if best is None else dict(best.params), best_config=config,
            best_run_id=None if best is None else best.user_attrs.get("hse_run_id"),
            imported=self.imported, skipped=dict(self.skipped), discarded=self.discarded,
            run_ids=list(self.run_ids), elapsed_s=elapsed_s)

    def _trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def _best(self) -> Any:
        import optuna

        done = [t for t in self._trials() if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            return None
        pick = max if self.task.direction == "maximize" else min
        return pick(done, key=lambda t: t.value)

    def _best_text(self) -> str:
        best = self._best()
        return "-" if best is None else f"{best.value:.4g}"

    # ---------------------------------------------------------------- proposing
    def _slot_key(self, i: int) -> str:
        return f"tune\n{self.study_name}\nslot\n{i}"

    def _slots_left(self) -> bool:
        proposed = sum(1 for t in self._trials() if t.user_attrs.get("hse_source") == "proposed")
        return proposed < self.n_trials

    def _claim_slot(self) -> int | None:
        proposed = {t.user_attrs.get("hse_slot") for t in self._trials()
                    if t.user_attrs.get("hse_source") == "proposed"}
        for i in range(self.n_trials):
            if i not in proposed and self.store.retry(
                    lambda: self.store.claim_once(self._slot_key(i), self.owner, CLAIM_STALE_S),
                    patience_s=60):
                return i
        return None

    def _propose(self, runs: dict[int, dict[str, Any]], flight: list[Any]) -> bool:
        """Ask Optuna for one config and submit it; False when no slot is left."""
        import optuna

        slot = self._claim_slot()
        if slot is None:
            return False
        in_flight = {self._key(self.space.config_of(t.params)) for t in flight if t.params}
        for attempt in range(DUPLICATE_RETRIES):
            trial = self.study.ask()
            config = self.space.sample(trial)
            if self._key(config) not in in_flight or attempt == DUPLICATE_RETRIES - 1:
                break  # (a space this small gets its duplicate after so many tries)
            self.discarded += 1
            trial.set_user_attr("hse_discarded", "duplicate of a config in flight")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        trial.set_user_attr("hse_source", "proposed")
        trial.set_user_attr("hse_slot", slot)
        ids = self.queue.submit(self.task.name, config, seeds=[self.task.seed],
                                priority=self.priority, max_runtime=self.max_runtime,
                                force=True,
                                tuning={"study": self.study_name, "trial": trial.number})
        trial.set_user_attr("hse_run_id", ids[0])
        self.store.retry(lambda: self.store.mark_claim_done(self._slot_key(slot), self.owner))
        self.run_ids += ids
        return True

    def _key(self, config: Mapping[str, Any]) -> str:
        if self.scenario_cls is not None:
            config = self.scenario_cls.complete_run_config(config)
        return json.dumps(config, sort_keys=True, default=str)

    # ---------------------------------------------------------------- telling
    def sync(self) -> dict[int, dict[str, Any]]:
        """Tell Optuna the outcome of every finished run of this study's trials that is
        still RUNNING there (idempotent); returns the runs by trial number."""
        import optuna

        runs: dict[int, dict[str, Any]] = {}
        for doc in self.store.retry(lambda: list(self.store.find_runs(
                RunFilter(study=self.queue.study, tuning_study=self.study_name),
                fields=["status", "reason", "error", "metrics", "tuning", "queued_at"]))):
            trial_no = (doc.get("tuning") or {}).get("trial")
            if isinstance(trial_no, int):
                runs[trial_no] = doc
        now = time.time()
        for trial in self._trials():
            if trial.state != optuna.trial.TrialState.RUNNING:
                continue
            doc = runs.get(trial.number)
            if doc is None:
                started = trial.datetime_start.timestamp() if trial.datetime_start else now
                if now - started > ORPHAN_TRIAL_S:
                    self._tell(trial, optuna.trial.TrialState.FAIL, None, {
                        "hse_status": "LOST", "hse_error": "no run was submitted for this "
                        "trial (its tuner stopped between asking Optuna and submitting)"})
                continue
            if trial.user_attrs.get("hse_run_id") != doc["_id"]:
                self.study._storage.set_trial_user_attr(trial._trial_id, "hse_run_id", doc["_id"])
            status = doc.get("status")
            if status not in [s.value for s in (COMPLETED, FAILED, TIMEOUT, CANCELLED, PRUNED)]:
                continue
            attrs = {"hse_status": status, "hse_reason": doc.get("reason"),
                     "hse_error": str(doc.get("error") or "")[-500:]}
            if status == COMPLETED:
                value = (doc.get("metrics") or {}).get(self.task.metric)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tell(trial, optuna.trial.TrialState.COMPLETE, float(value), {})
                else:
                    self._tell(trial, optuna.trial.TrialState.FAIL, None, {
                        **attrs, "hse_error": f"no finite '{self.task.metric}' metric"})
            elif status == PRUNED:
                self._tell(trial, optuna.trial.TrialState.PRUNED, None, attrs)
            else:
                self._tell(trial, optuna.trial.TrialState.FAIL, None, attrs)
        return runs

    def _tell(self, trial: Any, state: Any, value: float | None, attrs: dict[str, Any]) -> None:
        import optuna

        storage = self.study._storage
        try:
            for key, val in attrs.items():
                storage.set_trial_user_attr(trial._trial_id, key, val)
            self.study.tell(trial.number, value, state=state, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another tuner told it first

    # ---------------------------------------------------------------- warm start
    def import_past_runs(self) -> int:
        """Add every COMPLETED run of the task inside the space, not yet in the study,
        as a finished trial (once per run id, whichever tuner gets there first)."""
        import optuna

        # Run ids with a trial that holds (or will hold) their result. A proposed run
        # whose trial ended FAIL/PRUNED and that completed later (requeued) is imported.
        known = {t.user_attrs.get("hse_run_id") for t in self._trials()
                 if t.state in (optuna.trial.TrialState.COMPLETE,
                                optuna.trial.TrialState.RUNNING)
                 or t.user_attrs.get("hse_source") == "imported"}
        imported, skipped = 0, self.skipped
        docs = self.store.retry(lambda: list(self.store.find_runs(
            RunFilter(study=self.queue.study, task=self.task.name, status=(COMPLETED,)),
            fields=["config", "metrics", "tuning"])))
        for doc in docs:
            if doc["_id"] in known:
                continue  # in the study already
            value = (doc.get("metrics") or {}).get(self.task.metric)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                why = f"no finite '{self.task.metric}' metric"
                skipped[why] = skipped.get(why, 0) + 1
                continue
            params, why = self.space.params_of(doc.get("config") or {}, self.scenario_cls)
            if params is None:
                why = why.split("=")[0] + ("=... outside the space" if "outside" in why
                                           else " differs from the space" if "differs" in why
                                           else "")
                skipped[why] = skipped.get(why, 0) + 1
                continue
            key = f"tune\n{self.study_name}\nimport\n{doc['_id']}"
            if not self.store.retry(lambda: self.store.claim_once(key, self.owner,
                                                                  CLAIM_STALE_S)):
                continue  # another tuner is importing it
            self.study.add_trial(optuna.trial.create_trial(
                params=params, distributions=self.space.distributions(params),
                value=float(value), user_attrs={"hse_run_id": doc["_id"],
                                                "hse_source": "imported"}))
            self.store.retry(lambda: self.store.mark_claim_done(key, self.owner))
            imported += 1
        self.imported += imported
        if imported or skipped:
            self.say(f"warm start: {imported} past run(s) of task '{self.task.name}' added to "
                     f"study '{self.study_name}'" + (
                         "; left out: " + ", ".join(f"{n} ({why})" for why, n in
                                                    sorted(skipped.items())) if skipped else ""))
        return imported


def tune(mongo_uri: str | None, db: str, tasks_dir: str | Path, task: str,
         space: str | Path | Space | Mapping[str, Any], *, trials: int, parallel: int = 1,
         study_name: str | None = None, study_dir: str | Path | None = None,
         study: str | None = None, sampler: Any = None, pruner: Any = None,
         seed: int | None = None, warm_start: bool = True, progress: bool = True,
         say: Callable[[str], None] = print) -> TuneResult:
    """What `hse tune TASK --space FILE --trials N --parallel K [--study NAME]` does:
    tune `task` until `trials` proposed trials have finished (workers run them)."""
    from ..queue import RunQueue

    with RunQueue(mongo_uri, db, tasks_dir, study=study, study_dir=study_dir) as queue:
        tuner = Tuner(queue, task, space, n_trials=trials, parallel=parallel, sampler=sampler,
                      pruner=pruner, study_name=study_name, seed=seed, warm_start=warm_start,
                      progress=progress, say=say)
        say(f"tuning task '{task}' in Optuna study '{tuner.study_name}': {trials} trial(s), "
            f"{parallel} in flight")
        return tuner.run()


__all__ = ["Tuner", "TuneResult", "tune", "pruner_spec", "make_pruner", "default_sampler"]
