"""Typed parsing of configuration values: ``key=value`` text and YAML values coerced to a dataclass field's type,
dataclasses built from nested dicts, and :class:`ConfigError`, whose one-line message names the key and value."""

from __future__ import annotations

import types
import typing
from dataclasses import fields, is_dataclass, replace
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the value."""


def resolve_type(cls: type, name: str, ftype: Any) -> Any:
    hints = typing.get_type_hints(cls)
    return hints.get(name, ftype)


def parse_text(text: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
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
            return int(float(text)) if "e" in text.lower() else int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(f"{key}={text!r} is not a valid {getattr(tp, '__name__', tp)}") from None
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


def build(cls: type, d: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v, tp = d[f.name], hints[f.name]
        if is_dataclass(tp):
            kwargs[f.name] = build(tp, v, where)
        else:
            kwargs[f.name] = coerce(v, tp, f"{where}{cls.__name__}.{f.name}")
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"{where}unknown keys {sorted(unknown)} in {cls.__name__}")
    return cls(**kwargs)


def coerce(v: Any, tp: Any, key: str) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    if origin is tuple or (
        origin in (typing.Union, types.UnionType) and any(typing.get_origin(a) is tuple for a in typing.get_args(tp))
    ):
        return tuple(v) if isinstance(v, (list, tuple)) else parse_text(str(v), tp, key)
    if isinstance(v, str) and tp is not str:
        return parse_text(v, tp, key)
    if tp is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    base = [a for a in typing.get_args(tp) if a is not type(None)] if origin else [tp]
    if base and isinstance(base[0], type) and not isinstance(v, base[0]):
        if base[0] is float and isinstance(v, int):
            return float(v)
        raise ConfigError(f"{key}={v!r} is not a valid {base[0].__name__}")
    return v


def plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj
