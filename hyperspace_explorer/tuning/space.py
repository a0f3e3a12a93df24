"""Search spaces over dotted config paths, for tuning runs of a task with Optuna.

In Python::

    space = Space({
        "model.className": ClassChoice({
            "LogisticModel": {"model.C": Float(1e-3, 1e2, log=True)},
            "ForestModel": {"model.n_estimators": Int(10, 200, step=10),
                            "model.max_depth": Categorical([None, 4, 8])},
        }),
        "train_fraction": Float(0.5, 1.0),
    }, fixed={"classifier": {"verbose": False}})

or in a JSON / YAML file (`load_space(path)`)::

    {"fixed": {"classifier": {"verbose": false}},
     "params": {
       "model.className": {"type": "class", "choices": {
           "LogisticModel": {"model.C": {"type": "float", "low": 0.001, "high": 100, "log": true}},
           "ForestModel": {"model.n_estimators": {"type": "int", "low": 10, "high": 200, "step": 10},
                           "model.max_depth": {"type": "categorical", "choices": [null, 4, 8]}}}},
       "train_fraction": {"type": "float", "low": 0.5, "high": 1.0}}}

A `ClassChoice` picks the `className` of a component; the parameters listed under a
class exist only when that class is chosen (Optuna sees them as conditional
parameters). Each parameter's Optuna name is its dotted path. `fixed` is a base config
the sampled values are set into; every other value is the classes' default.

`Space.validate(scenario_cls)` checks the space against the Study before anything is
queued: each path must exist in the complete config and every bound and choice must be
a valid value there (`Scenario.complete_run_config` on sample configs), else a
ConfigError names the path. `Space.params_of(config)` maps a past run's complete config
back to the space's parameters (warm start), or says why it lies outside.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..configurable import flatten, set_dotted, validate_config
from ..errors import ConfigError, HSEError

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Float:
    """A float in [low, high], sampled uniformly or on a log scale."""

    low: float
    high: float
    log: bool = False

    def check(self, path: str) -> None:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                   for v in (self.low, self.high)) or self.low > self.high:
            raise ConfigError(path, f"float range needs finite low <= high, got "
                                    f"[{self.low!r}, {self.high!r}]")
        if self.log and self.low <= 0:
            raise ConfigError(path, f"a log-scale range needs low > 0, got {self.low!r}")

    def distribution(self) -> Any:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def samples(self) -> list[Any]:
        return [float(self.low), float(self.high)]

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) \
            and self.low <= value <= self.high

    def to_json(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclasses.dataclass(frozen=True)
class Int:
    """An int in [low, high] (on the grid low + k*step), optionally on a log scale."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def check(self, path: str) -> None:
        if not all(isinstance(v, int) and not isinstance(v, bool)
                   for v in (self.low, self.high, self.step)) or self.low > self.high \
                or self.step < 1:
            raise ConfigError(path, f"int range needs int low <= high and step >= 1, got "
                                    f"[{self.low!r}, {self.high!r}] step {self.step!r}")
        if self.log and (self.low <= 0 or self.step != 1):
            raise ConfigError(path, "a log-scale int range needs low > 0 and step 1")

    def distribution(self) -> Any:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, step=self.step, log=self.log)

    def samples(self) -> list[Any]:
        return [self.low, self.low + (self.high - self.low) // self.step * self.step]

    def contains(self, value: Any) -> bool:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return isinstance(value, int) and not isinstance(value, bool) \
            and self.low <= value <= self.high and (value - self.low) % self.step == 0

    def to_json(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "step": self.step,
                "log": self.log}


@dataclasses.dataclass(frozen=True)
class Categorical:
    """One of a list of values (None, bools, numbers, strings)."""

    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))

    def check(self, path: str) -> None:
        if not self.choices:
            raise ConfigError(path, "categorical choices must be a non-empty list")
        for c in self.choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ConfigError(path, f"categorical choices must be None, bools, numbers or "
                                        f"strings (Optuna's rule), got {c!r}")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise ConfigError(path, f"categorical choices repeat a value: {list(self.choices)}")

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.choices))

    def samples(self) -> list[Any]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return any(_same(value, c) for c in self.choices)

    def to_json(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


@dataclasses.dataclass(frozen=True)
class ClassChoice:
    """The `className` of a component, with the parameters that apply under each class."""

    choices: Mapping[str, Mapping[str, Any]]

    def check(self, path: str) -> None:
        if not path.endswith("className") or path.split(".")[-1] != "className":
            raise ConfigError(path, "a class choice goes on a '...className' path, e.g. "
                                    "'model.className'")
        if not self.choices or not all(isinstance(k, str) for k in self.choices):
            raise ConfigError(path, "a class choice needs a non-empty map of className -> "
                                    "parameters")

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(self.choices))

    def samples(self) -> list[Any]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def to_json(self) -> dict[str, Any]:
        return {"type": "class", "choices": {
            cls: {p: d.to_json() for p, d in params.items()} for cls, params in self.choices.items()}}


