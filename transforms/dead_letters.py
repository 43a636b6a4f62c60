"""Dead letters of the streaming pipeline: a bad message is copied, with its error in
``freshindex.*`` headers, to a topic, before the source offsets move (at-least-once)."""

from __future__ import annotations

import logging

from freshindex.schemas.messages import KafkaRecord
from freshindex.schemas.records import ErrorRecord
from freshindex.transforms.kafka_io import KafkaSpec, new_producer

log = logging.getLogger(__name__)


class DeadLetterProducer:
    """Copies bad messages to a dead-letter topic, with the error in ``freshindex.*`` headers.

    Example::

        dlq = DeadLetterProducer(spec, "docs.dlq")
        dlq.send(record, error)
        dlq.flush()  # before the source offsets are committed: at-least-once
    """

    def __init__(self, spec: KafkaSpec, topic: str):
        self._topic = topic
        self._producer = new_producer(spec)

    def send(self, record: KafkaRecord, error: ErrorRecord) -> None:
        """Queue a copy of ``record``. One the producer refuses (over its request size, say)
        is sent again without its value and original headers, marked
        ``freshindex.value_dropped``: its coordinates in ``freshindex.source`` still find it."""
        ours = [
            ("freshindex.error.stage", error.stage.encode()),
            ("freshindex.error.class", error.error_class.encode()),
            ("freshindex.error.message", error.message[:1000].encode("utf-8", "replace")),
            ("freshindex.source", record.where.encode()),
        ]
        try:
            self._producer.send(
                self._topic,
                key=record.key,
                value=record.value,
                headers=[*record.headers, *ours],
                timestamp_ms=record.timestamp_ms,
            )
        except Exception as exc:
            log.warning(
                "dead letter of %s refused (%s): sending it without its value", record.where, exc
            )
            self._producer.send(
                self._topic,
                key=record.key,
                value=None,
                headers=[*ours, ("freshindex.value_dropped", str(exc)[:200].encode())],
                timestamp_ms=record.timestamp_ms,
            )

    def flush(self, timeout_s: float = 30) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close()
