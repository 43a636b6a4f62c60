"""Opening a LanceDB database and naming what is in it; the clock every record is stamped with."""

from __future__ import annotations

import datetime as dt
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


def filesystem(uri: str):
    """(pyarrow filesystem, path) of a local path or a URI (s3://, gs://, ...)."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), uri
    return pafs.FileSystem.from_uri(uri)
