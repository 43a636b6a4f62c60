"""Access labels on the write side: where a document's labels come from (a record's or
message's ``acl``, the source's rules, the default), the relabel of an unchanged document
(one commit, nothing parsed or embedded), older tables, the agreement of the access
condition's three evaluators, API keys, and ``freshindex access``. FAKE embedder."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pyarrow as pa
import pytest

from freshindex import store
from freshindex.cli import main
from freshindex.config import AccessConfig, load_config
from freshindex.errors import ConfigError
from freshindex.query.access import Access, hash_key
from freshindex.query.config import load_query_config
from freshindex.query.filters import Filter, arrow_mask, to_sql
from freshindex.query.service import QueryService
from freshindex.schemas.messages import InvalidMessage, KafkaRecord, decode_message, encode_message
from freshindex.schemas.records import SourceRef
from freshindex.testing import index_config
from freshindex.transforms.access import Labeler
from freshindex.transforms.plan import PROCESS, RELABELED, SKIPPED, decide
from freshindex.transforms.read import ref_from_record
from tests.test_access_leaks import SHARED, corpus, write


def record(key: str, value: bytes | None) -> KafkaRecord:
    return KafkaRecord("t", 0, 1, key.encode(), value, 1_700_000_000_000)


# ---------------------------------------------------------------- where labels come from


def test_records_and_messages_carry_checked_labels():
    ref = ref_from_record(json.dumps({"_id": "a", "text": "x", "acl": ["hr", "alice", "hr"]}), "f")
    assert ref.acl == ("alice", "hr")
    plain = ref_from_record(json.dumps({"_id": "a", "text": "x"}), "f")
    assert plain.acl is None and plain.content_hash == ref.content_hash  # labels aren't content
    with pytest.raises(ValueError, match="access label"):
        ref_from_record(json.dumps({"_id": "a", "text": "x", "acl": ["a b"]}), "f")
    _, value = encode_message("d", text="hi", acl=[])
    assert decode_message(record("d", value)).acl == ()  # [] is admin only, not "unset"
    assert decode_message(record("d", encode_message("d", text="hi")[1])).acl is None
    for bad in ('"alice"', '["x\'y"]', "[1]"):
        value = b'{"text": "hi", "acl": ' + bad.encode() + b"}"
        with pytest.raises(InvalidMessage, match="acl"):
            decode_message(record("d", value))


def test_rules_and_the_default_label_what_carries_no_acl():
    cfg = AccessConfig(rules={"/data/hr/*": ["hr"], "/data/*/pay*": ["payroll"]})
    labeler = Labeler.of(cfg)
    assert labeler.labels_for("/data/hr/pay.md") == ("hr", "payroll")
    assert labeler.labels_for("/data/eng/a.md") == ("public",)
    assert labeler.labels_for("/data/hr/x.md", ("alice",)) == ("alice",)  # the record's own wins
    deny = Labeler.of(AccessConfig(default="deny"))
    assert deny.labels_for("/anything") == ()
    with pytest.raises(ConfigError, match="public or deny"):
        AccessConfig(default="open")
    with pytest.raises(ConfigError, match="access label"):
        AccessConfig(rules={"/x/*": ["not ok"]})


def test_the_plan_relabels_an_unchanged_document_without_processing_it():
    ref = SourceRef("a", "/a", "h1", "text/plain", acl=("alice",))
    entry = store.LedgerEntry("h1", "fp", "/a", None, None, ("alice", "bob"))
    assert list(decide("a", [ref], [entry], "fp", "full")) == [
        (RELABELED, ("a", "h1", ("alice",))),
        (SKIPPED, "a"),
    ]
    same = entry._replace(acl=("alice",))
    assert list(decide("a", [ref], [same], "fp", "full")) == [(SKIPPED, "a")]
    changed = dataclasses.replace(ref, content_hash="h2")
    assert [t for t, _ in decide("a", [changed], [entry], "fp", "full")][-1] == PROCESS


# ---------------------------------------------------------------- the store


def test_relabel_is_one_commit_and_leaves_a_replaced_document_alone(tmp_path):
    db_uri = str(tmp_path / "db")
    docs = corpus()[:3]
    write(db_uri, docs)
    table = store.open_chunks(store.connect(db_uri), "docs")
    before = table.version
    rows_before = table.search().select(["chunk_id", "vector", "run_id"]).to_arrow()
    (a, _), (b, _) = docs[0], docs[1]
    done = store.relabel(table, {a.doc_id: (a.content_hash, ("carol",)), b.doc_id: ("other", ())})
    assert done == 1 and table.version == before + 1
    ledger = store.read_ledger(table)
    assert ledger[a.doc_id].acl == ("carol",) and ledger[b.doc_id].acl == ("bob",)
    after = table.search().select(["chunk_id", "vector", "run_id"]).to_arrow()
    assert after.sort_by("chunk_id").equals(rows_before.sort_by("chunk_id"))  # nothing else


def test_a_table_from_before_labels_is_read_as_unlabelled_and_upgraded_by_a_writer(tmp_path):
    db_uri = str(tmp_path / "db")
    write(db_uri, corpus()[-4:])  # three public documents and the shared one
    db = store.connect(db_uri)
    table = store.open_chunks(db, "docs")
    old = table.to_arrow().drop_columns(["acl"])
    db.drop_table("docs")
    db.create_table("docs", old)  # as a freshindex before labels wrote it
    store.refresh_fts_index(store.open_chunks(db, "docs"))
    cfg = index_config(db_uri)
    for unlabeled, expected in (("public", 4), ("deny", 0)):
        qcfg = load_query_config(overrides={"retrieval.unlabeled": unlabeled}, environ={})
        svc = QueryService(cfg, qcfg, environ={})
        for mode in ("vector", "fts", "hybrid"):
            hits = svc.search("quarterly budget", mode=mode, k=10, caller=Access.of(["x"])).hits
            assert len(hits) == expected
        assert len(svc.search("budget", k=10, caller=Access.admin()).hits) == 4
    table = store.open_chunks(db, "docs")
    assert store.upgrade_chunks(table, table.schema.field("vector").type.list_size) == ["acl"]


# ---------------------------------------------------------------- the access condition


def test_the_sql_and_the_in_ram_mask_agree(tmp_path):
    db = store.connect(str(tmp_path / "db"))
    acl = [["a"], ["b", "c"], None, [], ["public"], ["a", "public"]]
    data = pa.table(
        {"doc_id": [f"d{i}" for i in range(6)], "acl": pa.array(acl, pa.list_(pa.string()))}
    )
    table = db.create_table("t", data)
    for principals in (["a"], ["c", "public"], ["zzz"]):
        for unlabeled in (False, True):
            f = Filter.visible_to(principals, unlabeled=unlabeled)
            sql = table.search().where(to_sql([f])).select(["doc_id"]).to_arrow()
            mask = arrow_mask(data, [f])
            assert sorted(sql["doc_id"].to_pylist()) == [
                d for d, ok in zip(data["doc_id"].to_pylist(), mask, strict=True) if ok
            ]
    quoted = Filter.of("doc_id", "in", ["d1", "x' OR '1'='1"])
    both = to_sql([quoted, Filter.visible_to(["b"])])
    assert table.search().where(both).select(["doc_id"]).to_arrow()["doc_id"].to_pylist() == ["d1"]


def test_api_keys_are_stored_hashed_and_name_principals():
    digest = hash_key("s3cret\n")
    assert digest.startswith("sha256:") and "s3cret" not in digest
    qcfg = load_query_config(overrides={"api.keys": {digest: ["alice"]}}, environ={})
    assert qcfg.api.keys == {digest: ["alice"]}
    with pytest.raises(ConfigError, match="hash"):
        load_query_config(overrides={"api.keys": {"s3cret": ["alice"]}}, environ={})
    from freshindex.query.guard import check_bind

    check_bind("0.0.0.0", api_key_env=None, insecure_no_auth=False, keys=True)  # hashed keys count
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", api_key_env=None, insecure_no_auth=False)
    assert Access.of(None).principals == ("public",)
    assert Access.of(["alice"]).key != Access.of(["bob"]).key
    assert Access.of("admin").is_admin


# ---------------------------------------------------------------- freshindex access


def test_access_command(tmp_path, capsys):
    db_uri = str(tmp_path / "db")
    write(db_uri, corpus())
    base = ["--db", db_uri, "--table", "docs", "--json"]
    assert main(["access", "show", SHARED, *base]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == [["alice", "bob"]]
    assert main(["access", "show", "nope", *base]) == 1
    capsys.readouterr()
    assert main(["access", "visible", "--as", "alice", *base]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["visible_docs"], row["docs"]) == (6 + 3 + 1, 200 + 6 + 3 + 1)
    assert main(["access", "test", "budget", "--as", "alice", "-k", "7", *base]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert len(hits) == 7 and not any(h["doc_id"].startswith("bob/") for h in hits)


# ---------------------------------------------------------------- through the pipelines


@pytest.mark.slow
def test_a_batch_run_relabels_without_parsing_or_embedding(tmp_path):
    from freshindex.pipelines.batch import run_ingest

    cfg = load_config(
        overrides={"db": str(tmp_path / "db"), "table": "docs", "embedding.model": "fake-hash"},
        environ={},
    )
    path = tmp_path / "c.jsonl"
    recs = [{"_id": "a", "text": "alpha for alice", "acl": ["alice", "bob"]}]
    recs.append({"_id": "p", "text": "public handbook"})
    path.write_text("\n".join(json.dumps(r) for r in recs))
    run_ingest(cfg, str(path), [])
    svc = QueryService(cfg, load_query_config(environ={}), environ={})
    assert {h.doc_id for h in svc.search("alpha", mode="fts", caller=Access.of("bob")).hits} == {
        "a"
    }
    recs[0]["acl"] = ["alice"]
    path.write_text("\n".join(json.dumps(r) for r in recs))
    row = run_ingest(cfg, str(path), [])
    assert row["docs_skipped"] == 2 and row["chunks_embedded"] == 0  # nothing re-processed
    table = store.open_chunks(store.connect(cfg.db), "docs")
    assert store.read_ledger(table)["a"].acl == ("alice",)
    assert svc.search("alpha", mode="fts", caller=Access.of("bob")).hits == ()
    assert {h.doc_id for h in svc.search("alpha", mode="fts", caller=Access.of("alice")).hits} == {
        "a"
    }


@pytest.mark.slow
@pytest.mark.kafka
def test_a_revoke_through_kafka_is_enforced_in_the_next_micro_batch(fake_cfg):
    from freshindex.kafka_broker import create_topic, kafka_for_tests
    from freshindex.pipelines.stream import run_stream, stream_config
    from tests.test_stream_pipeline import publish

    with kafka_for_tests() as bootstrap:
        topic = f"acl-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, partitions=1)

        def catch_up():
            stream = stream_config(
                fake_cfg, topics=topic, bootstrap_servers=bootstrap, stop_at_end=True
            )
            return run_stream(fake_cfg, stream)

        text = "The contract renewal terms for the supplier."
        publish(bootstrap, topic, [encode_message("contract", text=text, acl=["alice", "bob"])])
        publish(bootstrap, topic, [encode_message("handbook", text="Public handbook text.")])
        catch_up()
        qcfg = load_query_config(overrides={"gateway.cache.enabled": False}, environ={})
        svc = QueryService(fake_cfg, qcfg, environ={})
        bob, alice = Access.of("bob"), Access.of("alice")

        def sees(caller, **kw):
            return {
                h.doc_id
                for h in svc.search("contract renewal", mode="fts", caller=caller, **kw).hits
            }

        assert sees(bob) == {"contract"}
        before = store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table).version
        run_ids = {
            r["run_id"]
            for r in store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table)
            .search()
            .select(["run_id"])
            .to_arrow()
            .to_pylist()
        }
        publish(bootstrap, topic, [encode_message("contract", text=text, acl=["alice"])])
        summary = catch_up()
        assert summary["chunks_embedded"] == 0
        assert sees(bob) == set() and sees(alice) == {"contract"}
        assert sees(bob, as_of=before) == set()  # nor the version from before the revoke
        after = store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table)
        assert {
            r["run_id"] for r in after.search().select(["run_id"]).to_arrow().to_pylist()
        } == run_ids


def test_the_tool_loop_keeps_the_requests_mode_and_filters(tmp_path):
    from freshindex.query.retrieval import IndexReader
    from freshindex.query.tools import Toolbox

    db_uri = str(tmp_path / "db")
    write(db_uri, corpus())
    view = IndexReader.open(db_uri, "docs").pinned().restricted(Access.of(["alice", "bob"]))
    box = Toolbox(view, default_k=4, default_mode="fts", base_filters=["doc_id prefix alice/"])
    hits = box.tool_search("budget report")  # the model named no mode and no filter
    assert len(hits) == 4 and all(h["doc_id"].startswith("alice/") for h in hits)
    assert box.hits_seen[hits[0]["chunk_id"]].mode == "fts"
    # the model's own filters are ANDed with the request's, never instead of them
    assert box.tool_search("budget", filters=["doc_id prefix bob/"]) == []
    listed = box.tool_list_sources()
    assert {d["doc_id"].split("/")[0] for d in listed} == {"alice"}


@pytest.mark.slow
def test_a_failed_relabel_fails_the_run_and_the_next_run_applies_it(tmp_path, monkeypatch):
    """A fault at the relabel commit: the run fails loudly (a revoke must not be lost
    silently), nothing half-done is visible, and a re-run ends as a clean run would."""
    import freshindex.transforms.plan as plan
    from freshindex.pipelines.batch import run_ingest

    def jsonl(folder, acl):
        path = folder / "c.jsonl"
        recs = [
            {"_id": f"d{i}", "text": f"document {i} about budgets", "acl": acl} for i in range(4)
        ]
        path.write_text("\n".join(json.dumps(r) for r in recs))
        return str(path)

    def state(cfg):
        table = store.open_chunks(store.connect(cfg.db), "docs")
        rows = table.search().select(["chunk_id", "text", "acl"]).limit(None).to_arrow()
        return sorted((r["chunk_id"], r["text"], tuple(r["acl"])) for r in rows.to_pylist())

    def config(folder):
        overrides = {"db": str(folder / "db"), "table": "docs", "embedding.model": "fake-hash"}
        return load_config(overrides=overrides, environ={})

    faulty, clean = tmp_path / "faulty", tmp_path / "clean"
    for folder in (faulty, clean):
        folder.mkdir()
        run_ingest(config(folder), jsonl(folder, ["alice", "bob"]), [])
    real = plan.relabel

    def crash(*args, **kwargs):
        raise OSError("injected fault at the relabel commit")

    monkeypatch.setattr(plan, "relabel", crash)
    with pytest.raises(Exception, match="injected fault"):
        run_ingest(config(faulty), jsonl(faulty, ["alice"]), [])
    assert {acl for _, _, acl in state(config(faulty))} == {("alice", "bob")}  # unchanged
    monkeypatch.setattr(plan, "relabel", real)
    run_ingest(config(faulty), jsonl(faulty, ["alice"]), [])
    run_ingest(config(clean), jsonl(clean, ["alice"]), [])
    assert state(config(faulty)) == state(config(clean))
    assert {acl for _, _, acl in state(config(clean))} == {("alice",)}


@pytest.mark.slow
@pytest.mark.kafka
def test_a_failed_stream_relabel_is_retried_from_the_uncommitted_offsets(fake_cfg, monkeypatch):
    from freshindex.kafka_broker import create_topic, kafka_for_tests
    from freshindex.pipelines.stream import run_stream, stream_config
    from freshindex.pipelines.stream.microbatch import BatchIndexer
    from tests.test_stream_pipeline import caught_up, publish

    with kafka_for_tests() as bootstrap:
        topic = f"acl-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, partitions=1)
        stream = stream_config(
            fake_cfg, topics=topic, bootstrap_servers=bootstrap, stop_at_end=True
        )
        text = "The contract renewal terms for the supplier."
        publish(bootstrap, topic, [encode_message("contract", text=text, acl=["alice", "bob"])])
        run_stream(fake_cfg, stream)
        publish(bootstrap, topic, [encode_message("contract", text=text, acl=["alice"])])
        real = BatchIndexer.relabel

        def crash(self, relabels, lease):
            raise OSError("injected fault at the relabel commit")

        monkeypatch.setattr(BatchIndexer, "relabel", crash)
        with pytest.raises(Exception, match="injected fault"):
            run_stream(fake_cfg, stream)
        table = store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table)
        assert store.read_ledger(table)["contract"].acl == ("alice", "bob")
        assert not caught_up(bootstrap, topic, stream.kafka.group_id)  # the revoke is not lost
        monkeypatch.setattr(BatchIndexer, "relabel", real)
        run_stream(fake_cfg, stream)
        table = store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table)
        assert store.read_ledger(table)["contract"].acl == ("alice",)
        assert caught_up(bootstrap, topic, stream.kafka.group_id)
