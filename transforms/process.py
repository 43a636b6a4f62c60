"""The one document-processing path: SourceRef (+ bytes) -> Document -> ChunkedDocument ->
EmbeddedDocument -> rows, each step isolated per document; Beam-free.

The batch pipeline's DoFns (``parse.py``, ``chunk.py``, ``embed.py``) and the stream's
micro-batch (``freshindex.pipelines.stream.microbatch``) both call these functions, so each
step and its error isolation exist once. A step returns its result, or the ``ErrorRecord``
of the document that failed (``isolate``): whatever one document raises is recorded with
it and the others go on. Which documents to process at all is ``plan.decide``; where the
errors go (a Beam output, a micro-batch's list) and the metrics are the caller's.

Example::

    doc = process.parse(ref, cfg.parsing)
    chunked = doc if isinstance(doc, ErrorRecord) else process.chunk(doc, cfg.chunking, embedder)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from freshindex.config import ChunkingConfig, ParsingConfig
from freshindex.errors import DocumentError, SourceChanged
from freshindex.schemas.records import (
    KNOWN_BAD,
    ChunkedDocument,
    Document,
    EmbeddedDocument,
    ErrorRecord,
    SourceRef,
    sha256_hex,
)
from freshindex.transforms.chunking import chunk_document
from freshindex.transforms.parse_worker import IsolatedWorker
from freshindex.transforms.parsing import max_file_bytes, parse_document, read_bytes
from freshindex.transforms.rows import rows_for
from freshindex.transforms.vectors import VectorReuse, embed_documents

log = logging.getLogger(__name__)

T = TypeVar("T")


def isolate(
    stage: str,
    step: Callable[..., T],
    *args: Any,
    doc_id: str | None,
    source_uri: str | None,
    **error_fields: Any,
) -> T | ErrorRecord:
    """``step(*args)``, or the ErrorRecord of what it raised: every exception of one
    document becomes its error row, never a lost record and never a failed batch.

    ``permanent``: only a DocumentError says the bytes themselves are bad; anything else
    (an I/O error, a bug) is retried on the next run.
    """
    try:
        return step(*args)
    except Exception as exc:
        log.warning("%s failed for %s: %s", stage, doc_id, exc)
        error_fields.setdefault("permanent", isinstance(exc, DocumentError) and exc.permanent)
        return ErrorRecord.from_exception(
            stage, exc, doc_id=doc_id, source_uri=source_uri, **error_fields
        )


def _read_unchanged(ref: SourceRef, cfg: ParsingConfig) -> bytes:
    """The bytes of a listed file, refused if they are no longer the ones it was planned with."""
    data = read_bytes(ref.source_uri, max_file_bytes(cfg))
    if sha256_hex(data) != ref.content_hash:
        # replaced (or swapped for a link) since it was listed and hashed: what was planned
        # is not what would be indexed; the next run sees it anew
        raise SourceChanged(
            f"{ref.doc_id} changed between listing and parsing",
            doc_id=ref.doc_id,
            hint="it is indexed on the next run",
        )
    return data


def _parse(ref: SourceRef, data: bytes | None, cfg: ParsingConfig, worker) -> Document:
    if data is None and ref.inline_text is None:
        data = _read_unchanged(ref, cfg)
    return parse_document(ref, data, cfg, worker)


def parse(
    ref: SourceRef,
    cfg: ParsingConfig,
    *,
    data: bytes | None = None,
    worker: IsolatedWorker | None = None,
    fingerprint: str | None = None,
    known_bad: Mapping[tuple[str, str], str] | None = None,
) -> Document | ErrorRecord:
    """SourceRef -> Document, or its ``parse`` ErrorRecord.

    ``data``: the bytes, where the caller read them (a stream's ``uri`` message); else a
    file is read here and must still hash to ``ref.content_hash``. ``worker``: the parse
    worker to use (default: one lent per call). With ``fingerprint``, a file's failure is
    recorded with its content hash and that fingerprint, so ``known_bad`` (those records,
    ``(doc_id, content_hash) -> reason``) skips it next time as a ``KnownBadSkipped`` row.
    """
    remembered = fingerprint is not None and ref.inline_text is None
    reason = (known_bad or {}).get((ref.doc_id, ref.content_hash))
    if reason is not None:
        return ErrorRecord(
            stage="parse",
            error_class=KNOWN_BAD,
            message=reason,
            doc_id=ref.doc_id,
            source_uri=ref.source_uri,
            content_hash=ref.content_hash,
            fingerprint=fingerprint,
            permanent=True,
        )
    return isolate(
        "parse",
        _parse,
        ref,
        data,
        cfg,
        worker,
        doc_id=ref.doc_id,
        source_uri=ref.source_uri,
        content_hash=ref.content_hash if remembered else None,
        fingerprint=fingerprint if remembered else None,
    )


def _chunk(doc: Document, cfg: ChunkingConfig, embedder) -> ChunkedDocument:
    return ChunkedDocument(document=doc, chunks=chunk_document(doc, cfg, embedder))


def chunk(doc: Document, cfg: ChunkingConfig, embedder) -> ChunkedDocument | ErrorRecord:
    """Document -> ChunkedDocument, or its ``chunk`` ErrorRecord."""
    return isolate(
        "chunk", _chunk, doc, cfg, embedder, doc_id=doc.doc_id, source_uri=doc.source_uri
    )


def _batch_or_each(
    stage: str, step: Callable[[list[EmbeddedDocument]], T], docs: list, doc_of
) -> tuple[list[tuple[Any, T]], list[ErrorRecord]]:
    """``step`` over the whole batch in one call; if that fails, over each item alone, so
    only the bad one becomes a ``stage`` ErrorRecord. Returns ([(items, result)], errors)."""
    try:
        return [(docs, step(docs))], []
    except Exception:
        pass  # isolate the bad item below
    done, errors = [], []
    for item in docs:
        document = doc_of(item)
        result = isolate(
            stage, step, [item], doc_id=document.doc_id, source_uri=document.source_uri
        )
        if isinstance(result, ErrorRecord):
            errors.append(result)
        else:
            done.append(([item], result))
    return done, errors


def embed(
    batch: Sequence[ChunkedDocument], embedder, reuse: VectorReuse
) -> tuple[list[EmbeddedDocument], list[ErrorRecord]]:
    """Vectors for a batch of documents in one ``encode`` call; if the batch fails, each
    document is embedded alone, so only the bad one becomes an ``embed`` ErrorRecord."""
    batch = list(batch)
    if not batch:
        return [], []
    done, errors = _batch_or_each(
        "embed", lambda docs: embed_documents(docs, embedder, reuse), batch, lambda d: d.document
    )
    return [e for _, result in done for e in result], errors


def rows(
    docs: Sequence[EmbeddedDocument], **row_settings: Any
) -> tuple[pa.Table | None, list[EmbeddedDocument], list[ErrorRecord]]:
    """(Arrow rows of the chunks table, the documents they hold, errors): a document whose
    rows cannot be built is a ``write`` ErrorRecord and the others are written.
    ``row_settings``: the keyword arguments of ``freshindex.transforms.rows.rows_for``."""
    docs = list(docs)
    if not docs:
        return None, [], []
    done, errors = _batch_or_each(
        "write", lambda part: rows_for(part, **row_settings), docs, lambda d: d.document
    )
    tables = [table for _, table in done]
    kept = [d for part, _ in done for d in part]
    return (pa.concat_tables(tables) if tables else None), kept, errors


class DocumentProcessor:
    """The whole path for a micro-batch: (SourceRef, bytes) pairs -> rows, with the errors
    of the documents that failed at any step. ``embedder`` is loaded once by the caller."""

    def __init__(self, parsing: ParsingConfig, chunking: ChunkingConfig, embedder):
        self._parsing, self._chunking, self._embedder = parsing, chunking, embedder

    def process(
        self,
        items: Sequence[tuple[SourceRef, bytes | None]],
        reuse: VectorReuse,
        **row_settings: Any,
    ) -> tuple[pa.Table | None, list[EmbeddedDocument], list[ErrorRecord]]:
        """Parse, chunk, embed and build the rows of ``items``; ``row_settings`` as in
        ``rows`` (the vector width is the embedder's)."""
        errors: list[ErrorRecord] = []
        chunked: list[ChunkedDocument] = []
        for ref, data in items:
            doc = parse(ref, self._parsing, data=data)
            if not isinstance(doc, ErrorRecord):
                doc = chunk(doc, self._chunking, self._embedder)
            (errors if isinstance(doc, ErrorRecord) else chunked).append(doc)
        embedded, failed = embed(chunked, self._embedder, reuse)
        errors.extend(failed)
        table, kept, failed = rows(embedded, dim=self._embedder.dim, **row_settings)
        errors.extend(failed)
        return table, kept, errors
