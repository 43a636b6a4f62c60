"""Retrieval over a real index built by the batch pipeline (FAKE embedder: logic, not quality).

Covered: each mode finds the expected document; hits carry text, ids, source, score and
version; structured filters, including injection attempts, on both vector engines; as_of
reads an older version after a re-index; FTS sees rows written after its index was built.

Why one file of ~410 lines: the cases share one fixture index (built once per process)
and compare the engines and modes on it.
"""

from __future__ import annotations

import dataclasses

import pytest

from freshindex import store
from freshindex.errors import TableError
from freshindex.pipelines.batch import run_ingest
from freshindex.query.config import RetrievalConfig
from freshindex.query.errors import FilterError, QueryError
from freshindex.query.filters import Filter, parse_filters, to_expr
from freshindex.query.retrieval import (
    IndexReader,
    PinnedTable,
    ReaderCache,
    retrieve,
    retrieve_batch,
    vector_search,
)
from freshindex.query.types import MODES
from freshindex.testing import RECORDS, copy_index, fixture_index, index_config

INJECTION = "x' OR '1'='1"


@pytest.fixture(scope="module")
def db() -> str:
    return str(fixture_index("fake-hash") / "lancedb")


@pytest.fixture(scope="module")
def reader(db) -> IndexReader:
    return IndexReader.open(db, "docs")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("pool timeout connection", "guide/timeouts.md"),
        ("digest authentication password", "guide/auth.md"),
        ("mallards duck species", "notes/ducks.md"),
        ("aspirin fever platelet", "papers/aspirin"),
    ],
)
def test_each_mode_finds_the_expected_document(reader, mode, query, expected):
    hits = retrieve(reader, query, mode=mode, k=3)
    assert hits and hits[0].doc_id == expected


def test_hits_carry_text_ids_source_score_and_version(reader, db):
    version = store.open_chunks(store.connect(db), "docs").version
    hits = retrieve(reader, "pool timeout", mode="hybrid", k=4)
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert all(h.table_version == version for h in hits)
    top = hits[0]
    assert "pool" in top.text.lower() and top.chunk_id and top.source_uri.endswith("timeouts.md")
    assert top.vector_score is not None and top.fts_score is not None
    assert top.score == pytest.approx(1 / 61 + 1 / 61)  # first in both lists, rrf_k=60
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    vector = retrieve(reader, "pool timeout", mode="vector", k=2)
    assert -1.0 <= vector[1].score <= vector[0].score <= 1.0
    assert vector[0].citation == f"{vector[0].doc_id}#{vector[0].chunk_id}"


def test_fusion_weights_and_rrf_k(reader):
    fts = retrieve(reader, "timeout pool password", mode="fts", k=3)
    only_fts = retrieve(
        reader, "timeout pool password", mode="hybrid", k=3, weights={"vector": 0.0}
    )
    assert [h.chunk_id for h in only_fts] == [h.chunk_id for h in fts]
    tight = retrieve(reader, "timeout pool password", mode="hybrid", k=1, rrf_k=0)
    assert tight[0].score >= 1.0  # 1/(0+1) for a first place


def test_target_forms_and_batch_agree(db, reader):
    expected = [h.chunk_id for h in retrieve(reader, "duck", mode="vector", k=3)]
    with ReaderCache() as readers:  # a table named by URI: through an owned, bounded cache
        by_uri = retrieve(readers.reader(db, "docs"), "duck", mode="vector", k=3)
        assert [h.chunk_id for h in by_uri] == expected
        assert [h.chunk_id for h in vector_search(db, "docs", "duck", 3, readers=readers)] == (
            expected
        )
    handle = store.open_chunks(store.connect(db), "docs")
    pinned = PinnedTable.checked_out(handle)  # a LanceDB handle, pinned explicitly
    assert [h.chunk_id for h in retrieve(pinned, "duck", mode="vector", k=3)] == expected
    assert [h.chunk_id for h in vector_search(db, "docs", "duck", k=3)] == expected
    batch = retrieve_batch(reader, ["duck", "digest password"], mode="hybrid", k=2)
    assert [h.chunk_id for h in batch[0]] == [
        h.chunk_id for h in retrieve(reader, "duck", mode="hybrid", k=2)
    ]
    assert batch[1][0].doc_id == "guide/auth.md"
    with pytest.raises(QueryError):
        retrieve(reader, "duck", mode="semantic")
    with pytest.raises(QueryError):
        retrieve(reader, "duck", k=0)


