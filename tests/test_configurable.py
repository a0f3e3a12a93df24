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

import hyperspace_explorer.configurable as configurable
from hyperspace_explorer import Configurable, Scenario
from hyperspace_explorer.configurable import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    complete,
    flatten,
    json_like,
    registered_classes,
    resolve_class,
    set_dotted,
    validate_config,
)
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


def test_a_class_defined_after_a_lookup_is_found_and_callers_cannot_change_the_choices():
    @dataclass
    class CfgLateBase(Configurable):
        __abstract_config__ = True

    with pytest.raises(ConfigError, match="unknown className 'CfgLate'"):
        resolve_class(CfgLateBase, "CfgLate")  # the choices of this base, now cached

    @dataclass
    class CfgLate(CfgLateBase):
        x: int = 1

    assert resolve_class(CfgLateBase, "CfgLate") is CfgLate
    choices = registered_classes(CfgLateBase)
    choices.clear()  # a caller's copy
    assert registered_classes(CfgLateBase) == {"CfgLate": CfgLate}


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


# ------------------------------------------------------------------ storable configs
def nested(levels: int, key: str = "a") -> dict:
    """A config `levels` dicts deep (the config itself is level 1), built without recursion."""
    conf: dict = {}
    node = conf
    for _ in range(levels - 1):
        node[key] = {}
        node = node[key]
    return conf


def test_limits_are_the_documented_ones():
    assert MAX_CONFIG_DEPTH == 32 and MAX_CONFIG_BYTES == 1 << 20
    assert "validate_config" in configurable.__all__
    assert not hasattr(configurable, "is_finite_number")  # unused: removed


def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_refused_with_path_and_limit():
    assert validate_config(nested(MAX_CONFIG_DEPTH)) == nested(MAX_CONFIG_DEPTH)
    err = error_of(validate_config, nested(MAX_CONFIG_DEPTH + 1))
    assert err.path == ".".join(["a"] * MAX_CONFIG_DEPTH)
    assert str(err) == (f"config.{err.path}: nested deeper than 32 levels of dicts/lists, the "
                        f"limit for a config (MongoDB and Sacred cannot store much deeper "
                        f"ones); flatten it")
    # lists count as levels too, and the path says where
    deep_list: object = 1
    for _ in range(MAX_CONFIG_DEPTH):  # the config dict and 32 lists: 33 levels
        deep_list = [deep_list]
    err = error_of(validate_config, {"x": deep_list})
    assert err.path == "x" + "[0]" * 31 and "deeper than 32 levels" in str(err)


@pytest.mark.parametrize("levels", [200, 10_000])
def test_any_depth_gets_a_config_error_never_recursion_error(levels):
    for check in (validate_config, ToyScenario.complete_run_config,
                  NoopScenario.complete_run_config):
        err = error_of(check, {"model": {"className": "Linear"}, "options": nested(levels)})
        assert err.path == "options" + ".a" * (MAX_CONFIG_DEPTH - 1)
        assert "nested deeper than 32 levels" in str(err)
    loop: dict = {}
    loop["self"] = loop  # a cycle is infinitely deep
    assert "nested deeper than 32 levels" in str(error_of(validate_config, loop))


