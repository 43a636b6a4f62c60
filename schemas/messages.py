"""The Kafka message contract of the streaming pipeline, and the records it reads.

One message is one document change. The **key** is the document id (UTF-8), so every
change of a document lands in the same partition, in order. The **value** is a UTF-8
JSON object, or null (a tombstone) to delete the document:

    {"schema_version": 1, "op": "upsert", "text": "...", "title": "Timeouts"}  inline text
    {"schema_version": 1, "uri": "s3://bucket/guide.pdf"}                     a file to parse
    {"schema_version": 1, "op": "delete"}                                     delete (or null)

Fields (all optional except one of ``text`` / ``uri`` for an upsert):

- ``schema_version``: 1 (the version of this contract; a message without it is read as 1).
- ``op``: ``"upsert"`` (default) or ``"delete"``.
- ``text``: the document's text; paragraphs are split on blank lines, ``title`` heads
  every chunk. Hashed like a JSONL corpus record, so batch and stream agree on it.
- ``uri``: a path or URI the worker can read (local, ``gs://``, ``s3://``); parsed like a
  batch file (Markdown, HTML, PDF, DOCX, PPTX, text).
- ``content_type``: for ``uri``; defaults to the one of the file's extension.
- ``title``, ``metadata`` (a JSON object stored beside the chunks for filters).
- ``updated_at``: when the document changed at its source (ISO 8601, or epoch seconds);
  stored as ``modified_at``. Defaults to the record's Kafka timestamp. Informational: the
  order of changes is the partition's offset order.
- ``doc_id``: if present it must equal the key.
- ``acl``: the document's access labels, a list of principals and groups (e.g.
  ``["hr", "alice"]``; ``["public"]`` for everyone, ``[]`` for admin only). Absent: the
  consumer's ``access.rules`` and ``access.default`` decide. Not part of the content: a
  message that changes only the labels relabels the stored chunks without re-embedding.

Unknown fields are refused (put extra data in ``metadata``), and so is a value larger than
the consumer's ``max_message_bytes``. A message that breaks the
contract goes to the errors table (stage ``decode``) with its topic, partition and
offset, and to the dead-letter topic if one is configured; it never stops the stream.
Within one micro-batch the last message of a document wins.

One module, over the usual size, on purpose: the contract above and the decoder that
enforces it field by field are read together, and the Arrow schema of ``stream_batches``
at the end records the offsets of these records.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from freshindex.errors import DocumentError
from freshindex.schemas.access import optional_labels
from freshindex.schemas.records import check_metadata
from freshindex.schemas.tables import META_PREFIX, SCHEMA_VERSION

MESSAGE_SCHEMA_VERSION = 1
UPSERT, DELETE = "upsert", "delete"
# The keys a message value may carry; any other is refused (extra data goes in metadata).
MESSAGE_FIELDS = frozenset(
    {
        "schema_version",
        "doc_id",
        "op",
        "text",
        "uri",
        "content_type",
        "title",
        "metadata",
        "updated_at",
        "acl",
    }
)
MAX_KEY_CHARS = 1024
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# updated_at: from 1970-01-01 to 9999-12-31 (what a UTC datetime can hold), epoch seconds
MIN_EPOCH_S = 0.0
MAX_EPOCH_S = 253_402_300_799.0
_MAX_TIME_CHARS = 64


class InvalidMessage(DocumentError):
    """A Kafka message that breaks the contract above; recorded, never raised out of a run."""

    stage = "decode"


@dataclass(frozen=True)
class KafkaRecord:
    """One record as read from Kafka: raw bytes plus its coordinates."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the record's Kafka timestamp (producer CreateTime or LogAppendTime)
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def where(self) -> str:
        return f"kafka://{self.topic}/{self.partition}@{self.offset}"


@dataclass(frozen=True)
class PollBatch:
    """The records one read of a partition returned, and the offsets it covers.

    ``[start, end)`` is contiguous with the previous batch of the partition, even where
    the log has no record at an offset (compaction, transaction markers), so a consumer
    can tell that nothing between two batches was skipped.
    """

    topic: str
    partition: int
    start: int
    end: int
    records: tuple[KafkaRecord, ...]
    read_at: float  # wall-clock seconds
    highwater: int | None = None  # the partition's log end offset seen by that read


@dataclass(frozen=True)
class DocumentMessage:
    """A decoded, valid message: one change of one document."""

    doc_id: str
    op: str
    record: KafkaRecord
    text: str | None = None
    uri: str | None = None
    title: str | None = None
    content_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    updated_at: float | None = None  # epoch seconds
    acl: tuple[str, ...] | None = None  # None: the consumer's access rules decide

    @property
    def modified_at(self) -> float | None:
        """When the document changed: ``updated_at``, else the record's Kafka timestamp
        (None where a producer set none or one out of range)."""
        if self.updated_at is not None:
            return self.updated_at
        seconds = self.record.timestamp_ms / 1000
        return seconds if MIN_EPOCH_S < seconds <= MAX_EPOCH_S else None


