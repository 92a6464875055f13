"""Rules on configuration values, declared on the schema's fields and checked when a configuration is resolved.

A field's annotation carries its rule, so a new field cannot be added without one (``tests/test_config.py``)::

    steps: Annotated[int, Range(ge=1)] = 2000          # numbers: an interval (ints must be whole numbers)
    flow: Literal["image", "vector"] = "image"         # enumerations: the choices are the annotation
    name: Annotated[str, Text(pattern=NAME)] = "x"     # free text (optionally a pattern)
    source: Annotated[str, Known("sources")] = "x"     # a name from a registry of the code (data sources)
    bf16: bool = False                                 # booleans: the type is the rule

``problem(spec, value)`` says what is allowed when ``value`` breaks its field's rule; ``CROSS_RULES`` are the rules
between fields. Nothing here raises :class:`~pipeline.config.fields.ConfigError` itself: ``pipeline.config.parse``
turns the problems into one-line errors. Source names come from ``pipeline.config.sources``: checking a configuration
never imports ``pipeline.data``.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Annotated, Any, Callable, Literal

from pipeline.config.sources import ALL_SOURCES, GENERATED, TEST_ONLY

NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"  # names that become directory and run names


@dataclass(frozen=True)
class Range:
    """A number's allowed interval; ``off`` is one more allowed value, meaning ``means`` (e.g. ``-1``: off)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    off: float | None = None
    means: str = "off"

    def allows(self, v: float) -> bool:
        if self.off is not None and v == self.off:
            return True
        return not (
            (self.ge is not None and v < self.ge)
            or (self.gt is not None and v <= self.gt)
            or (self.le is not None and v > self.le)
            or (self.lt is not None and v >= self.lt)
        )

    def __str__(self) -> str:
        lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lo and hi:
            text = f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
        elif lo:
            text = f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
        else:
            text = f"{'<=' if hi and hi[0] == ']' else '<'} {_num(hi[1]) if hi else 'inf'}"
        return text if self.off is None else f"{text}, or {_num(self.off)} ({self.means})"


@dataclass(frozen=True)
class Text:
    """Free text; ``pattern`` (a full match) when the text becomes a file or run name."""

    pattern: str | None = None

    def allows(self, v: str) -> bool:
        return self.pattern is None or re.fullmatch(self.pattern, v) is not None

    def __str__(self) -> str:
        return "any text" if self.pattern is None else f"text matching {self.pattern}"


@dataclass(frozen=True)
class Known:
    """A name from a registry of the code, looked up when checked: ``"sources"`` (data sources with a train pool),
    ``"ood_sources"`` (sources with a test split). For a tuple field, every item."""

    registry: str

    def names(self) -> tuple[str, ...]:
        if self.registry == "sources":
            return tuple(s for s in ALL_SOURCES if s not in TEST_ONLY)
        return tuple(s for s in ALL_SOURCES if s != "table")

    def allows(self, v: str) -> bool:
        return v in self.names()

    def __str__(self) -> str:
        return "one of " + ", ".join(self.names())


Rule = Range | Text | Known


def type_hints(cls: type, *, extras: bool = False) -> dict[str, Any]:
    """The resolved annotations of a dataclass; ``extras=True`` keeps the rules (``Annotated``)."""
    return typing.get_type_hints(cls, include_extras=extras)


@dataclass(frozen=True)
class FieldSpec:
    """One leaf field of the schema: its dotted key, base type (``int``, ``float``, ``str``, ``bool``, ``tuple``),
    whether None is allowed, its choices (``Literal``) and its rule (None when it declares none)."""

    key: str
    base: type
    optional: bool
    choices: tuple[str, ...] = ()
    rule: Rule | None = None
    item: type | None = None  # a tuple's item type

    @property
    def has_rule(self) -> bool:
        return self.base is bool or bool(self.choices) or self.rule is not None


def leaf_fields(cls: type, prefix: str = "") -> list[FieldSpec]:
    """Every leaf field of a dataclass schema, nested dataclasses walked, in declaration order."""
    out: list[FieldSpec] = []
    hints = type_hints(cls, extras=True)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            out.extend(leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append(_spec(f"{prefix}{f.name}", tp))
    return out


def _spec(key: str, tp: Any) -> FieldSpec:
    rule, optional = None, False
    while typing.get_origin(tp) in (Annotated, typing.Union, types.UnionType):
        if typing.get_origin(tp) is Annotated:
            tp, *meta = typing.get_args(tp)
            rule = next((m for m in meta if isinstance(m, (Range, Text, Known))), rule)
        else:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            optional, tp = optional or len(args) < len(typing.get_args(tp)), args[0]
    if typing.get_origin(tp) is Literal:
        return FieldSpec(key, str, optional, choices=tuple(typing.get_args(tp)), rule=rule)
    if typing.get_origin(tp) is tuple:
        return FieldSpec(key, tuple, optional, rule=rule, item=typing.get_args(tp)[0])
    return FieldSpec(key, tp, optional, rule=rule)


def problem(spec: FieldSpec, value: Any) -> str | None:
    """What is allowed, when ``value`` breaks the rule of ``spec``; None when it is fine."""
    if value is None:
        return None if spec.optional else f"must be {_kind(spec)}, not None"
    if not _has_type(spec, value):
        return f"must be {_kind(spec)}"
    if spec.base in (int, float) and not math.isfinite(value):
        return f"must be a finite {'integer' if spec.base is int else 'number'}"
    if spec.choices and value not in spec.choices:
        return "must be one of " + ", ".join(spec.choices)
    items = value if spec.base is tuple else (value,)
    if spec.rule is not None and not all(spec.rule.allows(v) for v in items):
        what = f"{_kind(spec)} {spec.rule}" if isinstance(spec.rule, Range) else str(spec.rule)
        return f"{'each item ' if spec.base is tuple else ''}must be {what}{' (or None)' if spec.optional else ''}"
    return None


def _has_type(spec: FieldSpec, v: Any) -> bool:
    if spec.base is tuple:
        return isinstance(v, tuple) and all(isinstance(i, spec.item or str) for i in v)
    if spec.base is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if spec.base is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, spec.base)


