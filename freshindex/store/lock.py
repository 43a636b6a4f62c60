"""The commit lock: every write to a chunks table holds it, so writers take turns.

Concurrent ``merge_insert`` on one LanceDB table is known to leave duplicate keys, so a
batch run, streams and upkeep serialize their commits to a table:

* a local folder: a file lock (``<db>/.<table>.commit.lock``); every writer is on this
  machine and the kernel releases the lock of a writer that dies;
* ``s3://``: the commit lease (``freshindex.store.lease``), a lease object beside the
  table taken with conditional writes, renewed while held, expiring ``lease_ttl_s`` after
  a holder dies; its fencing token is recorded with each commit;
* other object stores (``gs://``...): no coordination yet. A warning once per process
  (``commit.uncoordinated: warn``, run one writer per table there) or a refusal
  (``refuse``: ``CommitNotCoordinated``).

``commit_lock`` yields the lease (None for a local folder and uncoordinated storage):
callers call ``check_held(lease)`` right before each commit and record ``token_of(lease)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from freshindex.config import CommitConfig
from freshindex.errors import FreshIndexError
from freshindex.store.connection import is_local
from freshindex.store.lease import CommitLease, S3LeaseObject

log = logging.getLogger(__name__)

LEASE_SCHEMES = ("s3",)  # object stores with conditional writes the lease is built on
_warned: set[str] = set()  # schemes warned about in this process (warn once, not per commit)


class CommitNotCoordinated(FreshIndexError):
    """Commits to a database on this storage are not coordinated across processes."""


@contextlib.contextmanager
def commit_lock(
    db_uri: str, table: str, settings: CommitConfig | None = None
) -> Iterator[CommitLease | None]:
    """Hold the table's commit lock (see the module docstring); yields the S3 lease or None.

    with commit_lock("s3://bucket/lancedb", "docs", cfg.commit) as lease:
        check_held(lease)  # right before the commit
        ...  # commit; record token_of(lease)
    """
    settings = settings or CommitConfig()
    if is_local(db_uri):
        with _file_lock(db_uri, table):
            yield None
        return
    scheme = urlparse(db_uri).scheme
    if scheme in LEASE_SCHEMES:
        lease = CommitLease(
            S3LeaseObject(db_uri, table),
            ttl_s=settings.lease_ttl_s,
            settle_s=settings.lease_settle_s,
            timeout_s=settings.lease_timeout_s,
        )
        with lease:
            yield lease
        return
    _uncoordinated(scheme, settings)
    yield None


def check_held(lease: CommitLease | None) -> None:
    """Raise ``LeaseLost`` unless the lease is still held (nothing to check without one)."""
    if lease is not None:
        lease.check()


def token_of(lease: CommitLease | None) -> int | None:
    """The fencing token of the hold, recorded with what it commits (None: no lease)."""
    return lease.token if lease is not None else None


def _uncoordinated(scheme: str, settings: CommitConfig) -> None:
    message = (
        f"commits to {scheme}:// databases are not coordinated across processes: "
        "freshindex has a commit lease for s3:// only"
    )
    hint = "run one writer per table there (one batch schedule or one stream process)"
    if settings.uncoordinated == "refuse":
        raise CommitNotCoordinated(
            message, hint=hint + ", and set commit.uncoordinated: warn to allow it"
        )
    if scheme not in _warned:
        _warned.add(scheme)
        log.warning("%s; %s", message, hint)


@contextlib.contextmanager
def _file_lock(db_uri: str, table: str) -> Iterator[None]:
    folder = Path(db_uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{table}.commit.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
