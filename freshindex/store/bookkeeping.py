"""The bookkeeping tables beside the chunks tables: ``runs``, ``errors``, ``stream_batches``
and ``ann_state``. Rows are the typed records of ``freshindex.schemas.bookkeeping``; reads
filter with typed predicates (``freshindex.schemas.predicates``)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from freshindex.schemas.bookkeeping import (
    AnnStateRecord,
    ErrorRow,
    RunRecord,
    StreamBatchRecord,
)
from freshindex.schemas.predicates import and_, at_least, eq
from freshindex.schemas.records import KNOWN_BAD, ErrorRecord
from freshindex.schemas.tables import (
    ANN_STATE_TABLE,
    ERRORS_TABLE,
    RUNS_TABLE,
    STREAM_BATCHES_TABLE,
)
from freshindex.store.connection import open_created, open_if_exists, table_names, utcnow
from freshindex.store.upgrade import add_missing_columns, check_schema_version


def bookkeeping_table(db, name: str, schema):
    """Open (or create) a bookkeeping table for writing: refused when a newer freshindex
    wrote it; an older one gains the columns added since (``store.upgrade``)."""
    if name not in table_names(db):
        try:
            return db.create_table(name, schema=schema)
        except ValueError:  # created meanwhile by another writer
            pass
    table = open_created(db, name)  # listed: maybe still being created by another writer
    check_schema_version(table, name)
    return add_missing_columns(db, name, table, schema)[0]


def append_records(
    db, records: Sequence[RunRecord | ErrorRow | StreamBatchRecord | AnnStateRecord]
):
    """Append typed records of one kind to their table (checked against its pinned schema)."""
    if not records:
        return
    kind = type(records[0])
    import pyarrow as pa

    rows = pa.Table.from_pylist([r.to_row() for r in records], schema=kind.SCHEMA)
    bookkeeping_table(db, kind.TABLE, kind.SCHEMA).add(rows)


def _read(db, name: str, condition=None, columns: Sequence[str] | None = None) -> list[dict]:
    table = open_if_exists(db, name)
    if table is None:
        return []
    query = table.search()
    if condition is not None:
        query = query.where(condition.expr())
    if columns is not None:
        query = query.select(list(columns))
    return query.limit(None).to_arrow().to_pylist()


# ------------------------------------------------------------------ runs and errors


def append_errors(db, run_id: str, table_name: str, errors: Sequence[ErrorRecord]) -> int:
    if not errors:
        return 0
    now = utcnow()
    append_records(db, [ErrorRow.of(run_id, table_name, e, now) for e in errors])
    return len(errors)


def append_run(db, row: RunRecord | Mapping[str, Any]) -> None:
    """Record one run; a dict row (the stream's) is checked strictly (``RunRecord.from_dict``)."""
    append_records(db, [row if isinstance(row, RunRecord) else RunRecord.from_dict(row)])


def read_runs(
    db, table_name: str | None = None, *, run_id: str | None = None
) -> list[dict[str, Any]]:
    condition = and_(
        None if table_name is None else eq("table_name", table_name),
        None if run_id is None else eq("run_id", run_id),
    )
    rows = _read(db, RUNS_TABLE, condition)
    return sorted(rows, key=lambda r: r["started_at"] or utcnow())


def read_errors(
    db,
    *,
    table_name: str | None = None,
    run_id: str | None = None,
    doc_id: str | None = None,
    since: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    condition = and_(
        None if table_name is None else eq("table_name", table_name),
        None if run_id is None else eq("run_id", run_id),
        None if doc_id is None else eq("doc_id", doc_id),
        None if since is None else at_least("occurred_at", since),
    )
    return _read(db, ERRORS_TABLE, condition)


def read_known_failures(db, table_name: str, fingerprint: str) -> dict[tuple[str, str], str]:
    """(doc_id, content_hash) -> reason, for every permanent failure a batch run recorded
    for ``table_name`` under ``fingerprint``: those bytes are not parsed again."""
    if ERRORS_TABLE not in table_names(db):
        return {}
    if not {"content_hash", "fingerprint", "permanent"} <= set(
        db.open_table(ERRORS_TABLE).schema.names
    ):
        return {}  # written before failures were remembered
    condition = eq("permanent", True) & eq("fingerprint", fingerprint)
    condition &= eq("table_name", table_name)
    cols = ["doc_id", "content_hash", "error_class", "message", "occurred_at"]
    rows = [
        r
        for r in _read(db, ERRORS_TABLE, condition, cols)
        if r["content_hash"] is not None and r["doc_id"] is not None
    ]
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


# ------------------------------------------------------------------ the stream's batches


def append_stream_batch(db, row: StreamBatchRecord | Mapping[str, Any]) -> None:
    """Record one committed micro-batch of the stream (a dict row is checked strictly,
    ``StreamBatchRecord.from_dict``)."""
    record = row if isinstance(row, StreamBatchRecord) else StreamBatchRecord.from_dict(row)
    append_records(db, [record])


def read_stream_batches(
    db,
    *,
    table_name: str | None = None,
    run_id: str | None = None,
    group_id: str | None = None,
    since: dt.datetime | None = None,
    columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The stream's batch rows, oldest first, filtered by table, run and consumer group, and
    committed at or after ``since``."""
    condition = and_(
        *(
            eq(column, value)
            for column, value in (
                ("table_name", table_name),
                ("run_id", run_id),
                ("group_id", group_id),
            )
            if value is not None
        ),
        at_least("committed_at", since) if since is not None else None,
    )
    wanted = None if columns is None else sorted({*columns, "committed_at", "batch_seq"})
    rows = _read(db, STREAM_BATCHES_TABLE, condition, wanted)
    return sorted(rows, key=lambda r: (r["committed_at"], r["batch_seq"]))


def read_stream_offsets(
    db, table_name: str, group_id: str, *, since: dt.datetime | None = None
) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset to consume, as recorded with the table's commits.

    The largest recorded offset wins, so rows of two runs (or a replayed batch) never move
    the stream backwards. ``since``: only rows committed at or after it (a check that has
    seen the older ones).
    """
    offsets: dict[tuple[str, int], int] = {}
    rows = read_stream_batches(
        db, table_name=table_name, group_id=group_id, since=since, columns=["offsets"]
    )
    for row in rows:
        for entry in row["offsets"] or ():
            key = (entry["topic"], int(entry["partition"]))
            offsets[key] = max(offsets.get(key, 0), int(entry["next_offset"]))
    return offsets


# ------------------------------------------------------------------ ANN index state


def record_ann_state(db, record: AnnStateRecord) -> None:
    append_records(db, [record])


def _legacy_ann_state(db, table_name: str) -> dict[str, Any]:
    """The state of a table maintained before ``ann_state`` existed: JSON in the settings
    of its newest ``maintain`` run that built an index."""
    condition = eq("table_name", table_name) & eq("kind", "maintain")
    runs = _read(db, RUNS_TABLE, condition, ["settings", "started_at"])
    for run in sorted(runs, key=lambda r: r["started_at"] or utcnow(), reverse=True):
        if run.get("settings"):
            ann = json.loads(run["settings"]).get("ann") or {}
            if ann.get("rows_at_build"):
                return ann
    return {}


def last_ann_state(db, table_name: str) -> dict[str, Any]:
    """The newest ANN index state of ``table_name`` ({} when none was built): one filtered
    lookup in ``ann_state``, else the ``runs.settings`` of older freshindex versions."""
    rows = _read(db, ANN_STATE_TABLE, eq("table_name", table_name))
    if rows:
        newest = max(rows, key=lambda r: r["recorded_at"])
        return {k: v for k, v in newest.items() if k not in ("table_name", "run_id", "recorded_at")}
    return _legacy_ann_state(db, table_name)


def ann_search_params(db, table_name: str) -> dict[str, Any]:
    """nprobes/refine_factor chosen by the last maintenance for the table's ANN index ({})."""
    state = last_ann_state(db, table_name)
    return {k: state[k] for k in ("nprobes", "refine_factor") if state.get(k)}
