"""The streaming pipeline end to end against a real Kafka-protocol broker (Tansu, started
here on a free loopback port; $KAFKA_BOOTSTRAP_SERVERS to use another), on a real LanceDB
with the FAKE embedder. Covered: catch-up runs, offsets committed after the table commit,
dead letters, a continuous run stopped by SIGTERM, and SIGKILL at every step of a
micro-batch followed by a restart that must equal one clean run.

Why one file of ~440 lines: every case shares one broker per module (starting one is
the slow part) and the helpers that run and stop the stream process.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from freshindex import store
from freshindex.errors import SourceError
from freshindex.kafka_broker import create_topic, kafka_for_tests
from freshindex.pipelines.stream import run_stream, stream_config
from freshindex.schemas.messages import KafkaRecord, encode_message
from freshindex.schemas.records import ErrorRecord
from tests.conftest import DOCS, ROOT, table_rows

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def kafka():
    with kafka_for_tests() as bootstrap:
        yield bootstrap


@pytest.fixture
def topic(kafka):
    name = f"docs-{uuid.uuid4().hex[:8]}"
    create_topic(kafka, name, partitions=3)
    return name


def publish(bootstrap, topic, messages) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for key, value in messages:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def kafka_state(bootstrap, topic, group):
    """(committed offsets of the group, log end offsets) per partition."""
    from kafka import TopicPartition

    from freshindex.transforms.kafka_io import KafkaOffsets, KafkaSpec

    offsets = KafkaOffsets(KafkaSpec(bootstrap, (topic,), group))
    try:
        tps = [TopicPartition(topic, p) for p in offsets.partitions(topic)]
        committed = {tp.partition: offsets.committed([tp])[tp] for tp in tps}
        ends = {tp.partition: off for tp, off in offsets.log_end(tps).items()}
    finally:
        offsets.close()
    return {p: committed[p] for p in sorted(committed)}, {p: ends[p] for p in sorted(ends)}


def caught_up(bootstrap, topic, group) -> bool:
    committed, ends = kafka_state(bootstrap, topic, group)
    return committed == ends


def content(rows):
    return sorted((r["doc_id"], r["chunk_id"], r["text"], r["content_hash"]) for r in rows)


def catch_up(cfg, bootstrap, topic, **settings):
    stream = stream_config(
        cfg, topics=topic, bootstrap_servers=bootstrap, stop_at_end=True, **settings
    )
    return run_stream(cfg, stream)


def test_catch_up_runs_index_the_backlog_and_commit_offsets_after_the_table(
    fake_cfg, kafka, topic, corpus
):
    dlq = f"{topic}.dlq"
    create_topic(kafka, dlq, partitions=1)
    messages = [encode_message(rel, uri=str(corpus / rel)) for rel in DOCS]
    messages += [
        encode_message("note-1", text="Kafka keeps records in partitions.", title="Kafka"),
        encode_message("note-2", text="A draft that is deleted again."),
        encode_message("note-3", text="Deleted by an explicit op."),
        encode_message("note-2", delete=True),
        (b"note-3", b'{"schema_version": 1, "op": "delete"}'),
        encode_message("note-1", text="Kafka keeps ordered records in partitions.", title="K"),
        (b"broken", b"{not json"),
    ]
    publish(kafka, topic, messages)
    row = catch_up(
        fake_cfg,
        kafka,
        topic,
        dead_letter_topic=dlq,
        allow_uri_messages=True,
        allowed_uri_prefixes=[str(corpus)],
    )

    assert (row["kind"], row["status"], row["docs_seen"]) == ("stream", "succeeded", 11)
    assert (row["docs_added"], row["docs_failed"], row["docs_deleted"]) == (5, 1, 0)
    docs = {r["doc_id"]: r for r in table_rows(fake_cfg.db)}
    assert set(docs) == {*DOCS, "note-1"}
    assert "ordered records" in docs["note-1"]["text"]
    group = f"freshindex-{fake_cfg.table}"
    committed, ends = kafka_state(kafka, topic, group)
    assert committed == ends and sum(ends.values()) == 11
    db = store.connect(fake_cfg.db)
    recorded = store.read_stream_offsets(db, fake_cfg.table, group)
    assert recorded == {(topic, p): o for p, o in ends.items()}
    table = store.open_chunks(db, fake_cfg.table)
    assert table.tags.list()[row["tag"]]["version"] == table.version == row["table_version"]
    (error,) = store.read_errors(db, run_id=row["run_id"])
    assert (error["doc_id"], error["stage"], error["topic"]) == ("broken", "decode", topic)

    (dead,) = read_topic(kafka, dlq, 1)
    headers = dict(dead.headers)
    assert (dead.key, dead.value) == (b"broken", b"{not json")
    assert headers["freshindex.error.stage"] == b"decode"
    assert headers["freshindex.source"].startswith(f"kafka://{topic}/".encode())

    again = catch_up(fake_cfg, kafka, topic)  # nothing new: no batch, no version
    assert again["docs_seen"] == 0 and again["table_version"] == row["table_version"]
    publish(kafka, topic, [encode_message("note-1", delete=True)])
    third = catch_up(fake_cfg, kafka, topic)
    assert (third["docs_seen"], third["docs_deleted"]) == (1, 1)
    assert "note-1" not in {r["doc_id"] for r in table_rows(fake_cfg.db)}
    with pytest.raises(SourceError, match="does not exist"):  # refused before it starts
        catch_up(fake_cfg, kafka, topic, dead_letter_topic=f"{topic}.missing")


def test_poison_messages_are_dead_lettered_and_the_batch_is_committed_once(
    fake_cfg, kafka, tmp_path
):
    """The messages that stopped the stream before issue 10 (a RecursionError, an
    OverflowError, NaN out of the indexer, replayed forever on restart), and uri messages
    naming secrets, among valid documents of one micro-batch."""
    topic, dlq = f"poison-{uuid.uuid4().hex[:8]}", f"poison-{uuid.uuid4().hex[:8]}.dlq"
    create_topic(kafka, topic, partitions=1)
    create_topic(kafka, dlq, partitions=1)
    secret = tmp_path / "id_rsa.md"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- hunter2")
    valid = [encode_message(f"ok{i}", text=f"Valid document {i} about geese.") for i in range(3)]
    poison = [
        (b"deep", b'{"text": "x", "metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        (b"huge-time", b'{"text": "x", "updated_at": 1e20}'),
        (b"nan-time", b'{"text": "x", "updated_at": NaN}'),
        encode_message("environ", uri="/proc/self/environ"),
        encode_message("ssh-key", uri=str(secret)),
    ]
    publish(kafka, topic, [valid[0], *poison[:3], valid[1], *poison[3:], valid[2]])
    row = catch_up(fake_cfg, kafka, topic, dead_letter_topic=dlq, max_batch_messages=500)

    assert (row["status"], row["docs_seen"]) == ("succeeded", 8)
    assert (row["docs_added"], row["docs_failed"]) == (3, 5)
    rows = table_rows(fake_cfg.db)
    assert {r["doc_id"] for r in rows} == {"ok0", "ok1", "ok2"}
    assert not any("hunter2" in r["text"] or "PATH=" in r["text"] for r in rows)
    db = store.connect(fake_cfg.db)
    errors = {e["doc_id"]: e for e in store.read_errors(db, run_id=row["run_id"])}
    assert set(errors) == {"deep", "huge-time", "nan-time", "environ", "ssh-key"}
    assert {e["stage"] for d, e in errors.items() if d in ("environ", "ssh-key")} == {"read"}
    assert all((e["topic"], e["partition"]) == (topic, 0) for e in errors.values())
    assert len({e["offset"] for e in errors.values()}) == 5
    dead = read_topic(kafka, dlq, 5)
    assert sorted(d.key for d in dead) == sorted(k for k, _ in poison)
    assert all(dict(d.headers)["freshindex.source"].startswith(b"kafka://") for d in dead)
    committed, ends = kafka_state(kafka, topic, f"freshindex-{fake_cfg.table}")
    assert committed == ends == {0: 8}  # the offsets moved past the poison

    again = catch_up(fake_cfg, kafka, topic, dead_letter_topic=dlq)  # a restart
    assert (again["status"], again["docs_seen"], again["docs_failed"]) == ("succeeded", 0, 0)


def test_a_dead_letter_too_large_for_the_producer_goes_without_its_value(kafka):
    from freshindex.transforms.dead_letters import DeadLetterProducer
    from freshindex.transforms.kafka_io import KafkaSpec

    dlq = f"big-{uuid.uuid4().hex[:8]}.dlq"
    create_topic(kafka, dlq, partitions=1)
    record = KafkaRecord("docs", 2, 17, b"big", b"x" * (3 * 1024 * 1024), 1_700_000_000_000)
    error = ErrorRecord("decode", "InvalidMessage", "the value is too large", doc_id="big")
    producer = DeadLetterProducer(KafkaSpec(kafka, ("docs",), "g"), dlq)
    try:
        producer.send(record, error)  # over kafka-python's 1 MiB request size
        producer.flush()
    finally:
        producer.close()
    (dead,) = read_topic(kafka, dlq, 1)
    headers = dict(dead.headers)
    assert (dead.key, dead.value) == (b"big", None)
    assert headers["freshindex.source"] == b"kafka://docs/2@17"
    assert b"MessageSizeTooLarge" in headers["freshindex.value_dropped"]


def read_topic(bootstrap, topic, count, timeout=20):
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    records, deadline = [], time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


# ---------------------------------------------------------------- processes, signals, crashes


def write_cfg_file(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def stream_process(cfg_file, bootstrap, topic, *extra, env=None, crash=None):
    """The plain Beam module, as an operator runs it; ``crash="POINT:N"``: it SIGKILLs itself
    at that point of micro-batch N (tests/crashing.py)."""
    module = ["freshindex.pipelines.stream"]
    if crash is not None:
        point, n = crash.split(":")
        module = ["tests.crashing", "stream", point, n, "--"]
    cmd = [
        sys.executable,
        "-m",
        *module,
        "--streaming",
        "--config",
        str(cfg_file),
    ]
    cmd += ["--topics", topic, "--kafka_bootstrap_servers", bootstrap, *extra]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout=120, proc=None, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"stream exited ({proc.returncode}) before {what}:\n" + proc.stdout.read()[-3000:]
            )
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stop_with_sigterm(proc, timeout=60) -> str:
    """SIGTERM the stream, as an operator would; its output once it has exited."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    return out


