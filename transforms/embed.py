"""Embed: ChunkedDocument -> EmbeddedDocument with sentence-transformers, as a Beam step.

The model loads once per worker process (``get_embedder``). Documents are grouped into
batches so one ``encode`` call sees many chunks; stored vectors are reused
(``freshindex.transforms.vectors``). The step and its per-document isolation are
``freshindex.transforms.process.embed``, the one the stream's micro-batches take too.

With ``overlap`` (``ingest.embed_overlap``), a batch is encoded on a background thread while
the step returns to the runner, so the parse and chunk of the next batch run beside the
encoder (torch releases the GIL): at most one batch is encoded and one waits, so memory
stays bounded. Results leave in the order the batches came (docs/ARCHITECTURE.md, "Both
cores busy").
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.schemas.records import ChunkedDocument, EmbeddedDocument, ErrorRecord
from freshindex.transforms import process
from freshindex.transforms.plan import TableRef
from freshindex.transforms.vectors import VectorReuse, embed_documents

__all__ = ["ERRORS_TAG", "Embed", "VectorReuse", "embed_documents"]

log = logging.getLogger(__name__)
ERRORS_TAG = "errors"

Embedded = tuple[list[EmbeddedDocument], list[ErrorRecord]]


class _EmbedFn(beam.DoFn):
    def __init__(self, cfg: EmbeddingConfig, table: TableRef, overlap: bool = False):
        self._cfg, self._table, self._overlap = cfg, table, overlap
        self._embedded = beam.metrics.Metrics.counter("freshindex", "chunks_embedded")

    def setup(self) -> None:
        self._reuse = VectorReuse(self._table, self._cfg.model)
        self._count, self._started, self._last_log = 0, time.monotonic(), time.monotonic()
        # one thread: batches are encoded one at a time, in order (VectorReuse's table
        # handle and the embedder are used from this thread only)
        self._encoder = (
            ThreadPoolExecutor(1, thread_name_prefix="freshindex-embed") if self._overlap else None
        )
        self._pending: collections.deque[Future[Embedded]] = collections.deque()

    def _embed(self, batch: list[ChunkedDocument]) -> Embedded:
        return process.embed(batch, get_embedder(self._cfg), self._reuse)

    def start_bundle(self) -> None:
        self._pending = collections.deque()

    def process(self, batch: list[ChunkedDocument]) -> Iterator:
        if self._encoder is None:
            yield from self._outputs(self._embed(batch))
            return
        self._pending.append(self._encoder.submit(self._embed, batch))
        # bounded: wait for the oldest once one batch is encoding and another waits
        while len(self._pending) > 1 or (self._pending and self._pending[0].done()):
            yield from self._outputs(self._pending.popleft().result())

    def finish_bundle(self) -> Iterator:
        while self._pending:
            for out in self._outputs(self._pending.popleft().result()):
                if isinstance(out, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(out.tag, _in_global_window(out.value))
                else:
                    yield _in_global_window(out)

    def teardown(self) -> None:
        if self._encoder is not None:
            self._encoder.shutdown(wait=True, cancel_futures=True)

    def _outputs(self, embedded: Embedded) -> Iterator:
        results, errors = embedded
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


def _in_global_window(value) -> WindowedValue:
    """An output of ``finish_bundle``, which has no input element to take a window from:
    the batch pipeline's one global window."""
    return WindowedValue(value, MIN_TIMESTAMP, [GlobalWindow()])


class Embed(beam.PTransform):
    """ChunkedDocument -> EmbeddedDocument (``.embedded``), with ``.errors``.

    ``overlap``: encode on a background thread while the next batch is parsed and chunked.
    """

    def __init__(
        self,
        cfg: EmbeddingConfig,
        table: TableRef,
        docs_per_batch: int = 64,
        overlap: bool = False,
    ):
        super().__init__()
        self._cfg, self._table, self._docs_per_batch = cfg, table, docs_per_batch
        self._overlap = overlap

    def expand(self, chunked):
        return (
            chunked
            | "BatchDocuments"
            >> beam.BatchElements(
                min_batch_size=self._docs_per_batch, max_batch_size=self._docs_per_batch
            )
            | "EncodeChunks"
            >> beam.ParDo(_EmbedFn(self._cfg, self._table, self._overlap)).with_outputs(
                ERRORS_TAG, main="embedded"
            )
        )
