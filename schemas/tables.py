"""Pinned Arrow schemas of every LanceDB table freshindex writes.

The chunks table's vector width is fixed at creation and the model name and chunker
settings are stored in the schema metadata, so a pipeline configured differently is
refused instead of silently mixing vectors of two models.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

# Written into every table's metadata and checked on open (freshindex.store.upgrade): a
# table of a newer version is refused. Additive changes (a new nullable column) keep the
# version: an older table gets the column on open. A change an older freshindex cannot
# read bumps it.
SCHEMA_VERSION = "1"
META_PREFIX = "freshindex."

# The table's ledger columns: what a re-run compares to decide what to skip, and who owns
# each document (``namespace``; where it came from, ``source_uri``), and what the source's
# listing said about it when it was read (``source_version``: skip without reading).
LEDGER_COLUMNS = (
    "doc_id",
    "content_hash",
    "fingerprint",
    "source_uri",
    "namespace",
    "source_version",
    "acl",
)
# Columns added to the chunks schema after tables were first written: a writer opening an
# older table adds them (null in the old rows) before its first commit.
ADDED_CHUNK_COLUMNS = ("namespace", "source_version", "acl")
# Columns with a scalar index, so merges and lookups do not scan the table.
INDEXED_COLUMNS = ("chunk_id", "doc_id", "text_hash")

_TS = pa.timestamp("us", tz="UTC")


def chunks_schema(vector_dim: int, *, model: str = "", settings: dict[str, Any] | None = None):
    """Schema of a chunks table; the metadata records what produced the vectors."""
    metadata = {
        f"{META_PREFIX}schema_version": SCHEMA_VERSION,
        f"{META_PREFIX}embedding_model": model,
        f"{META_PREFIX}vector_dim": str(vector_dim),
        f"{META_PREFIX}settings": json.dumps(settings or {}, sort_keys=True),
    }
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk_index", pa.int32(), nullable=False),
            pa.field("text", pa.string(), nullable=False),
            pa.field("text_hash", pa.string(), nullable=False),
            pa.field("token_count", pa.int32()),
            pa.field("vector", pa.list_(pa.float32(), vector_dim), nullable=False),
            pa.field("title", pa.string()),
            pa.field("section", pa.string()),
            pa.field("page_number", pa.int32()),
            pa.field("source_uri", pa.string()),
            pa.field("content_type", pa.string()),
            pa.field("content_hash", pa.string(), nullable=False),
            pa.field("modified_at", _TS),
            pa.field("fingerprint", pa.string(), nullable=False),
            pa.field("embedding_model", pa.string(), nullable=False),
            pa.field("metadata", pa.string()),  # JSON object: source metadata for filters
            pa.field("run_id", pa.string()),
            pa.field("indexed_at", _TS),
            # the source that owns the document (docs/ARCHITECTURE.md, Ownership); null in
            # rows written before namespaces existed
            pa.field("namespace", pa.string()),
            # the source listing's metadata of the bytes the row was made from
            # ("size=<bytes>;mtime=<seconds>"): a re-run whose listing says the same skips
            # the document without reading it; null for records, messages and old rows
            pa.field("source_version", pa.string()),
            # the document's access labels (freshindex.schemas.access): the principals and
            # groups that may read it; null in rows written before labels existed
            pa.field("acl", pa.list_(pa.string())),
        ],
        metadata=metadata,
    )


def table_metadata(schema: pa.Schema) -> dict[str, str]:
    """The freshindex.* metadata of a chunks table schema, without the prefix."""
    raw = schema.metadata or {}
    out = {}
    for key, value in raw.items():
        k = key.decode() if isinstance(key, bytes) else key
        if k.startswith(META_PREFIX):
            out[k[len(META_PREFIX) :]] = value.decode() if isinstance(value, bytes) else value
    return out


ERRORS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("table_name", pa.string()),
        pa.field("doc_id", pa.string()),
        pa.field("source_uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error_class", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("offset", pa.int64()),
        pa.field("occurred_at", _TS, nullable=False),
        # the failure memory of batch runs (older tables gain these columns, all null)
        pa.field("content_hash", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("permanent", pa.bool_()),
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)

RUNS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # batch | stream | rollback
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("settings", pa.string()),  # JSON
        pa.field(
            "status", pa.string(), nullable=False
        ),  # succeeded | failed_threshold | refused_mass_delete
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        pa.field("docs_seen", pa.int64()),
        pa.field("docs_skipped", pa.int64()),
        pa.field("docs_added", pa.int64()),
        pa.field("docs_updated", pa.int64()),
        pa.field("docs_deleted", pa.int64()),
        pa.field("docs_failed", pa.int64()),
        pa.field("chunks_embedded", pa.int64()),
        pa.field("chunks_reused", pa.int64()),
        pa.field("chunks_written", pa.int64()),
        pa.field("table_version", pa.int64()),
        pa.field("tag", pa.string()),
        # documents not parsed because they failed permanently before (null in older rows)
        pa.field("docs_known_bad", pa.int64()),
        # the fencing token of the commit lease the run committed under (null: a local
        # folder's file lock, nothing committed, or rows of older versions)
        pa.field("lease_token", pa.int64()),
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)

# The ANN index state upkeep chose for each chunks table, one row per build or re-tune: read
# by the query plane (the search parameters) with one filtered lookup. Tables maintained
# before this table existed keep their state in ``runs.settings`` (read as a fallback).
ANN_STATE_SCHEMA = pa.schema(
    [
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),  # the maintain run that recorded it
        pa.field("recorded_at", _TS, nullable=False),
        pa.field("index_type", pa.string()),
        pa.field("action", pa.string()),  # built | rebuilt | kept
        pa.field("rows_at_build", pa.int64(), nullable=False),
        pa.field("num_partitions", pa.int64()),
        pa.field("rows", pa.int64()),
        pa.field("recall", pa.float64()),
        pa.field("nprobes", pa.int64()),
        pa.field("refine_factor", pa.int64()),
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)

ERRORS_TABLE = "errors"
RUNS_TABLE = "runs"
STREAM_BATCHES_TABLE = "stream_batches"  # its schema: freshindex.schemas.messages
ANN_STATE_TABLE = "ann_state"
RESERVED_TABLES = (ERRORS_TABLE, RUNS_TABLE, STREAM_BATCHES_TABLE, ANN_STATE_TABLE)
