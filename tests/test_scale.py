"""Nothing the batch run holds in one process grows with the corpus where it need not: the
ledger is scanned in bounded pieces and a commit streams its staged files one at a time
(the growth itself is measured by ``scripts/bench_scale.py``, docs/BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from freshindex import store
from freshindex.transforms import write
from freshindex.transforms.plan import TableRef, _LoadLedger
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
