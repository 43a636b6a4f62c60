"""The commit lock: every write to a chunks table on this machine holds it.

Writers in several processes (a batch run, a stream, maintenance) serialize their commits:
concurrent ``merge_insert`` on one LanceDB table is known to leave duplicate keys.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from freshindex.store.connection import is_local


@contextlib.contextmanager
def commit_lock(db_uri: str, table: str) -> Iterator[None]:
    """Serialize commits to one table across processes on this machine.

    Object stores (s3://, gs://) get no lock here: Lance's own optimistic commit
    detects conflicts there, and freshindex runs one committer per pipeline.
    """
    if not is_local(db_uri):
        yield
        return
    folder = Path(db_uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{table}.commit.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
