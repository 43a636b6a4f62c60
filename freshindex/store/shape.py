"""The shape of a chunks table for metrics and ``freshindex status``: versions, fragments,
rows, rows not in the full-text index, bytes on local disk."""

from __future__ import annotations

from typing import Any

from freshindex.store.chunks import open_chunks
from freshindex.store.connection import connect, is_local
from freshindex.store.indexes import fts_unindexed_rows
from freshindex.store.upkeep import disk_bytes


def table_shape(db_uri: str, table_name: str) -> dict[str, Any]:
    """``{"version", "versions", "fragments", "rows", "unindexed_rows", "disk_bytes"}`` of the
    table's latest version (``disk_bytes`` None on object storage; ``unindexed_rows`` None
    without an FTS index)."""
    table = open_chunks(connect(db_uri), table_name)
    return {
        "version": table.version,
        "versions": len(table.list_versions()),
        "fragments": table.stats()["fragment_stats"]["num_fragments"],
        "rows": table.count_rows(),
        "unindexed_rows": fts_unindexed_rows(table),
        "disk_bytes": disk_bytes(db_uri, table_name) if is_local(db_uri) else None,
    }
