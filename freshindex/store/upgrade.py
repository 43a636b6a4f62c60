"""Schema versions checked on open, and the one path that upgrades an older table.

Every table freshindex writes records ``freshindex.schema_version`` in its schema metadata
(``freshindex.schemas.tables.SCHEMA_VERSION``). On open:

* a table written by a NEWER freshindex is refused (``SchemaMismatch``): this one could
  misread or damage it;
* an older table gets the additive upgrades that exist: columns added to a pinned schema
  since (``ADDED_CHUNK_COLUMNS`` for chunks tables; any missing field for the bookkeeping
  tables), null in the old rows, each one new version. Writers apply them when they open a
  table; ``freshindex upgrade`` applies them to a table and the bookkeeping tables at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from freshindex.errors import SchemaMismatch
from freshindex.schemas.bookkeeping import BOOKKEEPING_SCHEMAS
from freshindex.schemas.tables import (
    ADDED_CHUNK_COLUMNS,
    SCHEMA_VERSION,
    chunks_schema,
    table_metadata,
)
from freshindex.store.connection import table_names
from freshindex.store.lock import check_held, commit_lock


def schema_version(schema: pa.Schema) -> int | None:
    """The ``freshindex.schema_version`` a table was written with (None: not recorded)."""
    raw = table_metadata(schema).get("schema_version")
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def check_schema_version(table, name: str | None = None) -> None:
    """Refuse a table written by a newer freshindex than this one."""
    found = schema_version(table.schema)
    if found is not None and found > int(SCHEMA_VERSION):
        name = name or getattr(table, "name", "?")
        raise SchemaMismatch(
            f"table {name!r} was written with freshindex schema version {found}; this "
            f"freshindex reads versions up to {SCHEMA_VERSION}",
            table=name,
            hint="upgrade freshindex (pip install -U freshindex) to read or write this table",
        )


def upgrade_chunks(table, dim: int) -> list[str]:
    """Add the columns of the pinned chunks schema that ``table`` lacks; returns their names.

    A writer's step (under the commit lock): readers cope with a column missing."""
    pinned = chunks_schema(dim)
    missing = [c for c in ADDED_CHUNK_COLUMNS if c not in table.schema.names]
    for column in missing:
        table.add_columns(pinned.field(column))
    return missing


def add_missing_columns(db, name: str, table, schema: pa.Schema):
    """(table, added column names): a bookkeeping table written by an older freshindex gains
    the columns added since, all null, so old rows stay readable and new rows fit."""
    missing = [f for f in schema if f.name not in table.schema.names]
    if not missing:
        return table, []
    try:
        table.add_columns(pa.schema(missing))
    except (ValueError, RuntimeError, OSError):  # added meanwhile by another writer
        table = db.open_table(name)
    return table, [f.name for f in missing]


@dataclass
class UpgradeReport:
    """What ``apply_upgrades`` did: table name -> columns added (empty: already current)."""

    added: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{name}: added {', '.join(cols)}" if cols else f"{name}: up to date"
            for name, cols in self.added.items()
        ]
        return "\n".join(lines) or "nothing to upgrade"


def apply_upgrades(db_uri: str, table_name: str, db=None, commit=None) -> UpgradeReport:
    """Apply every pending upgrade to the chunks table ``table_name`` and to the bookkeeping
    tables that exist. Idempotent: a second call adds nothing. ``commit``: the commit
    lock's settings (``Config.commit``)."""
    from freshindex.store.connection import connect

    db = db if db is not None else connect(db_uri)
    report = UpgradeReport()
    existing = table_names(db)
    if table_name in existing:
        with commit_lock(db_uri, table_name, commit) as lease:
            table = db.open_table(table_name)
            check_schema_version(table, table_name)
            check_held(lease)
            dim = table.schema.field("vector").type.list_size
            report.added[table_name] = upgrade_chunks(table, dim)
    for name, schema in BOOKKEEPING_SCHEMAS.items():
        if name in existing:
            table = db.open_table(name)
            check_schema_version(table, name)
            report.added[name] = add_missing_columns(db, name, table, schema)[1]
    return report