Param = Float | Int | Categorical | ClassChoice


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float))
        and not isinstance(a, bool) and not isinstance(b, bool) and a == b)


def _parse(path: str, spec: Any) -> Param:
    if isinstance(spec, (Float, Int, Categorical, ClassChoice)):
        return spec
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(path, f"a parameter is an object with 'type' (float, int, "
                                f"categorical, class), got {spec!r}")
    kind = spec["type"]
    args = {k: v for k, v in spec.items() if k != "type"}
    plain = {"float": Float, "int": Int, "categorical": Categorical}.get(kind)
    if plain is not None:
        fields = dataclasses.fields(plain)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        unknown = sorted(set(args) - {f.name for f in fields})
        missing = [name for name in required if name not in args]
        if unknown or missing:
            wrong = ", ".join(([f"unknown key(s) {unknown}"] if unknown else [])
                              + ([f"missing {missing}"] if missing else []))
            article = "an" if kind == "int" else "a"
            raise ConfigError(path, f"{article} {kind} parameter takes "
                                    f"{', '.join(f.name for f in fields)} "
                                    f"({', '.join(required)} required): {wrong}")
        if kind == "categorical" and not isinstance(args["choices"], (list, tuple)):
            raise ConfigError(path, f"categorical choices must be a non-empty list, got "
                                    f"{args['choices']!r}")
        return plain(**args)
    try:
        if kind == "class":
            choices = args.pop("choices")
            if args or not isinstance(choices, Mapping):
                raise TypeError("'class' takes only 'choices': {className: {path: param}}")
            return ClassChoice({cls: {p: _parse(p, s) for p, s in (sub or {}).items()}
                                for cls, sub in choices.items()})
    except (TypeError, KeyError) as exc:
        raise ConfigError(path, f"bad {kind!r} parameter {dict(spec)!r}: {exc}") from None
    raise ConfigError(path, f"unknown parameter type {kind!r}; valid: float, int, "
                            f"categorical, class")


