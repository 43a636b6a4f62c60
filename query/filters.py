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

Why one module of ~470 lines: the allow-list, the value coercion and the three evaluators
(LanceDB expression, pyarrow mask, metadata predicate) must agree on every field and
operator; the fuzz tests (tests/test_fuzz_filters.py) check that they do. Kept side by side,
a new operator is added to all of them in one review.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from freshindex.query.errors import FilterError
from freshindex.schemas.access import ACL_COLUMN, check_label
from freshindex.schemas.predicates import col, lit, prefix_successor, sql_literal

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
# The access condition's operators (``Filter.visible_to``): not in OPERATORS, so no caller
# filter can name them or the acl column.
ACCESS_ANY, ACCESS_UNLABELED = "any_of", "any_of_or_unlabeled"
MAX_VALUES = 1000
MAX_STRING = 1000
MAX_FILTER_CHARS = 4000  # a text filter ``FIELD OP VALUE``, before it is read
MAX_FIELD_CHARS = 300
MAX_OP_CHARS = 16
# Integer columns are int32 in the chunks schema; metadata numbers are compared as int64
# or finite floats. A value outside its range is a FilterError (422), not an overflow deep
# in pyarrow (a 500).
INT_RANGES: dict[str, tuple[int, int]] = {INT: (-(2**31), 2**31 - 1), JSON: (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Filter:
    """One condition; build with ``Filter.of(field, op, value)`` to validate and coerce."""

    field: str
    op: str
    value: Any

    @classmethod
    def of(cls, field: str, op: str, value: Any) -> Filter:
        kind = field_type(field)
        if not isinstance(op, str) or len(op) > MAX_OP_CHARS:
            raise FilterError(
                f"{field}: an operator is text of at most {MAX_OP_CHARS} characters",
                hint=f"allowed: {', '.join(OPERATORS[kind])}",
            )
        op = _ALIASES.get(op.strip().lower(), op.strip().lower())
        if op not in OPERATORS[kind]:
            raise FilterError(
                f"operator {_short(op)} is not allowed on {field!r} ({kind})",
                hint=f"allowed: {', '.join(OPERATORS[kind])}",
            )
        if op in ("in", "not_in"):
            if isinstance(value, str):
                if len(value) > MAX_FILTER_CHARS:
                    raise FilterError(
                        f"{field} {op}: the list is limited to {MAX_FILTER_CHARS} characters"
                    )
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

    @classmethod
    def visible_to(cls, principals: Sequence[str], *, unlabeled: bool = False) -> Filter:
        """The access condition of a caller (``freshindex.query.access``): rows whose ``acl``
        holds one of ``principals`` (and rows without labels when ``unlabeled``). Never
        built from a caller's filter text: ``acl`` is not a filterable field."""
        values = tuple(sorted({check_label(p) for p in principals}))
        if not values:
            raise FilterError("an access condition needs at least one principal")
        return cls(ACL_COLUMN, ACCESS_UNLABELED if unlabeled else ACCESS_ANY, values)

    @property
    def is_metadata(self) -> bool:
        return self.field.startswith(METADATA_PREFIX)

    @property
    def is_access(self) -> bool:
        return self.field == ACL_COLUMN

    def describe(self) -> str:
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.field} {self.op} {json.dumps(value, default=str)}"


def field_type(field: str) -> str:
    if not isinstance(field, str):
        raise FilterError(f"a filter field must be text, got {_short(field)}")
    if len(field) > MAX_FIELD_CHARS:
        raise FilterError(f"a filter field is at most {MAX_FIELD_CHARS} characters")
    if field.startswith(METADATA_PREFIX):
        if not _METADATA_KEY.match(field[len(METADATA_PREFIX) :]):
            raise FilterError(
                f"invalid metadata key in {_short(field)}",
                hint="metadata keys are letters, digits, '_' and '-', nested with '.'",
            )
        return JSON
    if field not in FIELDS:
        raise FilterError(
            f"unknown filter field {_short(field)}",
            hint=f"filterable: {', '.join(FIELDS)}, or metadata.<key>",
        )
    return FIELDS[field]


def _coerce(field: str, kind: str, value: Any) -> Any:
    if kind == STR:
        if not isinstance(value, str):
            raise FilterError(f"{field}: expected text, got {_short(value)}")
        if len(value) > MAX_STRING:
            raise FilterError(f"{field}: values are limited to {MAX_STRING} characters")
        return value
    if kind == INT:
        if isinstance(value, str) and re.fullmatch(r"-?\d{1,19}", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise FilterError(f"{field}: expected an integer, got {_short(value)}")
        return _in_range(field, kind, value)
    if kind == TS:
        if isinstance(value, dt.datetime):
            moment = value
        elif isinstance(value, str) and len(value) <= 64:
            try:
                moment = dt.datetime.fromisoformat(value.strip())
            except ValueError:
                raise FilterError(
                    f"{field}: expected an ISO date or time, got {_short(value)}",
                    hint="e.g. 2025-01-31 or 2025-01-31T12:00:00+00:00",
                ) from None
        else:
            raise FilterError(f"{field}: expected an ISO date or time, got {_short(value)}")
        if moment.tzinfo is None:
            return moment.replace(tzinfo=dt.UTC)
        try:  # an offset near year 1 or 9999 leaves the range datetime can hold in UTC
            return moment.astimezone(dt.UTC)
        except OverflowError:
            raise FilterError(f"{field}: {_short(value)} is out of range") from None
    # JSON metadata: scalars only
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return _in_range(field, kind, value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{field}: numbers must be finite, got {value!r}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise FilterError(f"{field}: values are limited to {MAX_STRING} characters")
        return value
    raise FilterError(f"{field}: metadata filters compare scalars, got {_short(value)}")


def _in_range(field: str, kind: str, value: int) -> int:
    low, high = INT_RANGES[kind]
    if not low <= value <= high:
        raise FilterError(
            f"{field}: {_short(value, 40)} is out of range",
            hint=f"integers here are within {low}..{high}",
        )
    return value


_SYMBOL_OPS = ("!=", "<>", "<=", ">=", "==", "=", "<", ">")  # longest first
_WORD_OPS = ("not_in", "not in", "in", "contains", "prefix")
_FIELD_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_FIELD_CHARS = _FIELD_START | frozenset("0123456789.-")


def _split_text_form(spec: str) -> tuple[str, str, str] | None:
    """(field, op, value) of ``FIELD OP VALUE``, or None when it is not that shape.

    A hand-written scanner: one pass over the text, no backtracking, so its cost is linear
    in the length whatever the input (a regex with nested ``\\s*`` took seconds on a run of
    spaces). A word operator needs whitespace on both sides, as ``page in 1,2`` does.
    """
    text = spec.strip()
    if not text or text[0] not in _FIELD_START:
        return None
    end = 1
    while end < len(text) and (text[end] in _FIELD_CHARS or text[end].isalnum()):
        end += 1
    field, rest = text[:end], text[end:]
    spaced = rest[:1].isspace()
    rest = rest.lstrip()
    for op in _SYMBOL_OPS:
        if rest.startswith(op):
            return field, op, rest[len(op) :].strip()
    if spaced:
        lowered = rest[: max(map(len, _WORD_OPS))].lower()
        for op in _WORD_OPS:
            after = rest[len(op) : len(op) + 1]
            if lowered.startswith(op) and (after.isspace() or not after):
                return field, op, rest[len(op) :].strip()
    return None


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors name the input without echoing
    a long one back."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_filter(spec: Any) -> Filter:
    """A Filter from a Filter, a (field, op, value) triple, a dict, or text ``field op value``."""
    if isinstance(spec, Filter):
        return Filter.of(spec.field, spec.op, spec.value)
    if isinstance(spec, dict):
        unknown = set(spec) - {"field", "op", "value"}
        if unknown or "field" not in spec or "value" not in spec:
            raise FilterError(
                f"a filter is {{field, op, value}}, got keys {_short(sorted(map(str, spec)))}",
                hint='e.g. {"field": "doc_id", "op": "=", "value": "guide/auth.md"}',
            )
        return Filter.of(spec["field"], spec.get("op", "="), spec["value"])
    if isinstance(spec, list | tuple) and len(spec) == 3:
        return Filter.of(*spec)
    if isinstance(spec, str):
        if len(spec) > MAX_FILTER_CHARS:
            raise FilterError(
                f"a filter is limited to {MAX_FILTER_CHARS} characters, got {len(spec)}",
                hint="filter on fewer values, or use the {field, op, value} form",
            )
        parts = _split_text_form(spec)
        if parts is None:
            raise FilterError(
                f"cannot read filter {_short(spec)}",
                hint="write FIELD OP VALUE, e.g. 'doc_id = guide/auth.md' or "
                "'page_number >= 2' or 'content_type in text/markdown,text/html'",
            )
        field, op, raw = parts
        kind = field_type(field)
        value: Any = raw
        if kind == JSON and raw:
            try:  # numbers, booleans, null and JSON lists for metadata
                value = json.loads(raw)
            except (ValueError, RecursionError):
                value = raw
        elif raw.startswith("[") and op.lower() in ("in", "not_in", "not in"):
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                raise FilterError(f"cannot read the list in {_short(spec)}") from None
        return Filter.of(field, op, value)
    raise FilterError(f"cannot read filter {_short(spec)}")


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
    expr = None
    for f in filters:
        if f.is_metadata:
            raise FilterError(f"{f.field}: metadata filters are applied in Python, not pushed down")
        if f.is_access:
            raise FilterError("the access condition has no expression form: use to_where")
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
            upper = prefix_successor(f.value)
            e = c >= lit(f.value)
            e = e if upper is None else e & (c < lit(upper))
        else:  # unreachable: Filter.of allow-lists operators
            raise FilterError(f"operator {f.op!r}")
        expr = e if expr is None else expr & e
    return expr


def to_where(filters: Sequence[Filter]):
    """What LanceDB's ``where`` takes for the column filters: the typed expression
    (``to_expr``), or, with an access condition (list functions have no expression form in
    LanceDB 0.40), SQL text rendered here from checked values (``to_sql``). None: no filters.
    """
    if not any(f.is_access for f in filters):
        return to_expr(filters) if filters else None
    return to_sql(filters)


def _sql_value(f: Filter, value: Any) -> str:
    if isinstance(value, dt.datetime):
        stamp = value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"CAST('{stamp}' AS TIMESTAMP)"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise FilterError(f"{f.field}: cannot render {_short(value)} as SQL")
    return sql_literal(value)


def to_sql(filters: Sequence[Filter]) -> str:
    """The column filters and the access condition as SQL text, ANDed; every value is a
    checked, typed value quoted by ``freshindex.schemas.predicates.sql_literal`` (a quote
    doubled; the same rendering ``where_sql`` uses), every field an allow-listed column."""
    parts = []
    for f in filters:
        if f.is_metadata:
            raise FilterError(f"{f.field}: metadata filters are applied in Python, not pushed down")
        if f.is_access:
            labels = ", ".join(sql_literal(check_label(v)) for v in f.value)
            held = f"array_has_any({ACL_COLUMN}, [{labels}])"
            parts.append(f"({ACL_COLUMN} IS NULL OR {held})" if f.op == ACCESS_UNLABELED else held)
            continue
        if f.field not in FIELDS:  # unreachable: Filter.of allow-lists fields
            raise FilterError(f"unknown filter field {_short(f.field)}")
        c = f.field
        if f.op in ("=", "!=", "<", "<=", ">", ">="):
            parts.append(f"{c} {'<>' if f.op == '!=' else f.op} {_sql_value(f, f.value)}")
        elif f.op in ("in", "not_in"):
            values = ", ".join(_sql_value(f, v) for v in f.value)
            parts.append(f"{c} {'NOT IN' if f.op == 'not_in' else 'IN'} ({values})")
        elif f.op == "contains":
            parts.append(f"contains({c}, {_sql_value(f, f.value)})")
        elif f.op == "prefix":
            upper = prefix_successor(f.value)
            low = f"{c} >= {_sql_value(f, f.value)}"
            parts.append(low if upper is None else f"{low} AND {c} < {_sql_value(f, upper)}")
        else:  # unreachable: Filter.of allow-lists operators
            raise FilterError(f"operator {f.op!r}")
    return " AND ".join(f"({p})" for p in parts)


# ---------------------------------------------------------------- pyarrow masks


def _access_mask(f: Filter, column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Rows whose label list holds one of ``f.value`` (and null lists for ACCESS_UNLABELED)."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    mask = np.zeros(len(lists), dtype=bool)
    flat = pc.list_flatten(lists)
    if len(flat):
        held = pc.is_in(flat, value_set=pa.array(list(f.value), pa.string()))
        parents = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        mask[parents[held.to_numpy(zero_copy_only=False)]] = True
    if f.op == ACCESS_UNLABELED:
        mask |= lists.is_null().to_numpy(zero_copy_only=False)
    return mask


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
        if f.is_access:
            if f.field in table.column_names:
                mask &= _access_mask(f, table.column(f.field))
            elif f.op != ACCESS_UNLABELED:  # a table from before labels: every row unlabelled
                mask &= False
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
