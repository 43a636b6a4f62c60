"""The embed step with ``overlap`` (encoding on a background thread) gives exactly what the
synchronous step gives: every document once, the same vectors, failures isolated."""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that

from freshindex.config import ChunkingConfig, EmbeddingConfig
from freshindex.embedding import FakeHashEmbedder
from freshindex.schemas.records import Document, Element
from freshindex.transforms import process
from freshindex.transforms.embed import Embed
from freshindex.transforms.plan import TableRef

FAKE = EmbeddingConfig(model="fake-hash")


def _chunked(n: int):
    embedder, cfg = FakeHashEmbedder(), ChunkingConfig(max_tokens=24, overlap_tokens=4)
    docs = []
    for i in range(n):
        words = " ".join(f"word{(i * 7 + j) % 97}" for j in range(5 + i % 40))
        doc = Document(
            doc_id=f"d{i:03d}",
            source_uri=f"mem://d{i:03d}",
            content_hash=str(i),
            content_type="text/plain",
            title=None,
            modified_at=None,
            elements=(Element(text=words, kind="NarrativeText"),),
        )
        docs.append(process.chunk(doc, cfg, embedder))
    return docs


def _run(docs, overlap: bool, table: TableRef, check_embedded, check_errors) -> None:
    with BeamPipeline() as p:
        out = p | beam.Create(docs, reshuffle=False) | Embed(FAKE, table, 8, overlap=overlap)
        assert_that(out.embedded, check_embedded, label="Embedded")
        assert_that(out.errors, check_errors, label="Errors")


def test_overlapped_embedding_gives_every_document_with_its_vectors(tmp_path):
    docs = _chunked(60)
    table = TableRef(str(tmp_path / "db"), "docs", None)

    def check_embedded(embedded):
        found = {e.document.doc_id: e for e in embedded}
        assert len(embedded) == len(found)  # every document once
        assert sorted(found) == [d.document.doc_id for d in docs]
        expected = FakeHashEmbedder()
        for doc in docs:
            got = found[doc.document.doc_id]
            assert got.chunks == doc.chunks and got.embedded == len(doc.chunks)
            np.testing.assert_allclose(got.vectors, expected.encode([c.text for c in doc.chunks]))

    def check_errors(errors):
        assert list(errors) == []

    _run(docs, True, table, check_embedded, check_errors)


def test_overlapped_embedding_isolates_a_failing_document(tmp_path, monkeypatch):
    real = process.embed_documents

    def failing(batch, *args, **kw):
        if any(d.document.doc_id == "d013" for d in batch):
            raise FloatingPointError("embedder bug")
        return real(batch, *args, **kw)

    monkeypatch.setattr(process, "embed_documents", failing)
    docs = _chunked(30)

    def check_embedded(embedded):
        kept = sorted(e.document.doc_id for e in embedded)
        assert kept == [d.document.doc_id for d in docs if d.document.doc_id != "d013"]

    def check_errors(errors):
        assert [(e.doc_id, e.stage, e.error_class) for e in errors] == [
            ("d013", "embed", "FloatingPointError")
        ]

    _run(docs, True, TableRef(str(tmp_path / "db"), "docs", None), check_embedded, check_errors)