def test_retrieval_reads_only_an_explicit_source(db):
    """No duck typing: a URI, a connection or a raw table handle is refused with the way to
    say what to read; a PinnedTable refuses an ``as_of`` that is not its version."""
    handle = store.open_chunks(store.connect(db), "docs")
    for loose in (db, store.connect(db), handle):
        with pytest.raises(QueryError) as err:
            retrieve(loose, "duck", mode="fts")
        assert "IndexReader.open" in err.value.hint
    pinned = PinnedTable.checked_out(handle)
    assert retrieve(pinned, "duck", mode="fts", as_of=pinned.version)
    if pinned.version > 1:
        with pytest.raises(QueryError):
            retrieve(pinned, "duck", mode="fts", as_of=1)


def test_reader_cache_is_bounded_and_closes_what_it_drops(db, tmp_path):
    import shutil

    for i in range(3):
        shutil.copytree(db, tmp_path / f"db{i}")
    with ReaderCache(max_readers=2) as readers:
        first = readers.reader(str(tmp_path / "db0"), "docs")
        assert retrieve(first, "duck", mode="hybrid", k=1)  # pins a version, starts FTS threads
        assert first.cached_versions
        assert readers.reader(str(tmp_path / "db0"), "docs") is first
        readers.reader(str(tmp_path / "db1"), "docs")
        readers.reader(str(tmp_path / "db2"), "docs")
        assert len(readers) == 2 and first.cached_versions == []  # dropped and closed
    assert len(readers) == 0
    with pytest.raises(QueryError):
        ReaderCache(max_readers=0)


@pytest.mark.parametrize("filters", [None, ["metadata.year >= 2019"], ["doc_id prefix guide/"]])
def test_fts_rows_are_the_same_from_ram_and_from_disk(db, filters):
    cold = IndexReader.open(db, "docs").pinned()
    warm = IndexReader.open(db, "docs").pinned().warm_up()  # vectors and columns in RAM
    for query in ("timeout pool", "drug fever", "lighthouse"):
        on_disk = retrieve(cold, query, mode="fts", k=5, filters=filters)
        in_ram = retrieve(warm, query, mode="fts", k=5, filters=filters)
        assert on_disk == in_ram


def test_reranker_keeps_the_candidates(reader):
    plain = retrieve(reader, "timeout", mode="hybrid", k=4)
    mmr = retrieve(reader, "timeout", mode="hybrid", k=4, reranker="mmr")
    assert mmr[0].chunk_id == plain[0].chunk_id and len(mmr) == len(plain)


# ---------------------------------------------------------------- filters


