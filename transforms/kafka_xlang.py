"""The Java Kafka reader of the streaming pipeline (``--kafka_reader=xlang``): Beam's
``ReadFromKafka`` for Flink/Dataflow users, who have an expansion service. It resumes from
the group's committed offsets only, and emits one ``PollBatch`` per record; offsets that
no record holds (a compacted topic) are gaps the committer accepts after
``stream.gap_wait_s`` (``freshindex.pipelines.stream.offsets``).
"""

from __future__ import annotations

import time

import apache_beam as beam

from freshindex.schemas.messages import KafkaRecord, PollBatch
from freshindex.transforms.kafka_io import KafkaSpec, option_value


def _poll_batch_from_row(row) -> PollBatch:
    headers = tuple((h.key, h.value) for h in (getattr(row, "headers", None) or ()))
    record = KafkaRecord(
        topic=row.topic,
        partition=int(row.partition),
        offset=int(row.offset),
        key=row.key,
        value=row.value,
        timestamp_ms=int(row.timestamp),
        headers=headers,
    )
    return PollBatch(
        record.topic, record.partition, record.offset, record.offset + 1, (record,), time.time()
    )


def xlang_consumer_config(spec: KafkaSpec) -> dict[str, str]:
    """Java consumer properties: ours, plus client options with '_' read as '.'."""
    config = {
        "bootstrap.servers": spec.bootstrap_servers,
        "group.id": spec.group_id,
        "auto.offset.reset": spec.start_offset,
        "enable.auto.commit": "false",
    }
    config.update({k.replace("_", "."): str(option_value(k, v)) for k, v in spec.client_options})
    return config


class ReadKafkaXlang(beam.PTransform):
    """PBegin -> PollBatch through Beam's Java ``ReadFromKafka`` (Flink, Dataflow, Prism).

    Needs a Java expansion service (Beam downloads it from Maven when none is given).
    It starts from the group's committed offsets, which the stream commits only after the
    table commit, so a restart replays at most the last batch (idempotent). Offsets
    recorded in the table are not used, and a single record is one PollBatch.
    """

    def __init__(self, spec: KafkaSpec, expansion_service: str | None = None):
        super().__init__()
        self._spec, self._expansion_service = spec, expansion_service

    def reader(self):
        from apache_beam.io.kafka import ReadFromKafka

        return ReadFromKafka(
            consumer_config=xlang_consumer_config(self._spec),
            topics=list(self._spec.topics),
            with_metadata=True,
            timestamp_policy=ReadFromKafka.processing_time_policy,
            expansion_service=self._expansion_service,
        )

    def expand(self, pbegin):
        return (
            pbegin
            | "ReadFromKafka" >> self.reader()
            | "ToPollBatches" >> beam.Map(_poll_batch_from_row)
        )
