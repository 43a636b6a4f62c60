"""The run lock: one batch run per table at a time, held from before the run reads the table
until after its last commit and upkeep, so two runs never interleave their commits.

The commit lock (``lock.py``) serializes single commits; a batch run makes several (its
chunks in ``commit_max_rows`` slices, its manifest, its source versions), and a scheduled
run that starts while the previous one still runs would slip its commits between them,
having planned against a table the other is changing. The run lock prevents that:

* a local folder: a file lock ``<db>/.<table>.run.lock`` (the kernel releases it when its
  holder dies); the holder writes who it is into the file for the others' messages;
* ``s3://``: a second lease, ``<db>/_leases/run/<table>.json`` (``lease.py``: conditional
  writes, renewed every ``commit.lease_ttl_s / 3`` for as long as the run lasts, expiring
  ``commit.lease_ttl_s`` after a holder dies);
* other object stores: no lock, as for commits (``commit.uncoordinated``: warn or refuse).

A run that finds the lock held acts on ``ingest.if_running``: ``skip`` (``RunSkipped``),
``fail`` (``RunInProgress``) or ``wait`` (up to ``ingest.if_running_wait_s``, then
``RunInProgress``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from freshindex.config import IF_RUNNING, CommitConfig
from freshindex.errors import FreshIndexError
from freshindex.store.connection import is_local
from freshindex.store.lease import CommitLease, LeaseTimeout, S3LeaseObject, new_holder_id
from freshindex.store.lock import LEASE_SCHEMES, _uncoordinated

log = logging.getLogger(__name__)

LOCAL_POLL_S = 0.2


class RunInProgress(FreshIndexError):
    """Another batch run holds the table's run lock (``if_running: fail``, or ``wait`` gave
    up)."""

    def __init__(self, message: str, *, run_id: str, holder: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.run_id = run_id  # the run that did not go ahead
        self.holder = holder  # who holds the lock, as it described itself


class RunSkipped(RunInProgress):
    """``if_running: skip``: this run did nothing because another run holds the table."""


def run_lock(
    db_uri: str,
    table: str,
    run_id: str,
    *,
    if_running: str = "skip",
    wait_s: float = 3600.0,
    commit: CommitConfig | None = None,
):
    """Hold the table's run lock for a whole batch run (see the module docstring)::

    with run_lock(cfg.db, cfg.table, run_id, if_running="skip", commit=cfg.commit):
        ...  # read the table's version, run the pipeline, upkeep
    """
    if if_running not in IF_RUNNING:
        raise ValueError(f"if_running must be one of {IF_RUNNING}, got {if_running!r}")
    commit = commit or CommitConfig()
    holder = f"run {run_id} on {new_holder_id()}"
    where = f"{db_uri.rstrip('/')}/{table}"
    if is_local(db_uri):
        return _file_run_lock(db_uri, table, run_id, holder, where, if_running, wait_s)
    scheme = urlparse(db_uri).scheme
    if scheme in LEASE_SCHEMES:
        return _lease_run_lock(db_uri, table, run_id, holder, where, if_running, wait_s, commit)
    _uncoordinated(scheme, commit)
    return contextlib.nullcontext()


def _busy(
    run_id: str, where: str, holder: str, if_running: str, waited_s: float | None
) -> RunInProgress:
    """The error for a held lock, saying who holds it and what to do."""
    if if_running == "skip":
        return RunSkipped(
            f"skipped: {where} is being re-indexed by {holder}; nothing was read or written",
            run_id=run_id,
            holder=holder,
            hint="the next scheduled run picks up every change; --if-running wait waits "
            "for the running one instead",
        )
    if if_running == "wait":
        return RunInProgress(
            f"gave up after waiting {waited_s:.0f}s: {where} is still being re-indexed by {holder}",
            run_id=run_id,
            holder=holder,
            hint="raise ingest.if_running_wait_s, or check that run (a dead holder on "
            "object storage releases the lock after commit.lease_ttl_s)",
        )
    return RunInProgress(
        f"{where} is being re-indexed by {holder}",
        run_id=run_id,
        holder=holder,
        hint="--if-running wait waits for it; --if-running skip exits 75 instead",
    )


# ------------------------------------------------------------------ a local folder


@contextlib.contextmanager
def _file_run_lock(
    db_uri: str, table: str, run_id: str, holder: str, where: str, if_running: str, wait_s: float
) -> Iterator[None]:
    folder = Path(db_uri.removeprefix("file://"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{table}.run.lock"
    # "a+": never truncate before holding; the holder rewrites the file once it holds it
    with open(path, "a+") as handle:
        started = time.monotonic()
        announced = False
        while not _try_flock(handle):
            other = _file_holder(path)
            waited = time.monotonic() - started
            if if_running != "wait" or waited > wait_s:
                raise _busy(run_id, where, other, if_running, waited)
            if not announced:
                log.warning("waiting for %s to finish with %s (up to %.0fs)", other, where, wait_s)
                announced = True
            time.sleep(LOCAL_POLL_S)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"holder": holder, "since": time.time()}))
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_flock(handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _file_holder(path: Path) -> str:
    """Who holds the local run lock, as its holder wrote it (it may not have yet)."""
    try:
        raw = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        raw = {}
    if "holder" not in raw:
        return f"another run (on {socket.gethostname()})"
    since = time.strftime("%H:%M:%S", time.localtime(raw["since"]))
    return f"{raw['holder']} (since {since})"


# ------------------------------------------------------------------ s3://


@contextlib.contextmanager
def _lease_run_lock(
    db_uri: str,
    table: str,
    run_id: str,
    holder: str,
    where: str,
    if_running: str,
    wait_s: float,
    commit: CommitConfig,
) -> Iterator[CommitLease]:
    lease_object = S3LeaseObject(db_uri, table, kind="run")

    def lease(timeout_s: float) -> CommitLease:
        return CommitLease(
            lease_object,
            holder=holder,
            ttl_s=commit.lease_ttl_s,
            settle_s=commit.lease_settle_s,
            # polled for minutes, maybe hours: not more often than every few seconds
            poll_s=min(5.0, max(0.5, commit.lease_ttl_s / 6)),
            timeout_s=timeout_s,
        )

    started = time.monotonic()
    try:
        held = lease(0.0).acquire()
    except LeaseTimeout:
        other = _lease_holder(lease_object)
        if if_running != "wait":
            raise _busy(run_id, where, other, if_running, None) from None
        log.warning("waiting for %s to finish with %s (up to %.0fs)", other, where, wait_s)
        try:
            held = lease(wait_s).acquire()
        except LeaseTimeout:
            other = _lease_holder(lease_object)
            raise _busy(run_id, where, other, if_running, time.monotonic() - started) from None
    try:
        yield held
        if not held.holds():
            log.warning(
                "the run lease of %s was lost during the run (renewals failed for longer "
                "than commit.lease_ttl_s): another run may have started beside this one; "
                "each commit still held the commit lease",
                where,
            )
    finally:
        held.release()


def _lease_holder(lease_object: S3LeaseObject) -> str:
    state, _ = lease_object.read()
    if state is None:
        return "another run"
    left = state.expires_at - time.time()
    return f"{state.holder} (its lease runs {left:.0f}s more unless renewed)"
