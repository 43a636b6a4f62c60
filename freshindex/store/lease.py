"""Commit leases on object storage: one committer per table at a time, across machines.

``freshindex.store.commit_lock`` takes it for ``s3://`` databases. On a local folder every
writer is on one machine and the commit lock is a file lock, which the kernel releases
when its holder dies. On S3 (and S3-compatible servers)
writers share nothing but the bucket, so the lock is a small object,
``<db>/_leases/<table>.json`` = ``{holder, token, expires_at}``, taken and renewed with
conditional writes:

- **take**: create it if absent (``If-None-Match: *``), or replace an expired one if it is
  still the version read (``If-Match: <etag>``). The new ``token`` is the old one + 1: a
  fencing token that grows with every holder, recorded with what the holder commits.
- **settle**: some S3-compatible servers check a condition and store the object in two
  steps (moto's server does), so two racing conditional writes can both succeed. The
  taker therefore waits ``settle_s`` (longer than such a race window) and reads the lease
  back: only the holder whose write is the one stored proceeds; the other backs off.
- **renew**: a thread extends ``expires_at`` every ``ttl_s / 3`` while the lease is held;
  a holder that dies stops renewing and blocks others for at most ``ttl_s``.
- **release**: the lease is rewritten as expired (never deleted, so tokens keep growing).

``holds()`` says whether the lease is still this holder's; a committer checks it just
before it commits, so a holder that stalled past its TTL never commits over a new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

from freshindex.errors import FreshIndexError

LEASE_FOLDER = "_leases"
FIRST_POLL_S = 0.05  # a waiter's first look again; the wait grows to poll_s


class LeaseTimeout(FreshIndexError):
    """The lease could not be taken in time: another writer holds it."""


class LeaseLost(FreshIndexError):
    """The lease expired or was taken over while this holder still meant to commit."""


@dataclass(frozen=True)
class LeaseState:
    holder: str
    token: int
    expires_at: float  # epoch seconds; 0: released

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseState:
        raw = json.loads(data)
        return cls(holder=str(raw["holder"]), token=int(raw["token"]), expires_at=raw["expires_at"])


class S3LeaseObject:
    """The lease object in an S3 bucket, read and written conditionally (boto3, which takes
    its endpoint and credentials from the standard ``AWS_*`` environment variables)."""

    def __init__(self, db_uri: str, table: str, kind: str = "commit"):
        """``kind``: ``commit`` (``<db>/_leases/<table>.json``) or another lease of the table
        in its own folder (``run``: ``<db>/_leases/run/<table>.json``, the run lock's)."""
        import boto3

        parsed = urlparse(db_uri)
        self.bucket = parsed.netloc
        prefix = parsed.path.strip("/")
        folder = LEASE_FOLDER if kind == "commit" else f"{LEASE_FOLDER}/{kind}"
        self.key = "/".join(p for p in (prefix, folder, f"{table}.json") if p)
        self._s3 = boto3.client("s3")

    def read(self) -> tuple[LeaseState | None, str | None]:
        try:
            got = self._s3.get_object(Bucket=self.bucket, Key=self.key)
        except self._s3.exceptions.NoSuchKey:
            return None, None
        return LeaseState.from_bytes(got["Body"].read()), got["ETag"]

    def write(self, state: LeaseState, etag: str | None) -> str | None:
        """Store ``state`` if the object is still ``etag`` (None: still absent); returns the
        new etag, or None when the condition failed."""
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            put = self._s3.put_object(
                Bucket=self.bucket, Key=self.key, Body=state.to_bytes(), **condition
            )
        except self._s3.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] in (
                "PreconditionFailed",
                "ConditionalRequestConflict",
            ):
                return None
            raise
        return put["ETag"]


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class CommitLease:
    """The commit lease of one table (see the module docstring). Use as a context manager::

    with CommitLease(S3LeaseObject("s3://bucket/lancedb", "docs")) as lease:
        ...  # lease.token: the fencing token of this hold
        lease.check()  # right before the commit
    """

    def __init__(
        self,
        lease_object,
        *,
        holder: str | None = None,
        ttl_s: float = 30.0,
        settle_s: float = 0.3,
        poll_s: float = 0.5,
        timeout_s: float | None = 600.0,
        clock=time.time,
    ):
        if ttl_s <= 3 * settle_s:
            raise ValueError("ttl_s must be well above settle_s")
        self._object = lease_object
        self.holder = holder or new_holder_id()
        self._ttl_s, self._settle_s, self._poll_s = ttl_s, settle_s, poll_s
        self._timeout_s, self._clock = timeout_s, clock
        self._etag: str | None = None
        self.token: int | None = None
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- taking it -------------------------------------------------------------------

    def _try_take(self) -> bool:
        current, etag = self._object.read()
        now = self._clock()
        if current is not None and current.expires_at > now and current.holder != self.holder:
            return False
        token = (current.token if current is not None else 0) + 1
        mine = LeaseState(self.holder, token, now + self._ttl_s)
        if self._object.write(mine, etag) is None:
            return False
        time.sleep(self._settle_s)  # a racing write that also passed its check lands by now
        stored, stored_etag = self._object.read()
        if stored != mine:
            return False
        self._etag, self.token = stored_etag, token
        return True

    def acquire(self) -> CommitLease:
        started = time.monotonic()
        # most holds are one commit (well under a second): look again soon, then less
        # often; jittered, so waiters that lost together do not retry together
        wait = min(FIRST_POLL_S, self._poll_s)
        while not self._try_take():
            if self._timeout_s is not None and time.monotonic() - started > self._timeout_s:
                current, _ = self._object.read()
                raise LeaseTimeout(
                    f"the commit lease is held by {current.holder if current else '?'}",
                    hint="another writer is committing; a dead one releases it after its TTL",
                )
            time.sleep(wait * random.uniform(0.5, 1.0))
            wait = min(wait * 1.5, self._poll_s)
        self._stop.clear()
        self._lost.clear()
        self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="lease")
        self._renewer.start()
        return self

    # -- holding it ------------------------------------------------------------------

    def _renew_loop(self) -> None:
        while not self._stop.wait(self._ttl_s / 3):
            if not self._renew():
                self._lost.set()
                return

    def _renew(self) -> bool:
        state = LeaseState(self.holder, self.token, self._clock() + self._ttl_s)
        try:
            etag = self._object.write(state, self._etag)
        except Exception:  # a network error: the next attempt may pass; the TTL decides
            return True
        if etag is None:
            return False
        self._etag = etag
        return True

    def holds(self) -> bool:
        """Whether this holder still holds the lease (read from the store, not assumed)."""
        if self.token is None or self._lost.is_set():
            return False
        current, _ = self._object.read()
        return (
            current is not None
            and current.holder == self.holder
            and current.token == self.token
            and current.expires_at > self._clock()
        )

    def check(self) -> None:
        """Raise LeaseLost unless the lease is still held: call right before a commit."""
        if not self.holds():
            raise LeaseLost(
                f"the commit lease (token {self.token}) is no longer held by {self.holder}",
                hint="this writer stalled past lease_ttl_s; its work is retried, not committed",
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.token is not None and not self._lost.is_set():
            with contextlib.suppress(Exception):  # an unreleased lease expires by itself
                self._object.write(LeaseState(self.holder, self.token, 0.0), self._etag)
        self.token, self._etag = None, None

    def __enter__(self) -> CommitLease:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()
