"""Configurable: the base class of every configurable part of a Study.

A config is a nested dict of JSON-like values. Wherever a field is typed as a
`Configurable` class, the dict found there must name the concrete subclass in
`className` (polymorphism: swapping one pipeline part for another is just another
config). Defaults live in the classes, never in the code that uses them, so filling
them in (`complete`) yields the full config that workers store and that analysis can
read without importing the Study's code.

Only subclasses of `Configurable` that have been imported (the Study's scenarios
module and whatever it imports) can be selected by `className`, and only where they
fit the declared type: a stored document can never name arbitrary code to import.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import ConfigError

C = TypeVar("C", bound="Configurable")

_REGISTRY: dict[str, type["Configurable"]] = {}
_AMBIGUOUS: dict[str, set[str]] = {}
_MISSING = object()


class Configurable:
    """Base class of configurable parts; subclasses register themselves by name.

    Set `__abstract_config__ = True` in the body of a base class that must not be
    selected by `className` itself (its subclasses still are).

    Dataclass subclasses get `get_default_values()` from their field defaults. Plain
    classes get it from their `__init__` defaults, or override it.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Abstract bases say so in their own body; their subclasses are selectable.
        cls.__abstract_config__ = cls.__dict__.get("__abstract_config__", False)
        name = cls.__name__
        known = _REGISTRY.get(name)
        if known is not None and _qualified(known) != _qualified(cls):
            _AMBIGUOUS.setdefault(name, {_qualified(known)}).add(_qualified(cls))
        _REGISTRY[name] = cls

    @classmethod
    def get_default_values(cls) -> dict[str, Any]:
        """Default value of every field that has one (as config values, not objects)."""
        return {
            name: spec.default for name, spec in _field_specs(cls).items()
            if spec.default is not _MISSING
        }

    @classmethod
    def complete_config(cls, conf: Mapping[str, Any], path: str = "") -> dict[str, Any]:
        """Validate `conf` (which must carry `className`) and fill every default."""
        return _complete_configurable(cls, conf, path)

    @classmethod
    def from_config(cls: type[C], conf: Mapping[str, Any], path: str = "") -> C:
        """Build the object `conf` describes, nested Configurables included."""
        full = _complete_configurable(cls, conf, path)
        return _build(resolve_class(cls, full["className"], path), full)

    def to_config(self) -> dict[str, Any]:
        """The config dict that rebuilds this object (dataclass instances only)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(
                f"{type(self).__name__} is not a dataclass: give its default as a dict "
                f"with 'className' instead of an instance"
            )
        out: dict[str, Any] = {"className": type(self).__name__}
        for f in dataclasses.fields(self):
            if f.init:
                out[f.name] = _as_config_value(getattr(self, f.name))
        return out


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registered_classes(base: type = Configurable) -> dict[str, type[Configurable]]:
    """Registered concrete choices for a field typed as `base`, by className."""
    return {
        name: cls for name, cls in _REGISTRY.items()
        if issubclass(cls, base) and not inspect.isabstract(cls)
        and not getattr(cls, "__abstract_config__", False)
    }


def resolve_class(base: type, class_name: Any, path: str = "") -> type[Configurable]:
    """The registered subclass of `base` called `class_name`, or a ConfigError."""
    choices = registered_classes(base)
    where = _join(path, "className")
    if not isinstance(class_name, str):
        raise ConfigError(where, f"must be a string naming a {base.__name__}, "
                                 f"one of: {_listing(choices)}")
    cls = choices.get(class_name)
    if cls is None:
        if class_name in _REGISTRY:
            problem = (f"'{class_name}' is not a {base.__name__}; "
                       f"valid here: {_listing(choices)}")
        else:
            problem = f"unknown className '{class_name}'{_suggest(class_name, choices)}; " \
                      f"valid here: {_listing(choices)}"
        raise ConfigError(where, problem)
    if class_name in _AMBIGUOUS:
        raise ConfigError(where, f"className '{class_name}' is defined in several modules "
                                 f"({', '.join(sorted(_AMBIGUOUS[class_name]))}); rename one")
    return cls


class _FieldSpec(typing.NamedTuple):
    type: Any
    default: Any  # a config value (dict for Configurables), or _MISSING


def _field_specs(cls: type) -> dict[str, _FieldSpec]:
    """Name -> (type, default) for the constructor parameters of `cls`."""
    try:
        hints = typing.get_type_hints(cls) if dataclasses.is_dataclass(cls) else \
            typing.get_type_hints(cls.__init__)
    except Exception:  # unresolved forward references: fall back to "any value"
        hints = {}
    specs: dict[str, _FieldSpec] = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if not f.init or typing.get_origin(hints.get(f.name)) is ClassVar:
                continue
            if f.default is not dataclasses.MISSING:
                default = _as_config_value(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = _as_config_value(f.default_factory())
            else:
                default = _MISSING
            specs[f.name] = _FieldSpec(hints.get(f.name, Any), default)
    else:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = _MISSING if p.default is p.empty else _as_config_value(p.default)
            specs[p.name] = _FieldSpec(hints.get(p.name, Any), default)
    overridden = cls.__dict__.get("get_default_values")
    if overridden is not None or _overrides_defaults(cls):
        for name, value in cls.get_default_values().items():
            if name in specs:
                specs[name] = _FieldSpec(specs[name].type, _as_config_value(value))
    return specs


def _overrides_defaults(cls: type) -> bool:
    for klass in cls.__mro__:
        if klass is Configurable:
            return False
        if "get_default_values" in klass.__dict__:
            return True
    return False


def _as_config_value(value: Any) -> Any:
    if isinstance(value, Configurable):
        return value.to_config()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a plain dataclass default (`field(default_factory=Sub)`): its config dict
        return {f.name: _as_config_value(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.init}
    if isinstance(value, (list, tuple)):
        return [_as_config_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_config_value(v) for k, v in value.items()}
    return copy.deepcopy(value)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _listing(choices: Mapping[str, Any] | Sequence[str]) -> str:
    names = sorted(choices)
    return ", ".join(names) if names else "(none registered: is the Study's scenarios module imported?)"


def _suggest(name: str, choices: Sequence[str] | Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _complete_configurable(base: type, value: Any, path: str,
                           require_class_name: bool = True) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        hint = " (with 'className')" if require_class_name else ""
        raise ConfigError(path, f"expected a dict describing a {base.__name__}{hint}, "
                                f"got {type(value).__name__} {value!r}")
    if require_class_name:
        if "className" not in value:
            raise ConfigError(path, f"'className' is required (a {base.__name__}: one of "
                                    f"{_listing(registered_classes(base))}), even when "
                                    f"all defaults are kept")
        cls = resolve_class(base, value["className"], path)
        out: dict[str, Any] = {"className": cls.__name__}
    else:
        cls, out = base, {}
    specs = _field_specs(cls)
    for key in value:
        if key == "className" and require_class_name:
            continue
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {key!r}")
        if key not in specs:
            raise ConfigError(_join(path, key), f"unknown key '{key}' for {cls.__name__}"
                              f"{_suggest(key, specs)}; valid keys: {_listing(specs)}")
    for name, spec in specs.items():
        where = _join(path, name)
        if name in value and value[name] is None and spec.default is None:
            out[name] = None  # a None default makes None valid (implicit Optional)
        elif name in value:
            given = value[name]
            if isinstance(spec.default, dict) and isinstance(given, Mapping) \
                    and "className" not in spec.default and not _is_configurable(spec.type):
                given = {**spec.default, **given}  # plain dict params keep unset defaults
            out[name] = _complete_value(spec.type, given, where)
        elif spec.default is None:
            out[name] = None
        elif spec.default is not _MISSING:
            out[name] = _complete_value(spec.type, spec.default, where)
        else:
            raise ConfigError(where, f"missing required value ({_type_name(spec.type)}) "
                                     f"for {cls.__name__}")
    return out


def _is_configurable(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, Configurable)


def _complete_value(tp: Any, value: Any, path: str) -> Any:
    """Check `value` against the annotation `tp`; return it with defaults filled."""
    if tp is Any or tp is object or tp is inspect.Parameter.empty:
        return json_like(value, path)
    if _is_configurable(tp):
        return _complete_configurable(tp, value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _complete_value(arg, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(path, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(path, f"must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong_type(path, "bool", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _wrong_type(path, "int", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(path, "float", value)
        if not math.isfinite(value):  # NaN != NaN: such runs could never be grouped
            raise ConfigError(path, f"must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _wrong_type(path, "str", value)
        return value
    if tp in (list, tuple) or origin in (list, tuple, Sequence, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(path, _type_name(tp), value)
        item_tp = args[0] if args and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis) \
            else Any
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(path, f"expected {len(args)} items, got {len(value)}")
            return [_complete_value(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value))]
        return [_complete_value(item_tp, v, _join(path, i)) for i, v in enumerate(value)]
    if tp is dict or origin in (dict, Mapping, typing.Mapping):
        if not isinstance(value, Mapping):
            raise _wrong_type(path, "dict", value)
        val_tp = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(path, f"dict keys must be strings, got {k!r}")
            out[k] = _complete_value(val_tp, v, _join(path, k))
        return out
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _complete_configurable(tp, value, path, require_class_name=False)
    # An annotation we do not model (a user type): accept JSON-like values as they are.
    return json_like(value, path)


def _wrong_type(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(path, f"wrong type: expected {expected}, got {type(value).__name__} {value!r}")


def json_like(value: Any, path: str) -> Any:
    """Configs are stored in MongoDB and compared across runs: JSON-like values only."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(path, f"dict keys must be strings, got {k!r}")
            out[k] = json_like(v, _join(path, k))
        return out
    if isinstance(value, (list, tuple)):
        return [json_like(v, _join(path, i)) for i, v in enumerate(value)]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_like(value.item(), path)
    raise ConfigError(path, f"values must be JSON-like (dict, list, str, number, bool, None); "
                            f"got {type(value).__name__}")


