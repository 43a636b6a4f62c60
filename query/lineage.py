"""Lineage of a chunks table: what changed between two versions (``diff``) and the history
of one document (``explain``), from the table's own ledger columns, its Lance versions and
the ``runs``/``errors`` bookkeeping.

Shared by ``freshindex diff``/``explain``, the API's ``GET /diff`` and ``GET /explain/{doc}``
and the console; it lives on the read side beside ``query.versions``.

    diff_versions(db, "docs", "run-20261130T101500Z-ab12cd", "prod")
    explain_document(db, "docs", "guide/auth.md")
"""

from __future__ import annotations

import collections
from typing import Any

from freshindex import store
from freshindex.errors import TableError
from freshindex.query.access import Access, denied_now, readable_docs
from freshindex.schemas.predicates import eq

MAX_LISTED = 1000  # documents a diff lists per kind; its counts cover every one


def _docs_at(table, readable=None) -> dict[str, tuple[str, str, int]]:
    """doc_id -> (content_hash, fingerprint, chunks) of the table's checked-out version;
    only the documents in ``readable`` (a set) when one is given."""
    data = table.to_lance().to_table(columns=["doc_id", "content_hash", "fingerprint"])
    chunks: collections.Counter[str] = collections.Counter()
    meta: dict[str, tuple[str, str]] = {}
    for doc_id, content_hash, fingerprint in zip(
        data["doc_id"].to_pylist(),
        data["content_hash"].to_pylist(),
        data["fingerprint"].to_pylist(),
    ):
        chunks[doc_id] += 1
        meta[doc_id] = (content_hash, fingerprint)
    return {d: (*meta[d], chunks[d]) for d in meta if readable is None or d in readable}


def _side(table, ref: str | int) -> dict[str, Any]:
    version = store.resolve_version(table, ref)
    table.checkout(version)
    return {"ref": str(ref), "version": version}


def _readable(table, access: Access | None, denied: set[str]) -> set[str] | None:
    """The documents of the checked-out version ``access`` may see (None: every one)."""
    if access is None or access.is_admin:
        return None
    readable, _ = readable_docs(table, access)
    return readable - denied


def diff_versions(
    db,
    table_name: str,
    from_ref: str | int,
    to_ref: str | int,
    *,
    limit: int = MAX_LISTED,
    access: Access | None = None,
) -> dict[str, Any]:
    """Documents added, updated (content or settings changed) and deleted from version
    ``from_ref`` to ``to_ref`` (each a version number, tag or run id), with chunk counts.
    With ``access`` (a caller), the diff of what that caller may read at each version, as
    an as-of search shows it: by the labels at that version and the current ones."""
    table_name = store.resolve_alias(db, table_name).table  # an index name: its table now
    table = store.open_chunks(db, table_name)
    denied = denied_now(table, access) if access is not None else set()
    before_side = _side(table, from_ref)
    before = _docs_at(table, _readable(table, access, denied))
    after_side = _side(table, to_ref)
    after = _docs_at(table, _readable(table, access, denied))
    added = sorted(set(after) - set(before))
    deleted = sorted(set(before) - set(after))
    updated = sorted(d for d in set(before) & set(after) if before[d][:2] != after[d][:2])
    return {
        "table": table_name,
        "from": {**before_side, "documents": len(before), "chunks": _chunks(before)},
        "to": {**after_side, "documents": len(after), "chunks": _chunks(after)},
        "counts": {
            "added": len(added),
            "updated": len(updated),
            "deleted": len(deleted),
            "unchanged": len(set(before) & set(after)) - len(updated),
        },
        "added": [{"doc_id": d, "chunks": after[d][2]} for d in added[:limit]],
        "updated": [
            {
                "doc_id": d,
                "chunks_before": before[d][2],
                "chunks_after": after[d][2],
                "content_changed": before[d][0] != after[d][0],
            }
            for d in updated[:limit]
        ],
        "deleted": [{"doc_id": d, "chunks": before[d][2]} for d in deleted[:limit]],
    }


def _chunks(docs: dict[str, tuple[str, str, int]]) -> int:
    return sum(c for _, _, c in docs.values())


_ROW_COLUMNS = [
    "chunk_id",
    "chunk_index",
    "content_hash",
    "fingerprint",
    "source_uri",
    "namespace",
    "source_version",
    "run_id",
    "indexed_at",
    "embedding_model",
    "title",
    "content_type",
]


