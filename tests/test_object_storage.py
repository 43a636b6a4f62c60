"""The batch pipeline with its sources, its staging area and its LanceDB database on a real
S3-compatible server (moto's, on loopback): the behaviours the local-disk tests cover
(incremental re-run, edit, delete, rollback, as-of reads, upkeep with retention, the errors
table) hold on object storage too, and unchanged objects are not downloaded again.
"""

from __future__ import annotations

import dataclasses
import time

import boto3
import pytest

from freshindex import store
from freshindex.cli import rollback
from freshindex.pipelines.batch import run_ingest
from freshindex.store.upkeep import maintain
from freshindex.transforms.read import RACY_WINDOW_S
from tests.conftest import DOCS, FIXTURES, table_rows

pytestmark = pytest.mark.slow


def upload(bucket: str, prefix: str, docs: dict[str, str | bytes]) -> None:
    s3 = boto3.client("s3")
    for rel, body in docs.items():
        data = body.encode() if isinstance(body, str) else body
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)


@pytest.fixture
def s3_cfg(fake_cfg, s3_bucket):
    """The fake-embedder config with its database on the bucket; the corpus under docs/."""
    upload(s3_bucket, "docs", DOCS)
    return dataclasses.replace(fake_cfg, db=f"s3://{s3_bucket}/lancedb")


def ingest(cfg, bucket, **ingest_overrides):
    if ingest_overrides:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **ingest_overrides))
    return run_ingest(cfg, f"s3://{bucket}/docs/")


def content(rows):
    return sorted((r["doc_id"], r["chunk_id"], r["text"]) for r in rows)


def test_first_run_and_unchanged_rerun_on_object_storage(s3_cfg, s3_bucket):
    first = ingest(s3_cfg, s3_bucket)
    rows = table_rows(s3_cfg.db)
    assert first["status"] == "succeeded"
    assert {r["doc_id"] for r in rows} == set(DOCS)
    assert len({r["chunk_id"] for r in rows}) == len(rows) == first["chunks_written"]
    again = ingest(s3_cfg, s3_bucket)
    assert again["docs_skipped"] == len(DOCS) and again["chunks_embedded"] == 0
    assert again["table_version"] == first["table_version"]
    # each run's staging folder on the bucket is removed after its commit
    for run in (first, again):
        prefix = f"lancedb/_staging/docs/{run['run_id']}"
        listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix=prefix)
        assert listed.get("KeyCount", 0) == 0


def test_edit_delete_rollback_and_as_of_on_object_storage(s3_cfg, s3_bucket):
    first = ingest(s3_cfg, s3_bucket)
    first_rows = content(table_rows(s3_cfg.db))
    s3 = boto3.client("s3")
    upload(s3_bucket, "docs", {"notes/ducks.md": "# Geese\n\nGeese are larger than ducks."})
    s3.delete_object(Bucket=s3_bucket, Key="docs/guide/auth.md")
    second = ingest(s3_cfg, s3_bucket)
    assert (second["docs_updated"], second["docs_deleted"]) == (1, 1)
    after = table_rows(s3_cfg.db)
    assert "guide/auth.md" not in {r["doc_id"] for r in after}
    assert any("Geese" in r["text"] for r in after)
    assert content(table_rows(s3_cfg.db, version=first["run_id"])) == first_rows
    back = rollback(s3_cfg.db, "docs", first["run_id"])
    assert back["table_version"] > second["table_version"]
    assert content(table_rows(s3_cfg.db)) == first_rows


def test_bad_objects_go_to_the_errors_table_on_object_storage(s3_cfg, s3_bucket):
    upload(
        s3_bucket,
        "docs",
        {"bad/empty.md": b"", "bad/scanned.pdf": (FIXTURES / "scanned_page.pdf").read_bytes()},
    )
    row = ingest(s3_cfg, s3_bucket, max_failure_fraction=0.9)
    errors = store.read_errors(store.connect(s3_cfg.db), run_id=row["run_id"])
    assert {e["doc_id"]: e["error_class"] for e in errors} == {
        "bad/empty.md": "EmptyDocument",
        "bad/scanned.pdf": "EmptyDocument",
    }
    assert {r["doc_id"] for r in table_rows(s3_cfg.db)} == set(DOCS)