def test_a_config_over_one_mebibyte_is_refused_naming_size_limit_and_largest_part():
    small = {"model": {"className": "Linear"}, "notes": "x" * 1000}
    assert validate_config(small) == small
    big = {"model": {"className": "Linear"}, "notes": "x", "data": "y" * (15 << 20)}
    for check in (validate_config, ToyScenario.complete_run_config,
                  NoopScenario.complete_run_config):
        err = error_of(check, big)
        assert err.path == ""
        assert str(err).startswith("config: too large to store: 15.0 MiB (15,728,")
        assert "over the limit of 1 MiB (1,048,576 bytes) per run config" in str(err)
        assert "(largest part: config.data, 15.0 MiB)" in str(err)
    # just over the limit counts the BSON bytes, not the characters of one value
    err = error_of(validate_config, {"data": [0.5] * (MAX_CONFIG_BYTES // 8)})
    assert "too large to store" in str(err)


@pytest.mark.parametrize("conf, path, problem", [
    ({"options": {"a.b": 1}}, "options['a.b']", "key 'a.b' contains '.', which MongoDB field "
                                                 "names cannot contain"),
    ({"a.b": 1}, "['a.b']", "key 'a.b' contains '.'"),
    ({"options": {"$set": 1}}, "options['$set']", "key '$set' starts with '$', which MongoDB "
                                                   "field names cannot"),
    ({"options": {"": 1}}, "options['']", "empty key '': config keys must be non-empty"),
    ({"grid": [{"ok": {"": 1}}]}, "grid[0].ok['']", "empty key"),
    ({"options": {"a=b": 1}}, "options['a=b']", "contains '=', which Sacred refuses"),
    ({"options": {"py/object": 1}}, "options['py/object']", "reserved for jsonpickle tags"),
    ({"options": {"a\0b": 1}}, "options['a\\x00b']", "contains a NUL character"),
    ({"options": {3: 1}}, "options", "keys must be strings, got int 3"),
    ({"options": {"big": 2 ** 64}}, "options.big", "does not fit in 64 bits"),
    ({"options": {"text": "\ud800"}}, "options.text", "text is not valid Unicode"),
    ({"options": {"f": len}}, "options.f", "values must be JSON-like"),
])
def test_keys_and_values_mongodb_or_sacred_cannot_store_are_refused_with_the_full_path(
        conf, path, problem):
    full = {"model": {"className": "Linear"}, **conf}
    for check in (validate_config, ToyScenario.complete_run_config,
                  NoopScenario.complete_run_config):
        err = error_of(check, full)
        assert err.path == path and problem in str(err)
        where = f"config{path}" if path.startswith("[") else f"config.{path}"
        assert str(err).startswith(f"{where}: ")


def test_validate_config_returns_a_plain_copy():
    import numpy as np

    given = {"a": (1, 2), "b": np.float32(0.5), "c": {"d": np.int64(3)}, "e": None}
    plain = validate_config(given)
    assert plain == {"a": [1, 2], "b": 0.5, "c": {"d": 3}, "e": None}
    assert type(plain["b"]) is float and type(plain["c"]["d"]) is int
    assert list(validate_config({"z": 1, "a": 2, "m": 3})) == ["z", "a", "m"]  # order kept
    plain["c"]["d"] = 4
    assert given["c"]["d"] == 3
    err = error_of(validate_config, {"w": np.array([1.0, 2.0])})
    assert err.path == "w" and "convert arrays with .tolist()" in str(err)
    assert json_like([1, {"x": (2,)}], "p") == [1, {"x": [2]}]


@pytest.mark.parametrize("whole, shown", [([1, 2], "list [1, 2]"), ("Linear", "str 'Linear'"),
                                          (3, "int 3"), ([], "list []")])
def test_a_whole_config_that_is_not_a_dict_says_config(whole, shown):
    for check in (validate_config, ToyScenario.complete_run_config,
                  NoopScenario.complete_run_config):
        err = error_of(check, whole)
        assert err.path == ""
        assert str(err) == f"config: a run config must be a dict of parameters, got {shown}"
    assert NoopScenario.complete_run_config(None) == {}  # None still means "no parameters"


def test_optional_type_errors_name_every_alternative_including_none():
    err = error_of(ToyScenario.complete_run_config,
                   {"model": {"className": "Forest", "depth": "none"}})
    assert err.path == "model.depth"
    assert str(err) == ("config.model.depth: wrong type: expected int or None, got str 'none' "
                        "(use null in JSON, None in Python)")
    err = error_of(ToyScenario.complete_run_config,
                   {"model": {"className": "Forest", "depth": 2.5}})
    assert str(err) == "config.model.depth: wrong type: expected int or None, got float 2.5"
    assert ToyScenario.complete_run_config(
        {"model": {"className": "Forest", "depth": None}})["model"]["depth"] is None
    base = {"className": "CfgPipeline", "model": {"className": "Linear"}}
    err = error_of(CfgPipeline.complete_config, {**base, "extra": "null"})
    assert err.path == "extra"
    assert str(err) == ("config.extra: wrong type: expected a CfgOptimizer (dict with "
                        "'className') or None, got str 'null' (use null in JSON, None in Python)")
    # a value of the right shape for one alternative keeps that alternative's precise error
    err = error_of(CfgPipeline.complete_config, {**base, "extra": {"className": "CfgSGD",
                                                                   "lrr": 1}})
    assert err.path == "extra.lrr" and "did you mean 'lr'?" in str(err)
    err = error_of(CfgPipeline.complete_config, {**base, "extra": {"className": "CfgSGDD"}})
    assert err.path == "extra.className" and "did you mean 'CfgSGD'?" in str(err)


def test_a_none_default_makes_none_an_accepted_alternative():
    err = error_of(CfgPlain.complete_config, {"className": "CfgPlain", "size": 1,
                                              "optimizer": "None"})
    assert err.path == "optimizer"
    assert "expected a CfgOptimizer (dict with 'className') or None, got str 'None'" in str(err)
    assert "(use null in JSON, None in Python)" in str(err)


@dataclass
class CfgUnresolved(Configurable):
    size: int = 1
    weights: NoSuchTensorType = None  # noqa: F821 - the point: it cannot be resolved


def test_an_unresolvable_annotation_is_a_clear_error_not_unvalidated_configs():
    with pytest.raises(HSEError) as info:
        CfgUnresolved.complete_config({"className": "CfgUnresolved", "size": "three"})
    message = str(info.value)
    assert ".CfgUnresolved: cannot resolve the annotation of 'weights' ('NoSuchTensorType')" \
        in message
    assert "NameError" in message and "annotate the field as typing.Any" in message