@pytest.mark.parametrize("engine", ["memory", "lancedb"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["doc_id = guide/auth.md"], {"guide/auth.md"}),
        (["doc_id in guide/auth.md,readme.txt"], {"guide/auth.md", "readme.txt"}),
        (["doc_id prefix guide/"], {"guide/auth.md", "guide/timeouts.md"}),
        (
            ["content_type = text/markdown"],
            {"guide/auth.md", "guide/timeouts.md", "notes/ducks.md"},
        ),
        (["source_uri contains .jsonl#papers/"], {"papers/aspirin", "papers/ibuprofen"}),
        (
            ["content_type != text/markdown", "doc_id not_in papers/aspirin"],
            {"readme.txt", "papers/ibuprofen", INJECTION},
        ),
        ([{"field": "metadata.lang", "op": "=", "value": "de"}], {"papers/ibuprofen"}),
        (["metadata.year >= 2020"], {"papers/ibuprofen", INJECTION}),
        (["metadata.tags = nsaid"], {"papers/aspirin"}),
        (["metadata.review = true", "metadata.lang = en"], {"papers/aspirin"}),
        ([("doc_id", "=", INJECTION)], {INJECTION}),
        ([f"title = {INJECTION}"], set()),
        (["doc_id = guide/auth.md' OR doc_id != '"], set()),
        (["metadata.note = it's quoted"], {INJECTION}),
    ],
)
def test_filters_select_exactly_the_matching_documents(db, engine, mode, filters, expected):
    reader = IndexReader.open(db, "docs", config=RetrievalConfig(vector_engine=engine))
    for query in ("timeout", "drug", "lighthouse keepers", "password"):
        hits = retrieve(reader, query, mode=mode, k=10, filters=filters)
        assert {h.doc_id for h in hits} <= expected
    # the vector side ranks every row, so with k large it returns the whole filtered set
    if mode != "fts":
        hits = retrieve(reader, "anything at all", mode=mode, k=50, filters=filters)
        assert {h.doc_id for h in hits} == expected


def test_injection_literal_matches_itself_only(reader):
    hits = retrieve(reader, "lighthouse", mode="fts", k=10, filters=[("doc_id", "=", INJECTION)])
    assert [h.doc_id for h in hits] == [INJECTION]
    expr = to_expr(parse_filters([("doc_id", "=", INJECTION)]))
    assert "'x'' OR ''1''=''1'" in expr.to_sql()  # a literal, quotes doubled


@pytest.mark.parametrize(
    "bad",
    [
        "text = anything",  # text is not filterable
        "doc_id; DROP TABLE docs = 1",
        ("doc_id) OR (1", "=", "x"),
        ("doc_id", "LIKE", "%"),
        ("doc_id", "= 'a' OR 1=1 --", "x"),
        ("page_number", "=", "two"),
        ("page_number", "contains", 2),
        ("doc_id", "=", 5),
        ("doc_id", "in", []),
        ("indexed_at", ">", "yesterday"),
        ("metadata.a'b", "=", "x"),
        ("metadata.lang", "=", {"nested": "object"}),
        {"field": "doc_id", "op": "=", "value": "x", "sql": "1=1"},
        "nonsense",
    ],
)
def test_bad_filters_are_refused_before_any_query(reader, bad):
    with pytest.raises(FilterError):
        retrieve(reader, "duck", filters=[bad])


@pytest.mark.parametrize("engine", ["memory", "lancedb"])
def test_typed_filters_on_numbers_and_times(db, engine):
    reader = IndexReader.open(db, "docs", config=RetrievalConfig(vector_engine=engine))
    assert Filter.of("page_number", ">=", "2").value == 2
    assert retrieve(reader, "duck", mode="vector", k=10, filters=["page_number >= 1"]) == []
    future = retrieve(reader, "duck", mode="vector", k=10, filters=["indexed_at > 2999-01-01"])
    past = retrieve(reader, "duck", mode="vector", k=50, filters=["indexed_at > 2000-01-01"])
    assert future == [] and len(past) == reader.pinned().num_rows


# ---------------------------------------------------------------- versions and freshness


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """The fixture index, then a run that edits one file and adds another."""
    folder = tmp_path_factory.mktemp("history")
    cfg = copy_index("fake-hash", folder)
    runs = [r for r in store.read_runs(store.connect(cfg.db), "docs") if r["kind"] == "batch"]
    corpus = fixture_index("fake-hash") / "corpus"
    edited = folder / "corpus"
    import shutil

    shutil.copytree(corpus, edited)
    path = edited / "guide/timeouts.md"
    path.write_text(path.read_text().replace("five seconds", "seven seconds"))
    (edited / "notes/zebra.md").write_text("# Zebras\n\nZebras have black and white stripes.")
    # no upkeep after this run: its rows stay outside the FTS index (upkeep would fold them in)
    append = dataclasses.replace(
        cfg,
        # the edited copy replaces the fixture corpus's documents: the same namespace
        ingest=dataclasses.replace(cfg.ingest, sync="append", namespace=f"files:{corpus}"),
        maintenance=dataclasses.replace(cfg.maintenance, after_batch=False),
    )
    latest = run_ingest(append, str(edited), [])
    return cfg, runs, latest


