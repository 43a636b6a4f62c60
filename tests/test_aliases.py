"""Aliases: index names readers use, resolved at each pin, switched in one atomic step.

Real LanceDB tables (written by the batch pipeline's commit helpers would take seconds:
the tables here are small chunks tables written directly with the pinned schema) and
the fake embedder ``fake-hash``; one test on moto S3.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pyarrow as pa
import pytest

from freshindex import store
from freshindex.embedding import FAKE_MODEL, FakeHashEmbedder
from freshindex.errors import TableError
from freshindex.query.readers import IndexReader
from freshindex.query.retrieval import retrieve
from freshindex.schemas.tables import chunks_schema


def make_table(db, name: str, texts: dict[str, str], *, dim: int = 64, model: str = FAKE_MODEL):
    """A chunks table holding one chunk per document, vectors from the fake embedder."""
    schema = chunks_schema(dim, model=model)
    embedder = FakeHashEmbedder(dim=dim)
    vectors = embedder.encode(list(texts.values()))
    rows = []
    for (doc_id, text), vector in zip(texts.items(), vectors):
        row = {f.name: None for f in schema}
        row.update(
            chunk_id=f"{name}:{doc_id}",
            doc_id=doc_id,
            chunk_index=0,
            text=text,
            text_hash=text,
            content_hash=text,
            fingerprint="test",
            embedding_model=model,
            vector=np.asarray(vector, np.float32),
        )
        rows.append(row)
    return db.create_table(name, pa.Table.from_pylist(rows, schema=schema))


@pytest.fixture
def two_tables(db_uri):
    db = store.connect(db_uri)
    make_table(db, "docs", {"a": "ducks swim in the pond", "b": "geese fly south"})
    make_table(db, "docs__new", {"a": "ducks swim (new)", "c": "swans are white"})
    return db


def doc_ids(reader, as_of=None) -> set[str]:
    return {h.doc_id for h in retrieve(reader, "ducks", mode="vector", k=10, as_of=as_of)}


def test_a_name_without_alias_is_its_table(two_tables):
    target = store.resolve_alias(two_tables, "docs")
    assert (target.table, target.version, target.aliased) == ("docs", None, False)
    assert store.list_aliases(two_tables) == []


def test_switch_is_seen_by_the_next_pin_and_not_by_a_pinned_reader(two_tables, db_uri):
    reader = IndexReader(two_tables, "docs", embedder=FakeHashEmbedder())
    before = reader.pinned()
    assert before.name == "docs" and doc_ids(before) == {"a", "b"}
    store.set_alias(db_uri, "docs", "docs__new", reason="cutover")
    # the request that pinned before the switch reads the old table to its end
    assert before.name == "docs" and doc_ids(before) == {"a", "b"}
    after = reader.pinned()
    assert after.name == "docs__new" and doc_ids(after) == {"a", "c"}
    assert reader.physical_table == "docs__new"
    store.set_alias(db_uri, "docs", "docs", reason="rollback")
    assert doc_ids(reader) == {"a", "b"}
    history = store.alias_history(two_tables, "docs")
    assert [(r["table"], r["reason"]) for r in history] == [
        ("docs__new", "cutover"),
        ("docs", "rollback"),
    ]


def test_an_alias_can_pin_a_version(two_tables, db_uri):
    old = store.open_chunks(two_tables, "docs").version
    table = store.open_chunks(two_tables, "docs")
    table.delete("doc_id = 'b'")
    reader = IndexReader(two_tables, "docs", embedder=FakeHashEmbedder())
    assert doc_ids(reader) == {"a"}
    store.set_alias(db_uri, "docs", "docs", old)
    assert doc_ids(reader) == {"a", "b"}
    assert reader.resolve(None) == old


def test_bad_targets_are_refused(two_tables, db_uri):
    with pytest.raises(TableError, match="no table"):
        store.set_alias(db_uri, "docs", "nope")
    with pytest.raises(TableError, match="no version 99"):
        store.set_alias(db_uri, "docs", "docs__new", 99)
    store.set_alias(db_uri, "live", "docs")
    with pytest.raises(TableError, match="itself an alias"):
        store.set_alias(db_uri, "other", "live")
    moved = store.set_alias(db_uri, "docs", "docs__new")
    with pytest.raises(TableError, match="moved"):  # decided from a stale target
        store.set_alias(db_uri, "docs", "docs", expect=store.Target("docs", "docs"))
    assert store.resolve_alias(two_tables, "docs") == moved


def test_a_reader_embeds_with_the_model_of_the_table_it_reads(db_uri):
    db = store.connect(db_uri)
    make_table(db, "docs", {"a": "ducks"}, dim=64)
    make_table(db, "docs__wide", {"a": "ducks"}, dim=32, model="other-model")
    reader = IndexReader(db, "docs", embedder=FakeHashEmbedder())
    assert reader.pinned().embedder.model_name == FAKE_MODEL
    store.set_alias(db_uri, "docs", "docs__wide")
    pinned = reader.pinned()
    # the reader's fake-hash embedder is not used for a table of another model
    assert pinned.model == "other-model" and pinned._embedder is None


def test_concurrent_switches_append_one_row_each(two_tables, db_uri):
    errors = []

    def flip(i):
        try:
            store.set_alias(db_uri, "docs", "docs__new" if i % 2 else "docs", reason=str(i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=flip, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = [r["seq"] for r in store.alias_history(two_tables, "docs")]
    assert seqs == list(range(1, 7))


def test_aliases_on_object_storage(fake_cfg, s3_bucket):
    cfg = dataclasses.replace(fake_cfg, db=f"s3://{s3_bucket}/lancedb")
    db = store.connect(cfg.db)
    make_table(db, "docs", {"a": "ducks", "b": "geese"})
    make_table(db, "docs__new", {"c": "swans"})
    reader = IndexReader(db, "docs", embedder=FakeHashEmbedder())
    before = reader.pinned()
    store.set_alias(cfg.db, "docs", "docs__new", commit=cfg.commit)
    # another process's view: a fresh connection resolves the new target
    assert store.resolve_alias(store.connect(cfg.db), "docs").table == "docs__new"
    assert doc_ids(before) == {"a", "b"} and doc_ids(reader) == {"c"}


def test_alias_commands(two_tables, db_uri, capsys):
    from freshindex.cli import main

    assert main(["alias", "set", "docs", "docs__new", "--db", db_uri]) == 0
    assert main(["alias", "list", "--db", db_uri]) == 0
    assert main(["alias", "show", "docs", "--db", db_uri]) == 0
    out = capsys.readouterr().out
    assert out.count("docs -> docs__new") == 3 and "alias set" in out
    assert main(["alias", "set", "docs", "--db", db_uri]) == 2  # no table named
    assert main(["alias", "set", "docs", "nope", "--db", db_uri]) != 0
    assert store.resolve_alias(two_tables, "docs").table == "docs__new"


def test_the_http_api_follows_a_switch(two_tables, db_uri):
    from fastapi.testclient import TestClient

    from freshindex.query.api import create_app
    from freshindex.query.config import load_query_config
    from freshindex.query.service import QueryService
    from freshindex.testing import index_config

    qcfg = load_query_config(
        overrides={"gateway.cache.enabled": False, "api.rate_limit_per_minute": 0}, environ={}
    )
    client = TestClient(create_app(QueryService(index_config(db_uri), qcfg, environ={})))

    def served() -> set[str]:
        body = {"query": "ducks", "mode": "vector", "k": 5}
        response = client.post("/search", json=body)
        assert response.status_code == 200, response.text
        return {hit["doc_id"] for hit in response.json()["hits"]}

    def versions() -> list[int]:
        body = client.get("/versions").json()
        rows = body["versions"] if isinstance(body, dict) else body
        return [row["version"] for row in rows]

    assert served() == {"a", "b"}
    two_tables.open_table("docs").delete("doc_id = 'b'")  # a second version of docs
    assert len(versions()) == 2
    store.set_alias(db_uri, "docs", "docs__new")
    assert served() == {"a", "c"}
    assert len(versions()) == 1  # the versions readers of the name can pin now


def test_lineage_and_status_of_an_index_name_read_its_table_now(two_tables, db_uri):
    """diff, explain and status given the index name read the table the alias names."""
    from freshindex.config import Config
    from freshindex.query.lineage import diff_versions, explain_document
    from freshindex.query.status import status_report

    store.set_alias(db_uri, "idx", "docs__new")
    diff = diff_versions(two_tables, "idx", 1, 1)
    assert diff["table"] == "docs__new" and diff["to"]["documents"] == 2
    assert explain_document(two_tables, "idx", "c")["present"]  # only docs__new holds c
    assert status_report(Config(db=db_uri, table="idx"))["table"] == "docs__new"
