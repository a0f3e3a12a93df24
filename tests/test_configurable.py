"""Configurable: defaults, completion, polymorphism, error messages, building objects.

The test Study's classes (tests/study/scenarios.py) are loaded the way workers load them.
Classes defined here are prefixed `Cfg` so they never share a className with the Study
(a className defined twice would be refused as ambiguous everywhere).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from hyperspace_explorer import Configurable, Scenario
from hyperspace_explorer.configurable import (complete, flatten, registered_classes,
                                              resolve_class, set_dotted)
from hyperspace_explorer.errors import ConfigError, HSEError
from hyperspace_explorer.study import load_scenarios

STUDY = Path(__file__).resolve().parent / "study"
study = load_scenarios(STUDY)
ToyScenario, NoopScenario = study.ToyScenario, study.NoopScenario
Model, Linear, Forest = study.Model, study.Linear, study.Forest

TOY_DEFAULTS = {"epochs": 3, "noise": 0.0, "options": {"verbose": False}, "behaviour": "ok",
                "duration": 0.0}
LINEAR_DEFAULTS = {"className": "Linear", "lr": 0.1, "layers": [8]}


# ------------------------------------------------------------------ test-local classes
@dataclass
class CfgOptimizer(Configurable):
    __abstract_config__ = True


@dataclass
class CfgSGD(CfgOptimizer):
    lr: float = 0.1
    momentum: float = 0.0


@dataclass
class CfgAdam(CfgOptimizer):
    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class CfgSchedule:  # a plain (non-Configurable) nested dataclass: no className
    warmup: int = 0
    kind: str = "cosine"


@dataclass
class CfgPipeline(Configurable):
    model: Model  # required, polymorphic over the Study's models
    optimizer: CfgOptimizer = field(default_factory=lambda: CfgSGD(lr=0.01))
    schedule: CfgSchedule = field(default_factory=CfgSchedule)
    extra: Optional[CfgOptimizer] = None
    stages: list[CfgOptimizer] = field(default_factory=list)
    options: dict = field(default_factory=lambda: {"verbose": False, "workers": 2})


class CfgPlain(Configurable):  # not a dataclass: defaults come from __init__
    def __init__(self, size: int, ratio: float = 0.5, name: str = "plain",
                 optimizer: CfgOptimizer = None):
        self.size, self.ratio, self.name, self.optimizer = size, ratio, name, optimizer


def error_of(fn, *args) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return info.value


# ------------------------------------------------------------------ defaults
def test_get_default_values_of_dataclasses_and_plain_classes():
    assert Linear.get_default_values() == {"lr": 0.1, "layers": [8]}
    assert Forest.get_default_values() == {"n_trees": 10, "depth": None}
    assert ToyScenario.get_default_values() == {"dataset": "toy", "size": 10}
    # Configurable defaults become config dicts; required fields have no default
    defaults = CfgPipeline.get_default_values()
    assert "model" not in defaults
    assert defaults["optimizer"] == {"className": "CfgSGD", "lr": 0.01, "momentum": 0.0}
    assert defaults["schedule"] == {"warmup": 0, "kind": "cosine"}
    assert defaults["extra"] is None and defaults["stages"] == []
    assert CfgPlain.get_default_values() == {"ratio": 0.5, "name": "plain", "optimizer": None}
    # a mutable default is a copy: changing it does not change the class's defaults
    Linear.get_default_values()["layers"].append(99)
    assert Linear.get_default_values()["layers"] == [8]


def test_registered_classes_respect_the_base_and_abstract_markers():
    models = registered_classes(Model)
    assert set(models) == {"Linear", "Forest"}  # Model itself is abstract
    scenarios = registered_classes(Scenario)
    assert {"ToyScenario", "NoopScenario"} <= set(scenarios)
    assert "Scenario" not in scenarios and "Linear" not in scenarios
    assert resolve_class(Model, "Forest") is Forest


# ------------------------------------------------------------------ completion
def test_complete_run_config_fills_every_default():
    full = ToyScenario.complete_run_config({"model": {"className": "Linear"}})
    assert full == {"model": LINEAR_DEFAULTS, **TOY_DEFAULTS}
    # the input is not modified
    given = {"model": {"className": "Forest", "depth": 4}, "epochs": 7}
    before = {"model": {"className": "Forest", "depth": 4}, "epochs": 7}
    full = ToyScenario.complete_run_config(given)
    assert given == before
    assert full == {**TOY_DEFAULTS, "epochs": 7,
                    "model": {"className": "Forest", "n_trees": 10, "depth": 4}}


def test_int_is_accepted_for_float_and_converted():
    full = ToyScenario.complete_run_config({"model": {"className": "Linear", "lr": 1},
                                            "noise": 0})
    assert full["model"]["lr"] == 1.0 and isinstance(full["model"]["lr"], float)
    assert isinstance(full["noise"], float)
    # an integral float for an int is fine, a fractional one is not
    assert ToyScenario.complete_run_config(
        {"model": {"className": "Linear"}, "epochs": 2.0})["epochs"] == 2
    err = error_of(ToyScenario.complete_run_config,
                   {"model": {"className": "Forest", "n_trees": 2.5}})
    assert err.path == "model.n_trees" and "expected int" in str(err)


def test_plain_dict_params_are_merged_with_their_defaults():
    full = ToyScenario.complete_run_config({"model": {"className": "Linear"},
                                            "options": {"seed_data": 3}})
    assert full["options"] == {"verbose": False, "seed_data": 3}
    full = CfgPipeline.complete_config({"className": "CfgPipeline", "model": {"className": "Linear"},
                                        "options": {"workers": 8}})
    assert full["options"] == {"verbose": False, "workers": 8}


def test_nested_and_polymorphic_completion():
    conf = {"className": "CfgPipeline",
            "model": {"className": "Forest", "n_trees": 3},
            "optimizer": {"className": "CfgAdam", "lr": 1},
            "schedule": {"warmup": 5},
            "extra": {"className": "CfgSGD"},
            "stages": [{"className": "CfgSGD", "momentum": 0.9}, {"className": "CfgAdam"}]}
    full = CfgPipeline.complete_config(conf)
    assert full == {
        "className": "CfgPipeline",
        "model": {"className": "Forest", "n_trees": 3, "depth": None},
        # switching class: the new class's own defaults, nothing from the old default
        "optimizer": {"className": "CfgAdam", "lr": 1.0, "betas": [0.9, 0.999]},
        "schedule": {"warmup": 5, "kind": "cosine"},
        "extra": {"className": "CfgSGD", "lr": 0.1, "momentum": 0.0},
        "stages": [{"className": "CfgSGD", "lr": 0.1, "momentum": 0.9},
                   {"className": "CfgAdam", "lr": 0.001, "betas": [0.9, 0.999]}],
        "options": {"verbose": False, "workers": 2},
    }
    # completing a complete config changes nothing
    assert CfgPipeline.complete_config(full) == full
    # only the required field given: every default filled, nested ones included
    minimal = CfgPipeline.complete_config({"className": "CfgPipeline",
                                           "model": {"className": "Linear"}})
    assert minimal["optimizer"] == {"className": "CfgSGD", "lr": 0.01, "momentum": 0.0}
    assert minimal["schedule"] == {"warmup": 0, "kind": "cosine"}
    assert minimal["model"] == LINEAR_DEFAULTS


def test_plain_class_completion_uses_init_defaults():
    assert CfgPlain.complete_config({"className": "CfgPlain", "size": 3}) == {
        "className": "CfgPlain", "size": 3, "ratio": 0.5, "name": "plain", "optimizer": None}
    err = error_of(CfgPlain.complete_config, {"className": "CfgPlain"})
    assert err.path == "size" and "missing required value" in str(err)


def test_scenario_without_config_class_accepts_any_json_like_dict():
    assert NoopScenario.complete_run_config({"a": {"b": [1, 2]}, "c": "x"}) == \
        {"a": {"b": [1, 2]}, "c": "x"}
    assert NoopScenario.complete_run_config(None) == {}
    err = error_of(NoopScenario.complete_run_config, {"a": {"b": object()}})
    assert err.path == "a.b" and "JSON-like" in str(err)


# ------------------------------------------------------------------ className
def test_class_name_is_required_even_when_all_defaults_are_kept():
    err = error_of(ToyScenario.complete_run_config, {"model": {}})
    assert err.path == "model"
    assert "'className' is required" in str(err) and "even when all defaults are kept" in str(err)
    assert "Forest" in str(err) and "Linear" in str(err)  # the valid choices are listed
    err = error_of(ToyScenario.complete_config, {"size": 3})
    assert "'className' is required" in str(err)
    # a bare string is not a config
    err = error_of(ToyScenario.complete_run_config, {"model": "Linear"})
    assert err.path == "model" and "expected a dict" in str(err)


def test_unknown_class_name_lists_the_valid_ones():
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linaer"}})
    assert err.path == "model.className"
    assert str(err).startswith("config.model.className:")
    assert "unknown className 'Linaer'" in str(err)
    assert "did you mean 'Linear'" in str(err)
    assert "valid here: Forest, Linear" in str(err)


@pytest.mark.parametrize("name", ["os", "subprocess", "builtins", "eval", "Configurable",
                                  "Model", "__import__", "hyperspace_explorer.store.Store"])
def test_class_name_cannot_select_arbitrary_code(name):
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": name}})
    assert err.path == "model.className" and "valid here: Forest, Linear" in str(err)
    with pytest.raises(ConfigError):
        Model.from_config({"className": name})


@pytest.mark.parametrize("name", ["ToyScenario", "NoopScenario", "CfgSGD", "CfgPipeline"])
def test_registered_class_of_the_wrong_base_is_refused(name):
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": name}})
    assert err.path == "model.className"
    assert f"'{name}' is not a Model" in str(err)
    with pytest.raises(ConfigError, match="is not a Model"):
        Model.from_config({"className": name})
    # and the other way round: a Model where a Scenario is expected
    with pytest.raises(ConfigError, match="'Linear' is not a Scenario"):
        resolve_class(Scenario, "Linear", "Scenario")


def test_non_string_class_name_is_refused():
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": 3}})
    assert err.path == "model.className" and "must be a string" in str(err)


# ------------------------------------------------------------------ error messages
def test_unknown_key_names_the_dotted_path_and_suggests_the_closest_name():
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linear", "lrr": 1}})
    assert err.path == "model.lrr"
    assert str(err).startswith("config.model.lrr: unknown key 'lrr' for Linear")
    assert "did you mean 'lr'?" in str(err)
    assert "valid keys: layers, lr" in str(err)
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linear"}, "epoch": 1})
    assert err.path == "epoch" and "did you mean 'epochs'?" in str(err)
    # deep inside a list of Configurables
    err = error_of(CfgPipeline.complete_config, {
        "className": "CfgPipeline", "model": {"className": "Linear"},
        "stages": [{"className": "CfgSGD"}, {"className": "CfgAdam", "betaz": [1, 2]}]})
    assert err.path == "stages[1].betaz" and "did you mean 'betas'?" in str(err)
    # nothing close: no suggestion, but the valid keys
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linear"}, "zzz": 1})
    assert "did you mean" not in str(err) and "valid keys:" in str(err)


def test_wrong_type_names_the_dotted_path_and_the_types():
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linear", "lr": "fast"}})
    assert err.path == "model.lr"
    assert str(err) == "config.model.lr: wrong type: expected float, got str 'fast'"
    err = error_of(ToyScenario.complete_run_config,
                   {"model": {"className": "Linear", "layers": [4, "8"]}})
    assert err.path == "model.layers[1]" and "expected int, got str '8'" in str(err)
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Forest", "n_trees": True}})
    assert err.path == "model.n_trees" and "got bool" in str(err)
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Forest", "depth": "3"}})
    assert err.path == "model.depth"
    err = error_of(ToyScenario.complete_run_config, {"model": {"className": "Linear"},
                                                     "options": None})
    assert err.path == "options" and "expected dict" in str(err)
    err = error_of(CfgPipeline.complete_config, {
        "className": "CfgPipeline", "model": {"className": "Linear"},
        "optimizer": {"className": "CfgAdam", "betas": [0.9, 0.99, 0.999]}})
    assert err.path == "optimizer.betas" and "expected 2 items, got 3" in str(err)
    assert isinstance(err, ValueError) and isinstance(err, HSEError)


def test_missing_required_value_names_the_path():
    err = error_of(ToyScenario.complete_run_config, {})
    assert err.path == "model"
    assert str(err) == "config.model: missing required value (Model) for RunConfig"
    err = error_of(CfgPipeline.complete_config, {"className": "CfgPipeline"})
    assert err.path == "model" and "missing required value" in str(err)


def test_seed_inside_a_run_config_is_refused():
    for scenario in (ToyScenario, NoopScenario):
        err = error_of(scenario.complete_run_config, {"model": {"className": "Linear"}, "seed": 1})
        assert err.path == "seed" and "set per run" in str(err) and "seeds=" in str(err)


# ------------------------------------------------------------------ building objects
def test_from_config_builds_nested_objects():
    pipe = CfgPipeline.from_config({
        "className": "CfgPipeline", "model": {"className": "Forest", "depth": 2},
        "optimizer": {"className": "CfgAdam"}, "schedule": {"warmup": 3},
        "extra": {"className": "CfgSGD", "lr": 1},
        "stages": [{"className": "CfgSGD"}, {"className": "CfgAdam", "lr": 0.5}]})
    assert isinstance(pipe, CfgPipeline)
    assert pipe.model == Forest(n_trees=10, depth=2)
    assert pipe.optimizer == CfgAdam(lr=0.001, betas=(0.9, 0.999))
    assert isinstance(pipe.optimizer.betas, tuple)
    assert pipe.schedule == CfgSchedule(warmup=3, kind="cosine")
    assert pipe.extra == CfgSGD(lr=1.0, momentum=0.0) and isinstance(pipe.extra.lr, float)
    assert pipe.stages == [CfgSGD(), CfgAdam(lr=0.5)]
    assert pipe.options == {"verbose": False, "workers": 2}
    # polymorphic: the base builds the subclass the config names
    assert Model.from_config({"className": "Linear", "lr": 2}) == Linear(lr=2.0, layers=[8])
    scenario = ToyScenario.from_config({"className": "ToyScenario", "size": 20})
    assert scenario == ToyScenario(dataset="toy", size=20)
    plain = CfgPlain.from_config({"className": "CfgPlain", "size": 1,
                                  "optimizer": {"className": "CfgSGD"}})
    assert (plain.size, plain.ratio, plain.optimizer) == (1, 0.5, CfgSGD())
    assert CfgPlain.from_config({"className": "CfgPlain", "size": 1}).optimizer is None
    with pytest.raises(ConfigError, match="unknown key 'sizee'"):
        CfgPlain.from_config({"className": "CfgPlain", "size": 1, "sizee": 2})


def test_to_config_round_trips():
    pipe = CfgPipeline(model=Forest(depth=3), optimizer=CfgAdam(lr=0.5), stages=[CfgSGD()])
    conf = pipe.to_config()
    assert conf["className"] == "CfgPipeline"
    assert conf["model"] == {"className": "Forest", "n_trees": 10, "depth": 3}
    assert conf["optimizer"] == {"className": "CfgAdam", "lr": 0.5, "betas": [0.9, 0.999]}
    assert conf["schedule"] == {"warmup": 0, "kind": "cosine"}
    assert CfgPipeline.from_config(conf) == pipe
    assert CfgPipeline.complete_config(conf) == conf


def test_complete_on_a_plain_spec_has_no_class_name():
    assert complete(CfgSchedule, {"warmup": 2}) == {"warmup": 2, "kind": "cosine"}
    assert complete(CfgSchedule, None) == {"warmup": 0, "kind": "cosine"}
    err = error_of(complete, CfgSchedule, {"className": "CfgSchedule"})
    assert err.path == "className" and "unknown key" in str(err)


# ------------------------------------------------------------------ flatten / set_dotted
def test_flatten():
    flat = flatten({"model": {"className": "Linear", "lr": 0.1, "layers": [8, [1, 2]]},
                    "options": {}, "epochs": 3, "none": None,
                    "grid": [{"a": 1, "b": 2}]})
    assert flat == {"model.className": "Linear", "model.lr": 0.1, "model.layers": (8, (1, 2)),
                    "options": {}, "epochs": 3, "none": None,
                    "grid": ((("a", 1), ("b", 2)),)}
    hash(flat["model.layers"])  # lists become hashable tuples, so runs can be grouped
    assert flatten({"a": {"b": 1}}, prefix="config") == {"config.a.b": 1}


def test_set_dotted():
    conf: dict = {"model": {"className": "Linear"}}
    set_dotted(conf, "model.lr", 0.5)
    set_dotted(conf, "a.b.c", 1)
    set_dotted(conf, "epochs", 4)
    assert conf == {"model": {"className": "Linear", "lr": 0.5}, "a": {"b": {"c": 1}},
                    "epochs": 4}
    set_dotted(conf, "model.lr", 0.7)  # overwrite
    assert conf["model"]["lr"] == 0.7
    err = error_of(set_dotted, {"model": "Linear"}, "model.lr", 1)
    assert err.path == "model" and "not a dict" in str(err)
    err = error_of(set_dotted, {}, "model..lr", 1)
    assert "empty key" in str(err)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_float_is_refused(value):
    """NaN never equals itself: runs with it could not be grouped over seeds."""
    with pytest.raises(ConfigError, match="config.model.lr: must be a finite number"):
        ToyScenario.complete_run_config({"model": {"className": "Linear", "lr": value}})
