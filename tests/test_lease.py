"""The commit lease on a real S3-compatible server (moto's, whose conditional writes are
checked and stored in two steps, so racing writers are possible there)."""

from __future__ import annotations

import multiprocessing
import os
import time

import boto3
import pytest

from freshindex.lease import CommitLease, LeaseLost, LeaseTimeout, S3LeaseObject

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