def _build(cls: type, full: Mapping[str, Any]) -> Any:
    specs = _field_specs(cls)
    kwargs = {}
    for name, value in full.items():
        if name == "className":
            continue
        kwargs[name] = _build_value(specs[name].type, value)
    return cls(**kwargs)


def _build_value(tp: Any, value: Any) -> Any:
    if _is_configurable(tp) and isinstance(value, Mapping) and "className" in value:
        return _build(resolve_class(tp, value["className"]), value)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        for arg in args:
            if _is_configurable(arg) and isinstance(value, Mapping) and "className" in value:
                return _build(resolve_class(arg, value["className"]), value)
        return value
    if origin in (list, Sequence, typing.Sequence) and args and isinstance(value, list):
        return [_build_value(args[0], v) for v in value]
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(value, Mapping):
        return _build(tp, value)
    return value


def complete(spec: type, conf: Mapping[str, Any] | None, path: str = "") -> dict[str, Any]:
    """Validate `conf` against the dataclass `spec` (top level: no `className`) and fill
    every default. Used for Scenario run configs, whose top level is fixed by the
    Scenario rather than chosen by the config."""
    return _complete_configurable(spec, conf or {}, path, require_class_name=False)


def flatten(conf: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become tuples so they can be grouped on."""
    out: dict[str, Any] = {}
    for key, value in conf.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path))
        elif isinstance(value, list):
            out[path] = _freeze(value)
        else:
            out[path] = value
    return out


def _freeze(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    return value


def set_dotted(conf: dict[str, Any], path: str, value: Any) -> None:
    """Set `conf["a"]["b"] = value` for path "a.b", creating dicts on the way."""
    keys = path.split(".")
    if not all(keys):
        raise ConfigError(path, "empty key in dotted path")
    node = conf
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(keys[: i + 1]),
                              f"is {child!r}, not a dict: cannot set '{path}' inside it")
        node = child
    node[keys[-1]] = value


def is_finite_number(value: Any) -> bool:
    """True for real numbers that are not NaN/inf (metrics must be comparable)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = [
    "Configurable", "complete", "flatten", "set_dotted", "registered_classes",
    "resolve_class", "is_finite_number",
]

