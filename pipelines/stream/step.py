"""The stream's Beam step: reads buffered on one key and applied as micro-batches
(``BatchIndexer``), one at a time and in offset order; ``build_stream`` composes the
pipeline: ReadKafkaPartitions (or the Java reader) -> IndexMicroBatches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import userstate
from apache_beam.utils.timestamp import Timestamp

from freshindex.pipelines.stream.config import StreamRun
from freshindex.pipelines.stream.microbatch import BatchIndexer, BatchStats
from freshindex.pipelines.stream.offsets import (
    batch_due,
    gap_deadline,
    split_batches,
    take_contiguous,
)
from freshindex.schemas.messages import PollBatch
from freshindex.transforms.dead_letters import DeadLetterProducer
from freshindex.transforms.kafka_group import registered_member
from freshindex.transforms.kafka_io import (
    KafkaOffsets,
    ReadKafkaPartitions,
)
from freshindex.transforms.kafka_xlang import ReadKafkaXlang

log = logging.getLogger("freshindex.stream")

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
        # the python reader's reads cover every offset: a gap there waits for its read
        self._gap_wait_s = stream.gap_wait_s if stream.reader == "xlang" else None
        # a group member commits Kafka offsets for the partitions it owns; else a client
        # of this step's own (the only one teardown closes)
        member = registered_member()
        self._own_kafka = member is None
        self._kafka = member or KafkaOffsets(stream.kafka)
        self._dead_letters = None
        if stream.dead_letter_topic:
            self._dead_letters = DeadLetterProducer(stream.kafka, stream.dead_letter_topic)
        self._indexer = BatchIndexer(self._run, kafka=self._kafka, dead_letters=self._dead_letters)

    def teardown(self) -> None:
        own = getattr(self, "_kafka", None) if getattr(self, "_own_kafka", False) else None
        for client in (own, getattr(self, "_dead_letters", None)):
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

    def _log_gaps(self, ready: Sequence[PollBatch], positions) -> None:
        """Say which offsets a gap skipped (the Java reader: compacted away)."""
        seen = dict(positions)
        for poll in sorted(ready, key=lambda p: (p.topic, p.partition, p.start)):
            key = (poll.topic, poll.partition)
            if key in seen and poll.start > seen[key]:
                log.info(
                    "%s[%d]: offsets %d..%d hold no record (compacted); going on at %d",
                    poll.topic,
                    poll.partition,
                    seen[key],
                    poll.start - 1,
                    poll.start,
                )
            seen[key] = poll.end

    def _due(self, pending: Sequence[PollBatch]) -> float:
        return batch_due(pending, self._run.stream.batch_interval_s)

    def _arm(self, pending: Sequence[PollBatch], flush) -> None:
        flush.set(Timestamp.of(self._due(pending)))

    def _flush(self, pending, polls, progress, flush) -> Iterator[BatchStats]:
        state = progress.read() or self._indexer.initial_progress()
        ready, held = take_contiguous(
            pending, state.positions, gap_wait_s=self._gap_wait_s, now=time.time()
        )
        self._log_gaps(ready, state.positions)
        polls.clear()
        for poll in held:
            polls.add(poll)
        if held:
            # with the Java reader a gap is usually compaction: worth a warning only without
            log.log(
                logging.WARNING if self._gap_wait_s is None else logging.INFO,
                "holding %d reads until the offsets before them arrive: %s",
                len(held),
                sorted({(p.topic, p.partition, p.start) for p in held})[:5],
            )
            deadline = gap_deadline(held, self._gap_wait_s)
            if deadline is None:
                self._arm(held, flush)
            else:  # look again when the first held read stops waiting for its gap
                flush.set(Timestamp.of(max(self._due(held), deadline)))
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
