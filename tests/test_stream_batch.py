"""Micro-batches applied to a real LanceDB without a broker (``BatchIndexer`` driven directly),
with the FAKE embedder: one commit per batch, errors as data, offsets recorded with the
commit, idempotent replays, and agreement with the batch pipeline.

Why one file of ~550 lines: every case drives the same BatchIndexer fixture against the
same in-memory topic; split, each file would repeat that harness.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
import zlib

import pytest

from freshindex import store
from freshindex.pipelines.batch import run_ingest
from freshindex.pipelines.stream import (
    BatchIndexer,
    StreamRun,
    batch_due,
    split_batches,
    stream_config,
)
from freshindex.schemas.messages import KafkaRecord, PollBatch, encode_message
from freshindex.transforms.kafka_io import PartitionStart
from tests.conftest import DOCS, table_rows


class Topic:
    """An in-memory stand-in for a topic: records with offsets per partition."""

    def __init__(self, name="docs", partitions=2):
        self.name, self.partitions = name, partitions
        self.next = [0] * partitions
        self.log: list[KafkaRecord] = []

    def send(self, doc_id, value=None, *, partition=None, **message):
        if value is None and message:
            _, value = encode_message(doc_id, **message)
        elif isinstance(value, dict):
            value = json.dumps(value).encode()
        part = zlib.crc32(doc_id.encode()) % self.partitions if partition is None else partition
        rec = KafkaRecord(
            self.name, part, self.next[part], doc_id.encode(), value, int(time.time() * 1000)
        )
        self.next[part] += 1
        self.log.append(rec)
        return rec

    def polls(self, records=None) -> list[PollBatch]:
        """One read per partition covering ``records`` (default: the whole log)."""
        records = self.log if records is None else records
        out = []
        for part in range(self.partitions):
            mine = [r for r in records if r.partition == part]
            if mine:
                out.append(
                    PollBatch(
                        self.name,
                        part,
                        mine[0].offset,
                        mine[-1].offset + 1,
                        tuple(mine),
                        time.time(),
                        self.next[part],
                    )
                )
        return out

    def starts(self):
        return tuple(PartitionStart(self.name, p, 0) for p in range(self.partitions))


def indexer_for(cfg, topic, run_id="r1", dead_letters=None, **settings):
    """A BatchIndexer without a broker; ``settings`` are StreamConfig fields."""
    run = StreamRun(
        run_id=run_id,
        cfg=cfg,
        stream=stream_config(cfg, topics=topic.name, bootstrap_servers="unused:9092", **settings),
        starts=topic.starts(),
        started_at=time.time(),
    )
    indexer = BatchIndexer(run, dead_letters=dead_letters)
    return indexer, indexer.initial_progress()


def content(rows):
    return sorted((r["doc_id"], r["chunk_id"], r["text"]) for r in rows)


def versions(cfg):
    return len(store.open_chunks(store.connect(cfg.db), cfg.table).list_versions())


def test_a_micro_batch_is_one_commit_with_errors_and_offsets(fake_cfg, tmp_path, corpus):
    topic = Topic()
    topic.send("a", text="Alpha is the first letter.", title="Alpha")
    topic.send("b", text="Beta is the second letter.")
    topic.send("file.md", uri=str(corpus / "guide/timeouts.md"))
    allow = {"allow_uri_messages": True, "allowed_uri_prefixes": [str(tmp_path)]}
    indexer, progress = indexer_for(fake_cfg, topic, **allow)
    first = indexer.index(topic.polls(), progress)
    assert (first.messages, first.docs_added, first.docs_failed) == (3, 3, 0)
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {"a", "b", "file.md"}

    batch = [
        topic.send("a", text="Alpha, edited.", title="Alpha"),
        topic.send("c", text="Gamma is the third letter.", metadata={"lang": "en"}),
        topic.send("c", text="Gamma, last message wins."),
        topic.send("b", None),  # tombstone
        topic.send("bad", b"{not json"),
        topic.send("", {"text": "no key"}),
        topic.send("x.bin", uri=str(tmp_path / "x.bin")),
        topic.send("gone.md", uri=str(tmp_path / "missing.md")),
    ]
    before = versions(fake_cfg)
    sent_ms = min(r.timestamp_ms for r in batch)
    stats = indexer.index(topic.polls(batch), progress)
    indexed_ms = time.time() * 1000
    assert versions(fake_cfg) == before + 1  # upserts, replacements and deletes: one commit
    assert (stats.messages, stats.docs_added, stats.docs_updated) == (8, 1, 1)
    assert (stats.docs_deleted, stats.docs_skipped, stats.docs_failed) == (1, 1, 4)
    rows = table_rows(fake_cfg.db)
    assert {r["doc_id"] for r in rows} == {"a", "c", "file.md"}
    texts = {r["doc_id"]: r["text"] for r in rows}
    assert "edited" in texts["a"] and "last message wins" in texts["c"]
    assert stats.table_version == store.open_chunks(store.connect(fake_cfg.db), "docs").version
    # one freshness per message: from its Kafka time to the commit, within this call
    assert len(stats.freshness_ms) == 8 and stats.lag == 0
    assert max(stats.freshness_ms) <= indexed_ms - sent_ms + 1

    errors = store.read_errors(store.connect(fake_cfg.db), run_id="r1")
    by_doc = {e["doc_id"]: (e["stage"], e["error_class"]) for e in errors}
    assert by_doc == {
        "bad": ("decode", "InvalidMessage"),
        None: ("decode", "InvalidMessage"),
        "x.bin": ("parse", "UnsupportedFormat"),
        "gone.md": ("read", "FileNotFoundError"),
    }
    bad = next(e for e in errors if e["doc_id"] == "bad")
    assert bad["source_uri"] == f"kafka://docs/{bad['partition']}@{bad['offset']}"
    assert (bad["topic"], bad["offset"]) == ("docs", batch[4].offset)

    batches = store.read_stream_batches(store.connect(fake_cfg.db), run_id="r1")
    assert [b["batch_seq"] for b in batches] == [1, 2] and batches[-1]["messages"] == 8
    recorded = store.read_stream_offsets(store.connect(fake_cfg.db), "docs", "freshindex-docs")
    assert recorded == {("docs", 0): topic.next[0], ("docs", 1): topic.next[1]}
    assert progress.positions == recorded and progress.batches == 2


def test_replaying_a_committed_batch_changes_nothing(fake_cfg):
    """A crash after the table commit but before the offsets were recorded replays the batch."""
    topic = Topic()
    for i in range(6):
        topic.send(f"d{i}", text=f"Document {i} is about ducks number {i}.")
    topic.send("d1", None)
    indexer, progress = indexer_for(fake_cfg, topic)
    indexer.index(topic.polls(), progress)
    before_rows, before_versions = content(table_rows(fake_cfg.db)), versions(fake_cfg)
    replay = indexer.index(topic.polls(), indexer.initial_progress())
    assert versions(fake_cfg) == before_versions  # nothing to commit: no new version
    assert content(table_rows(fake_cfg.db)) == before_rows
    assert replay.docs_skipped == 7 and replay.chunks_written == 0


def test_one_batch_or_many_give_the_same_table(fake_cfg, tmp_path):
    topic = Topic(partitions=3)
    for round_ in range(4):
        for i in range(8):
            if (i + round_) % 5 == 0:
                topic.send(f"d{i}", None)
            else:
                topic.send(f"d{i}", text=f"Round {round_}: item {i} of the corpus.\n\nShared tail.")
    one = dataclasses.replace(fake_cfg, db=str(tmp_path / "one"))
    many = dataclasses.replace(fake_cfg, db=str(tmp_path / "many"))
    indexer, progress = indexer_for(one, topic)
    indexer.index(topic.polls(), progress)
    indexer, progress = indexer_for(many, topic)
    groups = split_batches(topic.polls(), 5)
    assert len(groups) == 7
    for group in groups:
        indexer.index(group, progress)
    assert content(table_rows(many.db)) == content(table_rows(one.db))
    assert progress.positions == {("docs", p): topic.next[p] for p in range(3)}


def test_a_batch_closes_an_interval_after_its_oldest_message_reached_kafka():
    def read(read_at, *sent_at, partition=0):
        records = tuple(
            KafkaRecord("docs", partition, i, b"k", b"{}", int(t * 1000))
            for i, t in enumerate(sent_at)
        )
        return PollBatch("docs", partition, 0, len(records), records, read_at)

    # read as soon as sent: the interval counts from the read
    assert batch_due([read(100.0, 100.0)], 0.5) == pytest.approx(100.5)
    # waited 1.2 s in Kafka while a commit ran: due at once, not 0.5 s after the read
    assert batch_due([read(101.2, 100.0, 100.6)], 0.5) == pytest.approx(100.5)
    # the oldest message of any read decides
    assert batch_due([read(101.0, 100.9), read(101.1, 100.2, partition=1)], 0.5) == (
        pytest.approx(100.7)
    )
    # a producer clock running ahead never makes a batch wait longer than the interval
    assert batch_due([read(100.0, 160.0)], 0.5) == pytest.approx(100.5)
    # a read with no records (a log gap) counts from its read time
    assert batch_due([read(100.0)], 0.5) == pytest.approx(100.5)


def test_unchanged_documents_are_skipped_and_edits_reuse_vectors(fake_cfg):
    topic = Topic(partitions=1)
    text = "\n\n".join(
        f"Paragraph {i} " + " ".join(f"w{i}x{j}" for j in range(40)) for i in range(4)
    )
    topic.send("long", text=text, title="Long")
    indexer, progress = indexer_for(fake_cfg, topic)
    indexer.index(topic.polls(), progress)
    version = versions(fake_cfg)
    same = indexer.index(topic.polls([topic.send("long", text=text, title="Long")]), progress)
    assert (same.docs_skipped, same.chunks_written) == (1, 0)
    assert versions(fake_cfg) == version
    edited = text.replace("Paragraph 3", "Paragraph three")
    stats = indexer.index(topic.polls([topic.send("long", text=edited, title="Long")]), progress)
    assert stats.docs_updated == 1 and stats.chunks_reused >= 1
    assert stats.chunks_embedded < stats.chunks_written


def test_stream_and_batch_agree_on_documents_and_chunks(fake_cfg, tmp_path, corpus):
    """The same documents through the batch pipeline and as Kafka messages (files as ``uri``
    messages keyed by their relative path, JSONL records as text messages) give the same
    chunk ids, texts and content hashes."""
    jsonl = tmp_path / "c.jsonl"
    records = [{"_id": f"r{i}", "title": f"T{i}", "text": f"Record {i} text."} for i in range(3)]
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    batch = dataclasses.replace(fake_cfg, db=str(tmp_path / "batch"))
    run_ingest(batch, str(jsonl), [])
    run_ingest(dataclasses.replace(batch, table="files"), str(corpus), [])

    topic = Topic()
    for r in records:
        topic.send(r["_id"], text=r["text"], title=r["title"])
    indexer, progress = indexer_for(fake_cfg, topic)
    indexer.index(topic.polls(), progress)
    files = Topic(name="files")
    for rel in DOCS:
        files.send(rel, uri=str(corpus / rel))
    indexer, progress = indexer_for(
        dataclasses.replace(fake_cfg, table="files"),
        files,
        allow_uri_messages=True,
        allowed_uri_prefixes=[str(corpus)],
    )
    indexer.index(files.polls(), progress)

    def ledger(db, table):
        tbl = store.open_chunks(store.connect(db), table)
        cols = ["doc_id", "chunk_id", "text", "content_hash"]
        return sorted(map(tuple, (r.values() for r in tbl.to_arrow().select(cols).to_pylist())))

    assert ledger(fake_cfg.db, "docs") == ledger(batch.db, "docs")
    assert ledger(fake_cfg.db, "files") == ledger(batch.db, "files")


def test_recorded_offsets_never_move_backwards(fake_cfg):
    db = store.connect(fake_cfg.db)
    for seq, offsets in enumerate([{0: 5, 1: 2}, {0: 3, 1: 9}], 1):
        store.append_stream_batch(
            db,
            {
                "run_id": f"r{seq}",
                "table_name": "docs",
                "group_id": "g",
                "batch_seq": 1,
                "committed_at": store.utcnow(),
                "offsets": [
                    {"topic": "t", "partition": p, "next_offset": o} for p, o in offsets.items()
                ],
            },
        )
    assert store.read_stream_offsets(db, "docs", "g") == {("t", 0): 5, ("t", 1): 9}
    assert store.read_stream_offsets(db, "docs", "other") == {}


def test_table_upkeep_runs_on_the_stream_schedule(fake_cfg):
    cfg = dataclasses.replace(
        fake_cfg, maintenance=dataclasses.replace(fake_cfg.maintenance, every_commits=2)
    )
    topic = Topic(partitions=1)
    indexer, progress = indexer_for(cfg, topic)
    for i in range(3):
        indexer.index(topic.polls([topic.send(f"d{i}", text=f"Text {i}.")]), progress)
    kinds = [r["kind"] for r in store.read_runs(store.connect(cfg.db), "docs")]
    assert kinds == ["maintain"]
    assert {r["doc_id"] for r in table_rows(cfg.db)} == {"d0", "d1", "d2"}


@pytest.mark.slow
def test_the_real_model_through_a_micro_batch(real_cfg):
    """The bundled all-MiniLM-L6-v2: unit-norm 384-d vectors that find the right document."""
    import numpy as np

    from freshindex.embedding import get_embedder

    topic = Topic(partitions=1)
    topic.send("ducks", text="Ducks are water birds with broad flat bills.", title="Ducks")
    topic.send("tls", text="TLS certificates are verified against a CA bundle.", title="TLS")
    topic.send("pool", text="The connection pool limits concurrent requests.", title="Pool")
    indexer, progress = indexer_for(real_cfg, topic)
    stats = indexer.index(topic.polls(), progress)
    assert (stats.docs_added, stats.chunks_embedded) == (3, 3)
    table = store.open_chunks(store.connect(real_cfg.db), "docs")
    vectors = np.stack(table.to_arrow()["vector"].to_numpy(zero_copy_only=False))
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    query = get_embedder(real_cfg.embedding).encode(["which birds have flat bills?"])[0]
    hit = table.search(query).limit(1).select(["doc_id"]).to_list()[0]
    assert hit["doc_id"] == "ducks"


# ------------------------------------------------------------ hostile producers (issue 10)


class DeadLetters:
    """Collects what the indexer would copy to the dead-letter topic."""

    def __init__(self):
        self.sent: list[tuple[KafkaRecord, object]] = []
        self.flushed = 0

    def send(self, record, error):
        self.sent.append((record, error))

    def flush(self):
        self.flushed += 1


def errors_of(cfg, run_id="r1"):
    return {e["doc_id"]: e for e in store.read_errors(store.connect(cfg.db), run_id=run_id)}


def all_text(cfg):
    if cfg.table not in store.table_names(store.connect(cfg.db)):
        return ""
    return " ".join(r["text"] for r in table_rows(cfg.db))


def test_uri_messages_are_off_by_default(fake_cfg, tmp_path):
    secret = tmp_path / "id_rsa.txt"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY----- hunter2")
    topic = Topic(partitions=1)
    topic.send("ok", text="An inline document is always fine.")
    for doc_id, uri in [("env", "/proc/self/environ"), ("pw", "/etc/passwd"), ("key", secret)]:
        topic.send(doc_id, uri=str(uri))
    dead = DeadLetters()
    indexer, progress = indexer_for(fake_cfg, topic, dead_letters=dead)
    stats = indexer.index(topic.polls(), progress)
    assert (stats.docs_added, stats.docs_failed) == (1, 3)
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {"ok"}
    assert "hunter2" not in all_text(fake_cfg) and "PATH=" not in all_text(fake_cfg)
    errors = errors_of(fake_cfg)
    for doc_id in ("env", "pw", "key"):
        assert (errors[doc_id]["stage"], errors[doc_id]["error_class"]) == (
            "read",
            "SourceNotAllowed",
        )
        assert "stream.allow_uri_messages: true" in errors[doc_id]["message"]  # how to enable
    assert sorted(r.key for r, _ in dead.sent) == [b"env", b"key", b"pw"] and dead.flushed
    assert progress.positions == {("docs", 0): 4}


def test_uri_messages_read_only_regular_files_inside_the_allowed_prefixes(fake_cfg, tmp_path):
    from tests.test_source_io import SECRET, call_with_liveness_bound

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nThe allowed document.")
    (docs / "page.html").write_text("<h1>Page</h1><p>Parsed as HTML.</p>")
    (tmp_path / "docs-secret").mkdir()
    (tmp_path / "docs-secret" / "plan.md").write_text(SECRET)
    (tmp_path / "secret.md").write_text(SECRET)
    (docs / "escape.md").symlink_to(tmp_path / "secret.md")
    (docs / "renamed.md").symlink_to(docs / "page.html")  # the real name decides the type
    (docs / "folder.md").mkdir()
    os.mkfifo(docs / "pipe.md")
    topic = Topic(partitions=1)
    cases = {
        "guide": str(docs / "guide.md"),
        "renamed": str(docs / "renamed.md"),
        "sibling": str(tmp_path / "docs-secret/plan.md"),
        "dotdot": f"{docs}/../secret.md",
        "escape": str(docs / "escape.md"),
        "folder": str(docs / "folder.md"),
        "fifo": str(docs / "pipe.md"),
        "environ": "/proc/self/environ",
        "relative": "docs/guide.md",
    }
    for doc_id, uri in cases.items():
        topic.send(doc_id, uri=uri)
    topic.send("liar", uri=str(docs / "guide.md"), content_type="application/pdf")
    indexer, progress = indexer_for(
        fake_cfg,
        topic,
        allow_uri_messages=True,
        allowed_uri_prefixes=[str(docs), "s3://bucket/docs/"],
    )
    stats = call_with_liveness_bound(
        lambda: indexer.index(topic.polls(), progress), fifo=str(docs / "pipe.md")
    )
    assert (stats.docs_added, stats.docs_failed) == (2, 8)
    rows = {r["doc_id"]: r for r in table_rows(fake_cfg.db)}
    assert set(rows) == {"guide", "renamed"}
    assert "do-not-index-me" not in all_text(fake_cfg)
    table = store.open_chunks(store.connect(fake_cfg.db), "docs").to_arrow().to_pylist()
    renamed = next(r for r in table if r["doc_id"] == "renamed")
    assert renamed["content_type"] == "text/html"
    assert renamed["source_uri"] == os.path.realpath(docs / "page.html")  # what was read
    errors = errors_of(fake_cfg)
    assert {d: errors[d]["error_class"] for d in errors} == {
        "sibling": "SourceNotAllowed",
        "dotdot": "SourceNotAllowed",
        "escape": "SourceNotAllowed",
        "folder": "UnsupportedFormat",
        "fifo": "UnsupportedFormat",
        "environ": "SourceNotAllowed",
        "relative": "SourceNotAllowed",
        "liar": "UnsupportedFormat",
    }
    assert "not a regular file (a FIFO" in errors["fifo"]["message"]
    assert "not a regular file (a folder)" in errors["folder"]["message"]
    assert "differs from the file's type" in errors["liar"]["message"]


def test_uri_settings_come_from_the_config_and_are_checked(fake_cfg, tmp_path):
    from freshindex.config import load_config
    from freshindex.errors import ConfigError

    cfg = load_config(
        overrides={
            "db": fake_cfg.db,
            "stream.allow_uri_messages": True,
            "stream.allowed_uri_prefixes": [str(tmp_path), "s3://b/docs"],
        },
        environ={},
    )
    stream = stream_config(cfg, topics="t")
    assert stream.allow_uri_messages
    assert stream.allowed_uri_prefixes == (os.path.realpath(tmp_path), "s3://b/docs/")
    assert not stream_config(fake_cfg, topics="t").allow_uri_messages  # the shipped default
    with pytest.raises(ConfigError, match="allowed_uri_prefixes"):
        load_config(overrides={"stream.allow_uri_messages": True}, environ={})
    with pytest.raises(ConfigError, match="--allowed-uri-prefix"):  # flags: the same check
        stream_config(fake_cfg, topics="t", allow_uri_messages=True)
    with pytest.raises(ConfigError, match="whole filesystem"):
        stream_config(fake_cfg, topics="t", allow_uri_messages=True, allowed_uri_prefixes=["/"])


def poison_and_valid(topic):
    """Valid documents around the messages that stopped the stream before issue 10."""
    valid = [topic.send(f"ok{i}", text=f"Valid document number {i}.") for i in range(3)]
    poison = {
        "deep": topic.send(
            "deep", b'{"text": "x", "metadata": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        ),
        "huge-time": topic.send("huge-time", b'{"text": "x", "updated_at": 1e20}'),
        "nan-time": topic.send("nan-time", b'{"text": "x", "updated_at": NaN}'),
        "deep-meta": topic.send("deep-meta", {"text": "x", "metadata": {"a": [[[[[[[[1]]]]]]]]}}),
        "big-meta": topic.send("big-meta", {"text": "x", "metadata": {"k": "v" * 20_000}}),
        "surrogate": topic.send("surrogate", b'{"text": "\\ud800"}'),
    }
    valid.append(topic.send("ok3", text="The last valid one.", updated_at="2024-05-01T00:00:00Z"))
    return valid, poison


def test_poison_messages_never_stop_a_micro_batch(fake_cfg):
    topic = Topic(partitions=1)
    valid, poison = poison_and_valid(topic)
    dead = DeadLetters()
    indexer, progress = indexer_for(fake_cfg, topic, dead_letters=dead)
    stats = indexer.index(topic.polls(), progress)  # one micro-batch holding all of them
    assert (stats.messages, stats.docs_added, stats.docs_failed) == (10, 4, 6)
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {r.key.decode() for r in valid}
    errors = errors_of(fake_cfg)
    assert set(errors) == set(poison)
    assert all(e["stage"] == "decode" for e in errors.values())
    assert all(errors[d]["offset"] == rec.offset for d, rec in poison.items())
    assert "too deeply" in errors["deep"]["message"]
    assert "between 1970 and 9999" in errors["huge-time"]["message"]
    assert "NaN" in errors["nan-time"]["message"]
    assert "deeper than 8 levels" in errors["deep-meta"]["message"]
    assert "over the limit of 16,384" in errors["big-meta"]["message"]
    assert {r.offset for r, _ in dead.sent} == {r.offset for r in poison.values()}
    assert progress.positions == {("docs", 0): 10}  # the offsets move past the poison
    recorded = store.read_stream_offsets(store.connect(fake_cfg.db), "docs", "freshindex-docs")
    assert recorded == {("docs", 0): 10}


def test_any_failure_of_one_document_is_its_error_not_the_batch(fake_cfg, monkeypatch):
    """Decoder and row-building bugs that no validation foresaw: the document, not the batch."""
    import freshindex.pipelines.stream.microbatch as stream_module
    import freshindex.transforms.process as process_module

    real_decode, real_rows = stream_module.decode_message, process_module.rows_for

    def decode(record, max_bytes):
        if record.key == b"decoder-bug":
            raise RecursionError("maximum recursion depth exceeded")
        return real_decode(record, max_bytes)

    def rows_for(docs, **kw):
        if any(d.document.doc_id == "writer-bug" for d in docs):
            raise OverflowError("date value out of range")
        return real_rows(docs, **kw)

    monkeypatch.setattr(stream_module, "decode_message", decode)
    monkeypatch.setattr(process_module, "rows_for", rows_for)
    topic = Topic(partitions=1)
    topic.send("a", text="Alpha.")
    topic.send("decoder-bug", text="x")
    topic.send("writer-bug", text="Never written.")
    topic.send("b", text="Beta.")
    indexer, progress = indexer_for(fake_cfg, topic)
    stats = indexer.index(topic.polls(), progress)
    assert (stats.docs_added, stats.docs_failed) == (2, 2)
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {"a", "b"}
    errors = errors_of(fake_cfg)
    assert (errors["decoder-bug"]["stage"], errors["decoder-bug"]["error_class"]) == (
        "decode",
        "RecursionError",
    )
    assert (errors["writer-bug"]["stage"], errors["writer-bug"]["error_class"]) == (
        "write",
        "OverflowError",
    )
    assert progress.positions == {("docs", 0): 4}


def test_a_dead_letter_that_cannot_be_sent_is_recorded_and_the_batch_goes_on(fake_cfg):
    class Refusing(DeadLetters):
        def send(self, record, error):
            raise RuntimeError("MessageSizeTooLargeError: the message is too large")

    topic = Topic(partitions=1)
    topic.send("bad", b"{not json")
    topic.send("good", text="Indexed anyway.")
    indexer, progress = indexer_for(fake_cfg, topic, dead_letters=Refusing())
    stats = indexer.index(topic.polls(), progress)
    assert (stats.docs_added, stats.docs_failed) == (1, 1)
    stages = sorted(e["stage"] for e in store.read_errors(store.connect(fake_cfg.db), run_id="r1"))
    assert stages == ["dead_letter", "decode"]
    assert progress.positions == {("docs", 0): 2}


def test_lost_partitions_are_those_recorded_past_the_batch_start():
    from freshindex.pipelines.stream.offsets import lost_partitions

    claimed = {("docs", 0): 10, ("docs", 1): 5, ("docs", 2): None, ("docs", 3): 7}
    recorded = {("docs", 0): 10, ("docs", 1): 9, ("docs", 2): 40, ("docs", 3): 3}
    # 0: this process's own progress; 1: someone went on; 2: unknown start (Java reader);
    # 3: the start came from Kafka's committed offset, ahead of the table's record
    assert lost_partitions(claimed, recorded) == {("docs", 1): (5, 9)}
    assert lost_partitions({("docs", 4): 0}, recorded) == {}


def test_a_process_that_lost_its_partitions_commits_nothing(fake_cfg):
    """Two processes read the same partition from offset 0 (a rebalance moved it while the
    first was still working): the one that records first wins; the other's batch, stale
    now, is refused under the commit lock and leaves no trace in the table."""
    from freshindex.pipelines.stream.offsets import PartitionsLost

    topic = Topic(partitions=1)
    topic.send("a", text="alpha first")
    old = topic.polls()
    topic.send("a", text="alpha second")
    topic.send("b", text="beta")
    stale, stale_progress = indexer_for(fake_cfg, topic, run_id="zombie")
    owner, owner_progress = indexer_for(fake_cfg, topic, run_id="owner")

    owner.index(topic.polls(), owner_progress)
    version = store.connect(fake_cfg.db).open_table(fake_cfg.table).version
    with pytest.raises(PartitionsLost) as lost:
        stale.index(old, stale_progress)

    assert lost.value.lost == {("docs", 0): (0, 3)}
    assert stale_progress.positions == {("docs", 0): 0}  # not advanced
    assert store.connect(fake_cfg.db).open_table(fake_cfg.table).version == version
    texts = {r["doc_id"]: r["text"] for r in table_rows(fake_cfg.db)}
    assert "alpha second" in texts["a"] and set(texts) == {"a", "b"}
    runs = {b["run_id"] for b in store.read_stream_batches(store.connect(fake_cfg.db))}
    assert runs == {"owner"}
    # the check reads only rows newer than its last one (less a clock-skew margin)
    db = store.connect(fake_cfg.db)
    assert store.read_stream_offsets(db, fake_cfg.table, owner._run.group_id) == {("docs", 0): 3}
    later = store.utcnow() + dt.timedelta(seconds=1)
    assert store.read_stream_offsets(db, fake_cfg.table, owner._run.group_id, since=later) == {}
