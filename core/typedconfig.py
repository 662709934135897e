"""Typed configuration dataclasses: field types checked when a config is built.

Every configurable component owns a dataclass whose ``__post_init__`` calls
:func:`check_types` first. It compares each field with its annotation, so a JSON config that
says ``"lr": "1e-3"``, ``batch_size: 2.5`` or ``precision: "fp8"`` fails when the config is
built, with a :class:`~core.errors.ConfigError` naming the field (``optimizer.lr``) and the
type it needs, instead of a ``TypeError`` deep inside a run. Nested dataclass fields given as
dicts are built here too, and unknown keys at any depth are named with their path.

Handled annotations: ``bool``, ``int`` (never a bool, never 2.5), ``float`` (ints promoted),
``str``, ``None``, ``Literal[...]``, unions (``X | None``), ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[K, V]``, nested dataclasses and ``Any``.

Not here: range checks (``lr > 0``): each dataclass states those in its own ``__post_init__``,
after the types are known to be right.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from core.errors import ConfigError

T = TypeVar("T")

# The dotted path of the config being built ("optimizer."), so nested errors name the field.
_PREFIX: contextvars.ContextVar[str] = contextvars.ContextVar("dv_config_prefix", default="")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@contextmanager
def _nested(prefix: str) -> Iterator[None]:
    token = _PREFIX.set(prefix)
    try:
        yield
    finally:
        _PREFIX.reset(token)


def field_path(name: str) -> str:
    """``name`` qualified with the path of the config being built (``optimizer.lr``)."""
    return _PREFIX.get() + name


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        if origin is tuple:
            return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "an object"
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__} fields)"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _bad(name: str, tp: Any, value: Any) -> ConfigError:
    shown = repr(value) if not isinstance(value, dict) else "an object"
    return ConfigError(
        f"{name} must be {_describe(tp)}, got {shown} ({type(value).__name__})",
        fix=f"set {name} to {_describe(tp)}",
    )


# which JSON values each scalar annotation takes (bool is an int to Python, never to a config)
_SCALARS: dict[type, Any] = {
    bool: lambda v: isinstance(v, bool),
    int: lambda v: isinstance(v, int) and not isinstance(v, bool),
    float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),  # ints promoted
    str: lambda v: isinstance(v, str),
}


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against annotation ``tp`` (ints promoted to float, lists to tuples,
    dicts built into dataclasses); a :class:`ConfigError` naming ``name`` otherwise."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _bad(name, tp, value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own, more precise, error
            return coerce(value, options[0], name)
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, name)
            except ConfigError:
                continue
        raise _bad(name, tp, value)
    if origin is Literal:
        # bool is an int: Literal[1] must not accept True, nor Literal["x"] a non-string
        if any(value == a and type(value) is type(a) for a in args):
            return value
        label = name.removesuffix(".name") if name.endswith(".name") else name
        raise ConfigError(
            f"unknown {label} {value!r}", fix="use one of " + ", ".join(repr(a) for a in args)
        )
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return build(tp, value, prefix=name + ".")
        raise _bad(name, tp, value)
    if tp in _SCALARS:
        if _SCALARS[tp](value):
            return float(value) if tp is float else value
        raise _bad(name, tp, value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise _bad(name, tp, value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value))
        if not args:
            return tuple(value)
        if len(value) != len(args):
            raise _bad(name, tp, value)
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(coerce(v, a, f"{name}[{i}]") for i, (v, a) in pairs)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise _bad(name, tp, value)
        return [coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise _bad(name, tp, value)
        if not args:
            return value
        return {
            coerce(k, args[0], f"{name} key"): coerce(v, args[1], f"{name}[{k!r}]")
            for k, v in value.items()
        }
    return value  # an annotation this module does not know: left to the dataclass


def check_types(obj: Any) -> None:
    """Check (and normalise) every field of dataclass ``obj`` against its annotation.

    Call it first in ``__post_init__``."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], field_path(f.name)))


def build(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """``cls(**data)`` for a config dataclass, with unknown or missing keys (at any depth) and
    wrong types reported as one :class:`ConfigError` naming the dotted path."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{prefix.rstrip('.') or cls.__name__} must be an object, got {type(data).__name__}",
            fix=f"give {cls.__name__} fields as a JSON object",
        )
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        shown = [prefix + k for k in unknown]
        raise ConfigError(
            f"unknown config key{'s' if len(shown) > 1 else ''} {', '.join(shown)}",
            fix=f"valid keys{' of ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}",
        )
    with _nested(prefix):
        return cls(**data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base`` (neither is changed): where both hold a dict under one
    key they merge key by key, anything else in ``override`` replaces. So a partial config
    section (``{"trainer": {"max_epochs": 4}}``) keeps every default it does not name."""
    out = dict(base)
    for k, v in override.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out
