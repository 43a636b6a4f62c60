"""The records that flow between pipeline stages. A stage reads and writes these and nothing looser.

Flow: ``SourceRef`` (found in the source) -> ``Document`` (parsed) -> ``ChunkedDocument``
-> ``EmbeddedDocument`` -> rows of the chunks table. Anything that fails on the way
becomes an ``ErrorRecord``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

# Caps on the free-form ``metadata`` object a source record (JSONL line, Kafka message)
# carries: it is stored beside every chunk and returned by search, so a hostile producer
# must not be able to make it deep enough to break a JSON encoder or large enough to bloat
# the table.
MAX_METADATA_DEPTH = 8  # nested objects/arrays, the metadata object itself counting as 1
MAX_METADATA_BYTES = 16 * 1024  # its compact JSON encoding (UTF-8)

# error_class of the errors row a batch run records for a document it did not parse because
# the same bytes failed permanently under the same settings before (``--retry-failed``).
KNOWN_BAD = "KnownBadSkipped"


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def check_metadata(obj: Any) -> None:
    """Raise ValueError when ``obj`` nests deeper than MAX_METADATA_DEPTH or encodes to more
    than MAX_METADATA_BYTES of compact JSON. Iterative, so no input can exhaust the stack.
    The one check of source metadata: JSONL records and Kafka messages alike.

    >>> check_metadata({"team": "search", "tags": ["a", "b"]})
    """
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list | tuple):
            if depth > MAX_METADATA_DEPTH:
                raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"metadata is not valid Unicode: {exc.reason}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata is not JSON-encodable: {exc}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"metadata is {size:,} bytes of JSON, over the limit of {MAX_METADATA_BYTES:,}"
        )


@dataclass(frozen=True)
class SourceRef:
    """A document as found in the source, before parsing.

    ``doc_id`` is stable: the path relative to the source root, the record ``_id`` of a
    JSONL corpus, or the Kafka key. ``inline_text`` is set for records that carry their
    text (JSONL, Kafka); files are re-read from ``source_uri`` when they need parsing.
    ``source_version`` is what the source's listing says about the file (size and
    modification time), so an unchanged file is recognised without reading it; None where
    the source has no such metadata (records, messages). A file as listed but not read yet
    has an empty ``content_hash`` (``freshindex.transforms.read.ListSource``).
    ``record_offset`` is the byte offset of a JSONL record's line in its file: the batch
    plan carries such a record without its text (so the plan's join does not hold the
    corpus), and ``freshindex.transforms.read.LoadRecords`` reads it again to parse it.
    """

    doc_id: str
    source_uri: str
    content_hash: str
    content_type: str
    size: int = 0
    modified_at: float | None = None
    title: str | None = None
    inline_text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source_version: str | None = None
    record_offset: int | None = None
    # access labels (freshindex.schemas.access): given by the record or message, else set
    # from the source's rules before planning (freshindex.transforms.access); None: unset
    acl: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Element:
    """One structural piece of a parsed document (paragraph, title, list item, table...)."""

    text: str
    kind: str
    section: str | None = None
    page_number: int | None = None


@dataclass(frozen=True)
class Document:
    doc_id: str
    source_uri: str
    content_hash: str
    content_type: str
    title: str | None
    modified_at: float | None
    elements: tuple[Element, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    source_version: str | None = None  # SourceRef.source_version of the bytes parsed
    acl: tuple[str, ...] | None = None  # SourceRef.acl: who may read it


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    doc_id: str
    chunk_index: int
    text: str
    text_hash: str
    token_count: int
    section: str | None = None
    page_number: int | None = None


@dataclass(frozen=True)
class ChunkedDocument:
    document: Document
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class EmbeddedDocument:
    """A document's chunks with their vectors; ``reused`` vectors came from the table."""

    document: Document
    chunks: tuple[Chunk, ...]
    vectors: tuple[tuple[float, ...], ...] | Any  # numpy array (n, dim) in practice
    embedded: int
    reused: int


@dataclass(frozen=True)
class ErrorRecord:
    """A bad element, kept as data: which stage, why, and where it came from."""

    stage: str
    error_class: str
    message: str
    doc_id: str | None = None
    source_uri: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    # Set by the parse step of a batch run: a ``permanent`` failure of these bytes
    # (``content_hash``) under these settings (``fingerprint``) is not parsed again.
    content_hash: str | None = None
    fingerprint: str | None = None
    permanent: bool = False

    @classmethod
    def from_exception(
        cls, stage: str, exc: BaseException, *, doc_id: str | None, source_uri: str | None, **kw
    ) -> ErrorRecord:
        message = str(exc).strip() or repr(exc)
        kw.setdefault("permanent", bool(getattr(exc, "permanent", False)))
        return cls(
            stage=getattr(exc, "stage", None) or stage,
            error_class=type(exc).__name__,
            message=message[:2000],
            doc_id=doc_id,
            source_uri=source_uri,
            **kw,
        )


def chunk_id_for(doc_id: str, text: str, occurrence: int) -> str:
    """Chunk identity: the document and the chunk's content (never a random uuid).

    ``occurrence`` separates identical texts inside one document (a repeated footer).
    """
    return sha256_hex(f"{doc_id}\x00{occurrence}\x00{text}")[:32]
