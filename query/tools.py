"""The agent's tools, all reading one pinned table version: their schemas and their code.

``search`` (vector, fts or hybrid), ``get_document``, ``list_sources``, ``filter_metadata``
and ``calculate`` (arithmetic, parsed with ``ast``, never ``eval``). ``TOOLS`` is what a
tool-calling model is offered; ``Toolbox`` runs a call on the pinned version and remembers
every hit it returned, so the answer can cite them.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from freshindex.observability import tracing
from freshindex.query.errors import QueryError
from freshindex.query.filters import parse_filters
from freshindex.query.pinning import PinnedTable
from freshindex.query.retrieval import retrieve
from freshindex.query.types import MODES, SCAN_CAPPED_WARNING, Hit, ToolSpec

_FILTERS_SCHEMA = {
    "type": "array",
    "description": "conditions ANDed together; fields: doc_id, title, section, source_uri, "
    "content_type, page_number, chunk_index, run_id, indexed_at, modified_at, metadata.<key>",
    "items": {
        "type": "object",
        "properties": {
            "field": {"type": "string"},
            "op": {
                "type": "string",
                "enum": ["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "prefix"],
            },
            "value": {},
        },
        "required": ["field", "value"],
    },
}

TOOLS = (
    ToolSpec(
        "search",
        "Search the indexed chunks. Returns the best chunks with doc_id, chunk_id and text.",
        {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "mode": {"type": "string", "enum": list(MODES)},
                "k": {"type": "integer", "minimum": 1, "maximum": 20},
                "filters": _FILTERS_SCHEMA,
            },
            "required": ["query"],
        },
    ),
    ToolSpec(
        "get_document",
        "All chunks of one document, in order.",
        {"type": "object", "properties": {"doc_id": {"type": "string"}}, "required": ["doc_id"]},
    ),
    ToolSpec(
        "list_sources",
        "The documents in the index: doc_id, title, source, content type, chunk count.",
        {
            "type": "object",
            "properties": {"filters": _FILTERS_SCHEMA, "limit": {"type": "integer"}},
        },
    ),
    ToolSpec(
        "filter_metadata",
        "Chunks whose fields or metadata match the filters (no text query).",
        {
            "type": "object",
            "properties": {"filters": _FILTERS_SCHEMA, "limit": {"type": "integer"}},
            "required": ["filters"],
        },
    ),
    ToolSpec(
        "calculate",
        "Evaluate arithmetic: + - * / // % ** and abs, round, min, max, sqrt, log, exp.",
        {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    ),
)

# ---------------------------------------------------------------- arithmetic

MAX_MAGNITUDE = 1e100  # every operand and every intermediate result stays within this
MAX_EXPONENT = 64
MAX_ROUND_DIGITS = 15
MAX_EXPRESSION_CHARS = 200


def _bounded(value: float | int) -> float | int:
    if isinstance(value, complex):  # (-8) ** 0.5
        raise QueryError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise QueryError(
            f"a number in this calculation is larger than {MAX_MAGNITUDE:g}",
            hint="the calculator is for arithmetic on quantities, not big-number work",
        )
    return value


def _power(base: float | int, exponent: float | int) -> float | int:
    """``base ** exponent``, refused before it is computed when the result would pass the
    magnitude cap (a power is where a short expression grows a huge number)."""
    if abs(exponent) > MAX_EXPONENT:
        raise QueryError(f"exponents are limited to {MAX_EXPONENT}, got {exponent:g}")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > 100:
        raise QueryError(f"{base:g} ** {exponent:g} is larger than {MAX_MAGNITUDE:g}")
    if base == 0 and exponent < 0:
        raise ZeroDivisionError("0 cannot be raised to a negative power")
    return base**exponent


def _round(value: float | int, digits: float | int = 0) -> float | int:
    if not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS:
        raise QueryError(f"round() takes a whole number of digits within ±{MAX_ROUND_DIGITS}")
    return round(value, digits)


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: _power,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
}


def calculate(expression: str) -> float | int:
    """Arithmetic on numbers only; names other than a few math functions are refused.

    Every operand and intermediate result is kept within ``MAX_MAGNITUDE`` (exponents within
    ``MAX_EXPONENT``), so no expression of at most 200 characters costs real time or memory;
    past a limit the tool answers with a ``QueryError`` the model can read.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise QueryError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise QueryError(f"not an arithmetic expression: {expression[:80]!r}") from exc

    def ev(node: ast.AST) -> float | int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return _bounded(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = ev(node.left), ev(node.right)
            return _bounded(_BINARY[type(node.op)](left, right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
            and 1 <= len(node.args) <= 8
        ):
            return _bounded(_FUNCTIONS[node.func.id](*(ev(a) for a in node.args)))
        raise QueryError(f"not allowed in arithmetic: {ast.dump(node)[:60]}")

    try:
        result = ev(tree)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError, RecursionError) as exc:
        raise QueryError(f"cannot compute {expression[:80]!r}: {exc}") from exc
    if isinstance(result, float) and result.is_integer() and abs(result) < 1e15:
        return int(result)
    return round(result, 10) if isinstance(result, float) else result


# ---------------------------------------------------------------- tools


def _hit_view(h: Hit, max_chars: int = 800) -> dict[str, Any]:
    return {
        "doc_id": h.doc_id,
        "chunk_id": h.chunk_id,
        "score": round(h.score, 4),
        "section": h.section,
        "source_uri": h.source_uri,
        "text": h.text[:max_chars],
    }


@dataclass
class Toolbox:
    """The agent's tools, all reading one pinned version."""

    pinned: PinnedTable  # the caller's view (``PinnedTable.restricted``) in the service
    default_k: int = 5
    hits_seen: dict[str, Hit] = field(default_factory=dict)
    # the request's mode and filters: the mode a search uses when the model names none, and
    # filters ANDed with the model's own on every search and listing (a model cannot widen
    # what the caller asked for)
    default_mode: str | None = None
    base_filters: Any = None

    def _filters(self, filters) -> tuple:
        return (*parse_filters(self.base_filters), *parse_filters(filters))

    def run(self, name: str, args: dict[str, Any]) -> Any:
        fn = getattr(self, f"tool_{name}", None)
        if fn is None or name not in {t.name for t in TOOLS}:
            raise QueryError(f"unknown tool {name!r}", hint=f"tools: {[t.name for t in TOOLS]}")
        if not isinstance(args, dict):
            raise QueryError(f"tool {name}: arguments must be an object")
        with tracing.span("freshindex.agent.tool", tool=name):
            return fn(**args)

    def tool_search(self, query: str, mode: str | None = None, k: int | None = None, filters=None):
        k = max(1, min(int(k or self.default_k), 20))
        mode = mode or self.default_mode or "hybrid"
        hits = retrieve(self.pinned, str(query), mode=mode, k=k, filters=self._filters(filters))
        for h in hits:
            self.hits_seen.setdefault(h.chunk_id, h)
        return [_hit_view(h) for h in hits]

    def tool_get_document(self, doc_id: str):
        rows = self.pinned.rows_where(self._filters([("doc_id", "=", str(doc_id))]))
        for r in rows:
            hit = self.pinned.hit(r, 1.0, "lookup")
            self.hits_seen.setdefault(hit.chunk_id, hit)
        return {
            "doc_id": doc_id,
            "found": bool(rows),
            "chunks": [{"chunk_id": r["chunk_id"], "text": r["text"]} for r in rows],
        }

    def tool_list_sources(self, filters=None, limit: int = 100):
        docs: dict[str, dict[str, Any]] = {}
        rows = self.pinned.rows_where(self._filters(filters))
        for r in rows:
            entry = docs.setdefault(
                r["doc_id"],
                {
                    "doc_id": r["doc_id"],
                    "title": r["title"],
                    "source_uri": r["source_uri"],
                    "content_type": r["content_type"],
                    "chunks": 0,
                },
            )
            entry["chunks"] += 1
        return _noting_cap(list(docs.values())[: max(1, int(limit))], rows)

    def tool_filter_metadata(self, filters, limit: int = 20):
        rows = self.pinned.rows_where(self._filters(filters), limit=max(1, min(int(limit), 100)))
        return _noting_cap(
            [
                {"doc_id": r["doc_id"], "chunk_id": r["chunk_id"], "text": r["text"][:300]}
                for r in rows
            ],
            rows,
        )

    def tool_calculate(self, expression: str):
        return {"expression": expression, "result": calculate(str(expression))}


def _noting_cap(items: list, rows) -> list:
    """A listing read from a capped scan ends with a note the model can read."""
    if getattr(rows, "scan_capped", False):
        return [*items, {"warning": SCAN_CAPPED_WARNING}]
    return items


def result_size(result: Any) -> int:
    return len(result) if isinstance(result, list | dict) else 1