def test_as_of_reads_the_older_version_after_a_reindex(history):
    cfg, runs, latest = history
    reader = IndexReader.open(cfg.db, "docs")
    old_run = runs[-1]["run_id"]
    now = retrieve(reader, "default timeout seconds", mode="fts", k=1)[0]
    assert "seven seconds" in now.text
    assert now.table_version == store.open_chunks(store.connect(cfg.db), "docs").version
    assert now.table_version >= latest["table_version"]
    for ref in (old_run, f"run-{old_run}", runs[-1]["table_version"]):
        then = retrieve(reader, "default timeout seconds", mode="fts", k=1, as_of=ref)[0]
        assert "five seconds" in then.text
        assert then.table_version == runs[-1]["table_version"]
    vec = retrieve(reader, "zebra stripes", mode="vector", k=50, as_of=old_run)
    assert "notes/zebra.md" not in {h.doc_id for h in vec}
    with pytest.raises(TableError):
        retrieve(reader, "x", as_of="no-such-run")


def test_fts_sees_rows_written_after_its_index(history, tmp_path):
    cfg, _runs, _latest = history
    tbl = store.open_chunks(store.connect(cfg.db), "docs")
    assert store.fts_unindexed_rows(tbl) > 0  # the second run's rows are not in the index
    reader = IndexReader.open(cfg.db, "docs")
    hits = retrieve(reader, "zebras stripes", mode="fts", k=3)
    assert hits and hits[0].doc_id == "notes/zebra.md"
    # refreshing folds them into the index without touching older versions
    import shutil

    shutil.copytree(cfg.db, tmp_path / "copy")
    copy = store.open_chunks(store.connect(str(tmp_path / "copy")), "docs")
    first = min(v["version"] for v in copy.list_versions())
    assert store.refresh_fts_index(copy) is False  # a few rows: below the threshold
    assert store.refresh_fts_index(copy, min_rows=0, fraction=0.0) is True
    assert store.fts_unindexed_rows(copy) == 0
    assert first in {v["version"] for v in copy.list_versions()}  # nothing pruned
    fresh = IndexReader.open(str(tmp_path / "copy"), "docs")
    assert retrieve(fresh, "zebras stripes", mode="fts", k=1)[0].doc_id == "notes/zebra.md"


def test_a_new_table_gets_its_fts_index_from_the_pipeline(db):
    tbl = store.open_chunks(store.connect(db), "docs")
    kinds = {(tuple(ix.columns), str(ix.index_type)) for ix in tbl.list_indices()}
    assert (("text",), "FTS") in kinds
    assert store.ensure_scalar_indexes(tbl) == []  # nothing missing: no new version


def test_a_table_without_fts_index_is_still_searched_and_gets_one(tmp_path):
    import numpy as np
    import pyarrow as pa

    from freshindex.schemas.tables import chunks_schema

    cfg = index_config(str(tmp_path / "db"))
    dbc = store.connect(cfg.db)
    schema = chunks_schema(64, model="fake-hash")
    row = {name: None for name in schema.names}
    row |= {"chunk_id": "c1", "doc_id": "d1", "chunk_index": 0, "text": "a duck", "text_hash": "h"}
    row |= {"content_hash": "c", "fingerprint": "f", "embedding_model": "fake-hash"}
    row["vector"] = (np.ones(64, np.float32) / 8).tolist()
    dbc.create_table("docs", pa.Table.from_pylist([row], schema=schema))
    table = store.open_chunks(dbc, "docs")
    assert store.fts_unindexed_rows(table) is None
    assert retrieve(IndexReader(dbc, "docs"), "duck", mode="fts")[0].doc_id == "d1"  # a scan
    assert store.refresh_fts_index(table) is True  # creates the missing index
    assert store.fts_unindexed_rows(table) == 0
    assert retrieve(IndexReader(dbc, "docs"), "duck", mode="hybrid")[0].doc_id == "d1"


