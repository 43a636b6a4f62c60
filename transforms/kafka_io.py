"""Kafka I/O of the streaming pipeline: where to start, the partition reader, dead letters.

- ``resolve_start_offsets``: per partition, the larger of the consumer group's committed
  offset and the offset recorded with the table's last commit (``stream_batches``); a
  partition with neither starts at ``start_offset`` (earliest or latest).
- ``ReadKafkaPartitions``: a splittable DoFn, one restriction (an offset range) per
  partition, read with kafka-python. It emits ``PollBatch`` elements whose offset ranges
  are contiguous per partition, so the committer can prove it skipped nothing. Unbounded
  unless the run stops at the log end it saw at start (``stop_at``).
- ``ReadKafkaXlang`` (``freshindex.transforms.kafka_xlang``): Beam's Java ``ReadFromKafka``.
- ``KafkaOffsets``: committed, first and end offsets of partitions, and offset commits.
- ``DeadLetterProducer`` (``freshindex.transforms.dead_letters``): bad messages to a topic.

Clients are created in the worker (``DoFn.setup``), never at import or pipeline build.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import WalltimeWatermarkEstimator
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from freshindex.errors import ConfigError, SourceError
from freshindex.schemas.messages import KafkaRecord, PollBatch
from freshindex.settings import secret_reference

log = logging.getLogger(__name__)

UNBOUNDED = sys.maxsize
_IDLE_RESUME = Duration.of(0.05)
_STOP = threading.Event()


def request_stop() -> None:
    """Ask the partition readers of this process to stop; the pipeline then drains.

    Works where the runner executes the reader in this process (the DirectRunner, as
    freshindex.pipelines.stream runs it); on Flink or Dataflow, drain the job instead.
    """
    _STOP.set()


def reset_stop() -> None:
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def _reference(name: str, raw: str) -> str | None:
    """The variable a value ``${NAME}`` names (the one syntax of environment references, as
    in every setting); None for a plain value. The old ``env:NAME`` is refused."""
    if raw.startswith("env:"):
        raise ConfigError(
            f"Kafka option {name}: the env:NAME syntax is gone",
            hint=f"write {name}=${{{raw[4:]}}}",
        )
    return secret_reference(f"kafka_option {name}", raw) if raw.startswith("${") else None


def option_value(name: str, raw: str):
    """A client setting's value; a ``${NAME}`` reference is read from the environment here,
    in the worker, so the secret never travels inside the pipeline."""
    variable = _reference(name, raw)
    if variable is not None:
        if variable not in os.environ:
            raise ConfigError(
                f"environment variable {variable} is not set", hint=f"export {variable}"
            )
        raw = os.environ[variable]
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    return int(raw) if raw.lstrip("-").isdigit() else raw


@dataclass(frozen=True)
class KafkaSpec:
    """Where and how to read: brokers, topics, consumer group and client settings.

    ``client_options`` are kafka-python settings as (name, value) strings; a value
    ``${NAME}`` is read from the environment when a client is created, in the worker,
    so secrets never travel inside the pipeline.
    """

    bootstrap_servers: str
    topics: tuple[str, ...]
    group_id: str
    start_offset: str = "earliest"
    client_options: tuple[tuple[str, str], ...] = ()
    poll_timeout_ms: int = 200
    max_poll_records: int = 500

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("no Kafka bootstrap servers", hint="set KAFKA_BOOTSTRAP_SERVERS")
        if not self.topics or not all(self.topics):
            raise ConfigError("no topics to read", hint="give --topics NAME[,NAME...]")
        if self.start_offset not in ("earliest", "latest"):
            raise ConfigError(f"start_offset must be earliest or latest: {self.start_offset!r}")
        if self.poll_timeout_ms < 1 or self.max_poll_records < 1:
            raise ConfigError("poll_timeout_ms and max_poll_records must be >= 1")

    def client_config(self) -> dict:
        config = {"bootstrap_servers": self.bootstrap_servers.split(",")}
        config.update({k: option_value(k, v) for k, v in self.client_options})
        return config


def parse_client_options(pairs: Iterable[str] | None) -> tuple[tuple[str, str], ...]:
    """``["security_protocol=SSL", ...]`` -> (("security_protocol", "SSL"), ...)."""
    out = []
    for pair in pairs or ():
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"Kafka option {pair!r} is not KEY=VALUE")
        _reference(name.strip(), value.strip())  # refused here, where it was given
        out.append((name.strip(), value.strip()))
    return tuple(out)


def new_consumer(spec: KafkaSpec, *, group_id: str | None = None, max_poll_records=None):
    from kafka import KafkaConsumer

    return KafkaConsumer(
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",  # a position deleted by retention: the oldest kept
        max_poll_records=max_poll_records or spec.max_poll_records,
        client_id="freshindex",
        **spec.client_config(),
    )


def new_producer(spec: KafkaSpec):
    from kafka import KafkaProducer

    return KafkaProducer(client_id="freshindex", acks="all", **spec.client_config())


def record_from(raw) -> KafkaRecord:
    """A kafka-python ConsumerRecord -> KafkaRecord."""
    return KafkaRecord(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key,
        value=raw.value,
        timestamp_ms=raw.timestamp,
        headers=tuple((k, v) for k, v in (raw.headers or ())),
    )


class KafkaOffsets:
    """Offsets of partitions for one consumer group, through one kafka-python client."""

    def __init__(self, spec: KafkaSpec):
        self._spec = spec
        self._consumer = new_consumer(spec, group_id=spec.group_id, max_poll_records=1)

    def close(self) -> None:
        self._consumer.close()

    def partitions(self, topic: str) -> list[int]:
        found = self._consumer.partitions_for_topic(topic)
        if not found:
            raise SourceError(
                f"Kafka topic {topic!r} does not exist on {self._spec.bootstrap_servers}",
                hint="create it first (docs/STREAMING.md shows how)",
            )
        return sorted(found)

    def committed(self, tps) -> dict:
        return {tp: self._consumer.committed(tp) for tp in tps}

    def beginning(self, tps) -> dict:
        return self._consumer.beginning_offsets(list(tps))

    def log_end(self, tps) -> dict:
        """The end offset of each partition, checked by a fetch: some brokers (Tansu) answer
        ListOffsets with the base offset of the last record batch, not the log end."""
        tps = list(tps)
        listed = self._consumer.end_offsets(tps)
        probe = {tp: off for tp, off in listed.items() if off > 0}
        if not probe:
            return listed
        self._consumer.assign(list(probe))
        for tp, off in probe.items():
            self._consumer.seek(tp, off - 1)
        ends = dict(listed)
        deadline = time.monotonic() + 5
        while probe and time.monotonic() < deadline:
            self._consumer.poll(timeout_ms=200)
            for tp in list(probe):
                highwater = self._consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = max(ends[tp], highwater)
                    del probe[tp]
        self._consumer.assign([])
        return ends

    def commit(self, positions: dict[tuple[str, int], int], metadata: str = "") -> None:
        """Commit ``(topic, partition) -> next offset`` for the group."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self._consumer.commit(
            {
                TopicPartition(topic, part): OffsetAndMetadata(offset, metadata, -1)
                for (topic, part), offset in positions.items()
            }
        )


