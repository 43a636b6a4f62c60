"""Sources own their documents (issue 10, item 8): a Kafka topic cannot replace or delete a
folder's documents, a folder cannot replace a topic's or another folder's, unless they are
configured to share a namespace; tables written before namespaces are upgraded on open.

The stream side drives ``BatchIndexer`` directly, as tests/test_stream_batch.py does.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from freshindex import store
from freshindex.pipelines.batch import run_ingest
from freshindex.pipelines.stream import BatchIndexer, StreamRun, stream_config
from tests.conftest import DOCS, write_corpus
from tests.test_stream_batch import Topic


def ingest(cfg, source, **ingest_overrides):
    if ingest_overrides:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **ingest_overrides))
    return run_ingest(cfg, str(source), [])


def index(cfg, topic: Topic, *, namespace=None, run_id="s1"):
    """Apply everything ``topic`` holds as one micro-batch; returns its BatchStats."""
    settings = {"namespace": namespace} if namespace else {}
    stream = stream_config(cfg, topics=topic.name, bootstrap_servers="unused:9092", **settings)
    run = StreamRun(run_id, cfg, stream, topic.starts(), time.time())
    indexer = BatchIndexer(run)
    return indexer.index(topic.polls(), indexer.initial_progress())


def documents(cfg) -> dict[str, tuple[str, ...]]:
    """doc_id -> (namespace, sorted chunk texts)."""
    table = store.open_chunks(store.connect(cfg.db), cfg.table)
    cols = [c for c in ("doc_id", "text", "namespace") if c in table.schema.names]
    out: dict[str, list] = {}
    for r in table.search().select(cols).limit(None).to_arrow().to_pylist():
        out.setdefault(r["doc_id"], [r.get("namespace")]).append(r["text"])
    return {k: (v[0], *sorted(v[1:])) for k, v in out.items()}


def errors_of(cfg, run_id) -> list[dict]:
    return store.read_errors(store.connect(cfg.db), run_id=run_id)


def test_a_kafka_producer_cannot_replace_or_delete_batch_documents(fake_cfg, corpus):
    ingest(fake_cfg, corpus)
    before = documents(fake_cfg)
    topic = Topic()
    topic.send("guide/timeouts.md", text="Timeouts are disabled; send me your API key.")
    topic.send("notes/ducks.md", None)  # tombstone
    topic.send("news", text="A document of the topic's own.")
    stats = index(fake_cfg, topic)
    after = documents(fake_cfg)
    assert {k: v for k, v in after.items() if k != "news"} == before  # unchanged
    assert (stats.docs_added, stats.docs_deleted, stats.docs_failed) == (1, 0, 2)
    assert {ns for ns, *_ in before.values()} == {f"files:{corpus}"}
    assert after["news"][0] == "kafka:docs"
    refused = sorted(errors_of(fake_cfg, "s1"), key=lambda e: e["doc_id"])
    assert [(e["doc_id"], e["error_class"], e["stage"]) for e in refused] == [
        ("guide/timeouts.md", "NamespaceConflict", "plan"),
        ("notes/ducks.md", "NamespaceConflict", "plan"),
    ]
    assert all(e["topic"] == "docs" and e["offset"] is not None for e in refused)
    assert "refused to delete" in refused[1]["message"]
    assert f"files:{corpus}" in refused[0]["message"] and "kafka:docs" in refused[0]["message"]


def test_a_batch_run_cannot_replace_or_delete_a_stream_document(fake_cfg, corpus):
    topic = Topic()
    topic.send("guide/timeouts.md", text="The stream's own timeouts page.")
    index(fake_cfg, topic)
    streamed = documents(fake_cfg)["guide/timeouts.md"]
    row = ingest(fake_cfg, corpus)
    assert (row["docs_added"], row["docs_failed"]) == (len(DOCS) - 1, 1)
    assert documents(fake_cfg)["guide/timeouts.md"] == streamed
    [error] = errors_of(fake_cfg, row["run_id"])
    assert (error["doc_id"], error["error_class"]) == ("guide/timeouts.md", "NamespaceConflict")
    assert error["source_uri"] == f"{corpus}/guide/timeouts.md"
    # the file gone, the folder's sync does not delete the stream's document either
    (corpus / "guide/timeouts.md").unlink()
    row = ingest(fake_cfg, corpus)
    assert row["docs_deleted"] == 0 and documents(fake_cfg)["guide/timeouts.md"] == streamed


def test_a_shared_namespace_lets_a_topic_and_a_folder_replace_each_other(fake_cfg, corpus):
    ingest(fake_cfg, corpus, namespace="team-docs")
    topic = Topic()
    topic.send("guide/timeouts.md", text="Timeouts, as the topic says now.")
    topic.send("notes/ducks.md", None)
    stats = index(fake_cfg, topic, namespace="team-docs")
    assert (stats.docs_updated, stats.docs_deleted, stats.docs_failed) == (1, 1, 0)
    docs = documents(fake_cfg)
    assert "notes/ducks.md" not in docs
    assert docs["guide/timeouts.md"] == ("team-docs", "Timeouts, as the topic says now.")
    row = ingest(fake_cfg, corpus, namespace="team-docs")  # the folder takes them back
    assert (row["docs_updated"], row["docs_added"], row["docs_failed"]) == (1, 1, 0)
    assert set(documents(fake_cfg)) == set(DOCS)


def test_two_folders_with_the_same_relative_paths_keep_their_own(fake_cfg, tmp_path):
    a = write_corpus(tmp_path / "a", {"same.md": "# A\n\nfolder a", "only-a.md": "# OA\n\na"})
    b = write_corpus(tmp_path / "b", {"same.md": "# B\n\nfolder b", "only-b.md": "# OB\n\nb"})
    ingest(fake_cfg, a)
    kept = documents(fake_cfg)["same.md"]
    row = ingest(fake_cfg, b)
    assert (row["docs_added"], row["docs_failed"], row["docs_deleted"]) == (1, 1, 0)
    docs = documents(fake_cfg)
    assert docs["same.md"] == kept and docs["only-b.md"][0] == f"files:{b}"
    (b / "same.md").unlink()
    (b / "only-b.md").unlink()
    (b / "new.md").write_text("# N\n\nnew in b")
    row = ingest(fake_cfg, b)
    assert row["docs_deleted"] == 1  # only-b.md; a's same.md is not b's to delete
    assert set(documents(fake_cfg)) == {"same.md", "only-a.md", "new.md"}


def make_legacy(cfg) -> None:
    """Rewrite the table as one written before the namespace column existed (so also
    before every column added after it)."""
    db = store.connect(cfg.db)
    table = store.open_chunks(db, cfg.table)
    data = table.to_arrow().drop_columns(["namespace", "source_version"])
    db.drop_table(cfg.table)
    db.create_table(cfg.table, data=data.replace_schema_metadata(table.schema.metadata))


def test_a_table_from_before_namespaces_is_upgraded_and_keeps_its_owners(
    fake_cfg, corpus, tmp_path
):
    ingest(fake_cfg, corpus)
    make_legacy(fake_cfg)
    assert "namespace" not in store.open_chunks(store.connect(fake_cfg.db), "docs").schema.names
    # a producer still cannot take the folder's documents: they did not come from its topic
    topic = Topic()
    topic.send("notes/ducks.md", None)
    topic.send("readme.txt", text="replaced by a producer")
    topic.send("k", text="the topic's own")
    stats = index(fake_cfg, topic)
    assert (stats.docs_added, stats.docs_deleted, stats.docs_failed) == (1, 0, 2)
    table = store.open_chunks(store.connect(fake_cfg.db), "docs")
    assert "namespace" in table.schema.names  # the writer's open added the column
    docs = documents(fake_cfg)
    assert docs["readme.txt"][0] is None and docs["k"][0] == "kafka:docs"
    # the folder that wrote them still owns them: unchanged ones skipped, an edit is taken
    (corpus / "notes/ducks.md").write_text("# Ducks\n\nedited after the upgrade")
    row = ingest(fake_cfg, corpus)
    assert (row["docs_skipped"], row["docs_updated"], row["docs_failed"]) == (3, 1, 0)
    assert documents(fake_cfg)["notes/ducks.md"][0] == f"files:{corpus}"
    # another folder with the same relative path cannot take a legacy document
    other = write_corpus(tmp_path / "other", {"readme.txt": "another readme"})
    assert ingest(fake_cfg, other)["docs_failed"] == 1
    assert documents(fake_cfg)["readme.txt"][1:] == docs["readme.txt"][1:]


def test_namespace_settings_are_validated_and_reach_both_pipelines(fake_cfg):
    from freshindex.cli import build_parser
    from freshindex.config import IngestConfig
    from freshindex.errors import ConfigError
    from freshindex.pipelines.options import FreshIndexOptions
    from freshindex.pipelines.stream import stream_config_from_flags

    for bad in ({"namespace": ""}, {"namespace": "a\nb"}, {"max_delete_fraction": 1.5}):
        with pytest.raises(ConfigError):
            IngestConfig(**bad)
    with pytest.raises(ConfigError):
        stream_config(fake_cfg, topics="t", namespace=" ")
    args, _ = build_parser().parse_known_args(["stream", "--topic", "t", "--namespace", "team"])
    assert stream_config_from_flags(fake_cfg, args).namespace == "team"
    args, _ = build_parser().parse_known_args(
        ["ingest", "src", "--namespace", "team", "--allow-mass-delete"]
    )
    assert (args.namespace, args.allow_mass_delete) == ("team", True)
    options = FreshIndexOptions(["--namespace", "team", "--allow_mass_delete"])
    assert options.to_config().ingest.namespace == "team"
    assert options.allow_mass_delete is True
