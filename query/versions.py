"""The versions of a chunks table a query can read, with their tags and the runs behind them.

Shared by ``freshindex versions`` and the query API's ``GET /versions``; it lives on the read
side so that the query plane needs nothing from the operator commands.
"""

from __future__ import annotations

from typing import Any

from freshindex import store


def version_rows(db, table_name: str) -> list[dict[str, Any]]:
    """Every version of the table with its tags and the run that produced it (the table an
    alias names now, when ``table_name`` is one: the versions its readers can pin)."""
    table_name = store.resolve_alias(db, table_name).table
    table = store.open_chunks(db, table_name)
    tags_by_version: dict[int, list[str]] = {}
    for tag, info in table.tags.list().items():
        tags_by_version.setdefault(int(info["version"]), []).append(tag)
    runs_by_version: dict[int, dict[str, Any]] = {}
    for run in store.read_runs(db, table_name):
        runs_by_version.setdefault(run["table_version"], run)
    rows = []
    for v in table.list_versions():
        version = int(v["version"])
        run = runs_by_version.get(version, {})
        rows.append(
            {
                "version": version,
                "timestamp": v["timestamp"].strftime("%Y-%m-%d %H:%M:%S"),
                "rows": int(v["metadata"].get("total_rows", 0)),
                "tags": ",".join(sorted(tags_by_version.get(version, []))),
                "run": run.get("run_id", ""),
                "kind": run.get("kind", ""),
                "added": run.get("docs_added", ""),
                "updated": run.get("docs_updated", ""),
                "deleted": run.get("docs_deleted", ""),
                "failed": run.get("docs_failed", ""),
            }
        )
    return rows
