"""The commit lease on a real S3-compatible server (moto's, whose conditional writes are
checked and stored in two steps, so racing writers are possible there)."""

from __future__ import annotations

import multiprocessing
import os
import time

import boto3
import pytest

from freshindex import store
from freshindex.config import CommitConfig
from freshindex.errors import ConfigError
from freshindex.store import lock
from freshindex.store.lease import CommitLease, LeaseLost, LeaseTimeout, S3LeaseObject

FAST = {"ttl_s": 2.0, "settle_s": 0.2, "poll_s": 0.05}


def lease_for(bucket: str, **options) -> CommitLease:
    return CommitLease(S3LeaseObject(f"s3://{bucket}/lancedb", "docs"), **{**FAST, **options})


def test_one_holder_at_a_time_and_tokens_grow(s3_bucket):
    first = lease_for(s3_bucket).acquire()
    assert first.holds()
    with pytest.raises(LeaseTimeout, match="held by"):
        lease_for(s3_bucket, timeout_s=0.5).acquire()
    first_token = first.token
    first.release()
    second = lease_for(s3_bucket).acquire()
    assert second.token == first_token + 1
    assert not first.holds() and second.holds()
    second.release()


def _take_and_die(bucket: str) -> None:
    lease_for(bucket).acquire()
    os._exit(0)  # dies holding it: no release, no more renewals


@pytest.mark.slow
def test_a_dead_holder_blocks_the_next_one_only_until_its_ttl(s3_bucket):
    ctx = multiprocessing.get_context("spawn")
    dead = ctx.Process(target=_take_and_die, args=(s3_bucket,))
    dead.start()
    dead.join(60)
    lease_object = S3LeaseObject(f"s3://{s3_bucket}/lancedb", "docs")
    abandoned, _ = lease_object.read()
    assert abandoned is not None and abandoned.expires_at > 0  # never released

    nxt = CommitLease(lease_object, **FAST, timeout_s=30).acquire()
    assert time.time() >= abandoned.expires_at  # taken only once the TTL had run out
    assert nxt.token == abandoned.token + 1
    nxt.release()


@pytest.mark.slow
def test_a_stalled_holder_cannot_commit_after_its_lease_was_taken(s3_bucket, monkeypatch):
    stalled = lease_for(s3_bucket)
    monkeypatch.setattr(stalled, "_renew", lambda: True)  # a holder frozen past its TTL
    stalled.acquire()
    successor = lease_for(s3_bucket, timeout_s=30).acquire()
    with pytest.raises(LeaseLost, match="no longer held"):
        stalled.check()
    successor.check()
    successor.release()
    stalled.release()


def _increment(bucket: str, times: int, queue) -> None:
    """Read-modify-write a counter object under the lease: lost updates show a broken lock."""
    s3 = boto3.client("s3")
    tokens = []
    for _ in range(times):
        with lease_for(bucket, timeout_s=120) as lease:
            tokens.append(lease.token)
            value = int(s3.get_object(Bucket=bucket, Key="counter")["Body"].read())
            lease.check()
            s3.put_object(Bucket=bucket, Key="counter", Body=str(value + 1).encode())
    queue.put(tokens)


@pytest.mark.slow
def test_writers_in_three_processes_never_hold_it_at_once(s3_bucket):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="counter", Body=b"0")
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_increment, args=(s3_bucket, 6, queue)) for _ in range(3)]
    for w in workers:
        w.start()
    tokens = [t for _ in workers for t in queue.get(timeout=300)]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    counter = boto3.client("s3").get_object(Bucket=s3_bucket, Key="counter")["Body"].read()
    assert int(counter) == 18  # no lost update: never two holders at once
    assert sorted(tokens) == list(range(1, 19))  # each hold its own fencing token, in order


# ------------------------------------------------------------------ store.commit_lock


def test_commit_lock_takes_the_lease_on_s3_and_a_file_lock_locally(s3_bucket, tmp_path):
    settings = CommitConfig(lease_ttl_s=2.0, lease_settle_s=0.1, lease_timeout_s=30)
    db_uri = f"s3://{s3_bucket}/lancedb"
    tokens = []
    for _ in range(2):
        with store.commit_lock(db_uri, "docs", settings) as lease:
            store.check_held(lease)
            tokens.append(store.token_of(lease))
            assert S3LeaseObject(db_uri, "docs").read()[0].holder == lease.holder
    assert tokens == [1, 2]
    assert store.token_of(lease) is None  # released: no token to record any more
    with store.commit_lock(str(tmp_path / "db"), "docs", settings) as local:
        assert local is None and store.token_of(local) is None
        store.check_held(local)  # nothing to check
    assert (tmp_path / "db" / ".docs.commit.lock").exists()


def test_uncoordinated_storage_warns_once_or_is_refused(monkeypatch, caplog):
    monkeypatch.setattr(lock, "_warned", set())
    with caplog.at_level("WARNING", logger="freshindex.store.lock"):
        for _ in range(2):
            with store.commit_lock("gs://bucket/lancedb", "docs") as lease:
                assert lease is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "gs:// databases are not coordinated" in warnings[0]
    refuse = CommitConfig(uncoordinated="refuse")
    with (
        pytest.raises(store.CommitNotCoordinated, match="one writer per table"),
        store.commit_lock("gs://bucket/lancedb", "docs", refuse),
    ):
        pass


def test_commit_settings_are_checked():
    with pytest.raises(ConfigError, match="lease_ttl_s must be more than 3 x"):
        CommitConfig(lease_ttl_s=0.5, lease_settle_s=0.3)
    with pytest.raises(ConfigError, match="warn or refuse"):
        CommitConfig(uncoordinated="ignore")
