from schemas.records import SourceRef
from transforms.plan import DELETED, ERRORS, PROCESS, SKIPPED, UPDATED, decide


def ref(doc_id="a.md", content_hash="h1", uri=None):
    return SourceRef(doc_id, uri or f"/src/{doc_id}", content_hash, "text/markdown")


def tags(*args):
    return [t for t, _ in decide(*args)]


def test_new_document_is_processed():
    assert tags("a.md", [ref()], [], "fp", "full") == [PROCESS]


def test_unchanged_document_is_skipped():
    assert tags("a.md", [ref()], [("h1", "fp")], "fp", "full") == [SKIPPED]


def test_changed_content_or_settings_reprocess_as_update():
    assert tags("a.md", [ref(content_hash="h2")], [("h1", "fp")], "fp", "full") == [
        UPDATED,
        PROCESS,
    ]
    assert tags("a.md", [ref()], [("h1", "old-fp")], "fp", "full") == [UPDATED, PROCESS]


def test_gone_document_is_deleted_only_with_full_sync():
    assert tags("a.md", [], [("h1", "fp")], "fp", "full") == [DELETED]
    assert tags("a.md", [], [("h1", "fp")], "fp", "append") == []


def test_duplicate_ids_keep_one_and_record_an_error():
    out = list(decide("a.md", [ref(uri="/x/a"), ref(uri="/y/a")], [], "fp", "full"))
    assert [t for t, _ in out] == [ERRORS, PROCESS]
    assert out[0][1].error_class == "DuplicateDocumentId"
    assert out[1][1].source_uri == "/y/a"


def test_full_sync_deletes_only_documents_of_this_source():
    from transforms.plan import owned_by

    owns = owned_by("/data/folder-a/")
    stored = [("h1", "fp", "/data/folder-b/x.md")]
    assert tags("x.md", [], stored, "fp", "full", owns) == []
    assert tags("x.md", [], [("h1", "fp", "/data/folder-a/x.md")], "fp", "full", owns) == [DELETED]


def test_source_specs_are_absolute_and_know_what_they_own(tmp_path):
    from transforms.read import resolve_source

    (tmp_path / "docs").mkdir()
    (tmp_path / "c.jsonl").write_text("")
    folder = resolve_source(str(tmp_path / "docs"))
    assert folder.pattern == f"{tmp_path}/docs/**" and folder.owner_prefix == f"{tmp_path}/docs/"
    jsonl = resolve_source(str(tmp_path / "c.jsonl"))
    assert jsonl.kind == "jsonl" and jsonl.owner_prefix == f"{tmp_path}/c.jsonl#"
    glob = resolve_source(str(tmp_path / "docs" / "*.md"))
    assert glob.root == f"{tmp_path}/docs" and glob.owner_prefix == f"{tmp_path}/docs/"
    remote = resolve_source("gs://bucket/docs")
    assert remote.pattern == "gs://bucket/docs/**" and remote.owner_prefix == "gs://bucket/docs/"
