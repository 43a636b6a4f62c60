"""LanceDB access shared by every writer and reader: tables, the ledger, tags, bookkeeping.

All writes to a chunks table go through ``commit_lock`` so that writers in several
processes (a batch run, a stream, maintenance) serialize their commits: concurrent
``merge_insert`` on one LanceDB table is known to leave duplicate keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pyarrow as pa

from freshindex.errors import SchemaMismatch, TableError
from freshindex.schemas.records import KNOWN_BAD, ErrorRecord
from freshindex.schemas.tables import (
    ADDED_CHUNK_COLUMNS,
    ERRORS_SCHEMA,
    ERRORS_TABLE,
    INDEXED_COLUMNS,
    LEDGER_COLUMNS,
    RUNS_SCHEMA,
    RUNS_TABLE,
    STREAM_BATCHES_TABLE,
    chunks_schema,
    table_metadata,
)

RUN_TAG_PREFIX = "run-"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_local(uri: str) -> bool:
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter


def connect(uri: str):
    """Open (and for a local folder, create) the LanceDB database at ``uri``."""
    import lancedb

    if is_local(uri):
        Path(uri.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return lancedb.connect(uri)


def table_names(db) -> list[str]:
    result = db.list_tables()
    names = getattr(result, "tables", result)
    return list(names)


@contextlib.contextmanager
def commit_lock(db_uri: str, table: str) -> Iterator[None]:
    """Serialize commits to one table across processes on this machine.

    Object stores (s3://, gs://) get no lock here: Lance's own optimistic commit
    detects conflicts there, and freshindex runs one committer per pipeline.
    """
    if not is_local(db_uri):
        yield
        return
    folder = Path(db_uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{table}.commit.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def open_chunks(db, name: str):
    if name not in table_names(db):
        raise TableError(
            f"table {name!r} does not exist",
            table=name,
            hint="run `freshindex ingest SOURCE --table NAME` first",
        )
    return db.open_table(name)


def check_model(table, model: str) -> None:
    """Refuse to mix vectors of two models in one table."""
    meta = table_metadata(table.schema)
    if meta.get("embedding_model") and meta["embedding_model"] != model:
        raise SchemaMismatch(
            f"table {table.name!r} holds vectors of {meta['embedding_model']!r}, "
            f"the pipeline embeds with {model!r}",
            table=table.name,
            hint="write to a new table, or set embedding.model to the table's model",
        )


def open_or_create_chunks(db, name: str, *, dim: int, model: str, settings: dict[str, Any]):
    """Open the chunks table, creating it with the pinned schema; refuse a model mismatch.

    A writer's open: a table created before a column was added to the schema
    (``ADDED_CHUNK_COLUMNS``) gets it here, null in its old rows, as one new version. Call
    it under ``commit_lock``. Readers never change the table; they cope with the column
    missing (``read_ledger``).
    """
    if name in table_names(db):
        table = db.open_table(name)
        check_model(table, model)
        width = table.schema.field("vector").type.list_size
        if width != dim:
            raise SchemaMismatch(
                f"table {name!r} has vectors of width {width}, the model gives {dim}",
                table=name,
            )
        upgrade_chunks(table, dim)
        return table
    schema = chunks_schema(dim, model=model, settings=settings)
    try:
        return db.create_table(name, schema=schema)
    except ValueError:  # created meanwhile by another writer
        return db.open_table(name)


def upgrade_chunks(table, dim: int) -> list[str]:
    """Add the columns of the pinned schema that ``table`` lacks; returns their names."""
    pinned = chunks_schema(dim)
    missing = [c for c in ADDED_CHUNK_COLUMNS if c not in table.schema.names]
    for column in missing:
        table.add_columns(pinned.field(column))
    return missing


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


def sql_string_list(values: Iterable[str]) -> str:
    """A SQL IN-list of string literals, each quote doubled (values are ours: ids and hashes)."""
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def lookup_vectors(table, text_hashes: Sequence[str], model: str) -> dict[str, Any]:
    """text_hash -> stored vector for hashes already embedded by ``model``."""
    if not text_hashes:
        return {}
    found: dict[str, Any] = {}
    unique = sorted(set(text_hashes))
    for start in range(0, len(unique), 500):
        part = unique[start : start + 500]
        where = (
            f"text_hash IN ({sql_string_list(part)}) "
            f"AND embedding_model = '{model.replace(chr(39), chr(39) * 2)}'"
        )
        rows = table.search().where(where).select(["text_hash", "vector"]).limit(None).to_arrow()
        for text_hash, vector in zip(
            rows["text_hash"].to_pylist(), rows["vector"].to_numpy(zero_copy_only=False)
        ):
            found.setdefault(text_hash, vector)
    return found


# The full-text index of a chunks table: LanceDB's native inverted index (BM25) on ``text``.
FTS_COLUMN = "text"
# Rows written after the FTS index was built are still found (LanceDB scans them without
# the index), but that scan costs about 8 us per row and query on 2 cores: past these many
# unindexed rows ``refresh_fts_index`` folds them into the index.
FTS_REFRESH_MIN_ROWS = 1_000
FTS_REFRESH_FRACTION = 0.02


def ensure_scalar_indexes(table) -> list[str]:
    """Create the BTREE indexes on the key columns and the full-text index on ``text`` where
    missing; returns the columns indexed now (the FTS index is listed as ``text``)."""
    if table.count_rows() == 0:
        return []
    existing = {tuple(ix.columns) for ix in table.list_indices()}
    created = []
    for column in INDEXED_COLUMNS:
        if (column,) not in existing:
            table.create_scalar_index(column, index_type="BTREE")
            created.append(column)
    if (FTS_COLUMN,) not in existing and FTS_COLUMN in table.schema.names:
        create_fts_index(table)
        created.append(FTS_COLUMN)
    return created


def create_fts_index(table, *, replace: bool = False) -> None:
    """Build (or with ``replace`` rebuild) the BM25 FTS index on ``text``: English stemming,
    stop words removed, lower-cased and ASCII-folded. An index-only change: one new version,
    no data rewritten and no old version pruned, so pinned readers are unaffected."""
    from lancedb.index import FTS

    table.create_index(FTS_COLUMN, config=FTS(), replace=replace)


def _fts_index(table):
    for ix in table.list_indices():
        if tuple(ix.columns) == (FTS_COLUMN,) and str(ix.index_type).upper() == "FTS":
            return ix
    return None


def fts_unindexed_rows(table) -> int | None:
    """Rows of the table's current version that the FTS index does not cover yet (None: no
    FTS index)."""
    ix = _fts_index(table)
    return None if ix is None else int(table.index_stats(ix.name).num_unindexed_rows)


def refresh_fts_index(
    table,
    *,
    min_rows: int = FTS_REFRESH_MIN_ROWS,
    fraction: float = FTS_REFRESH_FRACTION,
) -> bool:
    """Fold rows written since the FTS index was built into it once they pass
    ``max(min_rows, fraction * total rows)`` (creating the index if missing); returns whether
    it changed the table. Incremental (Lance ``optimize_indices`` on this index only: about
    0.5 s for 5k new rows on a 125k-row table), one new version, nothing pruned or rewritten.

    Call it after a write commit, under the commit lock, before tagging the run's version.
    Not ``table.optimize()``: that also prunes versions older than 7 days by default.
    """
    ix = _fts_index(table)
    if ix is None:
        return bool(ensure_scalar_indexes(table))
    unindexed = int(table.index_stats(ix.name).num_unindexed_rows)
    if unindexed == 0 or unindexed < max(min_rows, fraction * table.count_rows()):
        return False
    table.to_lance().optimize.optimize_indices(index_names=[ix.name])
    table.checkout_latest()
    return True


def tag_version(table, tag: str, version: int) -> None:
    tags = table.tags.list()
    if tag in tags:
        table.tags.update(tag, version)
    else:
        table.tags.create(tag, version)


def resolve_version(table, ref: str | int) -> int:
    """A version number, a tag, or a run id (tagged ``run-<id>``) -> version number."""
    tags = table.tags.list()
    text = str(ref)
    if text in tags:
        return int(tags[text]["version"])
    if RUN_TAG_PREFIX + text in tags:
        return int(tags[RUN_TAG_PREFIX + text]["version"])
    if text.isdigit():
        version = int(text)
        known = {v["version"] for v in table.list_versions()}
        if version in known:
            return version
    raise TableError(
        f"no version, tag or run {text!r} in table {table.name!r}",
        table=table.name,
        hint="`freshindex versions --table NAME` lists them",
    )


def open_as_of(db, name: str, ref: str | int | None = None):
    """Open a chunks table pinned to a version, tag or run id (latest when ``ref`` is None)."""
    table = open_chunks(db, name)
    if ref is not None:
        table.checkout(resolve_version(table, ref))
    return table


def _bookkeeping_table(db, name: str, schema: pa.Schema):
    """Open (or create) a bookkeeping table; one written by an older freshindex gains the
    columns added since, all null, so old rows stay readable and new rows fit."""
    if name not in table_names(db):
        try:
            return db.create_table(name, schema=schema)
        except ValueError:
            pass
    table = db.open_table(name)
    missing = [f for f in schema if f.name not in table.schema.names]
    if missing:
        try:
            table.add_columns(pa.schema(missing))
        except (ValueError, RuntimeError, OSError):  # added meanwhile by another writer
            table = db.open_table(name)
    return table


def append_errors(db, run_id: str, table_name: str, errors: Sequence[ErrorRecord]) -> int:
    if not errors:
        return 0
    now = utcnow()
    rows = [
        {
            "run_id": run_id,
            "table_name": table_name,
            "doc_id": e.doc_id,
            "source_uri": e.source_uri,
            "stage": e.stage,
            "error_class": e.error_class,
            "message": e.message,
            "topic": e.topic,
            "partition": e.partition,
            "offset": e.offset,
            "occurred_at": now,
            "content_hash": e.content_hash,
            "fingerprint": e.fingerprint,
            "permanent": e.permanent,
        }
        for e in errors
    ]
    _bookkeeping_table(db, ERRORS_TABLE, ERRORS_SCHEMA).add(
        pa.Table.from_pylist(rows, schema=ERRORS_SCHEMA)
    )
    return len(rows)


def append_run(db, row: dict[str, Any]) -> None:
    full = {name: row.get(name) for name in RUNS_SCHEMA.names}
    if isinstance(full.get("settings"), dict):
        full["settings"] = json.dumps(full["settings"], sort_keys=True)
    _bookkeeping_table(db, RUNS_TABLE, RUNS_SCHEMA).add(
        pa.Table.from_pylist([full], schema=RUNS_SCHEMA)
    )


def read_runs(db, table_name: str | None = None) -> list[dict[str, Any]]:
    if RUNS_TABLE not in table_names(db):
        return []
    rows = db.open_table(RUNS_TABLE).to_arrow().to_pylist()
    if table_name is not None:
        rows = [r for r in rows if r["table_name"] == table_name]
    return sorted(rows, key=lambda r: r["started_at"] or utcnow())


def read_errors(
    db, *, table_name: str | None = None, run_id: str | None = None
) -> list[dict[str, Any]]:
    if ERRORS_TABLE not in table_names(db):
        return []
    rows = db.open_table(ERRORS_TABLE).to_arrow().to_pylist()
    return [
        r
        for r in rows
        if (table_name is None or r["table_name"] == table_name)
        and (run_id is None or r["run_id"] == run_id)
    ]


def read_known_failures(db, table_name: str, fingerprint: str) -> dict[tuple[str, str], str]:
    """(doc_id, content_hash) -> reason, for every permanent failure a batch run recorded
    for ``table_name`` under ``fingerprint``: those bytes are not parsed again."""
    if ERRORS_TABLE not in table_names(db):
        return {}
    table = db.open_table(ERRORS_TABLE)
    if not {"content_hash", "fingerprint", "permanent"} <= set(table.schema.names):
        return {}  # written before failures were remembered
    quote = chr(39)
    where = (
        f"permanent = true AND content_hash IS NOT NULL AND doc_id IS NOT NULL "
        f"AND fingerprint = '{fingerprint.replace(quote, quote * 2)}' "
        f"AND table_name = '{table_name.replace(quote, quote * 2)}'"
    )
    cols = ["doc_id", "content_hash", "error_class", "message", "occurred_at"]
    rows = table.search().where(where).select(cols).limit(None).to_arrow().to_pylist()
    known: dict[tuple[str, str], str] = {}
    for row in sorted(rows, key=lambda r: r["occurred_at"]):
        # A skip row already carries the original "Class: message"; never nest them.
        reason = (
            row["message"]
            if row["error_class"] == KNOWN_BAD
            else f"{row['error_class']}: {row['message']}"
        )
        known[(row["doc_id"], row["content_hash"])] = reason
    return known


def filesystem(uri: str):
    """(pyarrow filesystem, path) of a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)


