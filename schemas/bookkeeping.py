"""Typed rows of the bookkeeping tables: ``runs``, ``errors``, ``stream_batches``, ``ann_state``.

Each record kind is built in one place (its keyword-only constructor, or one classmethod
from what produced it) and becomes an Arrow row only through ``to_row``/``to_arrow``: a
record's fields ARE its table's pinned columns, in order (checked at import), and
``from_dict`` refuses an unknown or misspelt key instead of writing a silent null.

    RunRecord(run_id=rid, kind="rollback", table_name="docs", status="succeeded", ...)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from freshindex.errors import SchemaMismatch
from freshindex.schemas.messages import STREAM_BATCHES_SCHEMA
from freshindex.schemas.records import ErrorRecord
from freshindex.schemas.tables import (
    ANN_STATE_SCHEMA,
    ANN_STATE_TABLE,
    ERRORS_SCHEMA,
    ERRORS_TABLE,
    RUNS_SCHEMA,
    RUNS_TABLE,
    STREAM_BATCHES_TABLE,
)


class _Record:
    """What every bookkeeping record shares: its table, its schema, the strict conversions."""

    TABLE: ClassVar[str]
    SCHEMA: ClassVar[pa.Schema]

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]):
        """The record of a dict row; a key that is not a column of the table is an error."""
        unknown = sorted(set(row) - set(cls.SCHEMA.names))
        if unknown:
            raise SchemaMismatch(
                f"{cls.TABLE} row: unknown field(s) {', '.join(unknown)}",
                table=cls.TABLE,
                hint=f"the columns are {', '.join(cls.SCHEMA.names)} "
                "(freshindex.schemas.bookkeeping)",
            )
        return cls(**row)

    def to_row(self) -> dict[str, Any]:
        """The Arrow row: every column of the schema, in its order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_arrow(self) -> pa.Table:
        return pa.Table.from_pylist([self.to_row()], schema=self.SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class RunRecord(_Record):
    """One ``runs`` row: a batch or stream run, a rollback, a maintenance."""

    TABLE: ClassVar[str] = RUNS_TABLE
    SCHEMA: ClassVar[pa.Schema] = RUNS_SCHEMA

    run_id: str
    kind: str  # batch | stream | rollback | maintain
    table_name: str
    source: str | None = None
    settings: dict[str, Any] | str | None = None  # stored as JSON text
    status: str  # succeeded | failed_threshold | refused_mass_delete
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    docs_seen: int | None = None
    docs_skipped: int | None = None
    docs_added: int | None = None
    docs_updated: int | None = None
    docs_deleted: int | None = None
    docs_failed: int | None = None
    chunks_embedded: int | None = None
    chunks_reused: int | None = None
    chunks_written: int | None = None
    table_version: int | None = None
    tag: str | None = None
    docs_known_bad: int | None = None
    lease_token: int | None = None  # the commit lease's fencing token (null: none held)

    def to_row(self) -> dict[str, Any]:
        row = super().to_row()
        if isinstance(row["settings"], dict):
            row["settings"] = json.dumps(row["settings"], sort_keys=True)
        return row


@dataclass(frozen=True, kw_only=True)
class ErrorRow(_Record):
    """One ``errors`` row: an ``ErrorRecord`` of a run, stamped when it was recorded."""

    TABLE: ClassVar[str] = ERRORS_TABLE
    SCHEMA: ClassVar[pa.Schema] = ERRORS_SCHEMA

    run_id: str
    table_name: str | None
    doc_id: str | None
    source_uri: str | None
    stage: str
    error_class: str
    message: str
    topic: str | None
    partition: int | None
    offset: int | None
    occurred_at: dt.datetime
    content_hash: str | None = None
    fingerprint: str | None = None
    permanent: bool | None = None

    @classmethod
    def of(
        cls, run_id: str, table_name: str, error: ErrorRecord, occurred_at: dt.datetime
    ) -> ErrorRow:
        return cls(
            run_id=run_id,
            table_name=table_name,
            doc_id=error.doc_id,
            source_uri=error.source_uri,
            stage=error.stage,
            error_class=error.error_class,
            message=error.message,
            topic=error.topic,
            partition=error.partition,
            offset=error.offset,
            occurred_at=occurred_at,
            content_hash=error.content_hash,
            fingerprint=error.fingerprint,
            permanent=error.permanent,
        )


@dataclass(frozen=True, kw_only=True)
class StreamBatchRecord(_Record):
    """One ``stream_batches`` row: a committed micro-batch of the stream and its offsets."""

    TABLE: ClassVar[str] = STREAM_BATCHES_TABLE
    SCHEMA: ClassVar[pa.Schema] = STREAM_BATCHES_SCHEMA

    run_id: str
    table_name: str
    group_id: str
    batch_seq: int
    committed_at: dt.datetime
    table_version: int | None = None
    messages: int | None = None
    docs_added: int | None = None
    docs_updated: int | None = None
    docs_deleted: int | None = None
    docs_skipped: int | None = None
    docs_failed: int | None = None
    chunks_embedded: int | None = None
    chunks_reused: int | None = None
    chunks_written: int | None = None
    lag: int | None = None
    duration_ms: int | None = None
    freshness_ms: list[int] | None = None
    offsets: list[dict[str, Any]] | None = None  # {"topic", "partition", "next_offset"}
    lease_token: int | None = None  # the commit lease's fencing token (null: none held)


@dataclass(frozen=True, kw_only=True)
class AnnStateRecord(_Record):
    """One ``ann_state`` row: the vector index upkeep built for a table and the search
    parameters that met the recall target."""

    TABLE: ClassVar[str] = ANN_STATE_TABLE
    SCHEMA: ClassVar[pa.Schema] = ANN_STATE_SCHEMA

    table_name: str
    run_id: str | None
    recorded_at: dt.datetime
    index_type: str | None = None
    action: str | None = None
    rows_at_build: int
    num_partitions: int | None = None
    rows: int | None = None
    recall: float | None = None
    nprobes: int | None = None
    refine_factor: int | None = None

    @classmethod
    def of(
        cls, table_name: str, run_id: str | None, state: Mapping[str, Any], at: dt.datetime
    ) -> AnnStateRecord:
        """From the state dict upkeep's ANN step returns (extra keys there are ignored)."""
        keep = {f.name for f in dataclasses.fields(cls)} - {"table_name", "run_id", "recorded_at"}
        return cls(
            table_name=table_name,
            run_id=run_id,
            recorded_at=at,
            **{k: v for k, v in state.items() if k in keep},
        )

    def search_params(self) -> dict[str, Any]:
        """nprobes/refine_factor for the query plane (only those set)."""
        return {k: getattr(self, k) for k in ("nprobes", "refine_factor") if getattr(self, k)}


RECORDS: tuple[type[_Record], ...] = (RunRecord, ErrorRow, StreamBatchRecord, AnnStateRecord)
# table name -> pinned schema, for every bookkeeping table (the upgrade path walks them)
BOOKKEEPING_SCHEMAS: dict[str, pa.Schema] = {r.TABLE: r.SCHEMA for r in RECORDS}


def _check_records() -> None:
    for record in RECORDS:
        fields = [f.name for f in dataclasses.fields(record)]
        if fields != record.SCHEMA.names:  # the same columns, in the same order
            raise AssertionError(f"{record.__name__} fields differ from {record.TABLE}'s schema")


_check_records()


def new_run_id() -> str:
    """A sortable, human-readable run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
