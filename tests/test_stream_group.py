"""Several stream processes in one consumer group (``--membership group``) on one table.

On local disk and on the S3 server (moto): two members share a 4-partition topic while a
producer sends upserts and deletes; one is killed with SIGKILL mid-stream, so the group
rebalances and the survivor takes its partitions over from the offsets recorded with the
table's commits; a third joins (another
rebalance). Afterwards (docs/STREAMING.md, "Several stream processes"):

* every member committed, and a partition the killed member had was committed by another
  member afterwards;
* no chunk id appears twice, and the table equals one clean catch-up of the topic; every
  key holds its last message (or is gone when that was a delete);
* per partition, the offsets recorded with the commits never go back (no batch applied by a
  member that had lost the partition), and the table is never behind the offsets recorded
  with it: at the version of each record, every key holds its last message before them or
  a later one.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import threading
import uuid

import pytest

from freshindex import store
from freshindex.kafka_broker import create_topic, kafka_for_tests
from freshindex.transforms.kafka_io import KafkaOffsets, KafkaSpec
from tests.conftest import table_rows
from tests.test_many_writers import Producer, assert_latest, identity, rows_by_doc
from tests.test_stream_pipeline import (
    catch_up,
    stop_with_sigterm,
    stream_process,
    wait_for,
    write_cfg_file,
)

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

PARTITIONS = 4
# a killed member is noticed after the session timeout; the broker's minimum is 6 s
GROUP_FLAGS = ["--kafka_option", "session_timeout_ms=6000"]
GROUP_FLAGS += ["--kafka_option", "heartbeat_interval_ms=1000"]


@pytest.fixture(scope="module")
def kafka():
    with kafka_for_tests() as bootstrap:
        yield bootstrap


def log_ends(bootstrap: str, topic: str) -> dict[tuple[str, int], int]:
    offsets = KafkaOffsets(KafkaSpec(bootstrap, (topic,), "probe"))
    try:
        from kafka import TopicPartition

        ends = offsets.log_end([TopicPartition(topic, p) for p in range(PARTITIONS)])
    finally:
        offsets.close()
    return {(tp.topic, tp.partition): end for tp, end in ends.items()}


def not_behind(sent, upto) -> dict[str, set[str | None]]:
    """key -> the markers (None: deleted) the table may hold for it once the offsets
    ``upto`` are committed: its last message below them, or any later message of it."""
    last = {}
    for topic, part, offset, key, _ in sent:
        if offset < upto.get((topic, part), 0):
            last[key] = max(last.get(key, -1), offset)
    return {
        key: {m for t, p, o, k, m in sent if k == key and o >= first} for key, first in last.items()
    }


def committed_partitions(db, table: str, run_id: str, after=None) -> set[tuple[str, int]]:
    """The partitions whose offsets ``run_id`` moved with a commit of the table."""
    moved = set()
    last: dict[tuple[str, int], int] = {}
    for batch in store.read_stream_batches(db, table_name=table, run_id=run_id):
        for o in batch["offsets"]:
            key = (o["topic"], o["partition"])
            later = after is None or batch["committed_at"] > after
            if key in last and o["next_offset"] > last[key] and later:
                moved.add(key)
            last[key] = o["next_offset"]
    return moved


@pytest.mark.parametrize("storage", ["local", "s3"])
def test_members_share_partitions_and_a_killed_one_is_taken_over(
    fake_cfg, kafka, tmp_path, storage, request
):
    if storage == "s3":  # the table on the S3 server: the members take turns by the lease
        bucket = request.getfixturevalue("s3_bucket")
        fake_cfg = dataclasses.replace(fake_cfg, db=f"s3://{bucket}/lancedb")
    topic = f"group-{uuid.uuid4().hex[:6]}-x"
    create_topic(kafka, topic, partitions=PARTITIONS)
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml")
    group = f"g-{topic}"

    def member(run_id: str):
        flags = ["--membership", "group", "--group_id", group, "--run_id", run_id]
        flags += ["--batch_interval_s", "0.5", "--max_batch_messages", "20", *GROUP_FLAGS]
        return stream_process(cfg_file, kafka, topic, *flags)

    db = store.connect(fake_cfg.db)
    stop = threading.Event()
    producer = Producer(kafka, [topic], stop)
    procs: dict[str, object] = {}
    try:
        producer.start()
        procs["a"], procs["b"] = member("a"), member("b")
        for name in ("a", "b"):  # both joined and committed part of the topic
            wait_for(
                lambda n=name: committed_partitions(db, fake_cfg.table, n),
                180,
                procs[name],
                f"member {name} to commit",
            )
        os.killpg(procs["b"].pid, signal.SIGKILL)
        procs["b"].wait(10)
        killed_at = store.utcnow()
        b_had = {
            (o["topic"], o["partition"])
            for o in store.read_stream_batches(db, table_name=fake_cfg.table, run_id="b")[-1][
                "offsets"
            ]
        }
        wait_for(
            lambda: committed_partitions(db, fake_cfg.table, "a", killed_at) & b_had,
            180,
            procs["a"],
            "the survivor to take over the killed member's partitions",
        )
        procs["c"] = member("c")
        wait_for(
            lambda: committed_partitions(db, fake_cfg.table, "c"), 180, procs["c"], "c to commit"
        )
        stop.set()
        producer.join(30)
        ends = log_ends(kafka, topic)
        wait_for(
            lambda: store.read_stream_offsets(db, fake_cfg.table, group) == ends,
            180,
            procs["a"],
            "the group to catch up",
        )
        outputs = {name: stop_with_sigterm(procs[name]) for name in ("a", "c")}
    finally:
        stop.set()
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for name, out in outputs.items():
        assert procs[name].returncode == 0, out[-3000:]
        assert "stream run" in out and "succeeded" in out, out[-2000:]

    rows = table_rows(fake_cfg.db)
    # nothing doubled; every key holds its last message
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    clean = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    catch_up(clean, kafka, topic, group_id=f"clean-{topic}")
    assert identity(rows) == identity(table_rows(clean.db))
    assert_latest(producer.sent, rows)
    # per partition, recorded offsets never go back: no stale batch was applied
    batches = store.read_stream_batches(db, table_name=fake_cfg.table, group_id=group)
    assert {b["run_id"] for b in batches} >= {"a", "b", "c"}
    high: dict[tuple[str, int], int] = {}
    for batch in batches:
        for o in batch["offsets"]:
            key = (o["topic"], o["partition"])
            assert o["next_offset"] >= high.get(key, 0), (key, batch["run_id"])
            high[key] = o["next_offset"]
    # every offset recorded with a commit is in the table at the version recorded with it:
    # each key holds its last message below the recorded offset, or a later one. (Later:
    # the killed member may have committed a batch it did not live to record; its
    # successor re-reads it from the recorded offset, and until it has passed that batch's
    # end a key may hold the killed member's newer state, or briefly an older one again.)
    versions = {v["version"] for v in store.open_chunks(db, fake_cfg.table).list_versions()}
    checked = 0
    for batch in batches:
        if not (batch["chunks_written"] or batch["docs_deleted"]):
            continue  # a batch that committed nothing to the table
        if batch["table_version"] not in versions:
            continue  # removed by upkeep
        upto = {(o["topic"], o["partition"]): o["next_offset"] for o in batch["offsets"]}
        at = rows_by_doc(table_rows(fake_cfg.db, version=batch["table_version"]))
        for key, allowed in not_behind(producer.sent, upto).items():
            text = " ".join(r["text"] for r in at.get(key, []))
            held = re.search(r"mark\d+z", text).group(0) if key in at else None
            assert held in allowed, (key, held, batch["table_version"], batch["run_id"])
        checked += 1
    assert checked >= 5
    print(  # the test's scale, for its report (pytest -s)
        f"{len(producer.sent)} messages, {len(batches)} batches by "
        f"{sorted({b['run_id'] for b in batches})}, {checked} checked as of their version"
    )
