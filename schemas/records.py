"""The records that flow between pipeline stages. A stage reads and writes these and nothing looser.

Flow: ``SourceRef`` (found in the source) -> ``Document`` (parsed) -> ``ChunkedDocument``
-> ``EmbeddedDocument`` -> rows of the chunks table. Anything that fails on the way
becomes an ``ErrorRecord``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SourceRef:
    """A document as found in the source, before parsing.

    ``doc_id`` is stable: the path relative to the source root, the record ``_id`` of a
    JSONL corpus, or the Kafka key. ``inline_text`` is set for records that carry their
    text (JSONL, Kafka); files are re-read from ``source_uri`` when they need parsing.
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

    @classmethod
    def from_exception(
        cls, stage: str, exc: BaseException, *, doc_id: str | None, source_uri: str | None, **kw
    ) -> ErrorRecord:
        message = str(exc).strip() or repr(exc)
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
