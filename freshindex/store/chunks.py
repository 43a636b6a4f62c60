"""The chunks table: open it (refusing another model's vectors or a newer schema), or create
it with the pinned schema."""

from __future__ import annotations

from typing import Any

from freshindex.errors import SchemaMismatch, TableError
from freshindex.schemas.tables import chunks_schema, table_metadata
from freshindex.store.connection import open_created, open_if_exists, table_names
from freshindex.store.upgrade import check_schema_version, upgrade_chunks


def open_chunks(db, name: str):
    """Open an existing chunks table for reading (never changes it)."""
    table = open_if_exists(db, name)
    if table is None:
        raise TableError(
            f"table {name!r} does not exist",
            table=name,
            hint="run `freshindex ingest SOURCE --table NAME` first",
        )
    check_schema_version(table, name)
    return table


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
        check_schema_version(table, name)
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
        return open_created(db, name)


def current_version(db_uri: str, table: str, model: str) -> int | None:
    """The version a run starts from (None for a new table); checks the table's model."""
    from freshindex.store.connection import connect

    tbl = open_if_exists(connect(db_uri), table)
    if tbl is None:
        return None
    check_schema_version(tbl, table)
    check_model(tbl, model)
    return tbl.version