def _kind(spec: FieldSpec) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false", tuple: "a list"}[spec.base]


def _num(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# ------------------------------------------------------------------------------------------- rules between fields
def _world(cfg: Any) -> int:
    return max(cfg.train.num_workers, 1)


def _workers(cfg: Any) -> str:
    return f"{_world(cfg)} worker{'s' if _world(cfg) > 1 else ''}"


def _consistency(cfg: Any) -> str | None:
    t = cfg.train
    if t.method != "flowgmm_cons":
        return None
    if not cfg.ingest.two_views:
        return "train.method='flowgmm_cons' needs ingest.two_views=true (got false): consistency compares two views"
    if None not in (t.consistency_start_step, t.steps) and t.consistency_start_step >= t.steps:
        return (
            f"train.consistency_start_step={t.consistency_start_step} must be < train.steps={t.steps} with "
            "train.method='flowgmm_cons' (no step would have the consistency term)"
        )
    return None


def _gpus(cfg: Any) -> str | None:
    g = cfg.train.gpus_per_worker
    if cfg.train.use_gpu and not (g <= 1 or float(g).is_integer()):
        return f"train.gpus_per_worker={g!r} must be a fraction in (0, 1] or a whole number with train.use_gpu=true"
    return None


def _failure(cfg: Any) -> str | None:
    t = cfg.train
    if (
        t.steps is not None and t.inject_failure_at_step >= t.steps
    ):  # never reached: the test it is for would pass without a failure
        return f"train.inject_failure_at_step={t.inject_failure_at_step} must be < train.steps={t.steps}"
    return None


def _unlabeled_rows(cfg: Any) -> str | None:
    if cfg.ingest.unlabeled_batch is None:  # sized from the data: at most the rows there are
        return None
    d, need = cfg.data, cfg.ingest.unlabeled_batch * _world(cfg)
    if d.n_unlabeled is not None and d.n_unlabeled < need:
        return (
            f"data.n_unlabeled={d.n_unlabeled} is fewer than ingest.unlabeled_batch={cfg.ingest.unlabeled_batch} "
            f"x {_workers(cfg)} (no step per epoch)"
        )
    pool_known = d.source in GENERATED  # the generated sets' pool is data.n_points rows
    if pool_known and None not in (d.n_labeled, d.n_val) and d.n_points - d.n_labeled - d.n_val < need:
        return (
            f"data.n_points={d.n_points} leaves {d.n_points - d.n_labeled - d.n_val} unlabeled rows after "
            f"data.n_labeled={d.n_labeled} and data.n_val={d.n_val}, fewer than ingest.unlabeled_batch="
            f"{cfg.ingest.unlabeled_batch} x {_workers(cfg)}"
        )
    return None


def _labeled_rows(cfg: Any) -> str | None:
    d, i = cfg.data, cfg.ingest
    if i.labeled_batch is None or d.n_labeled is None:
        return None
    if i.labeled_mode == "split" and d.n_labeled // _world(cfg) < i.labeled_batch:
        return (
            f"data.n_labeled={d.n_labeled} is too few to split across {_workers(cfg)} with "
            f"ingest.labeled_batch={i.labeled_batch} (use ingest.labeled_mode=replicate)"
        )
    return None


TABLE_ONLY = ("path", "test_path", "image_column", "feature_columns", "num_classes")


def table_field_problem(spec: Any) -> str | None:
    """The rule between the table source's fields (a :class:`~pipeline.config.data.DataSpec`), as a one-line problem
    (None when fine): ``source = "table"`` needs ``data.path``; the table-only fields are rejected on other sources.

    >>> from pipeline.config.data import DataSpec
    >>> table_field_problem(DataSpec(source="digits", path="my.csv"))
    "data.path='my.csv' is only for data.source='table' (source is 'digits')"
    """
    if spec.source == "table":
        if not spec.path:
            return "data.source='table' needs data.path (a Parquet or CSV file), e.g. --table my.csv"
    elif spec.source == "images":
        if not spec.path:
            return "data.source='images' needs data.path (a folder of class subfolders), e.g. --images photos/"
    for key, value in (("image_size", spec.image_size), ("image_mode", spec.image_mode)):
        if spec.source != "images" and value not in ((), "auto"):
            return f"data.{key}={value!r} is only for data.source='images' (source is {spec.source!r})"
    if spec.image_size and (len(spec.image_size) > 2 or min(spec.image_size) < 1):
        return f"data.image_size={spec.image_size!r}: give S (square) or H,W, positive"
    for key in TABLE_ONLY:
        value = getattr(spec, key)
        if spec.source == "images" and key in ("path", "test_path"):
            continue
        if spec.source != "table" and value not in (None, (), ""):
            return f"data.{key}={value!r} is only for data.source='table' (source is {spec.source!r})"
    return None


def _table(cfg: Any) -> str | None:
    return table_field_problem(cfg.data)


CROSS_RULES: tuple[Callable[[Any], str | None], ...] = (
    _consistency,
    _gpus,
    _failure,
    _unlabeled_rows,
    _labeled_rows,
    _table,
)
