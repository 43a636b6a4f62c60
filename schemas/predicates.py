"""Typed row predicates: conditions built from column names and literal values.

Every condition freshindex applies to a table (a merge's delete condition, a ledger lookup,
the bookkeeping reads, the query plane's filters) is built from these typed pieces, so a
value always travels as a literal, never as text pasted into SQL. ``Condition.expr()`` is
the ``lancedb.expr.Expr`` that LanceDB's ``search().where``, ``delete`` and
``merge_insert(...).when_not_matched_by_source_delete`` take; ``where_sql`` is the one
place a condition becomes SQL text, for an API that takes nothing else.

    cond = in_list("doc_id", ids) & eq("fingerprint", fp)
    table.search().where(cond.expr())
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Literal = str | int | bool


def col(name: str):
    """A column as a ``lancedb.expr`` expression (for the query plane's richer operators)."""
    from lancedb.expr import col as _col

    return _col(name)


def lit(value: Any):
    """A literal as a ``lancedb.expr`` expression."""
    from lancedb.expr import lit as _lit

    return _lit(value)


def prefix_successor(prefix: str) -> str | None:
    """The least string above every string that starts with ``prefix`` (code-point order, as
    UTF-8 bytes compare), or None when there is none: ``prefix <= s < successor`` is a
    starts-with condition the expression builder can say."""
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


def _check_literal(column: str, value: Any) -> Literal:
    if isinstance(value, bool | int | str):
        return value
    raise TypeError(f"{column}: a predicate value must be str, int or bool, not {type(value)}")


@dataclass(frozen=True)
class Condition:
    """``column = value``, ``column IN (values)`` or an AND of conditions (``op`` says which)."""

    op: str  # "eq" | "in" | "ge" | "and"
    column: str | None = None
    values: tuple[Literal, ...] = ()
    parts: tuple[Condition, ...] = ()

    def __and__(self, other: Condition) -> Condition:
        return and_(self, other)

    def expr(self):
        """The typed ``lancedb.expr.Expr`` of this condition."""
        if self.op == "eq":
            return col(self.column) == lit(self.values[0])
        if self.op == "in":
            return col(self.column).isin([lit(v) for v in self.values])
        if self.op == "ge":
            return col(self.column) >= lit(self.values[0])
        combined = None
        for part in self.parts:
            combined = part.expr() if combined is None else combined & part.expr()
        return combined


def eq(column: str, value: Literal) -> Condition:
    """``column = value``."""
    return Condition("eq", column, (_check_literal(column, value),))


def in_list(column: str, values: Iterable[Literal]) -> Condition:
    """``column IN (values...)``; ``values`` must not be empty (skip the condition instead)."""
    items = tuple(_check_literal(column, v) for v in values)
    if not items:
        raise ValueError(f"in_list({column!r}): no values; skip the condition instead")
    return Condition("in", column, items)


def at_least(column: str, value: dt.datetime) -> Condition:
    """``column >= value``, for a timestamp column (``value`` timezone-aware)."""
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise TypeError(f"{column}: at_least takes a timezone-aware datetime, not {value!r}")
    return Condition("ge", column, (value,))


def and_(*conditions: Condition | None) -> Condition | None:
    """Every non-None condition joined with AND (None when there are none)."""
    parts: list[Condition] = []
    for c in conditions:
        if c is not None:
            parts.extend(c.parts if c.op == "and" else (c,))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Condition("and", parts=tuple(parts))


def sql_literal(value: Literal) -> str:
    """A literal as Lance SQL text (the one quoting rule: see ``where_sql``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # Lance's SQL: a quote is doubled, a backslash is an ordinary character. (LanceDB's
    # own ``Expr.to_sql`` renders a backslash before a quote wrongly: not used here.)
    return "'" + value.replace("'", "''") + "'"


def where_sql(condition: Condition) -> str:
    """SQL text of ``condition`` for an API that accepts only a string (values quoted here,
    tested with quotes, ``%``, backslashes and SQL keywords)."""
    if condition.op == "eq":
        return f"{condition.column} = {sql_literal(condition.values[0])}"
    if condition.op == "in":
        return f"{condition.column} IN ({', '.join(map(sql_literal, condition.values))})"
    if condition.op == "ge":
        stamp = condition.values[0].astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return f"{condition.column} >= CAST('{stamp}' AS TIMESTAMP)"
    return " AND ".join(f"({where_sql(p)})" for p in condition.parts)


__all__ = [
    "Condition",
    "and_",
    "col",
    "eq",
    "in_list",
    "lit",
    "prefix_successor",
    "sql_literal",
    "where_sql",
]