def test_records_metadata_is_parsed_into_hits(reader):
    hit = retrieve(reader, "aspirin", mode="fts", k=1)[0]
    assert hit.metadata == RECORDS[0]["metadata"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("how long until a request gives up by default?", "guide/timeouts.md"),
        ("how are passwords protected when logging in?", "guide/auth.md"),
        ("which water bird is seen most often?", "notes/ducks.md"),
        ("a medicine that reduces a high temperature", "papers/aspirin"),
    ],
)
def test_real_model_each_mode_finds_the_expected_document(mode, question, expected):
    reader = IndexReader.open(str(fixture_index("all-MiniLM-L6-v2") / "lancedb"), "docs")
    assert reader.pinned().model == "all-MiniLM-L6-v2"
    hits = retrieve(reader, question, mode=mode, k=3)
    if mode == "fts" and not hits:
        pytest.skip("no query word occurs in the corpus: nothing for BM25 to match")
    assert expected in [h.doc_id for h in hits[: 2 if mode == "fts" else 1]]


def test_a_new_versions_memory_index_reads_only_what_changed(tmp_path):
    """Each new version's in-RAM index is built from the previous one; it must equal an index
    read from scratch after adds, deletes, replacements and a compaction."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from freshindex.query.memory_index import MemoryIndex
    from freshindex.store.upkeep import maintain
    from freshindex.transforms.write import commit_changes

    cfg = copy_index("fake-hash", tmp_path)
    reader = IndexReader.open(cfg.db, "docs", config=RetrievalConfig(vector_engine="memory"))
    reader.pinned().memory()
    table = store.open_chunks(store.connect(cfg.db), "docs")
    rows = table.to_arrow()
    docs = sorted(set(rows["doc_id"].to_pylist()))

    def renamed(doc_id: str, new_doc: str) -> pa.Table:
        mine = rows.filter(pc.equal(rows["doc_id"], doc_id))
        ids = pa.array([f"{c}-{new_doc}" for c in mine["chunk_id"].to_pylist()])
        mine = mine.set_column(mine.schema.get_field_index("chunk_id"), "chunk_id", ids)
        doc = pa.array([new_doc] * mine.num_rows)
        return mine.set_column(mine.schema.get_field_index("doc_id"), "doc_id", doc)

    def snapshot(mem) -> list:
        ids = mem.columns["chunk_id"].to_pylist()
        return sorted(
            (cid, mem.vectors[i].tobytes(), str(mem.columns.slice(i, 1).to_pylist()))
            for i, cid in enumerate(ids)
        )

    changes = {
        "add": lambda: commit_changes(table, renamed(docs[0], "new/doc.md")),
        "delete": lambda: commit_changes(table, None, delete_docs=[docs[1]]),
        "replace": lambda: commit_changes(table, renamed(docs[2], docs[2]), replace_docs=[docs[2]]),
        "compact": lambda: maintain(cfg.db, "docs", cfg.maintenance, ann=False),
    }
    built = {}
    for name, change in changes.items():
        change()
        pinned = reader.pinned()
        mem = pinned.memory()
        assert snapshot(mem) == snapshot(MemoryIndex(pinned.table)), name
        assert mem.rows_read + mem.rows_reused == pinned.num_rows
        built[name] = mem
    # a small commit reads only its new rows; the rest comes from the previous version
    assert built["add"].rows_read == renamed(docs[0], "x").num_rows
    assert built["add"].rows_reused == rows.num_rows
    assert built["delete"].rows_read < built["delete"].rows_reused
    assert built["compact"].rows_reused == 0  # every fragment was rewritten
    hits = retrieve(reader, "x", mode="vector", k=100)
    assert "new/doc.md" in {h.doc_id for h in hits} and docs[1] not in {h.doc_id for h in hits}