def staging_root(db_uri: str, table: str) -> str:
    """Where batch runs of ``table`` stage their rows, one folder per run."""
    return os.path.join(db_uri, "_staging", table)


def staging_dir(db_uri: str, table: str, run_id: str) -> str:
    """Where workers stage a run's chunk rows before the single commit step merges them."""
    return os.path.join(staging_root(db_uri, table), run_id)


def remove_stale_staging(db_uri: str, table: str, max_age_s: float, now: float | None = None):
    """Remove the staging folders of ``table`` whose newest file is older than ``max_age_s``:
    left by batch runs that died before their commit step (a finished run removes its own).
    Returns (folders removed, bytes freed). Age, not liveness, decides, because the workers
    that stage files may run on other machines; a live run keeps writing or committing."""
    import pyarrow.fs as pafs

    fs, base = filesystem(staging_root(db_uri, table))
    try:
        runs = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return 0, 0
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = freed = 0
    for run in runs:
        if run.type != pafs.FileType.Directory:
            continue
        files = fs.get_file_info(pafs.FileSelector(run.path, recursive=True))
        stamps = [f.mtime.timestamp() for f in [run, *files] if f.mtime is not None]
        if stamps and max(stamps) < cutoff:
            freed += sum(f.size or 0 for f in files if f.type == pafs.FileType.File)
            fs.delete_dir(run.path)
            removed += 1
    return removed, freed


