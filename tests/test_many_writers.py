"""Many writers on one table on object storage: nothing lost, nothing doubled.

For about a minute, on moto's S3 server (whose conditional writes are not atomic, so only
the commit lease keeps writers apart) and the real test broker: a batch run loop over
``s3://<bucket>/docs/`` while a thread edits, adds and deletes source objects; two stream
processes (``python -m freshindex.pipelines.stream --streaming``), one per topic, fed
upserts and deletes by a producer; upkeep in a loop with a policy that removes versions.
Afterwards (docs/ARCHITECTURE.md, "Many writers"):

* no chunk id appears twice;
* every document holds exactly its latest chunks: the batch's documents those of one
  clean run of the final source, the stream's those of one clean catch-up of its topic;
* every offset ``stream_batches`` records as committed is in the table at the version
  recorded with it (every message before it reflected), where that version still exists;
* the commit lease's fencing tokens grow with the table version they committed.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
import uuid

import boto3
import pytest

from freshindex import store
from freshindex.kafka_broker import create_topic, kafka_for_tests
from freshindex.pipelines.batch import run_ingest
from freshindex.schemas.messages import encode_message
from freshindex.store.upkeep import maintain
from tests.conftest import table_rows
from tests.test_stream_pipeline import (
    catch_up,
    caught_up,
    stop_with_sigterm,
    stream_process,
    wait_for,
    write_cfg_file,
)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]


@pytest.fixture(scope="module")
def kafka():
    with kafka_for_tests() as bootstrap:
        yield bootstrap


ACTIVE_S = 45  # how long the writers run concurrently
SOURCE_DOCS = 10
STREAM_KEYS = 12  # per topic


def body(name: str, rev: int) -> str:
    return f"# {name}\n\n{name} revision {rev}. " + " ".join(f"w{rev}x{i}" for i in range(12))


def put(bucket: str, name: str, rev: int) -> None:
    boto3.client("s3").put_object(
        Bucket=bucket, Key=f"docs/{name}.md", Body=body(name, rev).encode()
    )


class Editor(threading.Thread):
    """Edits, adds and deletes source objects while the batch runs re-ingest them."""

    def __init__(self, bucket: str, stop: threading.Event):
        super().__init__(daemon=True)
        self.bucket, self.stop, self.rng = bucket, stop, random.Random(7)
        self.present = {f"src{i}" for i in range(SOURCE_DOCS)}
        self.added = SOURCE_DOCS

    def run(self) -> None:
        s3, rev = boto3.client("s3"), 1
        while not self.stop.wait(2.5):
            rev += 1
            put(self.bucket, self.rng.choice(sorted(self.present)), rev)  # an edit
            if len(self.present) > SOURCE_DOCS - 2:  # a delete (well under the mass-delete guard)
                gone = self.rng.choice(sorted(self.present))
                s3.delete_object(Bucket=self.bucket, Key=f"docs/{gone}.md")
                self.present.discard(gone)
            else:  # an addition
                name = f"src{self.added}"
                self.added += 1
                put(self.bucket, name, rev)
                self.present.add(name)


class Producer(threading.Thread):
    """Upserts and deletes to both topics; remembers where each message landed."""

    def __init__(self, bootstrap: str, topics: list[str], stop: threading.Event):
        super().__init__(daemon=True)
        self.bootstrap, self.topics, self.stop = bootstrap, topics, stop
        self.sent: list[
            tuple[str, int, int, str, str | None]
        ] = []  # topic, part, offset, key, marker
        self.rng = random.Random(11)

    def run(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        seq = 0
        while not self.stop.wait(0.25):
            pending = []
            for topic in self.topics:
                for _ in range(3):
                    seq += 1
                    key = f"{topic[-1]}-{self.rng.randrange(STREAM_KEYS)}"
                    if self.rng.random() < 0.2:
                        key_b, value = encode_message(key, delete=True)
                        marker = None
                    else:
                        marker = f"mark{seq}z"
                        key_b, value = encode_message(key, text=f"{key} says {marker}.")
                    pending.append(
                        (topic, key, marker, producer.send(topic, key=key_b, value=value))
                    )
            producer.flush()
            for topic, key, marker, future in pending:
                meta = future.get(timeout=30)
                self.sent.append((topic, meta.partition, meta.offset, key, marker))
        producer.close()


class Upkeep(threading.Thread):
    def __init__(self, cfg, stop: threading.Event):
        super().__init__(daemon=True)
        self.cfg, self.stop, self.runs, self.failures = cfg, stop, 0, []
        self.versions_removed = 0

    def run(self) -> None:
        while not self.stop.wait(3):
            try:
                report = maintain(
                    self.cfg.db, self.cfg.table, self.cfg.maintenance, commit=self.cfg.commit
                )
                self.runs += 1
                self.versions_removed += report.versions_removed
            except Exception as exc:  # reported by the test, never swallowed
                self.failures.append(repr(exc))


def state_of(sent, upto: dict[tuple[str, int], int]) -> dict[str, str | None]:
    """key -> marker of its last message before the offsets ``upto`` (None: deleted)."""
    last: dict[str, tuple[int, str | None]] = {}
    for topic, part, offset, key, marker in sent:
        if offset < upto.get((topic, part), 0):
            last[key] = (offset, marker)  # a key's messages share a partition: offsets order them
    return {k: m for k, (_, m) in last.items()}


def assert_latest(sent, rows) -> None:
    """Every key of ``sent`` holds its last message, or is gone when that was a delete."""
    by_doc = rows_by_doc(rows)
    for key, marker in state_of(sent, {(t, p): 1 << 62 for t, p, *_ in sent}).items():
        if marker is None:
            assert key not in by_doc, f"{key} was deleted last"
        else:
            assert marker in " ".join(r["text"] for r in by_doc[key]), key


def rows_by_doc(rows) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["doc_id"], []).append(r)
    return out


def identity(rows):
    return sorted((r["doc_id"], r["chunk_id"], r["content_hash"]) for r in rows)


def test_batch_streams_and_upkeep_write_one_table_on_s3(fake_cfg, s3_bucket, kafka, tmp_path):
    policy = dataclasses.replace(
        fake_cfg.maintenance,
        keep_versions=3,
        keep_all_hours=0.0,
        min_version_age_minutes=0.25,  # versions of running readers stay (a batch run's plan)
        checkpoint_hourly_days=0.0,
        checkpoint_daily_days=0.0,
        keep_run_tags=2,
    )
    cfg = dataclasses.replace(fake_cfg, db=f"s3://{s3_bucket}/lancedb", maintenance=policy)
    source = f"s3://{s3_bucket}/docs/"
    for i in range(SOURCE_DOCS):
        put(s3_bucket, f"src{i}", 1)
    topics = [f"many-{uuid.uuid4().hex[:6]}-a", f"many-{uuid.uuid4().hex[:6]}-b"]
    for topic in topics:
        create_topic(kafka, topic, partitions=2)
    assert run_ingest(cfg, source)["status"] == "succeeded"  # the table exists before upkeep

    cfg_file = write_cfg_file(cfg, tmp_path / "cfg.yaml")
    groups = [f"group-{topic}" for topic in topics]
    streams = [
        stream_process(
            cfg_file,
            kafka,
            topic,
            "--group_id",
            group,
            "--batch_interval_s",
            "0.5",
            "--max_batch_messages",
            "20",
        )
        for topic, group in zip(topics, groups)
    ]
    stop = threading.Event()
    editor, producer, upkeep = (
        Editor(s3_bucket, stop),
        Producer(kafka, topics, stop),
        Upkeep(cfg, stop),
    )
    batch_runs = []
    try:
        for thread in (editor, producer, upkeep):
            thread.start()
        deadline = time.monotonic() + ACTIVE_S
        while time.monotonic() < deadline:
            batch_runs.append(run_ingest(cfg, source))
        stop.set()
        for thread in (editor, producer, upkeep):
            thread.join(60)
        for proc, topic, group in zip(streams, topics, groups):
            done = lambda t=topic, g=group: caught_up(kafka, t, g)  # noqa: E731
            wait_for(done, 120, proc, f"{topic} to catch up")
        outputs = [stop_with_sigterm(proc) for proc in streams]
    finally:
        stop.set()
        for proc in streams:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for proc, out in zip(streams, outputs):
        assert proc.returncode == 0, out[-3000:]
    assert not upkeep.failures, upkeep.failures
    assert upkeep.runs >= 3 and upkeep.versions_removed > 0 and len(batch_runs) >= 2
    final = run_ingest(cfg, source)  # the source as it is at the end
    assert final["status"] == "succeeded"

    db = store.connect(cfg.db)
    rows = table_rows(cfg.db)
    # 1. nothing doubled
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    # 2. every document holds exactly its latest chunks
    clean = dataclasses.replace(cfg, db=str(tmp_path / "clean"))
    run_ingest(clean, source)
    for topic in topics:
        catch_up(clean, kafka, topic, group_id=f"clean-{topic}")
    assert identity(rows) == identity(table_rows(clean.db))
    batch_docs = {r["doc_id"] for r in rows if r["doc_id"].startswith("src")}
    assert batch_docs == {f"{name}.md" for name in editor.present}
    assert_latest(producer.sent, rows)
    # 3. every offset recorded as committed is in the table at the version recorded with it
    versions = {v["version"] for v in store.open_chunks(db, cfg.table).list_versions()}
    batches = store.read_stream_batches(db, table_name=cfg.table)
    checked = 0
    for batch in batches:
        if batch["table_version"] not in versions or not batch["lease_token"]:
            continue  # removed by upkeep, or a batch that committed nothing to the table
        upto = {(o["topic"], o["partition"]): o["next_offset"] for o in batch["offsets"]}
        topic = next(iter(upto))[0]
        expected = state_of([s for s in producer.sent if s[0] == topic], upto)
        at = rows_by_doc(table_rows(cfg.db, version=batch["table_version"]))
        for key, marker in expected.items():
            if marker is None:
                assert key not in at, (key, batch["table_version"])
            else:
                assert marker in " ".join(r["text"] for r in at.get(key, [])), (key, batch)
        checked += 1
    assert checked >= 2
    # 4. fencing tokens grow with the versions committed under them
    held = [
        (r["lease_token"], r["table_version"])
        for r in [*store.read_runs(db, cfg.table), *batches]
        if r["lease_token"] is not None and r["table_version"] is not None
    ]
    tokens = [t for t, _ in sorted(held)]
    assert len(tokens) == len(set(tokens)) and len(tokens) >= 10  # each hold its own token
    by_token = [v for _, v in sorted(held)]
    assert by_token == sorted(by_token), "a later lease holder committed an earlier version"
    print(  # the test's scale, for its report (pytest -s)
        f"{len(batch_runs) + 2} batch runs, {upkeep.runs} upkeeps ({upkeep.versions_removed} "
        f"versions removed), {len(batches)} stream batches ({checked} checked as of their "
        f"version), {len(producer.sent)} messages, {len(tokens)} lease holds recorded"
    )