def test_upkeep_with_retention_on_object_storage(s3_cfg, s3_bucket):
    for i in range(4):
        upload(s3_bucket, "docs", {"notes/ducks.md": f"# Ducks\n\nEdit number {i} of the note."})
        ingest(s3_cfg, s3_bucket)
    last = ingest(s3_cfg, s3_bucket)
    before = table_rows(s3_cfg.db)
    policy = dataclasses.replace(
        s3_cfg.maintenance, keep_all_hours=0, keep_versions=2, min_version_age_minutes=0
    )
    report = maintain(s3_cfg.db, "docs", policy)
    assert report.versions_removed > 0  # versions (manifests and data) deleted on the bucket
    assert content(table_rows(s3_cfg.db)) == content(before)
    assert content(table_rows(s3_cfg.db, version=last["run_id"])) == content(before)


@pytest.fixture
def object_gets(monkeypatch):
    """Keys of the source objects (under docs/) this process downloaded: every S3 client in
    the process (Beam's, through botocore) makes its GetObject calls here."""
    from botocore.client import BaseClient

    gets: list[str] = []
    call = BaseClient._make_api_call

    def counting(self, operation, params):
        if operation in ("GetObject", "HeadObject") and params.get("Key", "").startswith("docs/"):
            gets.append(params["Key"])
        return call(self, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", counting)
    return gets


def test_an_unchanged_rerun_downloads_no_object(s3_cfg, s3_bucket, object_gets):
    time.sleep(RACY_WINDOW_S + 0.5)  # LastModified has whole seconds: a fresh one is racy
    first = ingest(s3_cfg, s3_bucket)
    assert first["docs_added"] == len(DOCS) and object_gets  # read and parsed once
    object_gets.clear()
    again = ingest(s3_cfg, s3_bucket)
    assert object_gets == []
    assert again["docs_skipped"] == len(DOCS)
    # an edited object is downloaded (hashed, then parsed) and updated; no other one is
    time.sleep(1.1)
    upload(s3_bucket, "docs", {"notes/ducks.md": "# Geese\n\nGeese are larger than ducks."})
    time.sleep(RACY_WINDOW_S + 0.5)
    object_gets.clear()
    edited = ingest(s3_cfg, s3_bucket)
    assert edited["docs_updated"] == 1
    assert set(object_gets) == {"docs/notes/ducks.md"}
    # the same bytes uploaded again: read once, skipped, then not read any more
    time.sleep(1.1)
    upload(s3_bucket, "docs", {"notes/ducks.md": "# Geese\n\nGeese are larger than ducks."})
    time.sleep(RACY_WINDOW_S + 0.5)
    object_gets.clear()
    reuploaded = ingest(s3_cfg, s3_bucket)
    assert reuploaded["docs_skipped"] == len(DOCS) and reuploaded["chunks_written"] == 0
    assert set(object_gets) == {"docs/notes/ducks.md"}
    object_gets.clear()
    assert ingest(s3_cfg, s3_bucket)["docs_skipped"] == len(DOCS)
    assert object_gets == []


def test_a_jsonl_corpus_on_object_storage_is_planned_lean_and_read_again(s3_cfg, s3_bucket):
    """A JSONL file on S3 takes the lean path (refs without text, each record to process
    read again at its offset): the same rows as the local path would write."""
    import json

    records = [
        {"_id": f"r{i}", "title": f"T{i}", "text": f"record {i} " * (5 + i)} for i in range(7)
    ]
    body = "".join(json.dumps(r) + "\n" for r in records)
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="corpus/c.jsonl", Body=body.encode())
    first = run_ingest(s3_cfg, f"s3://{s3_bucket}/corpus/c.jsonl")
    assert first["status"] == "succeeded" and first["docs_added"] == len(records)
    rows = table_rows(s3_cfg.db)
    assert {r["doc_id"] for r in rows} == {r["_id"] for r in records}
    by_doc = {r["doc_id"]: r["text"] for r in rows}
    assert all(f"record {i} record {i}" in by_doc[f"r{i}"] for i in range(7))
    again = run_ingest(s3_cfg, f"s3://{s3_bucket}/corpus/c.jsonl")
    assert again["docs_skipped"] == len(records) and again["chunks_embedded"] == 0