def batches_of(cfg):
    db = store.connect(cfg.db)
    return store.read_stream_batches(db, table_name=cfg.table, columns=["run_id"])


def doc_ids(cfg):
    db = store.connect(cfg.db)
    if cfg.table not in store.table_names(db):
        return set()
    return {r["doc_id"] for r in table_rows(cfg.db, cfg.table)}


@pytest.mark.slow
def test_continuous_run_shows_changes_within_seconds_and_stops_on_sigterm(
    fake_cfg, kafka, topic, tmp_path
):
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml")
    proc = stream_process(cfg_file, kafka, topic, "--batch_interval_s", "0.3")
    try:
        publish(kafka, topic, [encode_message("first", text="The first document.")])
        wait_for(lambda: "first" in doc_ids(fake_cfg), proc=proc, what="the first document")
        publish(kafka, topic, [encode_message(f"d{i}", text=f"Doc {i}.") for i in range(5)])
        # a bound for liveness only: freshness is measured in scripts/bench_stream.py
        wait_for(lambda: {f"d{i}" for i in range(5)} <= doc_ids(fake_cfg), 30, proc, "5 docs")
        publish(kafka, topic, [encode_message("first", delete=True)])
        wait_for(lambda: "first" not in doc_ids(fake_cfg), 30, proc, "the delete")
        out = stop_with_sigterm(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "stream run" in out and "succeeded" in out and "freshness p50" in out
    (run,) = store.read_runs(store.connect(fake_cfg.db), fake_cfg.table)
    assert (run["kind"], run["docs_seen"], run["docs_deleted"]) == ("stream", 7, 1)
    committed, ends = kafka_state(kafka, topic, f"freshindex-{fake_cfg.table}")
    assert committed == ends


def history(n=40):
    """Upserts, edits and deletes of a dozen documents, in order."""
    messages = []
    for i in range(n):
        doc = f"doc-{i % 12}"
        if i % 7 == 6:
            messages.append(encode_message(doc, delete=True))
        else:
            text = f"Version {i} of {doc}.\n\nIt mentions topic {i % 5} and more words {i}."
            messages.append(encode_message(doc, text=text, title=doc))
    return messages


@pytest.mark.parametrize(
    "crash",
    ["before_chunk_commit:2", "after_chunk_commit:2", "after_batch_record:2", "external SIGKILL"],
)
@pytest.mark.slow
def test_sigkill_mid_stream_then_restart_equals_one_clean_run(
    fake_cfg, kafka, topic, tmp_path, crash
):
    messages = history()
    publish(kafka, topic, messages[:20])  # the rest after the crash, so it dies before the end
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml")
    args = ["--max_batch_messages", "4", "--batch_interval_s", "0"]
    if crash == "external SIGKILL":
        proc = stream_process(cfg_file, kafka, topic, *args)
        wait_for(lambda: len(batches_of(fake_cfg)) >= 2, proc=proc, what="two batches")
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    else:  # the pipeline kills itself at that point of micro-batch 2
        proc = stream_process(cfg_file, kafka, topic, *args, "--stop_at_end", crash=crash)
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, out
    publish(kafka, topic, messages[20:])
    clean = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    catch_up(clean, kafka, topic, group_id="clean")

    group = f"freshindex-{fake_cfg.table}"
    committed, ends = kafka_state(kafka, topic, group)
    recorded = store.read_stream_offsets(store.connect(fake_cfg.db), fake_cfg.table, group)
    assert sum(ends.values()) == 40
    if crash != "external SIGKILL":  # it died in batch 2: Kafka holds batch 1's offsets at most
        assert sum(o or 0 for o in committed.values()) <= 4
    for p, offset in committed.items():  # Kafka never runs ahead of the table
        assert (offset or 0) <= recorded.get((topic, p), 0)
    if crash in ("before_chunk_commit:2", "after_chunk_commit:2"):
        assert len(batches_of(fake_cfg)) == 1  # batch 2 is not in the ledger (after: in the table)

    row = catch_up(fake_cfg, kafka, topic)  # the restart resumes and finishes
    assert row["status"] == "succeeded"
    assert row["docs_seen"] == 40 - sum(recorded.values())  # from the offsets in the table
    rows = table_rows(fake_cfg.db)
    assert len({r["chunk_id"] for r in rows}) == len(rows)  # no duplicates
    assert content(rows) == content(table_rows(clean.db))
    committed, ends = kafka_state(kafka, topic, group)
    assert committed == ends


@pytest.mark.slow
def test_batch_runs_and_the_stream_interleave_on_one_table(
    fake_cfg, kafka, topic, tmp_path, corpus
):
    """Batch runs commit while the stream commits (both take the table's commit lock):
    nothing is lost or duplicated, and each document is whole, from one writer or the other."""
    import threading

    from freshindex.pipelines.batch import run_ingest

    messages = history(60)
    clean = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml")
    proc = stream_process(
        cfg_file, kafka, topic, "--batch_interval_s", "0.1", "--max_batch_messages", "5"
    )

    def produce():
        for start in range(0, len(messages), 5):
            publish(kafka, topic, messages[start : start + 5])
            time.sleep(0.2)

    try:
        producer = threading.Thread(target=produce)
        producer.start()
        first = run_ingest(fake_cfg, str(corpus), [])
        (corpus / "notes/ducks.md").write_text("# Geese\n\nGeese are larger than ducks.")
        second = run_ingest(fake_cfg, str(corpus), [])
        producer.join()
        group = f"freshindex-{fake_cfg.table}"
        wait_for(lambda: caught_up(kafka, topic, group), 120, proc, "the stream to catch up")
        out = stop_with_sigterm(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert (first["docs_added"], second["docs_updated"], second["docs_deleted"]) == (4, 1, 0)

    rows = table_rows(fake_cfg.db)
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    hashes: dict[str, set] = {}
    for r in rows:
        hashes.setdefault(r["doc_id"], set()).add(r["content_hash"])
    assert all(len(h) == 1 for h in hashes.values())  # no document mixes two versions
    catch_up(clean, kafka, topic, group_id="clean")  # the stream's documents alone
    streamed = {r["doc_id"] for r in table_rows(clean.db)}
    assert set(hashes) == set(DOCS) | streamed
    ours = [r for r in rows if r["doc_id"] in streamed]
    assert content(ours) == content(table_rows(clean.db))
    assert "Geese are larger" in " ".join(
        r["text"] for r in rows if r["doc_id"] == "notes/ducks.md"
    )

    # the stream cannot replace a document the batch run wrote (it is the folder's
    # namespace, not the topic's): the message becomes an errors row, the file's version
    # stays, and the next full-sync batch run leaves the stream's own documents alone
    publish(kafka, topic, [encode_message("guide/auth.md", text="Auth, from the stream.")])
    row = catch_up(fake_cfg, kafka, topic)
    auth = [r for r in table_rows(fake_cfg.db) if r["doc_id"] == "guide/auth.md"]
    assert "Basic authentication" in " ".join(r["text"] for r in auth)
    refused = store.read_errors(store.connect(fake_cfg.db), run_id=row["run_id"])
    assert [(e["doc_id"], e["error_class"]) for e in refused] == [
        ("guide/auth.md", "NamespaceConflict")
    ]
    again = run_ingest(fake_cfg, str(corpus), [])
    assert (again["docs_updated"], again["docs_deleted"]) == (0, 0)
    final = table_rows(fake_cfg.db)
    assert {r["doc_id"] for r in final} == set(DOCS) | streamed
