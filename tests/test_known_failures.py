"""The failure memory in the errors table: what is remembered, what is not, and old tables.

Also the caps on a JSONL record's ``metadata`` (the read step's share of hostile input).
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pytest

from freshindex import store
from freshindex.config import Config, ParsingConfig
from freshindex.errors import CorruptDocument, ParserCrashed, ParseTimeout
from freshindex.schemas.records import (
    KNOWN_BAD,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    ErrorRecord,
    check_metadata,
)
from freshindex.schemas.tables import ERRORS_SCHEMA, ERRORS_TABLE, RUNS_SCHEMA, RUNS_TABLE
from freshindex.transforms.parse import failure_fingerprint
from freshindex.transforms.read import ERRORS_TAG, _RefFromRecord, ref_from_record


def failure(doc_id, exc, *, content_hash="h1", fingerprint="fp", **kw) -> ErrorRecord:
    return ErrorRecord.from_exception(
        "parse",
        exc,
        doc_id=doc_id,
        source_uri=f"/src/{doc_id}",
        content_hash=content_hash,
        fingerprint=fingerprint,
        **kw,
    )


def test_only_permanent_failures_of_this_table_and_fingerprint_are_remembered(db_uri):
    db = store.connect(db_uri)
    store.append_errors(
        db,
        "run1",
        "docs",
        [
            failure("corrupt.pdf", CorruptDocument("damaged")),
            failure("slow.pdf", ParseTimeout("took too long")),  # transient
            failure("crashed.pdf", ParserCrashed("died")),  # transient
            failure("io.pdf", OSError("disk hiccup")),  # not a DocumentError: transient
            failure("other-settings.pdf", CorruptDocument("x"), fingerprint="fp2"),
            failure("no-hash.pdf", CorruptDocument("x"), content_hash=None),  # the stream's
        ],
    )
    store.append_errors(db, "run1", "other_table", [failure("corrupt2.pdf", CorruptDocument("y"))])
    known = store.read_known_failures(db, "docs", "fp")
    assert known == {("corrupt.pdf", "h1"): "CorruptDocument: damaged"}


def test_a_skip_row_keeps_the_original_reason_without_nesting(db_uri):
    db = store.connect(db_uri)
    store.append_errors(db, "run1", "docs", [failure("a.pdf", CorruptDocument("damaged"))])
    reason = store.read_known_failures(db, "docs", "fp")[("a.pdf", "h1")]
    skip = ErrorRecord(
        stage="parse",
        error_class=KNOWN_BAD,
        message=reason,
        doc_id="a.pdf",
        content_hash="h1",
        fingerprint="fp",
        permanent=True,
    )
    store.append_errors(db, "run2", "docs", [skip])
    store.append_errors(db, "run3", "docs", [dataclasses.replace(skip, message=reason)])
    assert store.read_known_failures(db, "docs", "fp") == {("a.pdf", "h1"): reason}


OLD_ERRORS_SCHEMA = pa.schema(
    [f for f in ERRORS_SCHEMA if f.name not in ("content_hash", "fingerprint", "permanent")]
)
OLD_RUNS_SCHEMA = pa.schema([f for f in RUNS_SCHEMA if f.name != "docs_known_bad"])


def test_bookkeeping_tables_of_an_older_version_gain_the_new_columns(db_uri):
    db = store.connect(db_uri)
    old_error = {
        "run_id": "old",
        "table_name": "docs",
        "stage": "parse",
        "error_class": "CorruptDocument",
        "message": "m",
        "occurred_at": store.utcnow(),
    }
    db.create_table(ERRORS_TABLE, pa.Table.from_pylist([old_error], schema=OLD_ERRORS_SCHEMA))
    old_run = {"run_id": "old", "kind": "batch", "table_name": "docs", "status": "succeeded"}
    db.create_table(RUNS_TABLE, pa.Table.from_pylist([old_run], schema=OLD_RUNS_SCHEMA))
    assert store.read_known_failures(db, "docs", "fp") == {}  # no failure memory yet

    store.append_errors(db, "new", "docs", [failure("a.pdf", CorruptDocument("damaged"))])
    store.append_run(db, {**old_run, "run_id": "new", "docs_known_bad": 3})

    assert store.read_known_failures(db, "docs", "fp") == {
        ("a.pdf", "h1"): "CorruptDocument: damaged"
    }
    errors = {r["run_id"]: r for r in store.read_errors(db)}
    assert errors["old"]["permanent"] is None and errors["new"]["permanent"] is True
    runs = {r["run_id"]: r for r in store.read_runs(db)}
    assert runs["old"]["docs_known_bad"] is None and runs["new"]["docs_known_bad"] == 3


def test_the_failure_fingerprint_follows_every_parsing_limit_and_the_run_fingerprint():
    base = Config()
    fingerprints = {
        failure_fingerprint(base),
        failure_fingerprint(dataclasses.replace(base, parsing=ParsingConfig(max_memory_mb=4096))),
        failure_fingerprint(dataclasses.replace(base, parsing=ParsingConfig(max_inflated_mb=200))),
        failure_fingerprint(
            dataclasses.replace(base, chunking=dataclasses.replace(base.chunking, max_tokens=128))
        ),
    }
    assert len(fingerprints) == 4
    assert failure_fingerprint(Config()) == failure_fingerprint(base)


# ------------------------------------------------------------------ metadata caps


def nested(depth: int):
    """An object of ``depth`` nested levels, the outermost counting as 1."""
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def record(metadata) -> str:
    return json.dumps({"_id": "d1", "text": "some text", "metadata": metadata})


def test_metadata_caps_on_depth_and_size():
    check_metadata(nested(MAX_METADATA_DEPTH))
    check_metadata({"blob": "x" * (MAX_METADATA_BYTES - 20)})
    with pytest.raises(ValueError, match="deeper than 8"):
        check_metadata(nested(MAX_METADATA_DEPTH + 1))
    with pytest.raises(ValueError, match="deeper than 8"):
        check_metadata({"list": [[[[[[[[1]]]]]]]]})
    with pytest.raises(ValueError, match="over the limit of 16,384"):
        check_metadata({"blob": "x" * MAX_METADATA_BYTES})
    with pytest.raises(ValueError, match="deeper"):
        check_metadata(nested(100_000))  # no RecursionError


def test_a_jsonl_record_with_oversized_metadata_becomes_a_read_error_row():
    assert ref_from_record(record(nested(MAX_METADATA_DEPTH)), "c.jsonl").doc_id == "d1"
    for bad in (
        record(nested(MAX_METADATA_DEPTH + 1)),
        record({"blob": "é" * MAX_METADATA_BYTES}),
        '{"_id": "d2", "text": "t", "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ):
        with pytest.raises(ValueError):
            ref_from_record(bad, "c.jsonl")
        (out,) = list(_RefFromRecord("c.jsonl").process(bad))
        assert out.tag == ERRORS_TAG and out.value.stage == "read"
