"""The index is its own ledger: what the chunks table knows about each document (content
hash, settings fingerprint, source, owner) and the vectors it already holds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from freshindex.schemas.predicates import eq, in_list
from freshindex.schemas.tables import LEDGER_COLUMNS
from freshindex.store.upgrade import upgrade_chunks

# Lookups by key send at most this many values in one IN list.
LOOKUP_BATCH = 500
# A whole-table ledger scan holds at most this many rows as Python objects at once.
LEDGER_SCAN_BATCH = 8192


class LedgerEntry(NamedTuple):
    """What the table knows about one document: enough to skip it, and who owns it."""

    content_hash: str
    fingerprint: str
    source_uri: str | None = None
    namespace: str | None = None  # None: written before namespaces (docs/ARCHITECTURE.md)
    # the listing metadata the document was read with (None: records, messages, old rows)
    source_version: str | None = None
    # the access labels the rows carry (None: written before labels existed)
    acl: tuple[str, ...] | None = None


def _ledger_rows(rows: pa.Table) -> dict[str, LedgerEntry]:
    ledger: dict[str, LedgerEntry] = {}
    if rows.num_rows == 0:
        return ledger
    columns = {c: rows[c].to_pylist() for c in rows.column_names}
    missing = [None] * rows.num_rows
    for doc_id, content_hash, fingerprint, source_uri, namespace, version, acl in zip(
        columns["doc_id"],
        columns["content_hash"],
        columns["fingerprint"],
        columns["source_uri"],
        columns.get("namespace") or missing,
        columns.get("source_version") or missing,
        columns.get("acl") or missing,
        strict=True,
    ):
        labels = None if acl is None else tuple(acl)
        ledger[doc_id] = LedgerEntry(
            content_hash, fingerprint, source_uri, namespace, version, labels
        )
    return ledger


def _ledger_columns(table) -> list[str]:
    # a table written before a column existed (namespace, source_version) lacks it: its
    # entries have None there (legacy owner; no listing metadata, so always read)
    return [c for c in LEDGER_COLUMNS if c in table.schema.names]


def read_ledger(table) -> dict[str, LedgerEntry]:
    """doc_id -> LedgerEntry of every document in the table (a test's or a small table's
    view; a pipeline streams ``iter_ledger`` instead)."""
    ledger: dict[str, LedgerEntry] = {}
    for piece in iter_ledger(table):
        ledger.update(piece)
    return ledger


def iter_ledger(table, batch_size: int = LEDGER_SCAN_BATCH) -> Iterator[dict[str, LedgerEntry]]:
    """The ledger of every document in the table, in pieces of at most ``batch_size`` rows
    (a document with several chunks may appear in two pieces, with the same entry): a scan
    never holds the whole table's ledger in one process."""
    scan = table.search().select(_ledger_columns(table)).limit(None).to_batches(batch_size)
    for batch in scan:
        # a reader may return larger batches than asked for; slice them to the bound
        for start in range(0, batch.num_rows, batch_size):
            yield _ledger_rows(pa.Table.from_batches([batch.slice(start, batch_size)]))


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


def record_source_versions(table, versions: Mapping[str, tuple[str, str]]) -> int:
    """Record a new ``source_version`` on the rows of documents whose bytes did not change
    (doc_id -> (content_hash, source_version)), in one commit; returns the number of
    documents recorded. A document whose stored content hash is no longer the given one
    (replaced meanwhile) is left alone. Call under ``commit_lock``.
    """
    return _stamp(table, "source_version", pa.string(), versions)


def relabel(table, labels: Mapping[str, tuple[str, Sequence[str]]]) -> int:
    """Set new access labels on every row of documents whose bytes did not change
    (doc_id -> (content_hash, labels)), in one commit: nothing is parsed or embedded, and
    readers of the next version see the new labels. Returns the number of documents
    relabelled; one replaced meanwhile (another content hash) is left alone. Call under
    ``commit_lock``."""
    values = {doc_id: (h, list(acl)) for doc_id, (h, acl) in labels.items()}
    return _stamp(table, "acl", pa.list_(pa.string()), values)


def _stamp(table, column: str, kind: pa.DataType, versions: Mapping[str, tuple[str, Any]]) -> int:
    """Set ``column`` on the rows of documents doc_id -> (content_hash, value) whose stored
    content hash is still that one, in one merge commit; returns the documents stamped."""
    if not versions:
        return 0
    if column not in table.schema.names:  # a table older than the column
        upgrade_chunks(table, table.schema.field("vector").type.list_size)
    names = table.schema.names
    parts = []
    wanted = sorted(versions)
    for start in range(0, len(wanted), LOOKUP_BATCH):
        condition = in_list("doc_id", wanted[start : start + LOOKUP_BATCH])
        rows = table.search().where(condition.expr()).select(names).limit(None).to_arrow()
        doc_ids, hashes = rows["doc_id"].to_pylist(), rows["content_hash"].to_pylist()
        keep = [versions[d][0] == h for d, h in zip(doc_ids, hashes, strict=True)]
        rows = rows.filter(pa.array(keep, pa.bool_()))
        stamped = pa.array([versions[d][1] for d in rows["doc_id"].to_pylist()], kind)
        index = rows.schema.get_field_index(column)
        parts.append(rows.set_column(index, rows.schema.field(index), stamped))
    merged = pa.concat_tables(parts).select(names)
    if merged.num_rows == 0:
        return 0
    # the content-hash condition is checked by the merge itself: a row replaced by another
    # writer since it was read here (another content hash) is not overwritten with it
    merge = table.merge_insert("chunk_id")
    merge.when_matched_update_all(where="target.content_hash = source.content_hash")
    merge.execute(merged)
    return len(set(pc.unique(merged["doc_id"]).to_pylist()))


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
