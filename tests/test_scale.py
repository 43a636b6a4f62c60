"""Nothing the batch run holds in one process grows with the corpus where it need not: the
ledger is scanned in bounded pieces, a JSONL record is planned without its text, and a
commit streams its staged files one at a time
(the growth itself is measured by ``scripts/bench_scale.py``, docs/BENCHMARKS.md)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from freshindex import store
from freshindex.transforms import write
from freshindex.transforms.plan import TableRef, _LoadLedger
from freshindex.transforms.read import (
    ERRORS_TAG,
    _LoadRecord,
    _ReadRecordRange,
    byte_ranges,
    lean_records,
    lines_in_range,
    ref_from_record,
    resolve_source,
)
from tests.test_maintain import doc_rows, new_table


def _docs(prefix: str, n: int, rng) -> pa.Table:
    return pa.concat_tables(doc_rows(f"{prefix}{i}", f"text of {prefix}{i}", rng) for i in range(n))


def test_the_ledger_is_scanned_in_pieces_of_bounded_size(db_uri):
    rng = np.random.default_rng(0)
    table = new_table(db_uri)
    for commit in range(3):  # several fragments
        write.commit_changes(table, _docs(f"c{commit}-", 9, rng))
    pieces = list(store.iter_ledger(table, batch_size=4))
    assert all(0 < len(piece) <= 4 for piece in pieces)
    assert len(pieces) >= 27 // 4
    merged = {doc: entry for piece in pieces for doc, entry in piece.items()}
    assert merged == store.read_ledger(table)
    assert len(merged) == 27
    # the plan's ledger step emits the same entries, piece by piece
    emitted = dict(_LoadLedger().process(TableRef(db_uri, "docs", table.version)))
    assert emitted == merged


def test_a_commit_reads_its_staged_files_one_at_a_time(db_uri, tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    table = new_table(db_uri)
    staging = str(tmp_path / "staging")
    files = {name: _docs(name, 4, rng) for name in ("a", "b", "c")}
    paths = [write.stage_rows(rows, staging) for rows in files.values()]
    opened: list[str] = []
    real = write.store.filesystem

    def counting(uri):
        opened.append(uri)
        return real(uri)

    monkeypatch.setattr(write.store, "filesystem", counting)
    stream = write.staged_rows(paths, table.schema, exclude_docs=["b1"])
    assert opened == []  # nothing is read until the merge asks for rows
    first = stream.read_next_batch()
    assert opened == paths[:1]
    assert set(first.column("doc_id").to_pylist()) == {f"a{i}" for i in range(4)}
    monkeypatch.setattr(write.store, "filesystem", real)

    stream = write.staged_rows(paths, table.schema, exclude_docs=["b1"])
    version = write.commit_changes(table, stream)
    written = write.staged_chunk_ids(paths, exclude_docs=["b1"])
    store.verify_commit(store.connect(db_uri), "docs", version, chunk_ids=written)
    stored = table.search().select(["doc_id", "chunk_id"]).limit(None).to_arrow()
    expected = {f"{name}{i}" for name in files for i in range(4)} - {"b1"}
    assert set(stored["doc_id"].to_pylist()) == expected
    assert sorted(stored["chunk_id"].to_pylist()) == sorted(written)
    assert len(written) == 11


def test_byte_ranges_give_every_line_of_a_file_to_exactly_one_range(tmp_path):
    lines = [b'{"_id": "a", "text": "x"}\n', b"\n", b"y" * 37 + b"\n", b"z", b""]
    path = tmp_path / "c.jsonl"
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    for range_bytes in (1, 3, 7, 26, 27, 28, size, size + 5):
        with path.open("rb") as handle:
            got = [
                piece
                for start, end in byte_ranges(size, range_bytes)
                for piece in lines_in_range(handle, start, end)
            ]
        offsets = [sum(len(x) for x in lines[:i]) for i in range(4)]
        assert got == list(zip(offsets, lines[:4], strict=True)), range_bytes


def test_a_record_is_planned_without_its_text_and_read_again_to_be_parsed(tmp_path):
    records = [
        {"_id": "r1", "title": "One", "text": "first record " * 20, "metadata": {"k": "v"}},
        {"_id": "r2", "text": "second record"},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = resolve_source(str(path))
    assert lean_records(spec)
    refs = list(_ReadRecordRange(spec.raw).process((0, path.stat().st_size)))
    assert [r.doc_id for r in refs] == ["r1", "r2"]
    assert all(r.inline_text is None and r.title is None and not r.metadata for r in refs)
    loader = _LoadRecord()
    loader.start_bundle()
    loaded = [next(iter(loader.process(r))) for r in refs]
    loader.finish_bundle()
    full = [ref_from_record(json.dumps(r), spec.raw) for r in records]
    assert loaded == full  # text, title and metadata as if read in one pass

    # the file changes between the plan and the parse: an error row, nothing parsed
    records[0]["text"] = "rewritten " * 20
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loader.start_bundle()
    out = list(loader.process(refs[0]))
    loader.finish_bundle()
    assert len(out) == 1 and out[0].tag == ERRORS_TAG
    error = out[0].value
    assert (error.error_class, error.doc_id, error.permanent) == ("SourceChanged", "r1", False)


def test_a_compressed_or_globbed_jsonl_source_is_read_whole(tmp_path):
    (tmp_path / "c.jsonl.gz").write_bytes(b"")
    assert not lean_records(resolve_source(str(tmp_path / "c.jsonl.gz")))
    assert not lean_records(resolve_source("s3://bucket/corpus/*.jsonl"))
    assert lean_records(resolve_source("s3://bucket/corpus/c.jsonl"))