def _utf8(value: str, name: str, doc_id: str | None) -> str:
    """``value`` if it can be stored: JSON may escape lone surrogates that UTF-8 cannot hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(f"{name} is not valid Unicode: {exc.reason}", doc_id=doc_id) from exc
    return value


def _optional_str(body: dict[str, Any], name: str, doc_id: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise InvalidMessage(f"field {name!r} must be a string", doc_id=doc_id)
    return None if value is None else _utf8(value, f"field {name!r}", doc_id)


def _epoch(value: Any, doc_id: str) -> float | None:
    """``updated_at`` as epoch seconds, finite and within years 1970..9999."""
    if value is None:
        return None
    seconds: float | int | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and len(value) <= _MAX_TIME_CHARS:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
            seconds = parsed.timestamp()
        except (ValueError, OverflowError):
            pass
    # compared before any conversion: NaN compares false, a huge int never overflows a float
    if seconds is not None and MIN_EPOCH_S <= seconds <= MAX_EPOCH_S:
        return float(seconds)
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise InvalidMessage(
        f"updated_at {shown} is not a time between 1970 and 9999",
        doc_id=doc_id,
        hint="use ISO 8601 or epoch seconds",
    )


def _metadata(value: Any, doc_id: str) -> dict[str, Any]:
    metadata = value or {}
    if not isinstance(metadata, dict):
        raise InvalidMessage("'metadata' must be a JSON object", doc_id=doc_id)
    try:
        check_metadata(metadata)
    except ValueError as exc:
        raise InvalidMessage(
            str(exc),
            doc_id=doc_id,
            hint="keep metadata to a few flat, filterable fields; put the content in 'text'",
        ) from None
    return metadata


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _json_object(value: bytes, doc_id: str) -> Any:
    """The decoded value: strict JSON (no NaN/Infinity, no float overflowing to inf); too deep
    a nesting is an InvalidMessage, not a RecursionError."""
    try:
        return json.loads(
            value.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidMessage(f"the value is not UTF-8 JSON: {exc}", doc_id=doc_id) from exc
    except RecursionError as exc:
        raise InvalidMessage("the value nests too deeply to decode", doc_id=doc_id) from exc


def decode_message(
    record: KafkaRecord, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> DocumentMessage:
    """Validate one record against the contract; raises InvalidMessage saying what is wrong.

    >>> rec = KafkaRecord("docs", 0, 7, b"guide/a.md", b'{"text": "Hello."}', 0)
    >>> decode_message(rec).op
    'upsert'
    """
    if not record.key:
        raise InvalidMessage(
            "the message has no key",
            hint="produce every message with the document id as its key",
        )
    try:
        doc_id = record.key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessage(f"the key is not UTF-8: {exc}") from exc
    if not doc_id.strip() or len(doc_id) > MAX_KEY_CHARS:
        raise InvalidMessage(f"the key must be 1-{MAX_KEY_CHARS} characters, not blank")
    if record.value is None:
        return DocumentMessage(doc_id=doc_id, op=DELETE, record=record)
    if len(record.value) > max_bytes:
        raise InvalidMessage(
            f"the value is {len(record.value):,} bytes, over the limit of {max_bytes:,}",
            doc_id=doc_id,
            hint="publish large documents as a 'uri', or raise max_message_bytes",
        )
    body = _json_object(record.value, doc_id)
    if not isinstance(body, dict):
        raise InvalidMessage("the value must be a JSON object (or null)", doc_id=doc_id)
    unknown = set(body) - MESSAGE_FIELDS
    if unknown:
        raise InvalidMessage(
            f"unknown fields {sorted(unknown)}",
            doc_id=doc_id,
            hint=f"known fields: {sorted(MESSAGE_FIELDS)}; put extra data in 'metadata'",
        )
    version = body.get("schema_version", MESSAGE_SCHEMA_VERSION)
    if type(version) is not int or version != MESSAGE_SCHEMA_VERSION:
        raise InvalidMessage(
            f"schema_version {version!r} is not supported",
            doc_id=doc_id,
            hint=f"this consumer reads schema_version {MESSAGE_SCHEMA_VERSION}",
        )
    if body.get("doc_id") is not None and body["doc_id"] != doc_id:
        raise InvalidMessage(
            f"doc_id {body['doc_id']!r} differs from the key {doc_id!r}",
            doc_id=doc_id,
            hint="the key is the document id; drop doc_id or make them equal",
        )
    op = body.get("op", UPSERT)
    if op not in (UPSERT, DELETE):
        raise InvalidMessage(f"op must be 'upsert' or 'delete', got {op!r}", doc_id=doc_id)
    if op == DELETE:
        return DocumentMessage(doc_id=doc_id, op=DELETE, record=record)
    text = _optional_str(body, "text", doc_id)
    uri = _optional_str(body, "uri", doc_id)
    if (text is None) == (uri is None):
        raise InvalidMessage("an upsert needs exactly one of 'text' and 'uri'", doc_id=doc_id)
    if uri is not None and not uri.strip():
        raise InvalidMessage("'uri' is empty", doc_id=doc_id)
    metadata = _metadata(body.get("metadata"), doc_id)
    try:
        acl = optional_labels(body.get("acl"))
    except ValueError as exc:
        raise InvalidMessage(
            f"'acl': {exc}", doc_id=doc_id, hint='e.g. "acl": ["hr", "alice"]'
        ) from None
    return DocumentMessage(
        doc_id=doc_id,
        op=UPSERT,
        record=record,
        text=text,
        uri=uri,
        title=_optional_str(body, "title", doc_id) or None,
        content_type=_optional_str(body, "content_type", doc_id),
        metadata=metadata,
        updated_at=_epoch(body.get("updated_at"), doc_id),
        acl=acl,
    )


def encode_message(
    doc_id: str,
    *,
    text: str | None = None,
    uri: str | None = None,
    title: str | None = None,
    content_type: str | None = None,
    metadata: dict[str, Any] | None = None,
    updated_at: str | float | None = None,
    delete: bool = False,
    acl: list[str] | None = None,
) -> tuple[bytes, bytes | None]:
    """(key, value) of a message; a delete is a tombstone (null value).

    >>> encode_message("a", text="Hi")
    (b'a', b'{"schema_version": 1, "op": "upsert", "text": "Hi"}')
    """
    if not delete and (text is None) == (uri is None):
        raise ValueError("give exactly one of text and uri")
    if delete:
        return doc_id.encode("utf-8"), None
    body: dict[str, Any] = {"schema_version": MESSAGE_SCHEMA_VERSION, "op": UPSERT}
    body.update({"text": text} if text is not None else {"uri": uri})
    optional = {
        "title": title,
        "content_type": content_type,
        "metadata": metadata,
        "updated_at": updated_at,
    }
    body.update({k: v for k, v in optional.items() if v})
    if acl is not None:  # [] is meaningful: admin only
        body["acl"] = list(acl)
    return doc_id.encode("utf-8"), json.dumps(body, ensure_ascii=False).encode("utf-8")


def supersedes(newer: KafkaRecord, older: KafkaRecord) -> bool:
    """Whether ``newer`` is the later change. Offsets order a partition; across partitions
    (a key that moved after a partition change) the record timestamp decides."""
    if newer.topic == older.topic and newer.partition == older.partition:
        return newer.offset > older.offset
    return (newer.timestamp_ms, newer.topic, newer.partition, newer.offset) > (
        older.timestamp_ms,
        older.topic,
        older.partition,
        older.offset,
    )


def last_per_document(messages: list[DocumentMessage]) -> list[DocumentMessage]:
    """The last message of each document (per-key last-message-wins), in offset order."""
    latest: dict[str, DocumentMessage] = {}
    for msg in messages:
        seen = latest.get(msg.doc_id)
        if seen is None or supersedes(msg.record, seen.record):
            latest[msg.doc_id] = msg
    return sorted(
        latest.values(), key=lambda m: (m.record.topic, m.record.partition, m.record.offset)
    )


# ------------------------------------------------------------------ the stream's ledger

_TS = pa.timestamp("us", tz="UTC")
OFFSET_TYPE = pa.struct(
    [
        pa.field("topic", pa.string()),
        pa.field("partition", pa.int32()),
        pa.field("next_offset", pa.int64()),
    ]
)

# One row per committed micro-batch, appended right after the chunks commit and before
# the offsets are committed to Kafka. ``offsets`` holds, for every partition the run
# reads, the next offset to consume: the stream resumes from the larger of this and the
# consumer group's committed offset (see docs/STREAMING.md).
STREAM_BATCHES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("table_name", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("batch_seq", pa.int64(), nullable=False),
        pa.field("committed_at", _TS, nullable=False),
        pa.field("table_version", pa.int64()),
        pa.field("messages", pa.int64()),
        pa.field("docs_added", pa.int64()),
        pa.field("docs_updated", pa.int64()),
        pa.field("docs_deleted", pa.int64()),
        pa.field("docs_skipped", pa.int64()),
        pa.field("docs_failed", pa.int64()),
        pa.field("chunks_embedded", pa.int64()),
        pa.field("chunks_reused", pa.int64()),
        pa.field("chunks_written", pa.int64()),
        pa.field("lag", pa.int64()),  # records left in the log after this batch
        pa.field("duration_ms", pa.int64()),
        pa.field("freshness_ms", pa.list_(pa.int64())),  # commit time - record timestamp
        pa.field("offsets", pa.list_(OFFSET_TYPE)),
        pa.field("lease_token", pa.int64()),  # the commit lease's fencing token (null: none)
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)
