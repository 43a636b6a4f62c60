"""Table upkeep on a real LanceDB: compaction, retention, index refresh, ANN recall."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys

import numpy as np
import pytest

from freshindex import store
from freshindex.config import MaintenanceConfig
from freshindex.schemas.records import Chunk, Document, EmbeddedDocument, chunk_id_for, sha256_hex
from freshindex.store.upkeep import (
    UpkeepSchedule,
    ann_search_params,
    maintain,
    measure_recall,
    plan_retention,
    sample_vectors,
)
from freshindex.transforms.rows import rows_for
from freshindex.transforms.write import commit_changes
from tests.conftest import ROOT

DIM = 16
POLICY = MaintenanceConfig(keep_versions=10, keep_all_hours=0, min_version_age_minutes=0)


def doc_rows(doc_id: str, text: str, rng, dim: int = DIM):
    chunk = Chunk(chunk_id_for(doc_id, text, 0), doc_id, 0, text, sha256_hex(text), 3)
    doc = Document(doc_id, f"mem://{doc_id}", sha256_hex(text), "text/plain", doc_id, None, ())
    vec = rng.normal(size=(1, dim)).astype(np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    emb = EmbeddedDocument(doc, (chunk,), vec, 1, 0)
    return rows_for([emb], fingerprint="fp", model="fake-hash", run_id="t", dim=dim)


def new_table(db_uri: str, dim: int = DIM):
    db = store.connect(db_uri)
    return store.open_or_create_chunks(db, "docs", dim=dim, model="fake-hash", settings={})


def snapshot(table) -> list[tuple]:
    rows = table.search().select(["chunk_id", "text"]).limit(None).to_arrow().to_pylist()
    return sorted((r["chunk_id"], r["text"]) for r in rows)


def top_k(table, queries, k=5):
    return [
        [
            r["chunk_id"]
            for r in table.search(q)
            .distance_type("cosine")
            .limit(k)
            .select(["chunk_id", "_distance"])
            .to_list()
        ]
        for q in queries
    ]


def test_retention_keeps_the_last_n_and_the_recent_versions():
    now = dt.datetime(2026, 1, 31)
    versions = {v: now - dt.timedelta(days=31 - v) for v in range(1, 31)}
    by_count = plan_retention(versions, {}, now, RECENT_ONLY)
    assert by_count.keep == set(range(26, 31))
    by_age = dataclasses.replace(RECENT_ONLY, keep_versions=1, keep_all_hours=240)
    assert plan_retention(versions, {}, now, by_age).keep == set(range(21, 31))
    young = dataclasses.replace(RECENT_ONLY, keep_versions=1, min_version_age_minutes=3 * 24 * 60)
    assert plan_retention(versions, {}, now, young).keep == set(range(28, 31))
    few = {1: now - dt.timedelta(days=300), 2: now - dt.timedelta(days=200)}
    assert plan_retention(
        few, {}, now, dataclasses.replace(RECENT_ONLY, keep_versions=20)
    ).keep == {
        1,
        2,
    }


# only the recent rules: no checkpoints
RECENT_ONLY = MaintenanceConfig(
    keep_versions=5,
    keep_all_hours=0,
    min_version_age_minutes=0,
    checkpoint_hourly_days=0,
    checkpoint_daily_days=0,
)


def test_upkeep_schedule_fires_every_k_commits_or_t_minutes():
    clock = [0.0]
    sched = UpkeepSchedule(MaintenanceConfig(every_commits=3, every_minutes=1), lambda: clock[0])
    assert [sched.committed() for _ in range(6)] == [False, False, True, False, False, True]
    clock[0] = 61.0
    assert sched.committed() is True


@pytest.mark.slow
def test_after_300_small_commits_maintain_compacts_and_prunes_but_keeps_results(tmp_path):
    db_uri = str(tmp_path / "db")
    table = new_table(db_uri)
    rng = np.random.default_rng(0)
    for i in range(300):
        commit_changes(
            table, doc_rows(f"doc{i % 120}", f"text {i}", rng), replace_docs=[f"doc{i % 120}"]
        )
        if i == 100:
            store.tag_version(table, "prod", table.version)
            prod_snapshot = snapshot(table)
    table.create_scalar_index("chunk_id", index_type="BTREE")
    store.ensure_scalar_indexes(table)
    before_rows, before_versions = snapshot(table), len(table.list_versions())
    queries = sample_vectors(table, 10)
    before_hits = top_k(table, queries)
    frags_before = table.stats()["fragment_stats"]["num_fragments"]

    report = maintain(db_uri, "docs", POLICY)

    table = store.open_chunks(store.connect(db_uri), "docs")
    assert report.fragments_before == frags_before > 100
    assert report.fragments_after < 10
    assert report.versions_before == before_versions > 300
    assert report.versions_after <= POLICY.keep_versions + 3  # + the tagged one + upkeep's own
    assert report.versions_removed >= before_versions - POLICY.keep_versions - 3
    assert report.bytes_reclaimed > 0
    assert snapshot(table) == before_rows
    assert top_k(table, queries) == before_hits
    assert all(ix.num_unindexed_rows == 0 for ix in table.list_indices())
    pinned = store.open_as_of(store.connect(db_uri), "docs", "prod")
    assert snapshot(pinned) == prod_snapshot  # tagged versions stay readable


@pytest.mark.slow
def test_maintenance_while_a_writer_commits_loses_nothing(tmp_path):
    db_uri = str(tmp_path / "db")
    new_table(db_uri)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, db_uri], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    reports = []
    while writer.poll() is None:
        reports.append(maintain(db_uri, "docs", POLICY, ann=False, record=False))
    out, _ = writer.communicate(timeout=120)
    assert writer.returncode == 0, out
    assert len(reports) >= 2
    maintain(db_uri, "docs", POLICY, ann=False, record=False)
    rows = snapshot(store.open_chunks(store.connect(db_uri), "docs"))
    assert len(rows) == len({r[0] for r in rows}) == 150
    assert {r[1] for r in rows} == {f"text {i}" for i in range(150)}


WRITER = """
import sys, numpy as np
from freshindex import store
from tests.test_maintain import doc_rows
from freshindex.transforms.write import commit_changes
db_uri = sys.argv[1]
db = store.connect(db_uri)
rng = np.random.default_rng(1)
for i in range(150):
    with store.commit_lock(db_uri, "docs"):
        table = store.open_chunks(db, "docs")
        commit_changes(table, doc_rows(f"doc{i}", f"text {i}", rng), replace_docs=[f"doc{i}"])