class Space:
    """Parameters by dotted config path over a fixed base config (see the module)."""

    def __init__(self, params: Mapping[str, Any], fixed: Mapping[str, Any] | None = None):
        if not isinstance(params, Mapping) or not params:
            raise ConfigError("", "a search space needs at least one parameter")
        self.fixed = validate_config(dict(fixed or {}))
        self.params: dict[str, Param] = {}
        for path, spec in params.items():
            param = _parse(path, spec)
            self.params[path] = param
        seen: dict[str, Param] = {}
        for path, param in self._all():
            if not all(path.split(".")):
                raise ConfigError(path, "empty key in dotted path")
            param.check(path)
            if path in seen and seen[path] != param:
                raise ConfigError(path, "defined twice with different ranges (a parameter "
                                        "under several classes must keep one definition)")
            seen[path] = param
        for param in self.params.values():
            if isinstance(param, ClassChoice):
                for sub in param.choices.values():
                    for sub_path in sub:
                        if isinstance(sub[sub_path], ClassChoice):
                            raise ConfigError(sub_path, "nested class choices are not "
                                                        "supported")

    def _all(self) -> list[tuple[str, Param]]:
        out = []
        for path, param in self.params.items():
            out.append((path, param))
            if isinstance(param, ClassChoice):
                for sub in param.choices.values():
                    out += [(p, _parse(p, s)) for p, s in sub.items()]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Space:
        if not isinstance(data, Mapping) or "params" not in data:
            raise ConfigError("", "a space file is an object with 'params' (and optionally "
                                  "'fixed')")
        unknown = set(data) - {"params", "fixed"}
        if unknown:
            raise ConfigError("", f"unknown key(s) {sorted(unknown)} in the space; valid: "
                                  f"params, fixed")
        return cls(data["params"], data.get("fixed"))

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": copy.deepcopy(self.fixed),
                "params": {p: d.to_json() for p, d in self.params.items()}}

    # ---------------------------------------------------------------- sampling
    def sample(self, trial: Any) -> dict[str, Any]:
        """The config an Optuna trial proposes (fixed values + suggested ones)."""
        config = copy.deepcopy(self.fixed)
        for path, param in self.params.items():
            value = _suggest(trial, path, param)
            set_dotted(config, path, value)
            if isinstance(param, ClassChoice):
                for sub_path, sub in param.choices[value].items():
                    set_dotted(config, sub_path, _suggest(trial, sub_path, _parse(sub_path, sub)))
        return config

    def config_of(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The config of a set of parameter values (as `sample` builds it)."""
        config = copy.deepcopy(self.fixed)
        for path, value in params.items():
            set_dotted(config, path, value)
        return config

    def distributions(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Optuna distributions of the parameters present in `params`."""
        dists = {path: param.distribution() for path, param in self._all()}
        return {name: dists[name] for name in params}

    # ---------------------------------------------------------------- checks
    def validate(self, scenario_cls: Any) -> None:
        """Raise ConfigError (naming the path) unless every path exists in the complete
        config of `scenario_cls` and every bound and choice is a valid value there."""
        for params in self._sample_points():
            config = self.config_of(params)
            complete = scenario_cls.complete_run_config(config)  # ConfigError names the path
            flat = flatten(complete)
            for path in params:
                if path not in flat and not any(k.startswith(path + ".") for k in flat):
                    raise ConfigError(path, "not a path of the complete config (its "
                                            "Scenario's config class has no such field)")

    def _sample_points(self) -> list[dict[str, Any]]:
        """Parameter sets covering every bound and choice (per class branch)."""
        branches: list[dict[str, Param]] = [{}]
        for path, param in self.params.items():
            if isinstance(param, ClassChoice):
                branches = [{**b, path: Categorical((cls,)),
                             **{p: _parse(p, s) for p, s in sub.items()}}
                            for b in branches for cls, sub in param.choices.items()]
            else:
                branches = [{**b, path: param} for b in branches]
        points = []
        for branch in branches:
            width = max(len(p.samples()) for p in branch.values())
            for i in range(width):
                points.append({path: p.samples()[min(i, len(p.samples()) - 1)]
                               for path, p in branch.items()})
        return points

    def params_of(self, config: Mapping[str, Any], scenario_cls: Any = None
                  ) -> tuple[dict[str, Any] | None, str]:
        """(parameter values, "") for a complete run config inside the space, else
        (None, why it lies outside). With `scenario_cls`, every value the space does not
        govern must equal what the space would produce (fixed values and defaults)."""
        params: dict[str, Any] = {}
        for path, param in self.params.items():
            value = _get(config, path)
            if value is _MISSING or not param.contains(value):
                return None, f"{path}={_short(value)} outside the space"
            params[path] = value
            if isinstance(param, ClassChoice):
                for sub_path, sub in param.choices[value].items():
                    sub_value = _get(config, sub_path)
                    if sub_value is _MISSING or not _parse(sub_path, sub).contains(sub_value):
                        return None, f"{sub_path}={_short(sub_value)} outside the space"
                    params[sub_path] = sub_value
        for path, value in list(params.items()):
            param = dict(self._all())[path]
            if isinstance(param, Int):
                params[path] = int(value)
            elif isinstance(param, Float):
                params[path] = float(value)
        if scenario_cls is not None:
            try:
                expected = scenario_cls.complete_run_config(self.config_of(params))
            except ConfigError as exc:
                return None, f"not a valid config today ({exc})"
            got, want = flatten(dict(config)), flatten(expected)
            for path in sorted(set(got) | set(want)):
                if path in params:
                    continue
                if not _equal(got.get(path, _MISSING), want.get(path, _MISSING)):
                    return None, f"fixed value {path}={_short(got.get(path, _MISSING))} " \
                                 f"differs from the space's {_short(want.get(path, _MISSING))}"
        return params, ""


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return a == b
    return a == b and (type(a) is type(b) or not (isinstance(a, bool) or isinstance(b, bool)))


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(missing)"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _suggest(trial: Any, path: str, param: Param) -> Any:
    if isinstance(param, Float):
        return trial.suggest_float(path, param.low, param.high, log=param.log)
    if isinstance(param, Int):
        return trial.suggest_int(path, param.low, param.high, step=param.step, log=param.log)
    return trial.suggest_categorical(path, list(param.samples()))


def load_space(source: str | Path | Mapping[str, Any] | Space) -> Space:
    """A Space from a Space, a dict, or a .json / .yaml / .yml file."""
    if isinstance(source, Space):
        return source
    if isinstance(source, Mapping):
        return Space.from_dict(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HSEError(f"cannot read the space file {path}: {exc}") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ImportError:
        raise HSEError("reading a YAML space needs PyYAML (pip install pyyaml)") from None
    except Exception as exc:  # json/yaml parse errors
        raise HSEError(f"{path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    return Space.from_dict(data)


__all__ = ["Float", "Int", "Categorical", "ClassChoice", "Space", "load_space"]