# ------------------------------------------------------------------ the stream's bookkeeping


def ledger_of(table, doc_ids: Iterable[str]) -> dict[str, LedgerEntry]:
    """doc_id -> LedgerEntry for those of ``doc_ids`` the table holds."""
    wanted = sorted(set(doc_ids))
    ledger: dict[str, LedgerEntry] = {}
    columns = _ledger_columns(table)
    for start in range(0, len(wanted), 500):
        part = wanted[start : start + 500]
        rows = (
            table.search()
            .where(f"doc_id IN ({sql_string_list(part)})")
            .select(columns)
            .limit(None)
            .to_arrow()
        )
        ledger.update(_ledger_rows(rows))
    return ledger


def append_stream_batch(db, row: dict[str, Any]) -> None:
    """Record one committed micro-batch of the stream
    (``freshindex.schemas.messages.STREAM_BATCHES_SCHEMA``)."""
    from freshindex.schemas.messages import STREAM_BATCHES_SCHEMA

    full = {name: row.get(name) for name in STREAM_BATCHES_SCHEMA.names}
    _bookkeeping_table(db, STREAM_BATCHES_TABLE, STREAM_BATCHES_SCHEMA).add(
        pa.Table.from_pylist([full], schema=STREAM_BATCHES_SCHEMA)
    )