print("wrote 150")
"""


@pytest.mark.slow
def test_ann_index_meets_the_recall_target_on_the_tables_own_data(tmp_path):
    db_uri = str(tmp_path / "db")
    table = new_table(db_uri, dim=64)
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(40, 64))
    batches = []
    for b in range(6):  # clustered vectors, like real embeddings
        n = 1000
        vec = centers[rng.integers(0, 40, n)] + 0.35 * rng.normal(size=(n, 64))
        vec = (vec / np.linalg.norm(vec, axis=1, keepdims=True)).astype(np.float32)
        docs = []
        for i in range(n):
            text = f"row {b}-{i}"
            chunk = Chunk(chunk_id_for(text, text, 0), text, 0, text, sha256_hex(text), 2)
            doc = Document(text, "mem://", "h", "text/plain", None, None, ())
            docs.append(EmbeddedDocument(doc, (chunk,), vec[i : i + 1], 1, 0))
        batches.append(rows_for(docs, fingerprint="fp", model="fake-hash", run_id="t", dim=64))
    for batch in batches:
        commit_changes(table, batch)
    cfg = dataclasses.replace(POLICY, ann_min_rows=5000, ann_sample_queries=50)
    report = maintain(db_uri, "docs", cfg)
    assert report.ann["action"] == "built"
    assert report.ann["recall"] >= 0.95
    params = ann_search_params(store.connect(db_uri), "docs")
    assert params["nprobes"] == report.ann["nprobes"]
    # read from its own table, not from runs.settings
    (state,) = store.connect(db_uri).open_table("ann_state").to_arrow().to_pylist()
    assert (state["table_name"], state["rows_at_build"]) == ("docs", report.ann["rows_at_build"])
    table = store.open_chunks(store.connect(db_uri), "docs")
    fresh_queries = sample_vectors(table, 50, seed=99)  # not the queries used for tuning
    recall = measure_recall(
        table, fresh_queries, 10, params["nprobes"], params.get("refine_factor")
    )
    assert recall >= 0.93
    from freshindex.query.retrieval import IndexReader

    pinned = IndexReader.open(db_uri, "docs").pinned(None)
    assert pinned.ann_params["nprobes"] == params["nprobes"]  # the query layer uses the tuning
    small = maintain(db_uri, "docs", dataclasses.replace(cfg, ann_min_rows=10**6))
    assert small.ann["action"] == "exact search"


def test_a_commit_matches_columns_by_name_whatever_their_order_in_the_table(tmp_path):
    """A table upgraded by adding columns holds them at its end; new rows hold them in their
    pinned place. The commit matches columns by name, so such a table takes new rows."""
    from freshindex.transforms.write import commit_changes

    rng = np.random.default_rng(0)
    table = new_table(str(tmp_path / "db"))
    commit_changes(table, doc_rows("a", "first text", rng))
    table.drop_columns(["namespace"])
    table.add_columns({"namespace": "CAST(NULL AS STRING)"})  # now the last column
    assert table.schema.names[-1] == "namespace"
    rows = doc_rows("b", "second text", rng)
    assert rows.schema.names.index("namespace") != len(rows.schema.names) - 1
    commit_changes(table, rows)
    assert {r[0] for r in snapshot(table)} == {
        rows.column("chunk_id")[0].as_py(),
        doc_rows("a", "first text", np.random.default_rng(0)).column("chunk_id")[0].as_py(),
    }
