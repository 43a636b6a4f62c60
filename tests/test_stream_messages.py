"""The streaming plane without a broker: the message contract, micro-batch bookkeeping,
configuration, the xlang reader's construction and the CLI's messages. Fast."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from freshindex.errors import ConfigError
from freshindex.pipelines.stream import split_batches, stream_config, take_contiguous
from freshindex.pipelines.stream.offsets import gap_deadline
from freshindex.schemas.messages import (
    DELETE,
    UPSERT,
    InvalidMessage,
    KafkaRecord,
    PollBatch,
    decode_message,
    encode_message,
    last_per_document,
)


def record(key, value, offset=0, partition=0, ts=1_000, topic="docs"):
    if isinstance(value, dict):
        value = json.dumps(value).encode()
    key = key.encode() if isinstance(key, str) else key
    return KafkaRecord(topic, partition, offset, key, value, ts)


def test_text_uri_and_delete_messages_decode():
    msg = decode_message(record("a", {"text": "Hi.", "title": "T", "metadata": {"lang": "en"}}))
    assert (msg.doc_id, msg.op, msg.text, msg.title, msg.metadata) == (
        "a",
        UPSERT,
        "Hi.",
        "T",
        {"lang": "en"},
    )
    msg = decode_message(record("b.pdf", {"uri": "/x/b.pdf", "content_type": "application/pdf"}))
    assert (msg.uri, msg.content_type, msg.text) == ("/x/b.pdf", "application/pdf", None)
    assert decode_message(record("c", None)).op == DELETE  # tombstone
    assert decode_message(record("c", {"op": "delete"})).op == DELETE
    assert decode_message(record("c", {"op": "delete", "doc_id": "c"})).op == DELETE


def test_encode_round_trips():
    for kwargs in (
        {"text": "Hello", "title": "T", "metadata": {"k": 1}, "updated_at": 1700000000.5},
        {"uri": "s3://b/k.md", "content_type": "text/markdown"},
    ):
        key, value = encode_message("id/ü", **kwargs)
        msg = decode_message(record(key, value))
        assert msg.doc_id == "id/ü"
        assert all(getattr(msg, k) == v for k, v in kwargs.items())
    assert encode_message("x", delete=True) == (b"x", None)
    assert json.loads(encode_message("x", text="y")[1])["schema_version"] == 1
    iso = decode_message(record("a", {"text": "x", "updated_at": "2024-01-02T03:04:05Z"}))
    assert iso.modified_at == 1704164645.0
    assert decode_message(record("a", {"text": "x"}, ts=5_000)).modified_at == 5.0
    with pytest.raises(ValueError):
        encode_message("x", text="a", uri="b")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        (None, {"text": "x"}, "no key"),
        (b"\xff\xfe", {"text": "x"}, "not UTF-8"),
        ("a", b"{not json", "not UTF-8 JSON"),
        ("a", b"[1, 2]", "JSON object"),
        ("a", {"txt": "typo"}, "unknown fields"),
        ("a", {"text": "x", "schema_version": 2}, "schema_version"),
        ("a", {"text": "x", "doc_id": "b"}, "differs from the key"),
        ("a", {"text": "x", "uri": "/y"}, "exactly one"),
        ("a", {"title": "only a title"}, "exactly one"),
        ("a", {"op": "merge", "text": "x"}, "op must be"),
        ("a", {"text": "x", "metadata": [1]}, "metadata"),
        ("a", {"text": 5}, "must be a string"),
        ("a", {"uri": " "}, "empty"),
        ("a", {"text": "x", "updated_at": "yesterday"}, "not a time"),
        ("a", {"text": "x", "updated_at": 1e20}, "between 1970 and 9999"),
        ("a", {"text": "x", "updated_at": -1}, "between 1970 and 9999"),
        ("a", {"text": "x", "updated_at": "0900-01-01"}, "between 1970 and 9999"),
        ("a", b'{"text": "x", "updated_at": NaN}', "NaN is not a JSON number"),
        ("a", b'{"text": "x", "updated_at": 1e999}', "out of range"),
        ("a", b'{"text": "x", "updated_at": Infinity}', "Infinity is not"),
        ("a", b"[" * 5000 + b"]" * 5000, "nests too deeply"),
        ("a", {"text": "x", "metadata": {"a": [[[[[[[[1]]]]]]]]}}, "deeper than 8"),
        ("a", b'{"text": "\\ud800"}', "not valid Unicode"),
        ("a", {"text": "x", "schema_version": True}, "schema_version"),
        ("a", {"text": "x" * 200}, "over the limit"),
    ],
)
def test_contract_violations_say_what_is_wrong(key, value, says):
    big = isinstance(value, bytes) and len(value) > 1000  # deep nesting takes room
    with pytest.raises(InvalidMessage) as info:
        decode_message(record(key, value), max_bytes=10**6 if big else 100)
    assert says in str(info.value)
    assert info.value.stage == "decode"


def test_timestamps_and_metadata_within_bounds_are_kept():
    top = decode_message(record("a", {"text": "x", "updated_at": "9999-12-31T23:59:59Z"}))
    assert top.modified_at == 253_402_300_799.0
    deep = {"a": [[[[[[[1]]]]]]]}  # 8 levels, the metadata object included
    assert decode_message(record("a", {"text": "x", "metadata": deep})).metadata == deep
    big = {"k": "v" * (16 * 1024 - 8)}  # 16 KiB of compact JSON exactly
    assert decode_message(record("a", {"text": "x", "metadata": big})).metadata == big
    with pytest.raises(InvalidMessage, match="over the limit of 16,384"):
        decode_message(record("a", {"text": "x", "metadata": {"k": "v" * (16 * 1024 - 7)}}))
    # a Kafka timestamp a producer set out of range is no modification time
    assert decode_message(record("a", {"text": "x"}, ts=2**62)).modified_at is None
    assert decode_message(record("a", {"text": "x"}, ts=-1)).modified_at is None


def test_last_message_per_document_wins():
    msgs = [
        decode_message(record("a", {"text": "v1"}, offset=1)),
        decode_message(record("b", {"text": "b"}, offset=2)),
        decode_message(record("a", None, offset=3)),
        decode_message(record("a", {"text": "v3"}, offset=4)),
        decode_message(record("a", {"text": "v0"}, offset=0)),
    ]
    latest = {m.doc_id: m for m in last_per_document(msgs)}
    assert latest["a"].text == "v3" and latest["b"].text == "b"
    # across partitions (a key that moved after a repartition) the timestamp decides
    moved = [
        decode_message(record("k", {"text": "old"}, offset=50, partition=0, ts=1)),
        decode_message(record("k", {"text": "new"}, offset=3, partition=1, ts=2)),
    ]
    assert last_per_document(moved)[0].text == "new"


def poll(start, end, offsets=None, partition=0, read_at=0.0):
    offsets = range(start, end) if offsets is None else offsets
    records = tuple(record(f"k{o}", {"text": "x"}, offset=o, partition=partition) for o in offsets)
    return PollBatch("docs", partition, start, end, records, read_at)


def test_take_contiguous_holds_gaps_and_drops_replays():
    positions = {("docs", 0): 10, ("docs", 1): 0}
    reads = [poll(15, 20), poll(10, 15), poll(5, 10), poll(0, 3, partition=1), poll(4, 6, [5], 1)]
    ready, held = take_contiguous(reads, positions)
    assert [(p.partition, p.start, p.end) for p in ready] == [(0, 10, 15), (0, 15, 20), (1, 0, 3)]
    assert [(p.partition, p.start) for p in held] == [(1, 4)]  # offset 3 not read yet
    # a read overlapping what is indexed keeps only the new records
    ready, _ = take_contiguous([poll(8, 12)], {("docs", 0): 10})
    assert [r.offset for r in ready[0].records] == [10, 11] and ready[0].start == 10
    # a partition the committer has no position for starts where its first read starts
    ready, held = take_contiguous([poll(7, 9, partition=2)], {})
    assert len(ready) == 1 and not held


def test_the_java_reader_takes_an_offset_gap_after_a_bounded_wait():
    """A compacted topic has offsets no record holds: the Java reader's read after such a
    gap is held for ``gap_wait_s`` (an earlier read may still be on its way), then taken."""
    positions = {("docs", 0): 10}
    after_gap = [poll(14, 15, read_at=100.0), poll(15, 16, read_at=100.2)]
    ready, held = take_contiguous(after_gap, positions, gap_wait_s=2.0, now=101.0)
    assert not ready and [p.start for p in held] == [14, 15]  # still waiting
    assert gap_deadline(held, 2.0) == 102.0  # when the committer looks again
    ready, held = take_contiguous(after_gap, positions, gap_wait_s=2.0, now=102.0)
    assert [(p.start, p.end) for p in ready] == [(14, 15), (15, 16)] and not held
    # the missing read arriving within the wait is applied in order, with nothing skipped
    late = [*after_gap, poll(10, 14, read_at=101.5)]
    ready, held = take_contiguous(late, positions, gap_wait_s=2.0, now=101.6)
    assert [(p.start, p.end) for p in ready] == [  # in offset order, whatever the read order
        (10, 14),
        (14, 15),
        (15, 16),
    ]
    assert not held
    # the python reader (no gap_wait_s) holds a gap until its read arrives, however long
    ready, held = take_contiguous(after_gap, positions, now=10_000.0)
    assert not ready and len(held) == 2 and gap_deadline(held, None) is None


def test_split_batches_cuts_reads_at_record_boundaries():
    reads = [poll(0, 7, [0, 2, 3, 5, 6]), poll(7, 9, partition=1), poll(9, 10, [])]
    groups = split_batches(reads, 2)
    assert [sum(len(p.records) for p in g) for g in groups] == [2, 2, 2, 1]
    ranges = [(p.partition, p.start, p.end) for g in groups for p in g]
    assert ranges == [(0, 0, 3), (0, 3, 6), (0, 6, 7), (1, 7, 8), (1, 8, 9), (0, 9, 10)]
    assert split_batches(reads, 100) == [reads]


def test_the_cli_and_the_pipeline_module_read_stream_flags_alike(fake_cfg):
    from apache_beam.options.pipeline_options import PipelineOptions

    from freshindex.cli import build_parser
    from freshindex.pipelines.options import StreamOptions
    from freshindex.pipelines.stream import stream_config_from_flags

    cli, beam = build_parser().parse_known_args(
        shlex.split(
            "stream --topic a,b --topic c --bootstrap k:1 --group g --batch-interval 0.2 "
            "--max-batch 7 --stop-at-end --runner Direct --kafka-option retries=3 "
            "--dead-letter-topic dlq --reader python --allow-uri-messages --gap-wait 3 "
            "--allowed-uri-prefix /srv/docs --allowed-uri-prefix s3://b/d"
        )
    )
    module = PipelineOptions(
        shlex.split(
            "--topics a,b,c --kafka_bootstrap_servers k:1 --group_id g --batch_interval_s 0.2 "
            "--max_batch_messages 7 --stop_at_end --kafka_option retries=3 "
            "--dead_letter_topic dlq --kafka_reader python --allow_uri_messages --gap_wait_s 3 "
            "--allowed_uri_prefix /srv/docs --allowed_uri_prefix s3://b/d"
        )
    ).view_as(StreamOptions)
    from_cli = stream_config_from_flags(fake_cfg, cli)
    assert from_cli == stream_config_from_flags(fake_cfg, module)
    assert from_cli.kafka.topics == ("a", "b", "c") and from_cli.max_batch_messages == 7
    assert from_cli.gap_wait_s == 3
    assert from_cli.allow_uri_messages
    assert from_cli.allowed_uri_prefixes == (os.path.realpath("/srv/docs"), "s3://b/d/")
    no_uri = build_parser().parse_known_args(["stream", "--topic", "a"])[0]
    assert not stream_config_from_flags(fake_cfg, no_uri).allow_uri_messages  # off by default
    assert (
        from_cli.stop_at_end
        and from_cli.dead_letter_topic == "dlq"
        and beam == ["--runner", "Direct"]
    )


def test_stream_config_defaults_environment_and_validation(fake_cfg, monkeypatch):
    from freshindex.config import load_config

    # the environment reaches the stream through the settings' environment layer
    from_env = load_config(
        overrides={"db": fake_cfg.db}, environ={"KAFKA_BOOTSTRAP_SERVERS": "k:1"}
    )
    cfg = stream_config(from_env, topics="a, b")
    assert cfg.kafka.topics == ("a", "b") and cfg.kafka.bootstrap_servers == "k:1"
    assert cfg.kafka.group_id == "freshindex-docs" and cfg.batch_interval_s == 0.5
    assert stream_config(fake_cfg, topics="a").kafka.bootstrap_servers == "localhost:9092"
    assert stream_config(from_env, topics="a", bootstrap_servers="f:2").kafka.bootstrap_servers == (
        "f:2"  # a flag wins over the environment
    )
    with pytest.raises(ConfigError, match="python reader"):
        stream_config(fake_cfg, topics="a", reader="xlang", stop_at_end=True)
    with pytest.raises(ConfigError, match="dead-letter"):
        stream_config(fake_cfg, topics="a", dead_letter_topic="a")
    with pytest.raises(ConfigError, match="topics"):
        stream_config(fake_cfg, topics="")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        stream_config(fake_cfg, topics="a", client_options=["nonsense"])
    # secrets are named, and read from the environment when a client is made
    spec = stream_config(
        fake_cfg, topics="a", client_options=["sasl_plain_password=${KPASS}", "retries=3"]
    ).kafka
    assert "s3cret" not in repr(spec)
    monkeypatch.setenv("KPASS", "s3cret")
    assert spec.client_config()["sasl_plain_password"] == "s3cret"
    assert spec.client_config()["retries"] == 3
    monkeypatch.delenv("KPASS")
    with pytest.raises(ConfigError, match="KPASS"):
        spec.client_config()
    # one syntax for environment references: the old env:NAME is refused where it is given
    with pytest.raises(ConfigError, match=r"sasl_plain_password=\$\{KPASS\}"):
        stream_config(fake_cfg, topics="a", client_options=["sasl_plain_password=env:KPASS"])


def test_stream_options_coexist_with_beam_and_batch_flags():
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from freshindex.pipelines.options import FreshIndexOptions, StreamOptions

    argv = ["--streaming", "--topics", "docs", "--table", "t", "--kafka_option", "a=1"]
    argv += ["--kafka_option", "b=2", "--stop_at_end", "--batch_interval_s", "0.5"]
    options = PipelineOptions(argv)
    stream = options.view_as(StreamOptions)
    assert stream.topics == "docs" and stream.kafka_option == ["a=1", "b=2"]
    assert stream.stop_at_end and stream.batch_interval_s == 0.5
    assert options.view_as(FreshIndexOptions).to_config().table == "t"
    assert options.view_as(StandardOptions).streaming


def test_xlang_reader_is_configured_but_needs_an_expansion_service(fake_cfg):
    """Beam's Java ReadFromKafka cannot run here (no expansion service, no Maven): this
    checks its configuration and that choosing it builds the Java transform."""
    from apache_beam.transforms.external import ExternalTransform

    from freshindex.transforms.kafka_xlang import ReadKafkaXlang, xlang_consumer_config

    spec = stream_config(
        fake_cfg, topics="docs", bootstrap_servers="k:9", client_options=["security_protocol=SSL"]
    ).kafka
    assert xlang_consumer_config(spec) == {
        "bootstrap.servers": "k:9",
        "group.id": "freshindex-docs",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": "false",
        "security.protocol": "SSL",
    }
    reader = ReadKafkaXlang(spec, expansion_service="localhost:1").reader()
    assert isinstance(reader, ExternalTransform)
    assert reader._urn == "beam:transform:org.apache.beam:kafka_read_with_metadata:v1"


def test_publish_builds_messages_from_files_jsonl_and_deletes(corpus, tmp_path):
    from freshindex.cli import build_parser
    from freshindex.commands.stream import messages_for

    parser = build_parser()
    args = parser.parse_args(["publish", str(corpus), "--topic", "t", "--delete", "old.md"])
    pairs = list(messages_for(args))
    assert pairs[0] == (b"old.md", None)
    files = {
        decode_message(record(k, v)).doc_id: decode_message(record(k, v)) for k, v in pairs[1:]
    }
    assert set(files) == {"guide/timeouts.md", "guide/auth.md", "notes/ducks.md", "readme.txt"}
    assert files["notes/ducks.md"].uri == str(corpus / "notes/ducks.md")

    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(
        json.dumps({"_id": "1", "title": "T", "text": "Body.", "metadata": {"y": 1}})
        + "\nnot json\n"
    )
    args = parser.parse_args(["publish", str(jsonl), "--topic", "t"])
    (msg,) = [decode_message(record(k, v)) for k, v in messages_for(args)]
    assert (msg.doc_id, msg.title, msg.text, msg.metadata) == ("1", "T", "Body.", {"y": 1})

    args = parser.parse_args(["stream", "--topic", "a,b", "--topic", "c", "--stop-at-end"])
    assert args.func.__name__ == "cmd_stream" and args.stop_at_end
