"""Tags and as-of reads: a version number, a tag or a run id names one version of a table."""

from __future__ import annotations

from freshindex.errors import TableError
from freshindex.store.chunks import open_chunks

RUN_TAG_PREFIX = "run-"


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
