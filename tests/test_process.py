"""The one document-processing path (``freshindex.transforms.process``): the batch
pipeline's steps and the stream's micro-batch call the same functions, so a document that
fails at a step gives the same error row in both, and the others go on."""

from __future__ import annotations

import dataclasses
import json

import pytest

from freshindex import store
from freshindex.config import ParsingConfig
from freshindex.errors import EmptyDocument
from freshindex.pipelines.batch import run_ingest
from freshindex.schemas.records import ErrorRecord, SourceRef
from freshindex.transforms import process
from tests.conftest import table_rows
from tests.test_stream_batch import Topic, indexer_for

RECORDS = {
    "good": "A document that every step takes.",
    "bad-parse": "The parser fails on this one.",
    "bad-chunk": "The chunker fails on this one.",
    "bad-embed": "The embedder fails on this one.",
    "bad-rows": "Its rows cannot be built.",
}


@pytest.fixture
def faulty_steps(monkeypatch):
    """Each step of the shared path fails for one document, as a bug would."""
    real_parse, real_chunk = process.parse_document, process.chunk_document
    real_embed, real_rows = process.embed_documents, process.rows_for

    def parse_document(ref, *args, **kw):
        if ref.doc_id == "bad-parse":
            raise RuntimeError("parser bug")
        return real_parse(ref, *args, **kw)

    def chunk_document(doc, *args, **kw):
        if doc.doc_id == "bad-chunk":
            raise ValueError("chunker bug")
        return real_chunk(doc, *args, **kw)

    def embed_documents(batch, *args, **kw):
        if any(d.document.doc_id == "bad-embed" for d in batch):
            raise FloatingPointError("embedder bug")
        return real_embed(batch, *args, **kw)

    def rows_for(docs, **kw):
        if any(d.document.doc_id == "bad-rows" for d in docs):
            raise OverflowError("row bug")
        return real_rows(docs, **kw)

    monkeypatch.setattr(process, "rows_for", rows_for)
    monkeypatch.setattr(process, "parse_document", parse_document)
    monkeypatch.setattr(process, "chunk_document", chunk_document)
    monkeypatch.setattr(process, "embed_documents", embed_documents)


def _essence(error: dict) -> tuple:
    """What an error row says about the document, wherever it came from."""
    return (error["stage"], error["error_class"], error["message"], error["permanent"])


def test_a_failing_step_gives_the_same_error_in_batch_and_stream(fake_cfg, tmp_path, faulty_steps):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"_id": d, "text": t}) + "\n" for d, t in RECORDS.items()))
    batch_cfg = dataclasses.replace(fake_cfg, db=str(tmp_path / "batch"))
    row = run_ingest(batch_cfg, str(jsonl), [])
    batch_errors = store.read_errors(store.connect(batch_cfg.db), run_id=row["run_id"])

    topic = Topic(partitions=1)
    for doc_id, text in RECORDS.items():
        topic.send(doc_id, text=text)
    indexer, progress = indexer_for(fake_cfg, topic)
    stats = indexer.index(topic.polls(), progress)
    stream_errors = store.read_errors(store.connect(fake_cfg.db), run_id="r1")

    expected = {
        "bad-parse": ("parse", "RuntimeError", "parser bug", False),
        "bad-chunk": ("chunk", "ValueError", "chunker bug", False),
        "bad-embed": ("embed", "FloatingPointError", "embedder bug", False),
        "bad-rows": ("write", "OverflowError", "row bug", False),
    }
    assert {e["doc_id"]: _essence(e) for e in batch_errors} == expected
    assert {e["doc_id"]: _essence(e) for e in stream_errors} == expected
    assert (row["docs_added"], stats.docs_added, stats.docs_failed) == (1, 1, 4)
    assert row["docs_failed"] == 4 and row["status"] == "failed_threshold"  # 4 of 5 failed
    assert {r["doc_id"] for r in table_rows(batch_cfg.db)} == {"good"}
    # the stream locates its errors at their messages
    assert all(e["topic"] == "docs" and e["offset"] is not None for e in stream_errors)


def test_isolate_returns_the_error_of_what_the_step_raised():
    def step(x):
        raise EmptyDocument("nothing here", doc_id="d", hint="add text")

    error = process.isolate("parse", step, 1, doc_id="d", source_uri="s", topic="t")
    assert isinstance(error, ErrorRecord)
    assert (error.stage, error.error_class, error.doc_id, error.topic) == (
        "parse",
        "EmptyDocument",
        "d",
        "t",
    )
    assert error.permanent  # a DocumentError about the bytes: remembered as known bad
    assert process.isolate("chunk", lambda x: x + 1, 1, doc_id="d", source_uri="s") == 2


def test_known_bad_documents_are_skipped_before_they_are_read():
    ref = SourceRef("a.pdf", "/nowhere/a.pdf", "h1", "application/pdf")
    skipped = process.parse(
        ref, ParsingConfig(), fingerprint="fp", known_bad={("a.pdf", "h1"): "corrupt before"}
    )
    assert (skipped.error_class, skipped.message, skipped.fingerprint) == (
        "KnownBadSkipped",
        "corrupt before",
        "fp",
    )
    # another content hash is parsed (and here, not found: an error of its own)
    changed = process.parse(
        dataclasses.replace(ref, content_hash="h2"),
        ParsingConfig(),
        fingerprint="fp",
        known_bad={("a.pdf", "h1"): "corrupt before"},
    )
    assert changed.error_class != "KnownBadSkipped" and changed.stage == "parse"
