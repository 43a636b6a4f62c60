from freshindex.schemas.records import SourceRef
from freshindex.transforms.plan import DELETED, ERRORS, PROCESS, SKIPPED, UPDATED, decide


def ref(doc_id="a.md", content_hash="h1", uri=None):
    return SourceRef(doc_id, uri or f"/src/{doc_id}", content_hash, "text/markdown")


def tags(*args, **kwargs):
    return [t for t, _ in decide(*args, **kwargs)]


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


def test_full_sync_deletes_only_documents_of_this_source(tmp_path):
    from freshindex.transforms.read import resolve_source

    (tmp_path / "folder-a").mkdir()
    owns = resolve_source(str(tmp_path / "folder-a")).owns
    other = [("h1", "fp", f"{tmp_path}/folder-b/x.md")]
    mine = [("h1", "fp", f"{tmp_path}/folder-a/x.md")]
    assert tags("x.md", [], other, "fp", "full", owns) == []
    assert tags("x.md", [], mine, "fp", "full", owns) == [DELETED]


def test_a_listed_but_unreadable_document_is_present_not_gone():
    stored = [("h1", "fp", "/src/a.md", "files:/src")]
    args = ("a.md", [], stored, "fp", "full")
    assert tags(*args, namespace="files:/src") == [DELETED]
    assert tags(*args, namespace="files:/src", failed=True) == []


def test_another_namespaces_document_is_neither_replaced_nor_deleted():
    stored = [("h1", "fp", "kafka://t#a.md", "kafka:t")]
    out = list(
        decide("a.md", [ref(content_hash="h2")], stored, "fp", "full", namespace="files:/src")
    )
    assert [t for t, _ in out] == [ERRORS]
    error = out[0][1]
    assert error.error_class == "NamespaceConflict" and error.stage == "plan"
    assert "kafka:t" in error.message and "namespace" in error.message
    assert tags("a.md", [], stored, "fp", "full", namespace="files:/src") == []
    # the same namespace (shared by configuration) may do both
    assert tags("a.md", [ref(content_hash="h2")], stored, "fp", "full", namespace="kafka:t") == [
        UPDATED,
        PROCESS,
    ]
    assert tags("a.md", [], stored, "fp", "full", namespace="kafka:t") == [DELETED]


def test_a_document_from_before_namespaces_belongs_to_the_source_that_can_produce_it():
    legacy = [("h1", "fp", "/src/a.md", None)]

    def owns(uri):
        return uri.startswith("/src/")

    assert tags("a.md", [ref(content_hash="h2")], legacy, "fp", "full", owns, namespace="n") == [
        UPDATED,
        PROCESS,
    ]

    def elsewhere(uri):
        return uri.startswith("/other/")

    assert tags("a.md", [ref()], legacy, "fp", "full", elsewhere, namespace="n") == [ERRORS]
    assert tags("a.md", [], legacy, "fp", "full", elsewhere, namespace="n") == []


def test_ownership_uses_beams_glob_semantics(tmp_path):
    from freshindex.transforms.read import pattern_matches, resolve_source

    d = tmp_path / "dir"
    (d / "guide").mkdir(parents=True)
    (d / "a.txt").write_text("x")
    txt = resolve_source(f"{d}/*.txt")
    assert txt.owns(f"{d}/a.txt") and txt.owns(f"{d}/b.txt")
    assert not txt.owns(f"{d}/guide/x.md") and not txt.owns(f"{d}/guide/b.txt")
    assert not txt.owns(f"{d}/a.md") and not txt.owns(f"{tmp_path}/dir2/a.txt")
    deep = resolve_source(f"{d}/**/*.md")
    assert deep.owns(f"{d}/guide/x.md") and deep.owns(f"{d}/guide/more/y.md")
    assert not deep.owns(f"{d}/guide/x.txt")
    single = resolve_source(str(d / "a.txt"))
    assert single.owns(f"{d}/a.txt") and not single.owns(f"{d}/a.txt.bak")
    assert not single.owns(f"{d}/b.txt")
    folder = resolve_source(str(d))
    assert folder.owns(f"{d}/guide/x.md") and not folder.owns(f"{tmp_path}/dir-old/x.md")
    assert pattern_matches("gs://b/docs/?.md", "gs://b/docs/a.md")
    assert pattern_matches("gs://b/docs/[ab].md", "gs://b/docs/b.md")
    assert not pattern_matches("gs://b/docs/[ab].md", "gs://b/docs/c.md")
    assert not pattern_matches("gs://b/docs/*", "gs://b/docs-2/a.md")


def test_source_specs_are_absolute_and_know_what_they_own(tmp_path):
    from freshindex.transforms.read import resolve_source

    (tmp_path / "docs").mkdir()
    (tmp_path / "c.jsonl").write_text("")
    folder = resolve_source(str(tmp_path / "docs"))
    assert folder.pattern == f"{tmp_path}/docs/**" and folder.namespace == f"files:{tmp_path}/docs"
    jsonl = resolve_source(str(tmp_path / "c.jsonl"))
    assert jsonl.kind == "jsonl" and jsonl.namespace == f"jsonl:{tmp_path}/c.jsonl"
    assert jsonl.owns(f"{tmp_path}/c.jsonl#42") and not jsonl.owns(f"{tmp_path}/c.jsonl")
    assert not jsonl.owns(f"{tmp_path}/d.jsonl#42")
    glob = resolve_source(str(tmp_path / "docs" / "*.md"))
    # a narrower glob shares its folder's namespace: the same root, the same doc ids
    assert glob.root == f"{tmp_path}/docs" and glob.namespace == folder.namespace
    remote = resolve_source("gs://bucket/docs")
    assert remote.pattern == "gs://bucket/docs/**" and remote.namespace == "files:gs://bucket/docs"
    assert resolve_source("gs://bucket/docs", "team").namespace == "team"