@dataclass(frozen=True)
class PartitionStart:
    """One partition to read from ``start``; ``stop`` (exclusive) ends a bounded run."""

    topic: str
    partition: int
    start: int
    stop: int | None = None
    reason: str = ""


def resolve_start_offsets(
    spec: KafkaSpec,
    recorded: dict[tuple[str, int], int],
    *,
    stop_at_end: bool = False,
    partitions: Collection[tuple[str, int]] | None = None,
) -> list[PartitionStart]:
    """Where each partition resumes: max(group's committed offset, offset recorded with the
    table's commits); else ``spec.start_offset``. Never before the oldest record kept.
    ``partitions``: only these (a group member's assignment); None: every partition."""
    from kafka import TopicPartition

    offsets = KafkaOffsets(spec)
    try:
        if partitions is None:
            tps = [TopicPartition(t, p) for t in spec.topics for p in offsets.partitions(t)]
        else:
            tps = [TopicPartition(t, p) for t, p in sorted(partitions)]
        committed = offsets.committed(tps)
        beginning = offsets.beginning(tps)
        need_end = stop_at_end or spec.start_offset == "latest"
        ends = offsets.log_end(tps) if need_end else {}
    finally:
        offsets.close()
    starts = []
    for tp in tps:
        in_kafka = committed.get(tp)
        in_table = recorded.get((tp.topic, tp.partition))
        candidates = [o for o in (in_kafka, in_table) if o is not None]
        if candidates:
            start = max(candidates)
            reason = f"kafka {in_kafka}, table {in_table}"
        else:
            start = beginning[tp] if spec.start_offset == "earliest" else ends[tp]
            reason = f"no committed offset: {spec.start_offset}"
        if start < beginning[tp]:
            log.warning(
                "%s[%d]: offsets %d..%d were deleted by retention before they were indexed",
                tp.topic,
                tp.partition,
                start,
                beginning[tp] - 1,
            )
            start, reason = beginning[tp], reason + "; clamped to the oldest kept record"
        stop = ends[tp] if stop_at_end else None
        starts.append(PartitionStart(tp.topic, tp.partition, start, stop, reason))
    return starts


