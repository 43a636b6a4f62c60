"""Chunk: Document -> ChunkedDocument, as a Beam step (``ChunkDocuments``).

How a document is cut lives in ``freshindex.transforms.chunking``; the step, with its
per-document error isolation, in ``freshindex.transforms.process`` (the path the stream's
micro-batches take too).
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam

from freshindex.config import ChunkingConfig, EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.schemas.records import ChunkedDocument, Document, ErrorRecord
from freshindex.transforms import process
from freshindex.transforms.chunking import chunk_document

__all__ = ["ERRORS_TAG", "ChunkDocuments", "chunk_document"]

ERRORS_TAG = "errors"


class _ChunkFn(beam.DoFn):
    def __init__(self, chunking: ChunkingConfig, embedding: EmbeddingConfig):
        self._chunking, self._embedding = chunking, embedding

    def process(self, doc: Document) -> Iterator[ChunkedDocument]:
        result = process.chunk(doc, self._chunking, get_embedder(self._embedding))
        if isinstance(result, ErrorRecord):
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, result)
        else:
            yield result


class ChunkDocuments(beam.PTransform):
    """Document -> ChunkedDocument (``.chunked``), with ``.errors``."""

    def __init__(self, chunking: ChunkingConfig, embedding: EmbeddingConfig):
        super().__init__()
        self._chunking, self._embedding = chunking, embedding

    def expand(self, docs):
        return docs | "SplitIntoChunks" >> beam.ParDo(
            _ChunkFn(self._chunking, self._embedding)
        ).with_outputs(ERRORS_TAG, main="chunked")
