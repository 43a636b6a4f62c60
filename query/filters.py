"""Structured metadata filters: (field, operator, value), never SQL text from the caller.

A filter names an allow-listed column of the chunks table (or ``metadata.<key>``, a key of the
JSON ``metadata`` column), an allow-listed operator, and a typed value. It is turned into

* a typed LanceDB expression (``lancedb.expr``: no SQL string is ever assembled, values
  travel as literals) that LanceDB applies before ranking, for the FTS and LanceDB engines;
* a boolean mask computed with pyarrow, for the in-memory vector engine;
* a per-row predicate, for ``metadata.<key>`` filters (LanceDB has no JSON functions on a
  string column), applied to candidates in Python.

So ``Filter("doc_id", "=", "x' OR '1'='1")`` matches the document whose id is that literal
text, and nothing else.

Example::

    filters = parse_filters(["content_type = text/markdown", "page_number >= 2"])
    filters = parse_filters([{"field": "metadata.lang", "op": "in", "value": ["en", "de"]}])
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from query.errors import FilterError

STR, INT, TS, JSON = "string", "int", "timestamp", "json"

# The columns a filter may name, with their types. Anything else is refused.
FIELDS: dict[str, str] = {
    "chunk_id": STR,
    "doc_id": STR,
    "title": STR,
    "section": STR,
    "source_uri": STR,
    "content_type": STR,
    "run_id": STR,
    "embedding_model": STR,
    "page_number": INT,
    "chunk_index": INT,
    "token_count": INT,
    "modified_at": TS,
    "indexed_at": TS,
}
METADATA_PREFIX = "metadata."
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_\-]{1,64}(\.[A-Za-z0-9_\-]{1,64}){0,3}$")

ORDERING = ("<", "<=", ">", ">=")
OPERATORS: dict[str, tuple[str, ...]] = {
    STR: ("=", "!=", "in", "not_in", "contains", "prefix"),
    INT: ("=", "!=", *ORDERING, "in", "not_in"),
    TS: ("=", "!=", *ORDERING, "in", "not_in"),
    JSON: ("=", "!=", *ORDERING, "in", "not_in", "contains", "prefix"),
}
_ALIASES = {"==": "=", "eq": "=", "ne": "!=", "<>": "!=", "lt": "<", "le": "<=", "lte": "<="}
_ALIASES |= {"gt": ">", "ge": ">=", "gte": ">=", "not in": "not_in", "startswith": "prefix"}
MAX_VALUES = 1000
MAX_STRING = 1000


@dataclass(frozen=True)
class Filter:
    """One condition; build with ``Filter.of(field, op, value)`` to validate and coerce."""

    field: str
    op: str
    value: Any

    @classmethod
    def of(cls, field: str, op: str, value: Any) -> Filter:
        kind = field_type(field)
        op = _ALIASES.get(str(op).strip().lower(), str(op).strip().lower())
        if op not in OPERATORS[kind]:
            raise FilterError(
                f"operator {op!r} is not allowed on {field!r} ({kind})",
                hint=f"allowed: {', '.join(OPERATORS[kind])}",
            )
        if op in ("in", "not_in"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if not isinstance(value, list | tuple) or not value:
                raise FilterError(f"{field} {op}: the value must be a non-empty list")
            if len(value) > MAX_VALUES:
                raise FilterError(f"{field} {op}: at most {MAX_VALUES} values")
            coerced: Any = tuple(_coerce(field, kind, v) for v in value)
        else:
            coerced = _coerce(field, kind, value)
            if op in ("contains", "prefix") and not isinstance(coerced, str):
                raise FilterError(f"{field} {op}: the value must be text")
        return cls(field, op, coerced)

    @property
    def is_metadata(self) -> bool:
        return self.field.startswith(METADATA_PREFIX)

    def describe(self) -> str:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.field} {self.op} {json.dumps(value, default=str)}"


def field_type(field: str) -> str:
    if not isinstance(field, str):
        raise FilterError(f"a filter field must be text, got {field!r}")
    if field.startswith(METADATA_PREFIX):
        if not _METADATA_KEY.match(field[len(METADATA_PREFIX) :]):
            raise FilterError(
                f"invalid metadata key in {field!r}",
                hint="metadata keys are letters, digits, '_' and '-', nested with '.'",
            )
        return JSON
    if field not in FIELDS:
        raise FilterError(
            f"unknown filter field {field!r}",
            hint=f"filterable: {', '.join(FIELDS)}, or metadata.<key>",
        )
    return FIELDS[field]


def _coerce(field: str, kind: str, value: Any) -> Any:
    if kind == STR:
        if not isinstance(value, str):
            raise FilterError(f"{field}: expected text, got {value!r}")
        if len(value) > MAX_STRING:
            raise FilterError(f"{field}: values are limited to {MAX_STRING} characters")
        return value
    if kind == INT:
        if isinstance(value, bool):
            raise FilterError(f"{field}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
            return int(value)
        raise FilterError(f"{field}: expected an integer, got {value!r}")
    if kind == TS:
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, str):
            try:
                moment = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise FilterError(
                    f"{field}: expected an ISO date or time, got {value!r}",
                    hint="e.g. 2025-01-31 or 2025-01-31T12:00:00+00:00",
                ) from None
        else:
            raise FilterError(f"{field}: expected an ISO date or time, got {value!r}")
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    # JSON metadata: scalars only
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise FilterError(f"{field}: values are limited to {MAX_STRING} characters")
        return value
    raise FilterError(f"{field}: metadata filters compare scalars, got {value!r}")


_TEXT_FORM = re.compile(
    r"^\s*(?P<field>[A-Za-z_][\w.\-]*)\s*"
    r"(?P<op>!=|<>|<=|>=|==|=|<|>|\s(?:not_in|not in|in|contains|prefix)\s)\s*(?P<value>.*?)\s*$",
    re.IGNORECASE,
)


def parse_filter(spec: Any) -> Filter:
    """A Filter from a Filter, a (field, op, value) triple, a dict, or text ``field op value``."""
    if isinstance(spec, Filter):
        return Filter.of(spec.field, spec.op, spec.value)
    if isinstance(spec, dict):
        unknown = set(spec) - {"field", "op", "value"}
        if unknown or "field" not in spec or "value" not in spec:
            raise FilterError(
                f"a filter is {{field, op, value}}, got keys {sorted(spec)}",
                hint='e.g. {"field": "doc_id", "op": "=", "value": "guide/auth.md"}',
            )
        return Filter.of(spec["field"], spec.get("op", "="), spec["value"])
    if isinstance(spec, list | tuple) and len(spec) == 3:
        return Filter.of(*spec)
    if isinstance(spec, str):
        match = _TEXT_FORM.match(spec)
        if not match:
            raise FilterError(
                f"cannot read filter {spec!r}",
                hint="write FIELD OP VALUE, e.g. 'doc_id = guide/auth.md' or "
                "'page_number >= 2' or 'content_type in text/markdown,text/html'",
            )
        field, op, raw = match["field"], match["op"].strip(), match["value"]
        kind = field_type(field)
        value: Any = raw
        if kind == JSON and raw:
            try:  # numbers, booleans, null and JSON lists for metadata
                value = json.loads(raw)
            except ValueError:
                value = raw
        elif raw.startswith("[") and op.lower() in ("in", "not_in", "not in"):
            try:
                value = json.loads(raw)
            except ValueError as exc:
                raise FilterError(f"cannot read the list in {spec!r}: {exc}") from None
        return Filter.of(field, op, value)
    raise FilterError(f"cannot read filter {spec!r}")


def parse_filters(specs: Iterable[Any] | None) -> tuple[Filter, ...]:
    """Validate every filter (they are ANDed together)."""
    if specs is None:
        return ()
    if isinstance(specs, str | dict | Filter):
        specs = [specs]
    return tuple(parse_filter(s) for s in specs)


def split(filters: Sequence[Filter]) -> tuple[tuple[Filter, ...], tuple[Filter, ...]]:
    """(column filters, metadata filters)."""
    return (
        tuple(f for f in filters if not f.is_metadata),
        tuple(f for f in filters if f.is_metadata),
    )


# ---------------------------------------------------------------- LanceDB expressions


def to_expr(filters: Sequence[Filter]):
    """The column filters as one typed ``lancedb.expr.Expr`` (None when there are none).

    Values are literals in an expression tree, never text spliced into SQL.
    """
    from lancedb.expr import col, lit

    expr = None
    for f in filters:
        if f.is_metadata:
            raise FilterError(f"{f.field}: metadata filters are applied in Python, not pushed down")
        c = col(f.field)
        if f.op == "=":
            e = c == lit(f.value)
        elif f.op == "!=":
            e = c != lit(f.value)
        elif f.op == "<":
            e = c < lit(f.value)
        elif f.op == "<=":
            e = c <= lit(f.value)
        elif f.op == ">":
            e = c > lit(f.value)
        elif f.op == ">=":
            e = c >= lit(f.value)
        elif f.op == "in":
            e = c.isin([lit(v) for v in f.value])
        elif f.op == "not_in":
            e = ~c.isin([lit(v) for v in f.value])
        elif f.op == "contains":
            e = c.contains(lit(f.value))
        elif f.op == "prefix":  # the expression builder has no starts_with: a key range
            upper = _prefix_successor(f.value)
            e = c >= lit(f.value)
            e = e if upper is None else e & (c < lit(upper))
        else:  # unreachable: Filter.of allow-lists operators
            raise FilterError(f"operator {f.op!r}")
        expr = e if expr is None else expr & e
    return expr


def _prefix_successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code-point order, as
    UTF-8 bytes compare), or None when there is none."""
    chars = list(prefix)
    while chars:
        point = ord(chars[-1]) + 1
        if point == 0xD800:  # surrogates are not characters
            point = 0xE000
        if point <= 0x10FFFF:
            chars[-1] = chr(point)
            return "".join(chars)
        chars.pop()
    return None


