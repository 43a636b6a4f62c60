"""Blue-green migration: shadow build, gate, cutover, rollback, finish (freshindex.migration).

The lifecycle runs the real batch pipeline on a real LanceDB with the FAKE embedder
(``fake-hash``); the gate test loads the real model on a SciFact subset (slow).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from freshindex import migration, store
from freshindex.config import load_config
from freshindex.errors import ConfigError, SchemaMismatch
from freshindex.pipelines.batch import run_ingest
from freshindex.query.readers import IndexReader
from freshindex.query.retrieval import retrieve

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
SCIFACT = SCIFACT if SCIFACT.exists() else Path("/work/shared/data/scifact")


def texts(reader) -> dict[str, str]:
    pinned = reader.pinned()
    rows = pinned.rows_where([])
    return {"table": pinned.name, **{r["chunk_id"]: r["text"] for r in rows}}


def served_docs(reader) -> set[str]:
    return {r["doc_id"] for r in reader.pinned().rows_where([])}


@pytest.mark.slow  # runs the batch pipeline (seconds)
def test_migration_lifecycle(fake_cfg, corpus):
    run_ingest(fake_cfg, str(corpus), [])
    new_cfg = dataclasses.replace(
        fake_cfg,
        chunking=dataclasses.replace(fake_cfg.chunking, max_tokens=16, overlap_tokens=0),
    )
    db = store.connect(fake_cfg.db)
    reader = IndexReader(db, "docs")
    live_before = texts(reader)

    state = migration.start(new_cfg, "docs", log=lambda *_: None)
    shadow = state["new_table"]
    assert state["status"] == "ready" and state["old_table"] == "docs"
    assert shadow.startswith("docs__") and state["source"] == str(corpus)
    assert state["chunks_embedded"] > 0
    assert texts(reader) == live_before  # readers keep the live table until cutover
    shadow_rows = store.open_chunks(db, shadow).count_rows()
    assert shadow_rows > store.open_chunks(db, "docs").count_rows()  # smaller chunks
    with pytest.raises(migration.MigrationError, match="is ready"):
        migration.start(new_cfg, "docs")

    # the live table moves on; the shadow lags until cutover catches it up
    (corpus / "notes" / "ducks.md").write_text("# Ducks\n\nDucks now nest on the roof.")
    run_ingest(fake_cfg, str(corpus), [])
    report = migration.status(fake_cfg.db, "docs")
    assert report["lag"]["docs_differ"] == 1 and report["serving"] == "docs"
    assert report["disk_bytes"][shadow] > 0

    with pytest.raises(migration.MigrationError, match="never checked"):
        migration.cutover(fake_cfg, "docs")
    pinned_before = reader.pinned()
    migration.cutover(fake_cfg, "docs", force=True, log=lambda *_: None)
    assert reader.pinned().name == shadow
    assert pinned_before.name == "docs"  # a request pinned before the switch reads on
    assert migration.status(fake_cfg.db, "docs")["lag"]["docs_differ"] == 0
    roof = [h for h in retrieve(reader, "roof", mode="fts", k=3) if h.doc_id == "notes/ducks.md"]
    assert roof and "roof" in roof[0].text

    with pytest.raises(migration.MigrationError, match="serves"):
        migration.abort(fake_cfg, "docs")  # the shadow serves: roll back first
    # after the cutover, writers naming the index write the shadow (the new settings);
    # one with the old settings is refused instead of mixing two chunkings
    (corpus / "notes" / "geese.md").write_text("# Geese\n\nGeese honk at dawn.")
    with pytest.raises(SchemaMismatch, match="other settings"):
        run_ingest(fake_cfg, str(corpus), [])
    run_ingest(new_cfg, str(corpus), [])
    assert "notes/geese.md" in served_docs(reader)
    migration.rollback(fake_cfg, "docs", log=lambda *_: None)  # catches the old table up
    assert reader.pinned().name == "docs" and "notes/geese.md" in served_docs(reader)
    migration.cutover(fake_cfg, "docs", force=True, log=lambda *_: None)
    migration.finish(fake_cfg, "docs")
    assert "docs" not in store.table_names(db) and reader.pinned().name == shadow
    assert migration.status(fake_cfg.db, "docs")["status"] == "finished"

    (corpus / "notes" / "swans.md").write_text("# Swans\n\nSwans are white.")
    run_ingest(new_cfg, str(corpus), [])
    assert "notes/swans.md" in served_docs(reader)


@pytest.mark.slow  # runs the batch pipeline (seconds)
def test_the_shadow_records_its_own_model_and_readers_follow_it(fake_cfg, corpus, db_uri):
    run_ingest(fake_cfg, str(corpus), [])
    new_cfg = dataclasses.replace(
        fake_cfg, chunking=dataclasses.replace(fake_cfg.chunking, max_tokens=32)
    )
    state = migration.start(new_cfg, "docs", log=lambda *_: None)
    recorded = json.loads(state["config"])
    assert recorded["chunking"]["max_tokens"] == 32
    db = store.connect(db_uri)
    built = migration.table_config(db, state["new_table"], fake_cfg)
    assert built.fingerprint() == new_cfg.fingerprint() and built.table == state["new_table"]
    assert store.recorded_fingerprint(store.open_chunks(db, state["new_table"])) == (
        new_cfg.fingerprint()
    )


@pytest.mark.slow  # runs the batch pipeline (seconds)
def test_the_shadow_reuses_the_live_vectors_where_text_and_model_match(fake_cfg, corpus):
    run_ingest(fake_cfg, str(corpus), [])
    new_cfg = dataclasses.replace(
        fake_cfg, chunking=dataclasses.replace(fake_cfg.chunking, overlap_tokens=4)
    )
    state = migration.start(new_cfg, "docs", log=lambda *_: None)
    db = store.connect(fake_cfg.db)
    (run,) = [r for r in store.read_runs(db, state["new_table"]) if r["kind"] == "batch"]
    shadow = store.open_chunks(db, state["new_table"])
    assert store.reuse_source(shadow) == "docs"
    # documents that fit in one window chunk alike: their vectors are the live table's
    assert run["chunks_reused"] > 0 and state["chunks_embedded"] < shadow.count_rows()
    assert run["chunks_reused"] + run["chunks_embedded"] == shadow.count_rows()


@pytest.mark.slow  # runs the batch pipeline (seconds)
def test_a_model_not_available_offline_fails_at_start(fake_cfg, corpus):
    run_ingest(fake_cfg, str(corpus), [])
    bad = load_config(
        overrides={"db": fake_cfg.db, "table": "docs", "embedding.model": "no-such/model-xyz"},
        environ={},
    )
    with pytest.raises(ConfigError, match="cannot be loaded"):
        migration.start(bad, "docs")
    assert migration.current(store.connect(fake_cfg.db), "docs") is None
    assert [t for t in store.table_names(store.connect(fake_cfg.db)) if "__" in t] == []


def _scifact_subset(tmp_path: Path, n_queries: int = 40) -> Path:
    """The first ``n_queries`` SciFact test queries, their judged documents and as many
    others, as a BEIR folder (small enough to embed in about a minute)."""
    out = tmp_path / "scifact_small"
    (out / "qrels").mkdir(parents=True)
    lines = (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()
    qrels = [line.split("\t") for line in lines[1:]]
    queries = sorted({q for q, _, _ in qrels}, key=int)[:n_queries]
    kept = [(q, d, s) for q, d, s in qrels if q in queries]
    judged = {d for _, d, _ in kept}
    corpus = []
    with (SCIFACT / "corpus.jsonl").open() as handle:
        for line in handle:
            doc = json.loads(line)
            if doc["_id"] in judged or len(corpus) < 2 * len(judged):
                corpus.append(line.rstrip("\n"))
    (out / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (out / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in kept)
    )
    with (SCIFACT / "queries.jsonl").open() as src:
        picked = [line for line in src if json.loads(line)["_id"] in queries]
    (out / "queries.jsonl").write_text("".join(picked))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not SCIFACT.exists(), reason="SciFact is not in ../shared/data")
def test_the_gate_refuses_a_worse_config_and_accepts_a_neutral_one(real_cfg, tmp_path):
    data = _scifact_subset(tmp_path)
    run_ingest(real_cfg, str(data / "corpus.jsonl"), [])
    worse = dataclasses.replace(
        real_cfg,
        chunking=dataclasses.replace(real_cfg.chunking, max_tokens=32, overlap_tokens=0),
    )
    migration.start(worse, "docs", log=lambda *_: None)
    verdict = migration.check(real_cfg, "docs", str(data), tolerance=0.01, log=lambda *_: None)
    assert not verdict["passed"] and verdict["drops"]
    assert sum(verdict["delta"]["vector"].values()) < 0  # worse on the whole, not one metric
    with pytest.raises(migration.MigrationError, match="gate refused"):
        migration.cutover(real_cfg, "docs")
    migration.abort(real_cfg, "docs")

    # neutral: another overlap changes only the abstracts longer than one window
    neutral = dataclasses.replace(
        real_cfg, chunking=dataclasses.replace(real_cfg.chunking, overlap_tokens=24)
    )
    migration.start(neutral, "docs", log=lambda *_: None)
    verdict = migration.check(real_cfg, "docs", str(data), tolerance=0.02, log=lambda *_: None)
    assert verdict["passed"], verdict["drops"]
    migration.cutover(real_cfg, "docs", log=lambda *_: None)
    assert store.resolve_alias(store.connect(real_cfg.db), "docs").table.startswith("docs__")


def _state(db, old: str, new: str) -> dict:
    now = store.utcnow()
    return migration.record(
        db,
        {
            "migration_id": "m1",
            "index_name": "docs",
            "old_table": old,
            "new_table": new,
            "fingerprint": "f",
            "status": "ready",
            "source": "unused",
            "config": "{}",
            "started_at": now,
            "build_seconds": 0.0,
            "chunks_embedded": 0,
            "check": None,
            "note": None,
        },
    )


@pytest.mark.slow  # the evaluation's imports take seconds
def test_check_compares_the_physical_tables_and_gates_the_cutover(db_uri, tmp_path):
    from tests.test_aliases import make_table

    texts = {f"d{i}": f"document {i} about {w}" for i, w in enumerate("abcdefgh")}
    db = store.connect(db_uri)
    make_table(db, "docs", texts)
    # the shadow holds the same ids with the texts shifted by one: retrieval gets worse
    ids = list(texts)
    make_table(db, "docs__worse", {ids[i]: texts[ids[i - 1]] for i in range(len(ids))})
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": f"q{i}", "text": texts[d]}) + "\n" for i, d in enumerate(ids))
    )
    (tmp_path / "qrels.tsv").write_text("".join(f"q{i}\t{d}\t1\n" for i, d in enumerate(ids)))
    _state(db, "docs", "docs__worse")
    cfg = load_config(overrides={"db": db_uri, "table": "docs"}, environ={})
    kwargs = dict(queries=str(tmp_path / "queries.jsonl"), qrels=str(tmp_path / "qrels.tsv"))
    verdict = migration.check(cfg, "docs", None, log=lambda *_: None, **kwargs)
    assert verdict["old"]["vector"]["ndcg@10"] > verdict["new"]["vector"]["ndcg@10"]
    assert not verdict["passed"] and verdict["drops"]
    with pytest.raises(migration.MigrationError, match="gate refused"):
        migration.cutover(cfg, "docs")
    # the index name serving the shadow does not change what check compares
    store.set_alias(db_uri, "docs", "docs__worse")
    again = migration.check(cfg, "docs", None, log=lambda *_: None, **kwargs)
    assert again["old"] == verdict["old"] and again["new"] == verdict["new"]
    assert json.loads(migration.current(db, "docs")["check"])["passed"] is False
