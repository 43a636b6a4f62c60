"""The index is its own ledger: what the chunks table knows about each document (content
hash, settings fingerprint, source, owner) and the vectors it already holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import pyarrow as pa

from freshindex.schemas.predicates import eq, in_list
from freshindex.schemas.tables import LEDGER_COLUMNS

# Lookups by key send at most this many values in one IN list.
LOOKUP_BATCH = 500


class LedgerEntry(NamedTuple):
    """What the table knows about one document: enough to skip it, and who owns it."""

    content_hash: str
    fingerprint: str
    source_uri: str | None = None
    namespace: str | None = None  # None: written before namespaces (docs/ARCHITECTURE.md)


def _ledger_rows(rows: pa.Table) -> dict[str, LedgerEntry]:
    ledger: dict[str, LedgerEntry] = {}
    if rows.num_rows == 0:
        return ledger
    columns = {c: rows[c].to_pylist() for c in rows.column_names}
    namespaces = columns.get("namespace") or [None] * rows.num_rows
    for doc_id, content_hash, fingerprint, source_uri, namespace in zip(
        columns["doc_id"],
        columns["content_hash"],
        columns["fingerprint"],
        columns["source_uri"],
        namespaces,
        strict=True,
    ):
        ledger[doc_id] = LedgerEntry(content_hash, fingerprint, source_uri, namespace)
    return ledger


def _ledger_columns(table) -> list[str]:
    # a table written before the namespace column existed has none: every entry is legacy
    return [c for c in LEDGER_COLUMNS if c in table.schema.names]


def read_ledger(table) -> dict[str, LedgerEntry]:
    """doc_id -> LedgerEntry of every document in the table."""
    rows = table.search().select(_ledger_columns(table)).limit(None).to_arrow()
    return _ledger_rows(rows)


def ledger_of(table, doc_ids: Iterable[str]) -> dict[str, LedgerEntry]:
    """doc_id -> LedgerEntry for those of ``doc_ids`` the table holds."""
    wanted = sorted(set(doc_ids))
    ledger: dict[str, LedgerEntry] = {}
    columns = _ledger_columns(table)
    for start in range(0, len(wanted), LOOKUP_BATCH):
        condition = in_list("doc_id", wanted[start : start + LOOKUP_BATCH])
        rows = table.search().where(condition.expr()).select(columns).limit(None).to_arrow()
        ledger.update(_ledger_rows(rows))
    return ledger


def lookup_vectors(table, text_hashes: Sequence[str], model: str) -> dict[str, Any]:
    """text_hash -> stored vector for hashes already embedded by ``model``."""
    if not text_hashes:
        return {}
    found: dict[str, Any] = {}
    unique = sorted(set(text_hashes))
    for start in range(0, len(unique), LOOKUP_BATCH):
        condition = in_list("text_hash", unique[start : start + LOOKUP_BATCH]) & eq(
            "embedding_model", model
        )
        query = table.search().where(condition.expr()).select(["text_hash", "vector"])
        rows = query.limit(None).to_arrow()
        for text_hash, vector in zip(
            rows["text_hash"].to_pylist(), rows["vector"].to_numpy(zero_copy_only=False)
        ):
            found.setdefault(text_hash, vector)
    return found
