"""The post-commit check: a commit is in the table, once.

The commit lock makes writers take turns; this check catches what would slip past it (a
lost commit: another writer's manifest replaced ours on storage whose conditional writes
are not atomic; a doubled one: two ``merge_insert``s inserting the same new keys). Right
after a commit, under the lock, the version the commit made is read back (a fresh handle,
not the writer's cached one) with indexed lookups on ``chunk_id`` and ``doc_id``:

* every chunk id the commit wrote is there, exactly once;
* a document it replaced holds only the chunks it wrote (no stale or foreign rows);
* a document it deleted holds nothing.

A violation raises ``CommitCheckFailed`` and nothing is repaired here: the writer has not
recorded its run or its offsets yet, so its retry (the next batch run, the stream's
restart) re-applies a lost commit; a doubled chunk id needs the operator (the hint says how).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from freshindex.errors import TableError
from freshindex.schemas.predicates import in_list

LOOKUP_BATCH = 1000  # ids per lookup: one IN list of a bounded size


class CommitCheckFailed(TableError):
    """A commit is missing from its version, or left a chunk id twice."""


def _rows(table, column: str, values: list[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for start in range(0, len(values), LOOKUP_BATCH):
        condition = in_list(column, values[start : start + LOOKUP_BATCH])
        rows = (
            table.search()
            .where(condition.expr())
            .select(["chunk_id", "doc_id"])
            .limit(None)
            .to_arrow()
        )
        found += zip(rows["chunk_id"].to_pylist(), rows["doc_id"].to_pylist())
    return found


def verify_commit(
    db,
    table_name: str,
    version: int | None,
    *,
    chunk_ids: Iterable[str] = (),
    replaced_docs: Iterable[str] = (),
    deleted_docs: Iterable[str] = (),
) -> None:
    """Raise ``CommitCheckFailed`` unless ``version`` of the table holds the commit (see the
    module docstring). ``chunk_ids``: the rows it wrote; ``replaced_docs``: documents whose
    only chunks must now be those; ``deleted_docs``: documents it removed. A ``version`` of
    None (nothing was committed) has nothing to check."""
    if version is None:
        return
    written = sorted(set(chunk_ids))
    replaced = sorted(set(replaced_docs))
    deleted = sorted(set(deleted_docs))
    table = db.open_table(table_name)
    try:
        table.checkout(version)
    except Exception as exc:  # removed (upkeep runs under the same lock) or never written
        raise _failed(table_name, version, f"version {version} cannot be read: {exc}") from exc
    problems: list[str] = []
    counts = Counter(chunk for chunk, _ in _rows(table, "chunk_id", written))
    missing = [c for c in written if counts[c] == 0]
    doubled = sorted(c for c, n in counts.items() if n > 1)
    if missing:
        problems.append(f"{len(missing)} written chunk ids are missing (e.g. {missing[0]})")
    if doubled:
        problems.append(f"{len(doubled)} chunk ids appear more than once (e.g. {doubled[0]})")
    if replaced:
        wanted = set(written)
        stale = sorted({c for c, _ in _rows(table, "doc_id", replaced) if c not in wanted})
        if stale:
            problems.append(f"{len(stale)} chunks of replaced documents remain (e.g. {stale[0]})")
    if deleted:
        left = sorted({d for _, d in _rows(table, "doc_id", deleted)})
        if left:
            problems.append(f"{len(left)} deleted documents still have chunks (e.g. {left[0]})")
    if problems:
        raise _failed(table_name, version, "; ".join(problems))


def _failed(table_name: str, version: int, detail: str) -> CommitCheckFailed:
    return CommitCheckFailed(
        f"the commit of version {version} of table {table_name!r} is not in the table as "
        f"written: {detail}",
        table=table_name,
        hint="another process wrote the table without the commit lock (a writer on "
        "uncoordinated storage, or an older freshindex). Nothing was recorded for this "
        "commit: re-run the writer to re-apply it; for doubled chunk ids re-ingest the "
        "affected documents after stopping the other writer",
    )