def read_stream_batches(
    db,
    *,
    table_name: str | None = None,
    run_id: str | None = None,
    group_id: str | None = None,
    columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The stream's batch rows, oldest first, filtered by table, run and consumer group."""
    if STREAM_BATCHES_TABLE not in table_names(db):
        return []
    filters = {"table_name": table_name, "run_id": run_id, "group_id": group_id}
    conditions = [
        f"{column} = '{value.replace(chr(39), chr(39) * 2)}'"
        for column, value in filters.items()
        if value is not None
    ]
    query = db.open_table(STREAM_BATCHES_TABLE).search()
    if conditions:
        query = query.where(" AND ".join(conditions))
    if columns is not None:
        query = query.select(sorted({*columns, "committed_at", "batch_seq"}))
    rows = query.limit(None).to_arrow().to_pylist()
    return sorted(rows, key=lambda r: (r["committed_at"], r["batch_seq"]))


def read_stream_offsets(db, table_name: str, group_id: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset to consume, as recorded with the table's commits.

    The largest recorded offset wins, so rows of two runs (or a replayed batch) never move
    the stream backwards.
    """
    offsets: dict[tuple[str, int], int] = {}
    rows = read_stream_batches(db, table_name=table_name, group_id=group_id, columns=["offsets"])
    for row in rows:
        for entry in row["offsets"] or ():
            key = (entry["topic"], int(entry["partition"]))
            offsets[key] = max(offsets.get(key, 0), int(entry["next_offset"]))
    return offsets