# ------------------------------------------------------------------ the partition reader


class _PartitionRanges(RestrictionProvider):
    def initial_restriction(self, part: PartitionStart) -> OffsetRange:
        stop = UNBOUNDED if part.stop is None else max(part.stop, part.start)
        return OffsetRange(part.start, stop)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def split(self, part, restriction):
        yield restriction  # one reader per partition: offsets are read in order

    def restriction_size(self, part, restriction: OffsetRange) -> int:
        return 1 if restriction.stop == UNBOUNDED else restriction.size()


# Beam finds a DoFn's restriction and watermark providers in its process() defaults.
_RANGE_TRACKER = beam.DoFn.RestrictionParam(_PartitionRanges())
# The watermark follows the wall clock: records are stamped with their read time.
_WALLTIME_WATERMARK = beam.DoFn.WatermarkEstimatorParam(
    WalltimeWatermarkEstimator.default_provider()
)


class _ReadPartitionFn(beam.DoFn):
    """Reads one partition per restriction; each call polls once and checkpoints."""

    def __init__(self, spec: KafkaSpec, poll_timeout_ms: int):
        self._spec, self._poll_timeout_ms = spec, poll_timeout_ms

    def setup(self) -> None:
        self._consumers: dict = {}

    def teardown(self) -> None:
        for consumer in getattr(self, "_consumers", {}).values():
            consumer.close()

    def _consumer_at(self, tp, offset: int):
        consumer = self._consumers.get(tp)
        if consumer is None:
            consumer = self._consumers[tp] = new_consumer(self._spec)
            consumer.assign([tp])
            consumer.seek(tp, offset)
        elif consumer.position(tp) != offset:
            consumer.seek(tp, offset)
        return consumer

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        part: PartitionStart,
        tracker=_RANGE_TRACKER,
        _watermark=_WALLTIME_WATERMARK,
    ) -> Iterator[TimestampedValue]:
        from kafka import TopicPartition

        restriction = tracker.current_restriction()
        start, stop = restriction.start, restriction.stop
        if stop_requested():
            # Stop reading: the rest of the range is claimed but never emitted, so none of
            # its offsets is committed; the next run resumes from the last committed one.
            if start < stop:
                tracker.try_claim(stop - 1)
            return
        if start >= stop:
            return
        tp = TopicPartition(part.topic, part.partition)
        consumer = self._consumer_at(tp, start)
        polled = consumer.poll(timeout_ms=self._poll_timeout_ms).get(tp, [])
        records: list[KafkaRecord] = []
        covered = start  # offsets [start, covered) are read (records or log gaps)
        for raw in polled:
            if raw.offset < covered:
                continue
            if raw.offset >= stop:  # the log holds no record in [covered, stop)
                if covered < stop and tracker.try_claim(stop - 1):
                    covered = stop
                break
            if not tracker.try_claim(raw.offset):
                break
            records.append(record_from(raw))
            covered = raw.offset + 1
        else:
            # no record at the offsets the consumer moved past (compaction, transaction
            # markers): claim them too, so the range stays contiguous and a bounded run ends
            position = min(consumer.position(tp), stop)
            if position > covered and tracker.try_claim(position - 1):
                covered = position
        if covered > start:
            batch = PollBatch(
                topic=part.topic,
                partition=part.partition,
                start=start,
                end=covered,
                records=tuple(records),
                read_at=time.time(),
                highwater=consumer.highwater(tp),
            )
            yield TimestampedValue(batch, Timestamp.now())
        if covered < stop:
            tracker.defer_remainder(None if records else _IDLE_RESUME)


class ReadKafkaPartitions(beam.PTransform):
    """PBegin -> PollBatch, from the given partition starts (see ``resolve_start_offsets``).

    Example::

        starts = resolve_start_offsets(spec, recorded)
        polls = p | ReadKafkaPartitions(spec, starts)
    """

    def __init__(self, spec: KafkaSpec, starts: list[PartitionStart]):
        super().__init__()
        if not starts:
            raise SourceError(f"no partitions to read in topics {list(spec.topics)}")
        self._spec, self._starts = spec, list(starts)

    def expand(self, pbegin):
        # Partitions are polled one after another; share the poll timeout between them so
        # an idle round over every partition takes about poll_timeout_ms.
        timeout = max(10, self._spec.poll_timeout_ms // len(self._starts))
        return (
            pbegin
            | "Partitions" >> beam.Create(self._starts)
            | "ReadPartitions" >> beam.ParDo(_ReadPartitionFn(self._spec, timeout))
        )
