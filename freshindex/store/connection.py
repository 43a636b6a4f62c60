"""Opening a LanceDB database and naming what is in it; the clock every record is stamped with."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from urllib.parse import urlparse


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


def _not_found(exc: ValueError) -> bool:
    return "not found" in str(exc).lower()


def open_if_exists(db, name: str):
    """The table ``name``, or None when there is none yet. A table another process is
    creating is listed before its first version is written and cannot be opened for that
    moment: to a reader it does not exist yet."""
    if name not in table_names(db):
        return None
    try:
        return db.open_table(name)
    except ValueError as exc:
        if _not_found(exc):
            return None
        raise


def open_created(db, name: str, timeout_s: float = 10.0):
    """Open a table that exists or is being created by another process (a writer's open
    after ``create_table`` found it taken): waits for its first version."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return db.open_table(name)
        except ValueError as exc:
            if not _not_found(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def filesystem(uri: str):
    """(pyarrow filesystem, path) of a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)
