"""One micro-batch, applied: Kafka records -> **one** commit of the chunks table -> dead
letters and errors -> the batch's offsets recorded (``stream_batches``) -> offsets committed
to Kafka. Why this order makes a crash at any point safe is argued in docs/STREAMING.md.

decode (``freshindex.schemas.messages``) -> last message per document -> plan against the
table's ledger (``freshindex.transforms.plan.decide``) -> parse -> chunk -> embed -> rows
(``freshindex.transforms.process``, the path the batch pipeline's steps take) -> commit
(``freshindex.transforms.write.commit_changes`` under ``store.commit_lock``, the lock batch
runs take too; checked by ``store.verify_commit``, the lease's fencing token recorded in
``stream_batches``). Whatever one message raises becomes its error row and the batch goes on. A
``uri`` message is read only when allowed, under the allowed prefixes
(``freshindex.transforms.source_io``).

The batch pipeline's steps run here as functions rather than PTransforms: a micro-batch
must commit atomically and in order, with the offsets of every message it consumed,
including the ones that failed or were superseded. ``commit_chunks``, ``record_batch`` and
``commit_offsets`` are the batch's durable steps, one method each (the crash tests stop
the process around them, tests/crashing.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from freshindex import store
from freshindex.observability import metrics, tracing
from freshindex.pipelines.batch import run_settings
from freshindex.pipelines.stream.config import StreamRun
from freshindex.pipelines.stream.messages import message_source
from freshindex.pipelines.stream.offsets import (
    PartitionsLost,
    Progress,
    initial_progress,
    lost_partitions,
)
from freshindex.runtime import prepare_offline
from freshindex.schemas.bookkeeping import StreamBatchRecord
from freshindex.schemas.messages import (
    DELETE,
    DocumentMessage,
    KafkaRecord,
    PollBatch,
    decode_message,
    last_per_document,
)
from freshindex.schemas.records import ErrorRecord
from freshindex.transforms.access import Labeler
from freshindex.transforms.kafka_io import KafkaOffsets
from freshindex.transforms.plan import (
    ERRORS,
    PROCESS,
    RELABELED,
    SKIPPED,
    UPDATED,
    TableRef,
    decide,
    may_write,
    namespace_conflict,
    with_source,
)
from freshindex.transforms.process import DocumentProcessor, isolate
from freshindex.transforms.vectors import VectorReuse
from freshindex.transforms.write import commit_changes

log = logging.getLogger("freshindex.stream")

# how far another machine's clock may lag this one's when it stamps a stream_batches row
CLOCK_SKEW = dt.timedelta(minutes=2)


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
    lease_token: int | None = None  # the commit lease's fencing token (None: no lease)

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
        from freshindex.store.upkeep import UpkeepSchedule

        prepare_offline()
        self._run, self._cfg = run, run.cfg
        self._kafka, self._dead_letters = kafka, dead_letters
        self._db = store.connect(self._cfg.db)
        self._embedder = get_embedder(self._cfg.embedding)  # loaded once, before batch 1
        self._processor = DocumentProcessor(self._cfg.parsing, self._cfg.chunking, self._embedder)
        self._fingerprint = self._cfg.fingerprint()
        self._labeler = Labeler.of(self._cfg.access)
        self._settings = run_settings(self._cfg)
        self._upkeep = UpkeepSchedule(self._cfg.maintenance)
        self._highwater: dict[tuple[str, int], int] = {}
        self._checked_at: dt.datetime | None = None  # the last ownership check

    def initial_progress(self) -> Progress:
        return initial_progress(self._run.starts, self._run.first_batch)

    def _table(self):
        # None before the first commit (another member may be creating it right now)
        return store.open_if_exists(self._db, self._cfg.table)

    # -- errors, located at their message ------------------------------------------------

    def _at(
        self, record: KafkaRecord, error: ErrorRecord, *, keep_source: bool = False
    ) -> ErrorRecord:
        """``error`` located at ``record`` (where it came from: topic, partition, offset);
        ``keep_source`` keeps a ``source_uri`` the error already names."""
        # a message that quotes the input may hold text UTF-8 cannot store (lone surrogates):
        # the errors table and the dead-letter headers must take it whatever it says
        message = error.message.encode("utf-8", "backslashreplace").decode("utf-8")
        return with_source(
            error,
            message=message,
            source_uri=(error.source_uri if keep_source else None) or record.where,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )

    def _isolated(self, stage: str, record: KafkaRecord, doc_id: str | None, step, *args):
        """``step(*args)``, or the ErrorRecord of ``record`` (``process.isolate``)."""
        result = isolate(stage, step, *args, doc_id=doc_id, source_uri=record.where)
        return self._at(record, result) if isinstance(result, ErrorRecord) else result

    # -- the stages, for one batch -------------------------------------------------------

    def _decode(self, records, errors) -> list[DocumentMessage]:
        messages = []
        max_bytes = self._run.stream.max_message_bytes
        for record in records:
            # InvalidMessage, or a decoder bug: the message, not the batch
            key = record.key.decode("utf-8", "replace") if record.key else None
            result = self._isolated("decode", record, key, decode_message, record, max_bytes)
            if isinstance(result, ErrorRecord):
                errors.append((record, result))
            else:
                messages.append(result)
        return messages

    def _namespace(self, msg: DocumentMessage) -> str:
        """The namespace a message writes: ``stream.namespace``, else ``kafka:<topic>``."""
        return self._run.stream.namespace or f"kafka:{msg.record.topic}"

    def _plan(self, latest: list[DocumentMessage], table, stats: BatchStats, errors):
        """(deletes, updated doc ids, [(message, SourceRef, bytes)] to process, relabels),
        decided against the table's ledger like a batch run plans
        (``freshindex.transforms.plan.decide``). An upsert or delete of a document another
        namespace owns is refused (an errors row), before the message's content is read.
        ``relabels``: doc_id -> (content_hash, labels) of unchanged documents whose access
        labels changed."""
        ledger = store.ledger_of(table, [m.doc_id for m in latest]) if table is not None else {}
        deletes, updated, to_process, relabels = [], set(), [], {}
        for msg in latest:
            namespace = self._namespace(msg)
            owns = _legacy_owner(msg)
            entry = ledger.get(msg.doc_id)
            if entry is not None and not may_write(entry, namespace, owns):
                action = "delete" if msg.op == DELETE else "replace"
                refused = namespace_conflict(msg.doc_id, entry, namespace, action, None)
                errors.append((msg.record, self._at(msg.record, refused, keep_source=True)))
                continue
            if msg.op == DELETE:
                if entry is not None:
                    deletes.append(msg.doc_id)
                else:
                    stats.docs_skipped += 1  # nothing to delete
                continue
            read = self._isolated(
                "read",
                msg.record,
                msg.doc_id,
                message_source,
                msg,
                self._run.stream,
                self._cfg.parsing,
            )
            if isinstance(read, ErrorRecord):  # recorded with the message, never lost
                errors.append((msg.record, read))
                continue
            ref, data = read
            ref = self._labeler.label(ref)
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
                elif tag == RELABELED:
                    relabels[value[0]] = (value[1], value[2])
                elif tag == ERRORS:
                    errors.append((msg.record, self._at(msg.record, value, keep_source=True)))
        return deletes, updated, to_process, relabels

    def _process(self, to_process, version, errors):
        """(rows, the documents they hold) for the planned upserts, through the one
        processing path; a document that fails at any step is an error of its message."""
        if not to_process:
            return None, []
        cfg = self._cfg
        by_doc = {msg.doc_id: msg for msg, _, _ in to_process}
        data, embedded, failed = self._processor.process(
            [(ref, data) for _, ref, data in to_process],
            VectorReuse(TableRef(cfg.db, cfg.table, version), cfg.embedding.model),
            fingerprint=self._fingerprint,
            model=cfg.embedding.model,
            run_id=self._run.run_id,
            namespace={doc_id: self._namespace(msg) for doc_id, msg in by_doc.items()},
        )
        for error in failed:
            record = by_doc[error.doc_id].record
            errors.append((record, self._at(record, error)))
        return data, embedded

    # -- the durable steps, in order -------------------------------------------------------

    def check_ownership(self, claimed: dict[tuple[str, int], int | None]) -> None:
        """Under the commit lock: raise ``PartitionsLost`` unless every partition this batch
        read is still where this process left it (the largest offset recorded with the
        table's commits for the group equals the batch's start). Another member that took
        the partition over in a rebalance has recorded further: this batch is stale."""
        # rows older than this process's last check were seen then (and only grow): read
        # the newer ones, with a margin for the clocks of other machines
        since = None if self._checked_at is None else self._checked_at - CLOCK_SKEW
        checked_at = store.utcnow()
        recorded = store.read_stream_offsets(
            self._db, self._cfg.table, self._run.group_id, since=since
        )
        lost = lost_partitions(claimed, recorded)
        if lost:
            raise PartitionsLost(self._run.group_id, lost)
        self._checked_at = checked_at

    def commit_chunks(
        self, stats: BatchStats, data: pa.Table | None, written: set[str], deletes, lease
    ) -> int:
        """2. The one commit: upserts by chunk id, stale chunks of replaced documents and
        deleted documents removed in the same version; returns the table version after it.
        Called under the commit lock (``lease``: the S3 lease, or None)."""
        cfg = self._cfg
        table = store.open_or_create_chunks(
            self._db,
            cfg.table,
            dim=self._embedder.dim,
            model=cfg.embedding.model,
            settings=self._settings,
        )
        # every written document is replaced, not only those the ledger knew: a batch
        # run may have added one since the ledger was read
        store.check_held(lease)  # a holder that stalled past its TTL never commits
        committed = commit_changes(table, data, replace_docs=written, delete_docs=deletes)
        store.verify_commit(
            self._db,
            cfg.table,
            committed,
            chunk_ids=[] if data is None else data["chunk_id"].to_pylist(),
            replaced_docs=written,
            deleted_docs=deletes,
        )
        stats.lease_token = store.token_of(lease)
        store.refresh_fts_index(table)  # index upkeep; creates missing indexes
        return table.version

    def relabel(self, relabels: dict[str, tuple[str, tuple[str, ...]]], lease) -> int:
        """Set new access labels on unchanged documents (``store.relabel``), one commit under
        the commit lock; returns the table version after it."""
        store.check_held(lease)
        table = store.open_chunks(self._db, self._cfg.table)
        store.relabel(table, relabels)
        return table.version

    def _report_errors(self, errors: list[tuple[KafkaRecord, ErrorRecord]]) -> None:
        """1. Bad messages: dead-letter topic, errors table (both before the offsets move;
        a batch that is then not committed reports them again when it is re-read)."""
        if self._dead_letters is not None and errors:
            for record, error in list(errors):
                # a failed send stays in errors; the batch goes on
                sent = self._isolated(
                    "dead_letter", record, error.doc_id, self._dead_letters.send, record, error
                )
                if isinstance(sent, ErrorRecord):
                    errors.append((record, sent))
            self._dead_letters.flush()
        store.append_errors(self._db, self._run.run_id, self._cfg.table, [e for _, e in errors])
        for _, error in errors:
            metrics.observe_error(error.stage, error.error_class)

    def record_batch(self, stats: BatchStats, progress: Progress, committed_at: dt.datetime):
        """3. The batch's offsets, recorded in the table's ledger beside its commit (under
        the same hold of the commit lock, so the next holder's ownership check sees them)."""
        record = StreamBatchRecord(
            **dataclasses.asdict(stats),
            run_id=self._run.run_id,
            table_name=self._cfg.table,
            group_id=self._run.group_id,
            committed_at=committed_at,
            offsets=[
                {"topic": t, "partition": p, "next_offset": o}
                for (t, p), o in sorted(progress.positions.items())
            ],
        )
        store.append_stream_batch(self._db, record)

    def commit_offsets(self, progress: Progress, version: int | None) -> None:
        """4. The offsets committed to Kafka, after the table holds them."""
        if self._kafka is None:
            return
        try:
            self._kafka.commit(progress.positions, f"{self._cfg.table}@{version}")
        except Exception as exc:  # the table holds the offsets: a restart resumes right
            log.warning("committing offsets to Kafka failed (recorded in the table): %s", exc)

    def index(self, polls: Sequence[PollBatch], progress: Progress) -> BatchStats:
        """Apply one micro-batch and commit its offsets; ``progress`` is advanced in place
        once the batch is recorded. Raises ``PartitionsLost`` (nothing committed) when
        another process has indexed past where this one read."""
        with tracing.span(
            "freshindex.micro_batch", run_id=self._run.run_id, batch_seq=progress.batches + 1
        ) as span:
            stats, lag, commit_s = self._index(polls, progress)
            tracing.set_attributes(
                span,
                messages=stats.messages,
                table_version=stats.table_version,
                lag=stats.lag,
                docs_failed=stats.docs_failed,
            )
        metrics.observe_micro_batch(dataclasses.asdict(stats), lag, commit_s)
        return stats

    def _index(self, polls: Sequence[PollBatch], progress: Progress):
        """``index``'s work: (the batch's stats, lag per partition, seconds its commit held
        the lock or None)."""
        started = time.monotonic()
        commit_s = None
        stats = BatchStats(batch_seq=progress.batches + 1)
        records = [r for poll in polls for r in poll.records]
        stats.messages = len(records)
        errors: list[tuple[KafkaRecord, ErrorRecord]] = []
        messages = self._decode(records, errors)
        latest = last_per_document(messages)
        stats.docs_skipped = len(messages) - len(latest)  # superseded inside the batch
        table = self._table()
        version_before = table.version if table is not None else None
        deletes, updated, to_process, relabels = self._plan(latest, table, stats, errors)
        data, embedded = self._process(to_process, version_before, errors)
        written = {d.document.doc_id for d in embedded}
        self._report_errors(errors)

        claimed = {
            (p.topic, p.partition): progress.positions.get((p.topic, p.partition)) for p in polls
        }
        after = Progress(positions=dict(progress.positions), batches=stats.batch_seq)
        for poll in polls:
            key = (poll.topic, poll.partition)
            after.positions[key] = max(after.positions.get(key, 0), poll.end)
            if poll.highwater is not None:
                self._highwater[key] = max(self._highwater.get(key, 0), poll.highwater)
        stats.lag = sum(
            max(0, high - after.positions.get(key, high)) for key, high in self._highwater.items()
        )
        stats.docs_failed = len({(r.topic, r.partition, r.offset) for r, _ in errors})
        stats.docs_deleted = len(deletes)
        stats.docs_added = len(written - updated)
        stats.docs_updated = len(written & updated)
        stats.chunks_embedded = sum(d.embedded for d in embedded)
        stats.chunks_reused = sum(d.reused for d in embedded)
        stats.chunks_written = 0 if data is None else data.num_rows

        def finish(version: int | None) -> None:
            committed_at = store.utcnow()
            now_ms = committed_at.timestamp() * 1000
            stats.freshness_ms = [max(0, int(now_ms - r.timestamp_ms)) for r in records]
            stats.table_version = version
            stats.duration_ms = int((time.monotonic() - started) * 1000)
            self.record_batch(stats, after, committed_at)

        if data is None and not deletes and not relabels:
            # nothing to commit: the record only moves offsets forward (a stale one from a
            # process that lost the partition never moves them back: the largest wins)
            version = version_before
            finish(version)
        else:
            cfg = self._cfg
            with (
                tracing.span("freshindex.commit", run_id=self._run.run_id, kind="stream"),
                store.commit_lock(cfg.db, cfg.table, cfg.commit) as lease,
            ):
                locked = time.monotonic()
                self.check_ownership(claimed)
                version = version_before
                if data is not None or deletes:
                    version = self.commit_chunks(stats, data, written, deletes, lease)
                if relabels:  # access labels only: one commit, nothing parsed or embedded
                    version = self.relabel(relabels, lease)
                finish(version)
                commit_s = time.monotonic() - locked
        progress.positions, progress.batches = after.positions, after.batches
        self.commit_offsets(progress, version)
        if version != version_before and self._upkeep.committed():
            self._run_upkeep()
        lag = {
            key: max(0, high - after.positions.get(key, high))
            for key, high in self._highwater.items()
        }
        return stats, lag, commit_s

    def _run_upkeep(self) -> None:
        from freshindex.store.upkeep import maintain

        try:
            report = maintain(
                self._cfg.db, self._cfg.table, self._cfg.maintenance, commit=self._cfg.commit
            )
            log.info("%s", report.summary())
        except Exception as exc:  # the data is committed; upkeep is retried next time
            log.warning("table upkeep failed: %s", exc)
            error = ErrorRecord.from_exception(
                "maintain", exc, doc_id=None, source_uri=self._cfg.table
            )
            store.append_errors(self._db, self._run.run_id, self._cfg.table, [error])