def _doc_rows(table, doc_id: str) -> list[dict[str, Any]]:
    names = set(table.schema.names)
    columns = [c for c in _ROW_COLUMNS if c in names]
    query = table.search().where(eq("doc_id", doc_id).expr()).select(columns).limit(None)
    return query.to_arrow().to_pylist()


def _state(rows: list[dict[str, Any]]) -> tuple | None:
    if not rows:
        return None
    first = rows[0]
    return (first["content_hash"], first["fingerprint"], len(rows))


def explain_document(
    db, table_name: str, doc_id: str, *, access: Access | None = None
) -> dict[str, Any]:
    """Everything the table and its bookkeeping know about one document: where it is now
    (source, content hash, chunks, when embedded, by which run), every kept version in which
    it changed (added, updated, deleted) with the run behind that version, and its errors.
    With ``access`` (a caller other than admin), only a document the caller may read now:
    any other is reported as not found, as a missing one is."""
    table_name = store.resolve_alias(db, table_name).table  # an index name: its table now
    table = store.open_chunks(db, table_name)
    if access is not None and not access.is_admin:
        readable, _ = readable_docs(table, access)
        if doc_id not in readable:
            raise TableError(
                f"no document {doc_id!r} in {table_name!r}",
                hint="a document id as search returns it",
            )
    latest = table.version
    current = sorted(_doc_rows(table, doc_id), key=lambda r: r["chunk_index"])
    runs_by_version: dict[int, dict[str, Any]] = {}
    runs_by_id: dict[str, dict[str, Any]] = {}
    for run in store.read_runs(db, table_name):
        runs_by_id[run["run_id"]] = run
        if run["table_version"] is not None:
            runs_by_version.setdefault(int(run["table_version"]), run)
    history = []
    previous = None
    for info in sorted(table.list_versions(), key=lambda v: v["version"]):
        version = int(info["version"])
        try:
            table.checkout(version)
            rows = _doc_rows(table, doc_id)
        except Exception:  # a version pruned between the listing and the read
            continue
        state = _state(rows)
        if state != previous:
            change = "added" if previous is None else "deleted" if state is None else "updated"
            run = (
                runs_by_version.get(version)
                or runs_by_id.get(rows[0]["run_id"] if rows else "")
                or {}
            )
            history.append(
                {
                    "version": version,
                    "timestamp": info["timestamp"],
                    "change": change,
                    "content_hash": state[0] if state else None,
                    "chunks": state[2] if state else 0,
                    "run_id": run.get("run_id") or (rows[0]["run_id"] if rows else None),
                    "run_kind": run.get("kind"),
                    "indexed_at": max(
                        (r["indexed_at"] for r in rows if r["indexed_at"]), default=None
                    ),
                }
            )
        previous = state
    table.checkout_latest()
    errors = sorted(
        store.read_errors(db, table_name=table_name, doc_id=doc_id),
        key=lambda e: e["occurred_at"],
    )
    first = current[0] if current else {}
    run_ids = sorted(
        {r["run_id"] for r in current if r.get("run_id")}
        | {h["run_id"] for h in history if h["run_id"]}
        | {e["run_id"] for e in errors}
    )
    return {
        "table": table_name,
        "doc_id": doc_id,
        "present": bool(current),
        "table_version": latest,
        "source_uri": first.get("source_uri"),
        "namespace": first.get("namespace"),
        "source_version": first.get("source_version"),
        "content_hash": first.get("content_hash"),
        "fingerprint": first.get("fingerprint"),
        "embedding_model": first.get("embedding_model"),
        "title": first.get("title"),
        "chunks": len(current),
        "embedded_at": max((r["indexed_at"] for r in current if r["indexed_at"]), default=None),
        "run_id": first.get("run_id"),
        "history": history,
        "runs": [
            {
                k: runs_by_id[r].get(k)
                for k in (
                    "run_id",
                    "kind",
                    "status",
                    "started_at",
                    "finished_at",
                    "table_version",
                    "source",
                )
            }
            for r in run_ids
            if r in runs_by_id
        ],
        "errors": [
            {
                k: e.get(k)
                for k in (
                    "occurred_at",
                    "run_id",
                    "stage",
                    "error_class",
                    "message",
                    "source_uri",
                    "permanent",
                )
            }
            for e in errors
        ],
    }
