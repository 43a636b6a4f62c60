"""The storage floor on a real LanceDB: typed bookkeeping records, the ANN state table,
typed predicates, schema versions checked on open and ``freshindex upgrade``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest

from freshindex import store
from freshindex.cli import main
from freshindex.errors import SchemaMismatch
from freshindex.schemas.bookkeeping import (
    RECORDS,
    AnnStateRecord,
    RunRecord,
    StreamBatchRecord,
)
from freshindex.schemas.predicates import and_, eq, in_list, where_sql
from freshindex.schemas.tables import (
    ANN_STATE_TABLE,
    META_PREFIX,
    RUNS_SCHEMA,
    RUNS_TABLE,
    STREAM_BATCHES_TABLE,
    chunks_schema,
)
from freshindex.transforms.write import commit_changes
from tests.test_maintain import DIM, doc_rows, new_table

RUN = {"run_id": "r1", "kind": "batch", "table_name": "docs", "status": "succeeded"}


# ------------------------------------------------------------------ typed records


def test_every_record_has_exactly_the_columns_of_its_pinned_schema():
    for record in RECORDS:
        assert [f.name for f in dataclasses.fields(record)] == record.SCHEMA.names, record


def test_a_misspelt_key_is_refused_and_nothing_is_written(db_uri):
    db = store.connect(db_uri)
    with pytest.raises(SchemaMismatch, match=r"unknown field.*docs_sen") as err:
        store.append_run(db, {**RUN, "docs_sen": 3})
    assert "docs_seen" in str(err.value)  # the hint lists the real columns
    with pytest.raises(SchemaMismatch, match="comitted_at"):
        store.append_stream_batch(
            db, {"run_id": "r", "table_name": "docs", "group_id": "g", "comitted_at": None}
        )
    with pytest.raises(TypeError):
        RunRecord(**RUN, docs_sen=3)
    assert RUNS_TABLE not in store.table_names(db)
    assert STREAM_BATCHES_TABLE not in store.table_names(db)


def test_typed_and_dict_rows_land_the_same(db_uri):
    db = store.connect(db_uri)
    at = store.utcnow()
    store.append_run(db, RunRecord(**RUN, settings={"b": 1, "a": 2}, docs_seen=4, started_at=at))
    store.append_run(db, {**RUN, "run_id": "r2", "settings": {"b": 1, "a": 2}, "docs_seen": 4})
    rows = {r["run_id"]: r for r in store.read_runs(db, "docs")}
    assert rows["r1"]["settings"] == rows["r2"]["settings"] == '{"a": 2, "b": 1}'
    assert rows["r1"]["docs_seen"] == rows["r2"]["docs_seen"] == 4
    offsets = [{"topic": "t", "partition": 0, "next_offset": 7}]
    base = {"run_id": "s", "table_name": "docs", "group_id": "g", "committed_at": at}
    store.append_stream_batch(db, StreamBatchRecord(**base, batch_seq=1, offsets=offsets))
    store.append_stream_batch(db, {**base, "batch_seq": 2, "messages": 3})
    assert store.read_stream_offsets(db, "docs", "g") == {("t", 0): 7}
    assert [b["messages"] for b in store.read_stream_batches(db, run_id="s")] == [None, 3]


# ------------------------------------------------------------------ the ANN state


def test_ann_state_is_read_from_its_own_table_with_the_old_runs_settings_as_fallback(db_uri):
    db = store.connect(db_uri)
    assert store.ann_search_params(db, "docs") == {}
    # a table maintained before ann_state existed: its state is JSON in runs.settings
    legacy = {"rows_at_build": 6000, "nprobes": 40, "refine_factor": 10, "recall": 0.97}
    store.append_run(
        db,
        RunRecord(
            run_id="m1",
            kind="maintain",
            table_name="docs",
            status="succeeded",
            settings={"ann": legacy},
            started_at=store.utcnow(),
        ),
    )
    store.append_run(  # a later exact-search upkeep built nothing: the build still counts
        db,
        RunRecord(
            run_id="m2",
            kind="maintain",
            table_name="docs",
            status="succeeded",
            settings={"ann": {"action": "exact search", "rows": 10}},
            started_at=store.utcnow(),
        ),
    )
    assert store.ann_search_params(db, "docs") == {"nprobes": 40, "refine_factor": 10}
    assert store.ann_search_params(db, "other") == {}
    assert ANN_STATE_TABLE not in store.table_names(db)

    state = {"rows_at_build": 9000, "nprobes": 80, "refine_factor": None, "action": "rebuilt"}
    store.record_ann_state(db, AnnStateRecord.of("docs", "m3", state, store.utcnow()))
    store.record_ann_state(
        db, AnnStateRecord.of("other", "m4", {"rows_at_build": 1, "nprobes": 20}, store.utcnow())
    )
    assert store.ann_search_params(db, "docs") == {"nprobes": 80}  # the table wins
    assert store.last_ann_state(db, "docs")["action"] == "rebuilt"
    assert store.ann_search_params(db, "other") == {"nprobes": 20}


# ------------------------------------------------------------------ predicates

NASTY = [
    "a'b",
    "''",
    "x%\\y",
    "\\'",
    "\\",
    "' OR '1'='1",
    "a_b",
    "%",
    "DROP TABLE docs; --",
    "it's 100% \\ done AND 1=1",
]
DECOYS = ["ab", "axb", "a''b", "x%y", "x%\\\\y", "'", "1", "DROP TABLE docs", "a\\'b"]


def test_a_value_with_quotes_percent_backslashes_and_keywords_matches_only_itself(tmp_path):
    db = store.connect(str(tmp_path / "db"))
    values = NASTY + DECOYS
    table = db.create_table("t", pa.table({"k": values, "n": list(range(len(values)))}))
    for value in NASTY:
        for condition in (
            eq("k", value),
            in_list("k", [value, "no such value"]),
            and_(eq("k", value), eq("n", values.index(value))),
        ):
            for where in (condition.expr(), where_sql(condition)):
                got = table.search().where(where).limit(None).to_arrow()["k"].to_pylist()
                assert got == [value], (value, where)
    assert where_sql(eq("k", "a'b") & eq("n", 2) & eq("f", True)) == (
        "(k = 'a''b') AND (n = 2) AND (f = true)"
    )
    with pytest.raises(ValueError, match="no values"):
        in_list("k", [])
    with pytest.raises(TypeError):
        eq("k", 1.5)


def test_a_commit_replaces_and_deletes_exactly_the_named_documents(tmp_path):
    db_uri = str(tmp_path / "db")
    table = new_table(db_uri)
    rng = np.random.default_rng(0)
    for doc_id in ["a'b", "a''b", "x%\\y", "x%y", "\\'", "plain"]:
        commit_changes(table, doc_rows(doc_id, f"text of {doc_id}", rng))
    commit_changes(table, None, delete_docs=["a'b", "x%\\y", "\\'"])
    left = set(table.search().select(["doc_id"]).limit(None).to_arrow()["doc_id"].to_pylist())
    assert left == {"a''b", "x%y", "plain"}
    assert set(store.ledger_of(table, ["a''b", "a'b", "plain"])) == {"a''b", "plain"}


# ------------------------------------------------------------------ schema versions


def _newer(schema: pa.Schema) -> pa.Schema:
    return schema.with_metadata({**schema.metadata, f"{META_PREFIX}schema_version": "99"})


def test_a_table_of_a_newer_schema_version_is_refused_with_a_hint(db_uri, capsys):
    db = store.connect(db_uri)
    db.create_table("docs", schema=_newer(chunks_schema(DIM, model="fake-hash")))
    for open_it in (
        lambda: store.open_chunks(db, "docs"),
        lambda: store.open_or_create_chunks(db, "docs", dim=DIM, model="fake-hash", settings={}),
        lambda: store.current_version(db_uri, "docs", "fake-hash"),
    ):
        with pytest.raises(SchemaMismatch, match="schema version 99") as err:
            open_it()
        assert "upgrade freshindex" in str(err.value)
    db.create_table(RUNS_TABLE, schema=_newer(RUNS_SCHEMA))
    with pytest.raises(SchemaMismatch, match=r"'runs'.*schema version 99"):
        store.append_run(db, RUN)
    assert main(["upgrade", "--db", db_uri, "--table", "docs"]) == 2
    assert "upgrade freshindex" in capsys.readouterr().err


def test_freshindex_upgrade_adds_pending_columns_once(db_uri, capsys):
    db = store.connect(db_uri)
    old_chunks = pa.schema(
        [f for f in chunks_schema(DIM) if f.name != "namespace"],
        metadata=chunks_schema(DIM, model="fake-hash").metadata,
    )
    db.create_table("docs", schema=old_chunks)
    old_runs = pa.schema(
        [f for f in RUNS_SCHEMA if f.name not in ("docs_known_bad", "lease_token")]
    )
    db.create_table(RUNS_TABLE, pa.Table.from_pylist([RUN], schema=old_runs))

    assert main(["upgrade", "--db", db_uri, "--table", "docs"]) == 0
    out = capsys.readouterr().out
    assert "docs: added namespace" in out and "runs: added docs_known_bad, lease_token" in out
    assert "namespace" in store.open_chunks(db, "docs").schema.names
    old_row = store.read_runs(db, "docs")[0]
    assert old_row["docs_known_bad"] is None and old_row["lease_token"] is None  # still readable

    assert main(["upgrade", "--db", db_uri, "--table", "docs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"docs": [], "runs": []}  # idempotent


# ------------------------------------------------------------------ the post-commit check


def test_the_post_commit_check_passes_a_commit_that_is_in_the_table(db_uri):
    table, rng = new_table(db_uri), np.random.default_rng(1)
    db = store.connect(db_uri)
    first = doc_rows("a", "first text of a", rng)
    store.verify_commit(
        db, "docs", commit_changes(table, first), chunk_ids=first["chunk_id"].to_pylist()
    )
    second = doc_rows("a", "second text of a", rng)
    version = commit_changes(table, second, replace_docs=["a"])
    store.verify_commit(
        db, "docs", version, chunk_ids=second["chunk_id"].to_pylist(), replaced_docs=["a"]
    )
    version = commit_changes(table, None, delete_docs=["a"])
    store.verify_commit(db, "docs", version, deleted_docs=["a"])
    store.verify_commit(db, "docs", None)  # nothing committed: nothing to check


def test_the_post_commit_check_catches_a_lost_commit(db_uri):
    """Another writer without the lock restores the version before ours as the next one:
    the version we read back does not hold what we wrote (a lost commit)."""
    table, rng = new_table(db_uri), np.random.default_rng(2)
    db = store.connect(db_uri)
    commit_changes(table, doc_rows("a", "text of a", rng))
    before = table.version
    ours = doc_rows("b", "text of b", rng)
    commit_changes(table, ours)
    other = db.open_table("docs")
    other.restore(before)  # the racing writer's version replaces ours
    with pytest.raises(store.CommitCheckFailed, match="1 written chunk ids are missing") as err:
        store.verify_commit(db, "docs", other.version, chunk_ids=ours["chunk_id"].to_pylist())
    assert "re-run the writer" in str(err.value)
    with pytest.raises(store.CommitCheckFailed, match="cannot be read"):
        store.verify_commit(db, "docs", other.version + 5, chunk_ids=ours["chunk_id"].to_pylist())


def test_the_post_commit_check_catches_doubled_stale_and_undeleted_rows(db_uri):
    table, rng = new_table(db_uri), np.random.default_rng(3)
    db = store.connect(db_uri)
    rows = doc_rows("a", "text of a", rng)
    commit_changes(table, rows)
    table.add(rows)  # an append racing a merge: the same chunk id twice
    with pytest.raises(store.CommitCheckFailed, match="appear more than once"):
        store.verify_commit(db, "docs", table.version, chunk_ids=rows["chunk_id"].to_pylist())
    newer = doc_rows("a", "newer text of a", rng)
    table.add(newer)  # new chunks added without replacing the old ones
    with pytest.raises(store.CommitCheckFailed, match="chunks of replaced documents remain"):
        store.verify_commit(
            db, "docs", table.version, chunk_ids=newer["chunk_id"].to_pylist(), replaced_docs=["a"]
        )
    with pytest.raises(store.CommitCheckFailed, match="deleted documents still have chunks"):
        store.verify_commit(db, "docs", table.version, deleted_docs=["a"])


@pytest.mark.slow
def test_a_batch_commit_that_is_lost_fails_the_run_and_records_nothing(
    fake_cfg, corpus, monkeypatch
):
    """The batch's commit step, with its merge lost (it commits nothing, as if another
    writer's manifest had replaced it): the run fails with the check's error, no runs row."""
    from freshindex.pipelines.batch import run_ingest
    from freshindex.transforms import write

    def lost_commit(table, data, **_):
        return table.version  # the merge never reached the table

    monkeypatch.setattr(write, "commit_changes", lost_commit)
    with pytest.raises(Exception, match="not in the table as written"):
        run_ingest(fake_cfg, str(corpus))
    db = store.connect(fake_cfg.db)
    assert store.read_runs(db, fake_cfg.table) == []


def test_a_table_being_created_is_absent_to_readers_and_awaited_by_writers(tmp_path):
    """Another process creating a table: its folder is listed before its first version is
    written, and for that moment it cannot be opened (seen with two stream members starting
    on a new database)."""
    import lancedb
    import pyarrow as pa

    (tmp_path / "docs.lance" / "_versions").mkdir(parents=True)  # mid-creation
    db = lancedb.connect(tmp_path)
    assert "docs" in store.table_names(db)
    assert store.open_if_exists(db, "docs") is None
    assert store.current_version(str(tmp_path), "docs", "fake-hash") is None
    with pytest.raises(ValueError, match="not found"):
        store.open_created(db, "docs", timeout_s=0.2)
    db.create_table("ready", pa.table({"a": [1]}))
    assert store.open_created(db, "ready").count_rows() == 1
    assert store.open_if_exists(db, "missing") is None
