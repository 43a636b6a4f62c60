"""Embed: ChunkedDocument -> EmbeddedDocument with sentence-transformers.

The model loads once per worker process (``get_embedder``). Documents are grouped into
batches so one ``encode`` call sees many chunks. A chunk whose text the table already
holds a vector for (same model, same text hash) is not embedded again, even inside a
changed document: the stored vector is reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import apache_beam as beam
import numpy as np

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.schemas.records import ChunkedDocument, EmbeddedDocument, ErrorRecord
from freshindex.transforms.plan import TableRef

log = logging.getLogger(__name__)
ERRORS_TAG = "errors"


class VectorReuse:
    """Looks up stored vectors by text hash in the table version a run started from."""

    def __init__(self, ref: TableRef | None, model: str):
        self._ref, self._model, self._table = ref, model, None

    def lookup(self, text_hashes: list[str]) -> dict[str, np.ndarray]:
        if self._ref is None or self._ref.version is None:
            return {}
        if self._table is None:
            table = store.open_chunks(store.connect(self._ref.db_uri), self._ref.table)
            table.checkout(self._ref.version)
            self._table = table
        return store.lookup_vectors(self._table, text_hashes, self._model)


def embed_documents(
    batch: list[ChunkedDocument], embedder, reuse: VectorReuse
) -> list[EmbeddedDocument]:
    """Vectors for every chunk of ``batch``: stored ones where they exist, else encoded."""
    hashes = [c.text_hash for d in batch for c in d.chunks]
    known = reuse.lookup(hashes)
    missing: dict[str, str] = {}
    for doc in batch:
        for c in doc.chunks:
            if c.text_hash not in known:
                missing.setdefault(c.text_hash, c.text)
    fresh: dict[str, np.ndarray] = {}
    if missing:
        encoded = embedder.encode(list(missing.values()))
        fresh = dict(zip(missing.keys(), encoded))
    out = []
    for doc in batch:
        vectors = np.stack([fresh.get(c.text_hash, known.get(c.text_hash)) for c in doc.chunks])
        n_reused = sum(1 for c in doc.chunks if c.text_hash in known)
        out.append(
            EmbeddedDocument(
                document=doc.document,
                chunks=doc.chunks,
                vectors=vectors.astype(np.float32),
                embedded=len(doc.chunks) - n_reused,
                reused=n_reused,
            )
        )
    return out


class _EmbedFn(beam.DoFn):
    def __init__(self, cfg: EmbeddingConfig, table: TableRef):
        self._cfg, self._table = cfg, table
        self._embedded = beam.metrics.Metrics.counter("freshindex", "chunks_embedded")

    def setup(self) -> None:
        self._reuse = VectorReuse(self._table, self._cfg.model)
        self._count, self._started, self._last_log = 0, time.monotonic(), time.monotonic()

    def process(self, batch: list[ChunkedDocument]) -> Iterator[EmbeddedDocument]:
        embedder = get_embedder(self._cfg)
        try:
            results = embed_documents(batch, embedder, self._reuse)
        except Exception:
            # isolate the bad document: embed one by one, record the ones that fail
            results = []
            for doc in batch:
                try:
                    results.extend(embed_documents([doc], embedder, self._reuse))
                except Exception as exc:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS_TAG,
                        ErrorRecord.from_exception(
                            "embed",
                            exc,
                            doc_id=doc.document.doc_id,
                            source_uri=doc.document.source_uri,
                        ),
                    )
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
