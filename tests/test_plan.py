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