# ---------------------------------------------------------------- pyarrow masks


def _column_mask(f: Filter, column: pa.ChunkedArray | pa.Array):
    t = column.type
    if f.op in ("in", "not_in"):
        values = pa.array(list(f.value), type=t)
        mask = pc.is_in(column, value_set=values)
        # SQL semantics: NULL NOT IN (...) is not true
        return pc.and_(pc.invert(mask), pc.is_valid(column)) if f.op == "not_in" else mask
    if f.op == "contains":
        return pc.match_substring(column, f.value)
    if f.op == "prefix":
        return pc.starts_with(column, f.value)
    scalar = pa.scalar(f.value, type=t)
    fn = {
        "=": pc.equal,
        "!=": pc.not_equal,
        "<": pc.less,
        "<=": pc.less_equal,
        ">": pc.greater,
        ">=": pc.greater_equal,
    }[f.op]
    return fn(column, scalar)


def arrow_mask(
    table: pa.Table, filters: Sequence[Filter], metadata: Sequence[dict] | None = None
) -> np.ndarray:
    """Boolean mask of the rows of ``table`` that pass every filter (NULL never passes).

    ``metadata`` is the parsed ``metadata`` column, needed only for metadata filters.
    """
    mask = np.ones(table.num_rows, dtype=bool)
    for f in filters:
        if f.is_metadata:
            if metadata is None:
                raise FilterError("metadata filters need the parsed metadata column")
            mask &= np.fromiter((matches_metadata(m, f) for m in metadata), bool, len(metadata))
            continue
        result = _column_mask(f, table.column(f.field))
        mask &= pc.fill_null(result, False).to_numpy(zero_copy_only=False).astype(bool)
    return mask


