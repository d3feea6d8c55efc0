"""Checking one override against a field's annotation, and the small helpers :mod:`.schema` builds on."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration key or value that cannot work."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"tau": 1}}`` -> ``{"loss.tau": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def field_types(obj: Any) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass instance ``obj``."""
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def replace_key(obj: Any, parts: list[str], value: Any, key: str, depth: int = 0) -> Any:
    """A copy of the dataclass ``obj`` with the dotted path ``parts`` set to ``value`` (checked and coerced).

    Raises :class:`ConfigError` naming ``key`` for an unknown section or key, a scalar given for a section, or a
    value of the wrong type."""
    part = parts[depth]
    types_ = field_types(obj)
    last = depth == len(parts) - 1
    if part not in types_:
        if last:
            raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(types_))}")
        raise ConfigError(f"unknown config key {key!r}: no section {'.'.join(parts[: depth + 1])!r}")
    current = getattr(obj, part)
    if not last:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {key!r}: no section {'.'.join(parts[: depth + 1])!r}")
        return dataclasses.replace(obj, **{part: replace_key(current, parts, value, key, depth + 1)})
    if dataclasses.is_dataclass(current):
        if not isinstance(value, dict):
            raise ConfigError(f"{key!r} is a section; give a dict or set its keys one by one")
        for k, v in value.items():
            current = replace_key(current, [k], v, f"{key}.{k}")
        return dataclasses.replace(obj, **{part: current})
    return dataclasses.replace(obj, **{part: coerce(key, value, types_[part])})


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; accept ints for floats and strings that parse."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{key!r}: {value!r} is not a valid {_type_name(tp)}")
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key!r}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [coerce(key, v, item_tp) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        return _coerce_bool(key, value)
    if tp in (int, float):
        return _coerce_number(key, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key!r}: expected a string, got {value!r}")
    return value


def _coerce_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{key!r}: expected true or false, got {value!r}")


def _coerce_number(key: str, value: Any, tp: type) -> int | float:
    expected = "an integer" if tp is int else "a number"
    if isinstance(value, bool):
        raise ConfigError(f"{key!r}: expected {expected}, got {value!r}")
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return tp(value)
        except ValueError:
            pass
    raise ConfigError(f"{key!r}: expected {expected}, got {value!r}")


def _type_name(tp: Any) -> str:
    return " or ".join("none" if a is type(None) else getattr(a, "__name__", str(a)) for a in typing.get_args(tp))


def check(ok: bool, key: str, value: Any, expected: str) -> None:
    """Raise :class:`ConfigError` ``"<key> = <value> is impossible: expected <expected>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key} = {value!r} is impossible: expected {expected}")
