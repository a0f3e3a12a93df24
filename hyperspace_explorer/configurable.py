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
import re
import reprlib
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar, Union

from .errors import ConfigError, HSEError

C = TypeVar("C", bound="Configurable")

_REGISTRY: dict[str, type[Configurable]] = {}
_AMBIGUOUS: dict[str, set[str]] = {}
# registered_classes by base, until the next class registers: resolving a className
# is done for every Configurable of every config of a grid.
_CHOICES: dict[type, dict[str, type[Configurable]]] = {}
_MISSING = object()


class Configurable:
    """Base class of configurable parts; subclasses register themselves by name.

    Set `__abstract_config__ = True` in the body of a base class that must not be
    selected by `className` itself (its subclasses still are).

    Dataclass subclasses get `get_default_values()` from their field defaults. Plain
    classes get it from their `__init__` defaults, or override it.
    """

    __abstract_config__: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Abstract bases say so in their own body; their subclasses are selectable.
        cls.__abstract_config__ = cls.__dict__.get("__abstract_config__", False)
        name = cls.__name__
        known = _REGISTRY.get(name)
        if known is not None and _qualified(known) != _qualified(cls):
            _AMBIGUOUS.setdefault(name, {_qualified(known)}).add(_qualified(cls))
        _REGISTRY[name] = cls
        _CHOICES.clear()

    @classmethod
    def get_default_values(cls) -> dict[str, Any]:
        """Default value of every field that has one (as config values, not objects)."""
        return {
            name: copy.deepcopy(spec.default) for name, spec in _field_specs(cls).items()
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
    return dict(_choices(base))


def _choices(base: type) -> dict[str, type[Configurable]]:
    """`registered_classes(base)`, shared: callers must not change it."""
    choices = _CHOICES.get(base)
    if choices is None:
        choices = _CHOICES[base] = {
            name: cls for name, cls in _REGISTRY.items()
            if issubclass(cls, base) and not inspect.isabstract(cls)
            and not getattr(cls, "__abstract_config__", False)
        }
    return choices


def registry_state() -> tuple[tuple[str, int], ...]:
    """The identity of every registered class: it changes when a Study's module is
    imported again (edited classes replace their old selves), so what was worked
    out with the old classes can tell it is out of date."""
    return tuple((name, id(cls)) for name, cls in _REGISTRY.items())


def resolve_class(base: type[C], class_name: Any, path: str = "") -> type[C]:
    """The registered subclass of `base` called `class_name`, or a ConfigError."""
    choices = _choices(base)
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
    return typing.cast("type[C]", cls)


class _FieldSpec(typing.NamedTuple):
    type: Any
    default: Any  # a config value (dict for Configurables), or _MISSING


_SPECS: dict[type, dict[str, _FieldSpec]] = {}


def _field_specs(cls: type) -> dict[str, _FieldSpec]:
    """Name -> (type, default) for the constructor parameters of `cls`, worked out once
    per class (resolving annotations is by far the slowest part of validating a config,
    and a grid validates thousands). Callers never mutate the defaults they get."""
    specs = _SPECS.get(cls)
    if specs is None:
        specs = _SPECS[cls] = _read_field_specs(cls)
    return specs


def _read_field_specs(cls: type) -> dict[str, _FieldSpec]:
    hints = _type_hints(cls)
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
        params = list(inspect.signature(_init_of(cls)).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            default = _MISSING if p.default is p.empty else _as_config_value(p.default)
            specs[p.name] = _FieldSpec(hints.get(p.name, Any), default)
    overridden = cls.__dict__.get("get_default_values")
    if overridden is not None or _overrides_defaults(cls):
        for name, value in typing.cast(Any, cls).get_default_values().items():
            if name in specs:
                specs[name] = _FieldSpec(specs[name].type, _as_config_value(value))
    return specs


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved annotations configs are validated against, or an HSEError naming the
    class and the annotation that cannot be resolved (never a silent "accept anything")."""
    target = cls if dataclasses.is_dataclass(cls) else _init_of(cls)
    try:
        return typing.get_type_hints(target)
    except (NameError, AttributeError, TypeError, SyntaxError) as exc:
        name, annotation = _unresolvable_annotation(cls)
        field_part = f"the annotation of '{name}' ({annotation!r})" if name else "an annotation"
        raise HSEError(
            f"{_qualified(cls)}: cannot resolve {field_part} "
            f"({type(exc).__name__}: {exc}); configs are validated against these "
            f"annotations: import the name at module level in {cls.__module__} (not only "
            f"under TYPE_CHECKING), or annotate the field as typing.Any") from None


def _init_of(cls: type) -> Any:
    """The constructor a plain (non-dataclass) Configurable is configured through."""
    plain: Any = cls
    return plain.__init__


def _unresolvable_annotation(cls: type) -> tuple[str | None, Any]:
    """(field name, annotation) of the first annotation of `cls` that does not resolve."""
    owners: list[tuple[Any, Any, Any, Any]]
    if dataclasses.is_dataclass(cls):
        owners = [(k, k.__dict__.get("__annotations__", {}),
                   getattr(sys.modules.get(k.__module__), "__dict__", {}), dict(vars(k)))
                  for k in reversed(cls.__mro__)]
    else:
        init = _init_of(cls)
        owners = [(init, getattr(init, "__annotations__", {}),
                   getattr(init, "__globals__", {}), None)]
    for owner, owned, globalns, localns in owners:
        for name, annotation in owned.items():
            # one annotation at a time, resolved the way get_type_hints resolves `owner`'s
            probe: Any = type("_Probe", (), {"__annotations__": {name: annotation}}) \
                if isinstance(owner, type) else _FunctionProbe(name, annotation)
            try:
                typing.get_type_hints(probe, globalns, localns)
            except Exception:  # noqa: BLE001 - only locating the culprit for the message
                return name, annotation
    return None, None


class _FunctionProbe:
    """A stand-in for a function carrying one annotation."""

    def __init__(self, name: str, annotation: Any):
        self.__annotations__ = {name: annotation}


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
        raise _mismatch(path, f"expected a dict describing a {base.__name__}{hint}, "
                              f"got {type(value).__name__} {_show(value)}")
    if require_class_name:
        if "className" not in value:
            raise ConfigError(path, f"'className' is required (a {base.__name__}: one of "
                                    f"{_listing(registered_classes(base))}), even when "
                                    f"all defaults are kept")
        cls: type = resolve_class(base, value["className"], path)
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
            tp = _optional(spec.type) if spec.default is None else spec.type
            out[name] = _complete_value(tp, given, where)
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
    # The plain scalar types first: they are most of a config's fields.
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(path, "float", value)
        if not math.isfinite(value):  # NaN != NaN: such runs could never be grouped
            raise ConfigError(path, f"must be a finite number, got {value}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise _wrong_type(path, "int", value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _wrong_type(path, "str", value)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong_type(path, "bool", value)
        return value
    if tp is Any or tp is object or tp is inspect.Parameter.empty:
        return json_like(value, path)
    if _is_configurable(tp):
        return _complete_configurable(tp, value, path)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _complete_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise _mismatch(path, f"must be one of {list(args)}, got {_show(value)}")
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


_NONE_WORDS = {"none", "null", "nil", "undefined", ""}


def _complete_union(args: tuple[Any, ...], value: Any, path: str) -> Any:
    """`A | B | None`: the first alternative that accepts `value`. When none does, the
    error lists every alternative (None included); an error from inside a value that has
    the right shape for exactly one alternative (a dict naming a className, say) is more
    precise, so that one is raised instead."""
    accepts_none = type(None) in args
    if value is None and accepts_none:
        return None
    alternatives = [a for a in args if a is not type(None)]
    specific = []
    for arg in alternatives:
        try:
            return _complete_value(arg, value, path)
        except ConfigError as exc:
            if not (getattr(exc, "type_mismatch", False) and exc.path == path):
                specific.append(exc)
    if len(specific) == 1:
        raise specific[0]
    expected = " or ".join([_describe(a) for a in alternatives] + ["None"] * accepts_none)
    hint = " (use null in JSON, None in Python)" if accepts_none and isinstance(value, str) \
        and value.strip().lower() in _NONE_WORDS else ""
    raise _mismatch(path, f"wrong type: expected {expected}, got {type(value).__name__} "
                          f"{_show(value)}{hint}")


def _optional(tp: Any) -> Any:
    """`tp | None` (a field whose default is None accepts None: implicit Optional)."""
    if tp is Any or tp is object or tp is inspect.Parameter.empty:
        return tp
    try:
        return typing.Optional[tp]  # noqa: UP045 - tp is a runtime object, not syntax
    except TypeError:  # not a type typing can combine (a user's odd annotation): as is
        return tp


def _describe(tp: Any) -> str:
    """One accepted alternative, as an error message names it."""
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    if _is_configurable(tp):
        return f"a {tp.__name__} (dict with 'className')"
    return _type_name(tp)


def _mismatch(path: str, problem: str) -> ConfigError:
    """A ConfigError saying the value is not of the expected kind at all (a union then
    tries its other alternatives and names them all)."""
    exc = ConfigError(path, problem)
    exc.type_mismatch = True  # type: ignore[attr-defined]
    return exc


def _wrong_type(path: str, expected: str, value: Any) -> ConfigError:
    return _mismatch(path, f"wrong type: expected {expected}, got {type(value).__name__} "
                           f"{_show(value)}")


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlevel = 80, 80, 3


def _show(value: Any) -> str:
    """repr() bounded in length and depth, for messages about arbitrary user values."""
    return _REPR.repr(value)


MAX_CONFIG_DEPTH = 32
"""Deepest nesting of dicts and lists in a run config (the config dict itself is level 1).

MongoDB refuses documents nested more than 100 levels, and Sacred and pymongo walk
configs recursively (a config 200 levels deep made Sacred fail with "maximum recursion
depth exceeded" after the queue had called the run COMPLETED). 32 levels is far more
than any hyper-parameter structure needs and leaves the queue document and Sacred
record that wrap the config well inside every limit."""

MAX_CONFIG_BYTES = 1 << 20
"""Largest run config, in bytes of BSON (about its size as JSON): 1 MiB.

A run's queue document holds its config twice (as given and completed) next to the task,
metrics and error, and so does its Sacred record, each under MongoDB's 16 MB document
limit. Data sets and large arrays belong in files (or the Task), named by the config."""

_RESERVED_KEY_PREFIXES = ("py/", "json://")  # jsonpickle's tags: Sacred refuses them


_SUSPECT_KEY = re.compile(r"\A(?:\$|py/|json://|\Z)|[.=\0]")  # what _key_problem refuses


def _key_problem(key: Any) -> str | None:
    """Why `key` cannot be a config key (MongoDB field names, Sacred config keys), or None."""
    if type(key) is str and not _SUSPECT_KEY.search(key):
        return None  # the common case, in one regular-expression search
    if not isinstance(key, str):
        return f"keys must be strings, got {type(key).__name__} {_show(key)}"
    if key == "":
        return "empty key '': config keys must be non-empty strings (Sacred cannot store one)"
    if "." in key:
        return (f"key {key!r} contains '.', which MongoDB field names cannot contain "
                f"(nest a dict instead, or use another character such as '_')")
    if key.startswith("$"):
        return f"key {key!r} starts with '$', which MongoDB field names cannot (rename it)"
    if "\0" in key:
        return f"key {key!r} contains a NUL character, which MongoDB field names cannot"
    if "=" in key:
        return f"key {key!r} contains '=', which Sacred refuses in config keys"
    for prefix in _RESERVED_KEY_PREFIXES:
        if key.startswith(prefix):
            return (f"key {key!r} starts with {prefix!r}, reserved for jsonpickle tags in "
                    f"Sacred records (rename it)")
    return None


def _path_text(where: Any) -> str:
    """The dotted path of a lazily built (parent path, key) pair (see json_like)."""
    keys = []
    while not isinstance(where, str):
        where, key = where
        keys.append(key)
    for key in reversed(keys):
        where = _join(where, key)
    return where


def _key_path(path: str, key: Any) -> str:
    """Path of a key that is itself the problem: quoted, since it may contain '.'."""
    return f"{path}[{key!r}]"


def json_like(value: Any, path: str = "") -> Any:
    """A plain copy of `value` (dicts, lists, str, int, float, bool, None; tuples become
    lists, numpy scalars Python numbers), or a ConfigError naming the dotted path of the
    first part MongoDB or Sacred could not store: a value of another type, a bad key (not
    a string, empty, with '.', '=' or NUL, starting with '$', or a jsonpickle tag), an
    int outside 64 bits, text that is not valid Unicode, or nesting deeper than
    MAX_CONFIG_DEPTH levels (counted from `value`). Iterative: any depth gives a clean
    ConfigError, never RecursionError. Use `validate_config` for a whole run config."""
    root: list[Any] = [None]
    # (item, its path, depth, container to put its copy in, slot there). A path is a
    # string, or (parent path, key) turned into a string only for an error message:
    # building every path of a large grid up front would cost more than the checks.
    stack: list[tuple[Any, Any, int, Any, Any]] = [(value, path, 1, root, 0)]
    while stack:
        item, where, level, parent, slot = stack.pop()
        if item is None or isinstance(item, (bool, float)):
            parent[slot] = item
        elif isinstance(item, int):
            if not -(1 << 63) <= item < (1 << 63):
                raise ConfigError(_path_text(where), f"integer {_show(item)} does not fit in 64 bits "
                                         f"(the largest MongoDB stores); use a float or a string")
            parent[slot] = item
        elif isinstance(item, str):
            try:
                item.isascii() or item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ConfigError(_path_text(where), f"text is not valid Unicode ({exc.reason} at "
                                         f"character {exc.start})") from None
            parent[slot] = item
        elif isinstance(item, (Mapping, list, tuple)):
            if level > MAX_CONFIG_DEPTH:
                raise ConfigError(_path_text(where), f"nested deeper than {MAX_CONFIG_DEPTH} levels of "
                                         f"dicts/lists, the limit for a config (MongoDB and "
                                         f"Sacred cannot store much deeper ones); flatten it")
            if isinstance(item, Mapping):
                keys = list(item.keys())
                for key in keys:
                    problem = _key_problem(key)
                    if problem is not None:
                        raise ConfigError(_key_path(_path_text(where), key) if isinstance(key, str)
                                          else _path_text(where), problem)
                node: Any = dict.fromkeys(keys)  # keeps the order; filled below
                children = [(item[k], k) for k in keys]
            else:
                node = [None] * len(item)
                children = list(zip(item, range(len(item))))
            parent[slot] = node
            for child, key in reversed(children):  # first key first
                if child is None or type(child) in (bool, float, int, str):
                    # scalars inline (the bulk of a config): their path is never needed
                    # unless they are wrong, which only ints and strings can be
                    if (type(child) is int and not -(1 << 63) <= child < (1 << 63)) or (
                            type(child) is str and not child.isascii()):
                        stack.append((child, (where, key), level + 1, node, key))
                    else:
                        node[key] = child
                else:
                    stack.append((child, (where, key), level + 1, node, key))
        elif hasattr(item, "item") and callable(item.item):  # numpy / torch scalars
            try:
                plain = item.item()
            except Exception:  # noqa: BLE001 - e.g. an array of several values
                plain = item
            if plain is not None and not isinstance(plain, (bool, int, float, str)):
                raise ConfigError(_path_text(where), f"values must be JSON-like (dict, list, str, number, "
                                         f"bool, None); got {type(item).__name__} (convert "
                                         f"arrays with .tolist())")
            stack.append((plain, where, level, parent, slot))
        else:
            raise ConfigError(_path_text(where), f"values must be JSON-like (dict, list, str, number, "
                                     f"bool, None); got {type(item).__name__}")
    return root[0]


def validate_config(conf: Any, path: str = "") -> dict[str, Any]:
    """Check that `conf` is a run config MongoDB and Sacred can store; return a plain copy.

    The one check of a whole run config, made by `RunQueue.submit` before anything is
    queued and by `Scenario.complete_run_config` (so workers make it on documents that
    other clients wrote). Raises ConfigError naming the dotted path (under `path`) and
    the limit when:

    - `conf` is not a dict (a list, string or number given as the whole config);
    - a value is not JSON-like, or a key is not storable: keys must be non-empty strings
      without '.', '=' or NUL that do not start with '$' or a jsonpickle tag ('py/'),
      anywhere in the config (see `json_like`);
    - dicts and lists nest deeper than MAX_CONFIG_DEPTH (32) levels, the config being
      level 1 (a config of any depth gets this error, never RecursionError);
    - the config takes more than MAX_CONFIG_BYTES (1 MiB) as BSON.

    It checks storability only; `Scenario.complete_run_config` also checks the config
    against the Scenario's `config_class`.
    """
    if not isinstance(conf, Mapping):
        raise ConfigError(path, f"a run config must be a dict of parameters, got "
                                f"{type(conf).__name__} {_show(conf)}")
    plain = json_like(conf, path)
    size = _bson_size(plain)
    if size > MAX_CONFIG_BYTES:
        largest = max(plain, key=lambda k: _bson_size({k: plain[k]}))
        raise ConfigError(path, f"too large to store: {_mib(size)} ({size:,} bytes) as BSON, "
                                f"over the limit of 1 MiB ({MAX_CONFIG_BYTES:,} bytes) per "
                                f"run config (largest part: {_where(_join(path, largest))}, "
                                f"{_mib(_bson_size({largest: plain[largest]}))}); keep "
                                f"data and large arrays in files and put their path in the "
                                f"config")
    return plain


def _bson_size(doc: Mapping[str, Any]) -> int:
    import bson  # pymongo's; imported here so configs can be validated without a store

    return len(bson.encode(doc))


def _where(path: str) -> str:
    return str(ConfigError(path, "")).rsplit(":", 1)[0]  # "config.a.b", as errors write it


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


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


__all__ = [
    "Configurable", "complete", "flatten", "set_dotted", "registered_classes",
    "resolve_class", "validate_config", "json_like", "MAX_CONFIG_DEPTH", "MAX_CONFIG_BYTES",
]

