"""Embed: ChunkedDocument -> EmbeddedDocument with sentence-transformers, as a Beam step.

The model loads once per worker process (``get_embedder``). Documents are grouped into
batches so one ``encode`` call sees many chunks; stored vectors are reused
(``freshindex.transforms.vectors``). The step and its per-document isolation are
``freshindex.transforms.process.embed``, the one the stream's micro-batches take too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import apache_beam as beam

from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.schemas.records import ChunkedDocument, EmbeddedDocument
from freshindex.transforms import process
from freshindex.transforms.plan import TableRef
from freshindex.transforms.vectors import VectorReuse, embed_documents

__all__ = ["ERRORS_TAG", "Embed", "VectorReuse", "embed_documents"]

log = logging.getLogger(__name__)
ERRORS_TAG = "errors"


class _EmbedFn(beam.DoFn):
    def __init__(self, cfg: EmbeddingConfig, table: TableRef):
        self._cfg, self._table = cfg, table
        self._embedded = beam.metrics.Metrics.counter("freshindex", "chunks_embedded")

    def setup(self) -> None:
        self._reuse = VectorReuse(self._table, self._cfg.model)
        self._count, self._started, self._last_log = 0, time.monotonic(), time.monotonic()

    def process(self, batch: list[ChunkedDocument]) -> Iterator[EmbeddedDocument]:
        embedder = get_embedder(self._cfg)
        results, errors = process.embed(batch, embedder, self._reuse)
        for error in errors:
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, error)
        for result in results:
            self._count += result.embedded
            self._embedded.inc(result.embedded)
            yield result
        now = time.monotonic()
        if now - self._last_log > 10:
            rate = self._count / max(now - self._started, 1e-9)
            log.info("embed: %d chunks embedded so far (%.1f chunks/s)", self._count, rate)
            self._last_log = now


class Embed(beam.PTransform):
    """ChunkedDocument -> EmbeddedDocument (``.embedded``), with ``.errors``."""

    def __init__(self, cfg: EmbeddingConfig, table: TableRef, docs_per_batch: int = 64):
        super().__init__()
        self._cfg, self._table, self._docs_per_batch = cfg, table, docs_per_batch

    def expand(self, chunked):
        return (
            chunked
            | "BatchDocuments"
            >> beam.BatchElements(
                min_batch_size=self._docs_per_batch, max_batch_size=self._docs_per_batch
            )
            | "EncodeChunks"
            >> beam.ParDo(_EmbedFn(self._cfg, self._table)).with_outputs(
                ERRORS_TAG, main="embedded"
            )
        )