# ---------------------------------------------------------------- metadata predicate

_MISSING = object()


def _lookup(meta: dict, path: str) -> Any:
    node: Any = meta
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _comparable(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    return (isinstance(a, numbers) and isinstance(b, numbers)) or type(a) is type(b)


def matches_metadata(meta: dict, f: Filter) -> bool:
    """Whether a parsed metadata object passes one ``metadata.<key>`` filter.

    A missing key or a value of another type never passes (SQL NULL semantics), except that
    ``!=`` and ``not_in`` pass on a present value of another type.
    """
    value = _lookup(meta, f.field[len(METADATA_PREFIX) :])
    if value is _MISSING or value is None:
        return f.op in ("=",) and f.value is None
    if isinstance(value, list):  # a list matches when any element does (tags: ["a", "b"])
        return any(matches_metadata({"v": v}, Filter("metadata.v", f.op, f.value)) for v in value)
    if f.op == "in":
        return any(_comparable(value, v) and value == v for v in f.value)
    if f.op == "not_in":
        return not any(_comparable(value, v) and value == v for v in f.value)
    if f.op == "contains":
        return isinstance(value, str) and f.value in value
    if f.op == "prefix":
        return isinstance(value, str) and value.startswith(f.value)
    if f.op == "!=":
        return not (_comparable(value, f.value) and value == f.value)
    if not _comparable(value, f.value):
        return False
    if f.op == "=":
        return value == f.value
    return {
        "<": value < f.value,
        "<=": value <= f.value,
        ">": value > f.value,
        ">=": value >= f.value,
    }[f.op]


def matches_row(row_metadata: dict, filters: Sequence[Filter]) -> bool:
    return all(matches_metadata(row_metadata, f) for f in filters if f.is_metadata)
