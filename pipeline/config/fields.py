"""Typed parsing of configuration values: ``key=value`` text and YAML values coerced to a dataclass field's type,
dataclasses built from nested dicts, and :class:`ConfigError`, whose one-line message names the key and value."""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any, Literal

import yaml

from pipeline.config.rules import type_hints

KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


class ConfigError(ValueError):
    """A configuration that cannot be used; the one-line message names the key, the value and what is allowed."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def resolve_type(cls: type, name: str, ftype: Any) -> Any:
    return type_hints(cls).get(name, ftype)


def whole(x: float, key: str, shown: Any) -> int:
    """``x`` as an int when it is a whole number (``2e3`` is 2000); ``2.9`` is an error, never truncated."""
    if not float(x).is_integer():
        raise ConfigError(f"{key}={shown!r}: must be a whole number")
    return int(x)


def parse_text(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return text  # checked against the choices by pipeline.config.rules
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null", "") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_text(text, inner[0], key)
    if origin is tuple:
        items = [s for s in text.split(",") if s.strip()] if text.strip() not in ("", "()") else []
        return tuple(parse_text(s.strip(), args[0] if args else str, key) for s in items)
    try:
        if tp is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text) if text.strip().lstrip("+-").isdigit() else whole(float(text), key, text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{key}={text!r}: must be {KINDS.get(tp, getattr(tp, '__name__', tp))}") from None
    return yaml.safe_load(text)


def set_path(obj: Any, parts: list[str], value: Any) -> Any:
    if len(parts) == 1:
        return replace(obj, **{parts[0]: value})
    return replace(obj, **{parts[0]: set_path(getattr(obj, parts[0]), parts[1:], value)})


def merge(base: dict, new: dict, path: str, prefix: str) -> dict:
    out = dict(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if k not in base:
            valid = ", ".join(sorted(base))
            raise ConfigError(f"{path}: unknown key {key!r}; valid keys here: {valid}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise ConfigError(f"{path}: {key} must be a mapping")
            out[k] = merge(base[k], v, path, key + ".")
        else:
            out[k] = v
    return out


def build(cls: type, d: dict, where: str, prefix: str = "") -> Any:
    """``cls`` from a nested dict; errors name ``where`` (e.g. the YAML file) and the dotted key."""
    hints = type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v, tp = d[f.name], hints[f.name]
        if is_dataclass(tp):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}{prefix}{f.name}={v!r} must be a mapping")
            kwargs[f.name] = build(tp, v, where, f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = coerce(v, tp, f"{where}{prefix}{f.name}")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"{where}unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**kwargs)


def coerce(v: Any, tp: Any, key: str) -> Any:
    """A YAML (or JSON) value as the field's type: text is parsed, whole floats become ints, the rest must match."""
    origin = typing.get_origin(tp)
    if v is None:
        if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            return None
        raise ConfigError(f"{key}=None: must be {KINDS.get(tp, 'a value')}")
    if origin is Literal:
        if not isinstance(v, str):
            raise ConfigError(f"{key}={v!r}: must be one of {', '.join(map(str, typing.get_args(tp)))}")
        return v
    if origin is tuple or (
        origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is tuple for a in typing.get_args(tp))
    ):
        return tuple(v) if isinstance(v, (list, tuple)) else parse_text(str(v), tp, key)
    if isinstance(v, str) and tp is not str:
        return parse_text(v, tp, key)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    base = [a for a in typing.get_args(tp) if a is not type(None)] if origin else [tp]
    want = base[0] if base and isinstance(base[0], type) else None
    if want in (int, float) and isinstance(v, bool):
        raise ConfigError(f"{key}={v!r}: must be {KINDS[want]}")
    if want is int and isinstance(v, float):
        return whole(v, key, v)
    if want is float and isinstance(v, int):
        return float(v)
    if want is not None and not isinstance(v, want):
        raise ConfigError(f"{key}={v!r}: must be {KINDS.get(want, want.__name__)}")
    return v


def plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
