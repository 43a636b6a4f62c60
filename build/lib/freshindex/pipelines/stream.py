"""Streaming updates: Kafka topics -> the versioned LanceDB chunks table, one commit per
micro-batch.

    python -m freshindex.pipelines.stream --streaming --topics docs --table docs [--db URI] \
        [--kafka_bootstrap_servers host:9092] [--group_id G] [--batch_interval_s 1] \
        [--stop_at_end | --duration_s S] [--dead_letter_topic docs.dlq] \
        [--allow_uri_messages --allowed_uri_prefix /srv/docs]

ReadKafkaPartitions (transforms/kafka_io.py) -> IndexMicroBatches: a stateful step on a
single key, so micro-batches are applied one at a time and in offset order. Each one:

decode (schemas/messages.py) -> last message per document -> plan against the table's
ledger (``freshindex.transforms.plan.decide``) -> parse -> chunk -> embed (stored vectors reused)
-> **one** commit (``freshindex.transforms.write.commit_changes`` under ``store.commit_lock``, the
lock batch runs take too) -> dead letters and errors -> the batch's offsets recorded
(``stream_batches``) -> offsets committed to Kafka. Why this order makes a crash at any
point safe is argued in docs/STREAMING.md. Every per-message and per-document step is
isolated: whatever one message raises becomes its error row, and the batch goes on. A
``uri`` message is read only when allowed, under the allowed prefixes
(``transforms/source_io.py``).

The micro-batch runs the batch pipeline's per-element functions in one step rather than
their PTransforms: a micro-batch must commit atomically and in order, with the offsets of
every message it consumed, including the ones that failed or were superseded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import PickleCoder
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.transforms import userstate
from apache_beam.utils.timestamp import Timestamp

from freshindex import store
from freshindex.config import Config, check_namespace, normalize_uri_prefix
from freshindex.errors import ConfigError, UnsupportedFormat
from freshindex.pipelines.batch import configure_logging, current_version, new_run_id, run_settings
from freshindex.pipelines.options import FreshIndexOptions, StreamOptions
from freshindex.runtime import prepare_offline
from freshindex.schemas.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DELETE,
    DocumentMessage,
    KafkaRecord,
    PollBatch,
    decode_message,
    last_per_document,
)
from freshindex.schemas.records import (
    ChunkedDocument,
    EmbeddedDocument,
    ErrorRecord,
    SourceRef,
    sha256_hex,
)
from freshindex.transforms.chunk import chunk_document
from freshindex.transforms.embed import VectorReuse, embed_documents
from freshindex.transforms.kafka_io import (
    DeadLetterProducer,
    KafkaOffsets,
    KafkaSpec,
    PartitionStart,
    ReadKafkaPartitions,
    ReadKafkaXlang,
    parse_client_options,
    request_stop,
    reset_stop,
    resolve_start_offsets,
)
from freshindex.transforms.parse import (
    CONTENT_TYPES,
    content_type_for,
    max_file_bytes,
    parse_document,
    read_bytes,
)
from freshindex.transforms.plan import (
    ERRORS,
    PROCESS,
    SKIPPED,
    UPDATED,
    TableRef,
    decide,
    may_write,
    namespace_conflict,
    with_source,
)
from freshindex.transforms.read import ref_from_record
from freshindex.transforms.source_io import SourceNotAllowed, resolve_allowed
from freshindex.transforms.write import commit_changes, rows_for

log = logging.getLogger("freshindex.stream")

# Fault injection for the crash tests: "<point>:<batch number>" SIGKILLs the process at that
# point of that micro-batch. Points: before_chunk_commit, after_chunk_commit,
# after_batch_record (the Kafka commit comes next).
FAULT_STREAM_CRASH = "FRESHINDEX_FAULT_STREAM_CRASH"
DEFAULT_BOOTSTRAP = "localhost:9092"


@dataclass(frozen=True)
class StreamConfig:
    """How the stream reads and batches; the table, model and chunking are in ``Config``."""

    kafka: KafkaSpec
    # A micro-batch closes this long after its first message, or at max_batch_messages.
    # Short, for freshness: when the stream falls behind, batches grow on their own.
    batch_interval_s: float = 0.5
    max_batch_messages: int = 500
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    stop_at_end: bool = False  # index what the topics hold at start, then stop
    duration_s: float | None = None  # stop after this long
    dead_letter_topic: str | None = None
    reader: str = "python"  # python: kafka-python SDF; xlang: Beam's Java ReadFromKafka
    expansion_service: str | None = None
    # uri messages: off by default; when on, only files under these prefixes are read
    # (``stream:`` in the config file; normalized like ``freshindex.config.StreamingConfig``)
    allow_uri_messages: bool = False
    allowed_uri_prefixes: tuple[str, ...] = ()
    # who owns the documents the stream writes; None: kafka:<topic> per message. Only a
    # namespace shared with a batch source lets the stream replace or delete its documents.
    namespace: str | None = None

    def __post_init__(self) -> None:
        prefixes = tuple(normalize_uri_prefix(p) for p in self.allowed_uri_prefixes)
        object.__setattr__(self, "allowed_uri_prefixes", prefixes)
        if self.allow_uri_messages and not prefixes:
            raise ConfigError(
                "uri messages are allowed but no prefix is",
                hint="give --allowed-uri-prefix ROOT (or stream.allowed_uri_prefixes)",
            )
        if self.batch_interval_s < 0 or self.max_batch_messages < 1:
            raise ConfigError("batch_interval_s must be >= 0 and max_batch_messages >= 1")
        if self.max_message_bytes < 1:
            raise ConfigError("max_message_bytes must be >= 1")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration_s must be positive, got {self.duration_s}")
        if self.reader not in ("python", "xlang"):
            raise ConfigError(f"kafka_reader must be python or xlang, got {self.reader!r}")
        if self.reader == "xlang" and self.stop_at_end:
            raise ConfigError(
                "--stop_at_end needs the python reader",
                hint="the Java reader has no end offsets here; use --duration_s",
            )
        if self.dead_letter_topic and self.dead_letter_topic in self.kafka.topics:
            raise ConfigError("the dead-letter topic must not be one of the topics read")
        check_namespace("stream.namespace", self.namespace)


def stream_config(
    cfg: Config,
    *,
    topics: Sequence[str] | str,
    bootstrap_servers: str | None = None,
    group_id: str | None = None,
    start_offset: str | None = None,
    client_options: Sequence[str] | None = None,
    environ: dict[str, str] | None = None,
    **settings: Any,
) -> StreamConfig:
    """A validated StreamConfig: arguments, then KAFKA_BOOTSTRAP_SERVERS, then defaults.
    The consumer group defaults to ``freshindex-<table>``; ``settings`` are StreamConfig
    fields (None values are ignored, so unset flags keep the defaults; the uri settings
    default to the config's ``stream:`` section)."""
    env = os.environ if environ is None else environ
    if isinstance(topics, str):
        topics = [topics]
    topics = [t.strip() for value in topics for t in value.split(",")]
    kafka = KafkaSpec(
        bootstrap_servers=bootstrap_servers
        or env.get("KAFKA_BOOTSTRAP_SERVERS")
        or DEFAULT_BOOTSTRAP,
        topics=tuple(t for t in topics if t),
        group_id=group_id or f"freshindex-{cfg.table}",
        start_offset=start_offset or "earliest",
        client_options=parse_client_options(client_options),
    )
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.setdefault("allow_uri_messages", cfg.stream.allow_uri_messages)
    settings.setdefault("allowed_uri_prefixes", tuple(cfg.stream.allowed_uri_prefixes))
    settings["allowed_uri_prefixes"] = tuple(settings["allowed_uri_prefixes"])
    return StreamConfig(kafka=kafka, **settings)


def stream_config_from_flags(cfg: Config, flags: Any) -> StreamConfig:
    """``stream_config`` from parsed flags named as in ``StreamOptions``: the Beam options of
    ``python -m freshindex.pipelines.stream``, or the arguments of ``freshindex stream``."""
    return stream_config(
        cfg,
        topics=flags.topics,
        bootstrap_servers=flags.kafka_bootstrap_servers,
        group_id=flags.group_id,
        start_offset=flags.start_offset,
        client_options=flags.kafka_option,
        batch_interval_s=flags.batch_interval_s,
        max_batch_messages=flags.max_batch_messages,
        max_message_bytes=flags.max_message_bytes,
        stop_at_end=flags.stop_at_end or None,
        duration_s=flags.duration_s,
        dead_letter_topic=flags.dead_letter_topic,
        reader=flags.kafka_reader,
        expansion_service=flags.kafka_expansion_service,
        allow_uri_messages=flags.allow_uri_messages or None,
        allowed_uri_prefixes=flags.allowed_uri_prefix,
        namespace=getattr(flags, "stream_namespace", None),
    )


@dataclass(frozen=True)
class StreamRun:
    """What the committer needs to know about the run, fixed when the pipeline is built."""

    run_id: str
    cfg: Config
    stream: StreamConfig
    starts: tuple[PartitionStart, ...]
    started_at: float

    @property
    def group_id(self) -> str:
        return self.stream.kafka.group_id


@dataclass
class Progress:
    """The committer's durable state: the next offset of every partition, and batches done."""

    positions: dict[tuple[str, int], int] = field(default_factory=dict)
    batches: int = 0


@dataclass
class BatchStats:
    """What one micro-batch did; one row of ``stream_batches`` and one log line."""

    batch_seq: int
    messages: int = 0
    docs_added: int = 0
    docs_updated: int = 0
    docs_deleted: int = 0
    docs_skipped: int = 0
    docs_failed: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_written: int = 0
    table_version: int | None = None
    lag: int | None = None
    duration_ms: int = 0
    freshness_ms: list[int] = field(default_factory=list)

    def log_line(self) -> str:
        fresh = "n/a"
        if self.freshness_ms:
            p50, top = np.percentile(self.freshness_ms, 50), max(self.freshness_ms)
            fresh = f"p50 {p50 / 1000:.2f}s max {top / 1000:.2f}s"
        upserts = self.docs_added + self.docs_updated
        return (
            f"batch {self.batch_seq}: {self.messages} messages -> {upserts} upserts "
            f"({self.docs_added} added, {self.docs_updated} updated), {self.docs_deleted} "
            f"deletes, {self.docs_skipped} skipped, {self.docs_failed} errors; "
            f"{self.chunks_written} chunks ({self.chunks_embedded} embedded, "
            f"{self.chunks_reused} reused); version {self.table_version}; lag {self.lag}; "
            f"freshness {fresh}; {self.duration_ms / 1000:.2f}s"
        )


def take_contiguous(
    polls: Sequence[PollBatch], positions: dict[tuple[str, int], int]
) -> tuple[list[PollBatch], list[PollBatch]]:
    """(ready, held): per partition, the reads that continue its position without a gap, in
    order; reads after a gap are held until the missing one arrives. Reads already indexed
    are dropped, so a re-delivered read is never applied twice."""
    ready: list[PollBatch] = []
    held: list[PollBatch] = []
    by_partition: dict[tuple[str, int], list[PollBatch]] = {}
    for poll in polls:
        by_partition.setdefault((poll.topic, poll.partition), []).append(poll)
    for key, items in by_partition.items():
        position = positions.get(key)
        for poll in sorted(items, key=lambda p: p.start):
            if position is None:
                position = poll.start
            if poll.end <= position:
                continue
            if poll.start > position:
                held.append(poll)
                continue
            if poll.start < position:
                poll = dataclasses.replace(
                    poll,
                    start=position,
                    records=tuple(r for r in poll.records if r.offset >= position),
                )
            ready.append(poll)
            position = poll.end
    ready.sort(key=lambda p: (p.read_at, p.topic, p.partition, p.start))
    return ready, held


def split_batches(polls: Sequence[PollBatch], max_messages: int) -> list[list[PollBatch]]:
    """Consecutive groups of at most ``max_messages`` records; a read is cut at a record
    boundary where needed, so each partition's offsets stay contiguous across groups."""
    groups: list[list[PollBatch]] = []
    current: list[PollBatch] = []
    room = max_messages
    for poll in polls:
        while len(poll.records) > room:
            if room:
                cut = poll.records[room].offset
                head = dataclasses.replace(poll, end=cut, records=poll.records[:room])
                poll = dataclasses.replace(poll, start=cut, records=poll.records[room:])
                current.append(head)
            groups.append(current)
            current, room = [], max_messages
        current.append(poll)
        room -= len(poll.records)
    if current:
        groups.append(current)
    return groups


def batch_due(pending: Sequence[PollBatch], interval_s: float) -> float:
    """When the micro-batch holding ``pending`` closes: ``interval_s`` after its oldest
    message reached Kafka.

    The reader and the committer share a thread on the DirectRunner, so what arrives while
    a batch is being committed waits in Kafka and is read only after it. Counting the
    interval from the read would make such a message wait twice (measured at 20 docs/s:
    ~1.2 s in Kafka, then 0.5 s more); counting from its Kafka timestamp, it goes into the
    next batch at once. A timestamp ahead of the read (a producer's clock running fast)
    counts from the read instead, so a batch never waits longer than the interval.
    """
    arrived = min(
        min([p.read_at] + [r.timestamp_ms / 1000 for r in p.records if r.timestamp_ms >= 0])
        for p in pending
    )
    return arrived + interval_s


def _crash_point(point: str, batch_seq: int) -> None:
    if os.environ.get(FAULT_STREAM_CRASH) == f"{point}:{batch_seq}":
        log.warning("fault injection: SIGKILL at %s of batch %d", point, batch_seq)
        os.kill(os.getpid(), signal.SIGKILL)


def _legacy_owner(msg: DocumentMessage):
    """Whether a document stored before namespaces existed may be taken by ``msg``: it came
    from the message's topic (or, for an upsert by ``uri``, from the same file)."""
    topic_uri = f"kafka://{msg.record.topic}#"

    def owns(source_uri: str | None) -> bool:
        if not source_uri:
            return False
        same_file = msg.op != DELETE and msg.uri is not None and source_uri == msg.uri
        return source_uri.startswith(topic_uri) or same_file

    return owns


class BatchIndexer:
    """Applies micro-batches to the table: everything between a batch of Kafka records and
    its committed offsets. One per worker; ``kafka`` and ``dead_letters`` may be None
    (tests drive it without a broker).
    """

    def __init__(self, run: StreamRun, *, kafka: KafkaOffsets | None = None, dead_letters=None):
        from freshindex.embedding import get_embedder
        from freshindex.maintain import UpkeepSchedule

        prepare_offline()
        self._run, self._cfg = run, run.cfg
        self._kafka, self._dead_letters = kafka, dead_letters
        self._db = store.connect(self._cfg.db)
        self._embedder = get_embedder(self._cfg.embedding)  # loaded once, before batch 1
        self._fingerprint = self._cfg.fingerprint()
        self._settings = run_settings(self._cfg)
        self._upkeep = UpkeepSchedule(self._cfg.maintenance)
        self._highwater: dict[tuple[str, int], int] = {}

    def initial_progress(self) -> Progress:
        return Progress(positions={(s.topic, s.partition): s.start for s in self._run.starts})

    def _table(self):
        if self._cfg.table not in store.table_names(self._db):
            return None
        return self._db.open_table(self._cfg.table)

    # -- the stages, for one batch -------------------------------------------------

    def _source_ref(self, msg: DocumentMessage) -> tuple[SourceRef, bytes | None]:
        """The SourceRef of an upsert; a ``uri`` is read here, since its hash needs the bytes."""
        modified_at = msg.modified_at
        if msg.text is not None:
            # the same record shape and content hash as a line of a JSONL corpus
            line = json.dumps(
                {"_id": msg.doc_id, "title": msg.title, "text": msg.text, "metadata": msg.metadata}
            )
            ref = ref_from_record(line, f"kafka://{msg.record.topic}")
            return dataclasses.replace(ref, modified_at=modified_at), None
        stream = self._run.stream
        if not stream.allow_uri_messages:
            raise SourceNotAllowed(
                "uri messages are off: the stream reads no file a producer names",
                doc_id=msg.doc_id,
                hint="send the text inline, or set stream.allow_uri_messages: true and "
                "stream.allowed_uri_prefixes (flags --allow-uri-messages --allowed-uri-prefix "
                "ROOT) to let producers name files under those roots",
            )
        path = resolve_allowed(msg.uri, stream.allowed_uri_prefixes, doc_id=msg.doc_id)
        # the type is the file's (its resolved name), never the producer's word for it
        content_type = content_type_for(path)
        if content_type is None:
            raise UnsupportedFormat(
                f"unsupported file type for {msg.uri}",
                doc_id=msg.doc_id,
                hint=f"supported extensions: {', '.join(sorted(CONTENT_TYPES))}",
            )
        if msg.content_type is not None and msg.content_type != content_type:
            raise UnsupportedFormat(
                f"content_type {msg.content_type!r} differs from the file's type {content_type!r}",
                doc_id=msg.doc_id,
                hint="drop content_type: the type comes from the file's name",
            )
        data = read_bytes(
            path, max_file_bytes(self._cfg.parsing), roots=stream.allowed_uri_prefixes
        )
        content_hash = sha256_hex(data)
        if msg.title or msg.metadata:  # they are part of what the message says
            content_hash = sha256_hex(
                json.dumps([content_hash, msg.title, msg.metadata], sort_keys=True)
            )
        ref = SourceRef(
            doc_id=msg.doc_id,
            source_uri=path,
            content_hash=content_hash,
            content_type=content_type,
            size=len(data),
            modified_at=modified_at,
            title=msg.title,
            metadata=dict(msg.metadata),
        )
        return ref, data

    def _embed(self, chunked: list[tuple[DocumentMessage, ChunkedDocument]], version, errors):
        reuse = VectorReuse(
            TableRef(self._cfg.db, self._cfg.table, version), self._cfg.embedding.model
        )
        docs = [c for _, c in chunked]
        try:  # one EmbeddedDocument per document, in order
            return list(zip([m for m, _ in chunked], embed_documents(docs, self._embedder, reuse)))
        except Exception:
            out = []  # isolate the bad document, as the batch Embed step does
            for msg, doc in chunked:
                try:
                    out.extend((msg, e) for e in embed_documents([doc], self._embedder, reuse))
                except Exception as exc:
                    errors.append((msg.record, self._error("embed", exc, msg.record, msg.doc_id)))
            return out

    def _rows(self, embedded: list[tuple[DocumentMessage, EmbeddedDocument]], errors):
        """(Arrow rows, the documents they hold): a document whose rows cannot be built is an
        error of its message, and the others are written."""

        namespaces = {msg.doc_id: self._namespace(msg) for msg, _ in embedded}

        def rows(docs):
            return rows_for(
                docs,
                fingerprint=self._fingerprint,
                model=self._cfg.embedding.model,
                run_id=self._run.run_id,
                dim=self._embedder.dim,
                namespace=namespaces,
            )

        docs = [d for _, d in embedded]
        try:
            return rows(docs), docs
        except Exception:
            tables, kept = [], []
            for msg, doc in embedded:
                try:
                    tables.append(rows([doc]))
                    kept.append(doc)
                except Exception as exc:
                    errors.append((msg.record, self._error("write", exc, msg.record, msg.doc_id)))
            return (pa.concat_tables(tables) if tables else None), kept

    def _error(self, stage: str, exc: BaseException, record: KafkaRecord, doc_id: str | None):
        error = ErrorRecord.from_exception(
            stage,
            exc,
            doc_id=doc_id,
            source_uri=record.where,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        # a message that quotes the input may hold text UTF-8 cannot store (lone surrogates):
        # the errors table and the dead-letter headers must take it whatever it says
        message = error.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return dataclasses.replace(error, message=message)

    def _decode(self, records, errors) -> list[DocumentMessage]:
        messages = []
        for record in records:
            try:
                messages.append(decode_message(record, self._run.stream.max_message_bytes))
            except Exception as exc:  # InvalidMessage, or a decoder bug: the message, not the batch
                key = record.key.decode("utf-8", "replace") if record.key else None
                errors.append((record, self._error("decode", exc, record, key)))
        return messages

    def _namespace(self, msg: DocumentMessage) -> str:
        """The namespace a message writes: ``stream.namespace``, else ``kafka:<topic>``."""
        return self._run.stream.namespace or f"kafka:{msg.record.topic}"

    def _plan(self, latest: list[DocumentMessage], table, stats: BatchStats, errors):
        """(deletes, updated doc ids, [(message, SourceRef, bytes)] to process), decided
        against the table's ledger like a batch run plans (``freshindex.transforms.plan.decide``).
        An upsert or delete of a document another namespace owns is refused (an errors
        row), before the message's content is read."""
        ledger = store.ledger_of(table, [m.doc_id for m in latest]) if table is not None else {}
        deletes, updated, to_process = [], set(), []
        for msg in latest:
            namespace = self._namespace(msg)
            owns = _legacy_owner(msg)
            entry = ledger.get(msg.doc_id)
            if entry is not None and not may_write(entry, namespace, owns):
                action = "delete" if msg.op == DELETE else "replace"
                refused = namespace_conflict(msg.doc_id, entry, namespace, action, None)
                errors.append((msg.record, self._located(refused, msg.record)))
                continue
            if msg.op == DELETE:
                if entry is not None:
                    deletes.append(msg.doc_id)
                else:
                    stats.docs_skipped += 1  # nothing to delete
                continue
            try:
                ref, data = self._source_ref(msg)
            except Exception as exc:  # recorded with the message, never lost
                errors.append((msg.record, self._error("read", exc, msg.record, msg.doc_id)))
                continue
            known = [entry] if entry is not None else []
            plan = decide(
                msg.doc_id, [ref], known, self._fingerprint, "append", owns, namespace=namespace
            )
            for tag, value in plan:
                if tag == SKIPPED:
                    stats.docs_skipped += 1
                elif tag == UPDATED:
                    updated.add(msg.doc_id)
                elif tag == PROCESS:
                    to_process.append((msg, ref, data))
                elif tag == ERRORS:
                    errors.append((msg.record, self._located(value, msg.record)))
        return deletes, updated, to_process

    def _located(self, error: ErrorRecord, record: KafkaRecord) -> ErrorRecord:
        return with_source(
            error,
            source_uri=error.source_uri or record.where,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def _parse_and_chunk(self, to_process, errors):
        chunked = []
        for msg, ref, data in to_process:
            try:
                doc = parse_document(ref, data, self._cfg.parsing)
                if msg.uri is not None and msg.title:
                    doc = dataclasses.replace(doc, title=msg.title)
            except Exception as exc:
                errors.append((msg.record, self._error("parse", exc, msg.record, msg.doc_id)))
                continue
            try:
                chunks = chunk_document(doc, self._cfg.chunking, self._embedder)
            except Exception as exc:
                errors.append((msg.record, self._error("chunk", exc, msg.record, msg.doc_id)))
                continue
            chunked.append((msg, ChunkedDocument(document=doc, chunks=chunks)))
        return chunked

    def index(self, polls: Sequence[PollBatch], progress: Progress) -> BatchStats:
        """Apply one micro-batch and commit its offsets; ``progress`` is advanced in place."""
        started = time.monotonic()
        cfg = self._cfg
        stats = BatchStats(batch_seq=progress.batches + 1)
        records = [r for poll in polls for r in poll.records]
        stats.messages = len(records)
        errors: list[tuple[KafkaRecord, ErrorRecord]] = []
        messages = self._decode(records, errors)
        latest = last_per_document(messages)
        stats.docs_skipped = len(messages) - len(latest)  # superseded inside the batch
        table = self._table()
        version_before = table.version if table is not None else None
        deletes, updated, to_process = self._plan(latest, table, stats, errors)
        chunked = self._parse_and_chunk(to_process, errors)
        pairs = self._embed(chunked, version_before, errors) if chunked else []
        data, embedded = self._rows(pairs, errors) if pairs else (None, [])
        written = {d.document.doc_id for d in embedded}

        # 1. the one commit: upserts by chunk id, stale chunks of replaced documents and
        #    deleted documents removed in the same version
        version = version_before
        _crash_point("before_chunk_commit", stats.batch_seq)
        if data is not None or deletes:
            with store.commit_lock(cfg.db, cfg.table):
                table = store.open_or_create_chunks(
                    self._db,
                    cfg.table,
                    dim=self._embedder.dim,
                    model=cfg.embedding.model,
                    settings=self._settings,
                )
                # every written document is replaced, not only those the ledger knew: a
                # batch run may have added one since the ledger was read
                commit_changes(table, data, replace_docs=written, delete_docs=deletes)
                store.refresh_fts_index(table)  # index upkeep; creates missing indexes
                version = table.version
        committed_at = store.utcnow()
        _crash_point("after_chunk_commit", stats.batch_seq)

        # 2. bad messages: dead-letter topic, errors table (both before the offsets move)
        if self._dead_letters is not None and errors:
            for record, error in list(errors):
                try:
                    self._dead_letters.send(record, error)
                except Exception as exc:  # the message stays in errors; the batch goes on
                    errors.append((record, self._error("dead_letter", exc, record, error.doc_id)))
            self._dead_letters.flush()
        store.append_errors(self._db, self._run.run_id, cfg.table, [e for _, e in errors])

        # 3. the offsets, recorded with the commit, then committed to Kafka
        for poll in polls:
            key = (poll.topic, poll.partition)
            progress.positions[key] = max(progress.positions.get(key, 0), poll.end)
            if poll.highwater is not None:
                self._highwater[key] = max(self._highwater.get(key, 0), poll.highwater)
        progress.batches = stats.batch_seq
        now_ms = committed_at.timestamp() * 1000
        stats.freshness_ms = [max(0, int(now_ms - r.timestamp_ms)) for r in records]
        stats.lag = sum(
            max(0, high - progress.positions.get(key, high))
            for key, high in self._highwater.items()
        )
        stats.docs_failed = len({(r.topic, r.partition, r.offset) for r, _ in errors})
        stats.docs_deleted = len(deletes)
        stats.docs_added = len(written - updated)
        stats.docs_updated = len(written & updated)
        stats.chunks_embedded = sum(d.embedded for d in embedded)
        stats.chunks_reused = sum(d.reused for d in embedded)
        stats.chunks_written = 0 if data is None else data.num_rows
        stats.table_version = version
        stats.duration_ms = int((time.monotonic() - started) * 1000)
        store.append_stream_batch(
            self._db,
            {
                **dataclasses.asdict(stats),
                "run_id": self._run.run_id,
                "table_name": cfg.table,
                "group_id": self._run.group_id,
                "committed_at": committed_at,
                "offsets": [
                    {"topic": t, "partition": p, "next_offset": o}
                    for (t, p), o in sorted(progress.positions.items())
                ],
            },
        )
        _crash_point("after_batch_record", stats.batch_seq)
        if self._kafka is not None:
            try:
                self._kafka.commit(progress.positions, f"{cfg.table}@{version}")
            except Exception as exc:  # the table holds the offsets: a restart resumes right
                log.warning("committing offsets to Kafka failed (recorded in the table): %s", exc)
        if version != version_before and self._upkeep.committed():
            self._run_upkeep()
        return stats

    def _run_upkeep(self) -> None:
        from freshindex.maintain import maintain

        try:
            report = maintain(self._cfg.db, self._cfg.table, self._cfg.maintenance)
            log.info("%s", report.summary())
        except Exception as exc:  # the data is committed; upkeep is retried next time
            log.warning("table upkeep failed: %s", exc)
            error = ErrorRecord.from_exception(
                "maintain", exc, doc_id=None, source_uri=self._cfg.table
            )
            store.append_errors(self._db, self._run.run_id, self._cfg.table, [error])


# ------------------------------------------------------------------ the Beam step

# A stateful step's state and timers are declared as process() defaults.
_POLLS = userstate.BagStateSpec("polls", PickleCoder())
_PROGRESS = userstate.ReadModifyWriteStateSpec("progress", PickleCoder())
_FLUSH = userstate.TimerSpec("flush", userstate.TimeDomain.WATERMARK)
_POLLS_PARAM = beam.DoFn.StateParam(_POLLS)
_PROGRESS_PARAM = beam.DoFn.StateParam(_PROGRESS)
_FLUSH_PARAM = beam.DoFn.TimerParam(_FLUSH)
COMMIT_KEY = "commit"


class _IndexMicroBatchesFn(beam.DoFn):
    """Buffers reads on one key and applies them as micro-batches.

    A micro-batch closes ``batch_interval_s`` after its oldest message reached Kafka
    (``batch_due``) or at ``max_batch_messages``. The flush timer is event time
    (processing-time timers are not supported beside a splittable DoFn on the
    DirectRunner); the reader's watermark follows the wall clock, and where a runner fires
    the timer early the wall clock is checked and the timer set again.
    """

    def __init__(self, run: StreamRun):
        self._run = run
        self._batches = beam.metrics.Metrics.counter("freshindex", "stream_batches")
        self._messages = beam.metrics.Metrics.counter("freshindex", "stream_messages")
        self._errors = beam.metrics.Metrics.counter("freshindex", "stream_errors")
        self._freshness = beam.metrics.Metrics.distribution("freshindex", "freshness_ms")

    def setup(self) -> None:
        stream = self._run.stream
        self._kafka = KafkaOffsets(stream.kafka)
        self._dead_letters = None
        if stream.dead_letter_topic:
            self._dead_letters = DeadLetterProducer(stream.kafka, stream.dead_letter_topic)
        self._indexer = BatchIndexer(self._run, kafka=self._kafka, dead_letters=self._dead_letters)

    def teardown(self) -> None:
        for client in (getattr(self, "_kafka", None), getattr(self, "_dead_letters", None)):
            if client is not None:
                client.close()

    def process(
        self,
        keyed: tuple[str, PollBatch],
        polls=_POLLS_PARAM,
        progress=_PROGRESS_PARAM,
        flush=_FLUSH_PARAM,
    ) -> Iterator[BatchStats]:
        polls.add(keyed[1])
        pending = list(polls.read())
        if sum(len(p.records) for p in pending) >= self._run.stream.max_batch_messages:
            yield from self._flush(pending, polls, progress, flush)
        else:
            self._arm(pending, flush)

    @userstate.on_timer(_FLUSH)
    def on_flush(self, polls=_POLLS_PARAM, progress=_PROGRESS_PARAM, flush=_FLUSH_PARAM):
        pending = list(polls.read())
        if not pending:
            return
        if time.time() < self._due(pending):
            self._arm(pending, flush)  # fired early: the watermark ran ahead of the clock
            return
        yield from self._flush(pending, polls, progress, flush)

    def _due(self, pending: Sequence[PollBatch]) -> float:
        return batch_due(pending, self._run.stream.batch_interval_s)

    def _arm(self, pending: Sequence[PollBatch], flush) -> None:
        flush.set(Timestamp.of(self._due(pending)))

    def _flush(self, pending, polls, progress, flush) -> Iterator[BatchStats]:
        state = progress.read() or self._indexer.initial_progress()
        ready, held = take_contiguous(pending, state.positions)
        polls.clear()
        for poll in held:
            polls.add(poll)
        if held:
            log.warning(
                "holding %d reads until the offsets before them arrive: %s",
                len(held),
                sorted({(p.topic, p.partition, p.start) for p in held})[:5],
            )
            self._arm(held, flush)
        for group in split_batches(ready, self._run.stream.max_batch_messages):
            stats = self._indexer.index(group, state)
            progress.write(state)
            log.info("%s", stats.log_line())
            self._batches.inc()
            self._messages.inc(stats.messages)
            self._errors.inc(stats.docs_failed)
            for value in stats.freshness_ms:
                self._freshness.update(value)
            yield stats


class IndexMicroBatches(beam.PTransform):
    """PollBatch -> BatchStats, one per committed micro-batch (see ``BatchIndexer``)."""

    def __init__(self, run: StreamRun):
        super().__init__()
        self._run = run

    def expand(self, polls):
        return (
            polls
            | "OneCommitter" >> beam.Map(lambda poll: (COMMIT_KEY, poll))
            | "ApplyMicroBatches" >> beam.ParDo(_IndexMicroBatchesFn(self._run))
        )


def build_stream(p: beam.Pipeline, run: StreamRun):
    """Compose the streaming pipeline on ``p``; returns the PCollection of BatchStats."""
    stream = run.stream
    if stream.reader == "xlang":
        polls = p | "ReadKafka" >> ReadKafkaXlang(stream.kafka, stream.expansion_service)
    else:
        polls = p | "ReadKafka" >> ReadKafkaPartitions(stream.kafka, list(run.starts))
    return polls | "Index" >> IndexMicroBatches(run)


# ------------------------------------------------------------------ running it


def _pipeline_options(beam_args: Sequence[str] | None) -> tuple[PipelineOptions, Any]:
    """Streaming options, and the runner: the DirectRunner is run as Beam's FnApiRunner in
    this process (the engine it picks for this pipeline), so a stop request reaches the
    reader and the run ends with its summary."""
    options = PipelineOptions(list(beam_args or []))
    options.view_as(StandardOptions).streaming = True
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode not in (None, "in_memory"):
            log.warning("the stream runs in one process: ignoring --direct_running_mode")
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
        return options, FnApiRunner()
    return options, None


def _summary_row(run: StreamRun, status: str, table_version, tag) -> dict[str, Any]:
    cfg = run.cfg
    batches = store.read_stream_batches(store.connect(cfg.db), run_id=run.run_id)
    total = {
        name: sum(b[name] or 0 for b in batches)
        for name in (
            "messages",
            "docs_added",
            "docs_updated",
            "docs_deleted",
            "docs_skipped",
            "docs_failed",
            "chunks_embedded",
            "chunks_reused",
            "chunks_written",
        )
    }
    freshness = [f for b in batches for f in (b["freshness_ms"] or ())]
    settings = {
        **run_settings(cfg),
        "topics": list(run.stream.kafka.topics),
        "group_id": run.group_id,
        "batch_interval_s": run.stream.batch_interval_s,
        "max_batch_messages": run.stream.max_batch_messages,
        "batches": len(batches),
        "freshness_ms": {
            "p50": float(np.percentile(freshness, 50)) if freshness else None,
            "p99": float(np.percentile(freshness, 99)) if freshness else None,
            "max": max(freshness) if freshness else None,
        },
        "offsets": batches[-1]["offsets"] if batches else [],
    }
    return {
        "run_id": run.run_id,
        "kind": "stream",
        "table_name": cfg.table,
        "source": "kafka://" + ",".join(run.stream.kafka.topics),
        "settings": settings,
        "status": status,
        "started_at": dt.datetime.fromtimestamp(run.started_at, dt.UTC),
        "finished_at": store.utcnow(),
        "docs_seen": total["messages"],
        "docs_skipped": total["docs_skipped"],
        "docs_added": total["docs_added"],
        "docs_updated": total["docs_updated"],
        "docs_deleted": total["docs_deleted"],
        "docs_failed": total["docs_failed"],
        "chunks_embedded": total["chunks_embedded"],
        "chunks_reused": total["chunks_reused"],
        "chunks_written": total["chunks_written"],
        "table_version": table_version,
        "tag": tag,
    }


def finish_run(run: StreamRun, status: str) -> dict[str, Any]:
    """Tag the run's last commit ``run-<id>`` and record the run's manifest row (kind
    ``stream``); returns the row."""
    cfg = run.cfg
    db = store.connect(cfg.db)
    batches = store.read_stream_batches(db, run_id=run.run_id, columns=["table_version"])
    written = [b["table_version"] for b in batches if b["table_version"] is not None]
    version, tag = None, None
    if cfg.table in store.table_names(db):
        table = db.open_table(cfg.table)
        version = max(written) if written else table.version
        if written:
            tag = store.RUN_TAG_PREFIX + run.run_id
            try:
                store.tag_version(table, tag, version)
            except Exception as exc:  # the version was pruned meanwhile: tag the latest
                log.warning("tagging version %s failed (%s); tagging the latest", version, exc)
                version = table.version
                store.tag_version(table, tag, version)
    row = _summary_row(run, status, version, tag)
    store.append_run(db, row)
    return row


def format_stream_summary(row: dict[str, Any]) -> str:
    elapsed = (row["finished_at"] - row["started_at"]).total_seconds()
    settings = row["settings"]
    if isinstance(settings, str):
        settings = json.loads(settings)
    fresh = settings.get("freshness_ms") or {}
    fresh_text = "n/a"
    if fresh.get("p50") is not None:
        fresh_text = (
            f"p50 {fresh['p50'] / 1000:.2f}s, p99 {fresh['p99'] / 1000:.2f}s, "
            f"max {fresh['max'] / 1000:.2f}s"
        )
    return (
        f"stream run {row['run_id']} {row['status']} after {elapsed:.1f}s -> "
        f"table {row['table_name']} version {row['table_version']} (tag {row['tag']})\n"
        f"  messages: {row['docs_seen']} in {settings.get('batches', 0)} batches; documents: "
        f"{row['docs_added']} added, {row['docs_updated']} updated, {row['docs_deleted']} "
        f"deleted, {row['docs_skipped']} skipped, {row['docs_failed']} failed\n"
        f"  chunks: {row['chunks_embedded']} embedded, {row['chunks_reused']} reused, "
        f"{row['chunks_written']} written; freshness {fresh_text}"
    )


class _StopOnSignals:
    """SIGTERM/SIGINT (and ``duration_s``) ask the reader to stop; the pipeline then drains
    and the run ends with its summary. A second Ctrl-C interrupts at once."""

    def __init__(self, duration_s: float | None):
        self._duration_s = duration_s
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None

    def _handle(self, signum, _frame) -> None:
        log.info("signal %d: stopping after the current micro-batch", signum)
        request_stop()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._duration_s:
            self._timer = threading.Timer(self._duration_s, request_stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def run_stream(
    cfg: Config,
    stream: StreamConfig,
    beam_args: Sequence[str] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run the stream until it is stopped (signal, ``duration_s``, or ``stop_at_end``) and
    return its manifest row (``runs`` table, kind ``stream``)."""
    prepare_offline()
    reset_stop()
    current_version(cfg.db, cfg.table, cfg.embedding.model)  # refuses a model mismatch now
    db = store.connect(cfg.db)
    if stream.dead_letter_topic:  # a missing one would block the first bad message
        offsets = KafkaOffsets(stream.kafka)
        try:
            offsets.partitions(stream.dead_letter_topic)
        finally:
            offsets.close()
    starts: tuple[PartitionStart, ...] = ()
    if stream.reader == "python":
        recorded = store.read_stream_offsets(db, cfg.table, stream.kafka.group_id)
        starts = tuple(
            resolve_start_offsets(stream.kafka, recorded, stop_at_end=stream.stop_at_end)
        )
    run = StreamRun(
        run_id=run_id or new_run_id(),
        cfg=cfg,
        stream=stream,
        starts=starts,
        started_at=time.time(),
    )
    log.info(
        "stream run %s: kafka://%s/%s (group %s) -> %s/%s",
        run.run_id,
        stream.kafka.bootstrap_servers,
        ",".join(stream.kafka.topics),
        run.group_id,
        cfg.db,
        cfg.table,
    )
    for s in starts:
        end = f", stop at {s.stop}" if s.stop is not None else ""
        log.info("  %s[%d] from offset %d (%s%s)", s.topic, s.partition, s.start, s.reason, end)
    options, runner = _pipeline_options(beam_args)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_stream(pipeline, run)
    status = "failed"
    try:
        with _StopOnSignals(stream.duration_s):
            pipeline.run().wait_until_finish()
        status = "succeeded"
    finally:
        reset_stop()
        try:
            row = finish_run(run, status)
        except Exception:
            if status == "succeeded":
                raise
            log.exception("could not record the failed run %s", run.run_id)
    return row


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(argv)
    cfg = options.view_as(FreshIndexOptions).to_config()
    opts = options.view_as(StreamOptions)
    if not opts.topics:
        raise SystemExit("--topics is required")
    stream = stream_config_from_flags(cfg, opts)
    row = run_stream(cfg, stream, argv, options.view_as(FreshIndexOptions).run_id)
    print(format_stream_summary(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
