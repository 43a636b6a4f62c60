"""Change detection by listing metadata: an unchanged re-run reads no file.

The read step lists files (size, modification time: ``source_version``), the plan skips
those the ledger recorded with the same listing without reading them, and only the rest
are read and hashed. Reads are counted at the one place a local source file is opened
(``open_regular``, through ``freshindex.transforms.read``) and at the parse step's read, so
a regression that reads every file again fails here. The same on object storage, counted
as S3 GetObject requests: ``tests/test_object_storage.py``.
"""

from __future__ import annotations

import dataclasses
import os
import time

import pytest

from freshindex import store
from freshindex.cli import build_parser
from freshindex.config import IngestConfig
from freshindex.errors import ConfigError
from freshindex.pipelines.batch import run_ingest
from freshindex.schemas.records import ErrorRecord, SourceRef
from freshindex.store.ledger import record_source_versions
from freshindex.transforms import process, read
from freshindex.transforms.access import Labeler
from freshindex.transforms.plan import (
    TO_READ,
    UNCHANGED,
    new_source_version,
    nothing_changed,
    screen,
)
from freshindex.transforms.read import source_version_for
from tests.conftest import DOCS

HOUR_AGO = time.time() - 3600


@pytest.fixture
def reads(monkeypatch):
    """Paths opened by the read step (hash) and by the parse step (bytes to parse)."""
    opened: list[str] = []
    open_regular, read_bytes = read.open_regular, process.read_bytes

    def counting_open(path, **kw):
        opened.append(path)
        return open_regular(path, **kw)

    def counting_read(uri, *args, **kw):
        opened.append(uri)
        return read_bytes(uri, *args, **kw)

    monkeypatch.setattr(read, "open_regular", counting_open)
    monkeypatch.setattr(process, "read_bytes", counting_read)
    return opened


@pytest.fixture
def old_corpus(corpus):
    """The corpus with modification times an hour old (a listing moments after a write is
    not trusted: ``read.RACY_WINDOW_S``)."""
    for rel in DOCS:
        os.utime(corpus / rel, (HOUR_AGO, HOUR_AGO))
    return corpus


def ingest(cfg, source, **ingest):
    if ingest:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **ingest))
    return run_ingest(cfg, str(source), [])


def versions(cfg) -> dict[str, str | None]:
    table = store.open_chunks(store.connect(cfg.db), cfg.table)
    return {d: e.source_version for d, e in store.read_ledger(table).items()}


def test_an_unchanged_rerun_reads_no_file(fake_cfg, old_corpus, reads):
    first = ingest(fake_cfg, old_corpus)
    assert first["docs_added"] == len(DOCS)
    assert all(v and v.startswith("size=") for v in versions(fake_cfg).values())
    reads.clear()
    again = ingest(fake_cfg, old_corpus)
    assert reads == []
    assert (again["docs_seen"], again["docs_skipped"], again["chunks_written"]) == (
        len(DOCS),
        len(DOCS),
        0,
    )


@pytest.fixture
def pipeline_starts(monkeypatch):
    """How many times a batch run built its Beam pipeline."""
    from freshindex.pipelines import batch

    built: list[str] = []
    build = batch.build_ingest

    def counting(p, cfg, source, run, *args, **kw):
        built.append(run.run_id)
        return build(p, cfg, source, run, *args, **kw)

    monkeypatch.setattr(batch, "build_ingest", counting)
    return built


def test_an_unchanged_source_is_recorded_without_the_pipeline(
    fake_cfg, old_corpus, reads, pipeline_starts
):
    first = ingest(fake_cfg, old_corpus)
    assert len(pipeline_starts) == 1
    db = store.connect(fake_cfg.db)
    table = store.open_chunks(db, fake_cfg.table)
    before = (table.version, table.count_rows())
    reads.clear()
    again = ingest(fake_cfg, old_corpus)
    assert len(pipeline_starts) == 1 and reads == []
    assert again["status"] == "succeeded" and again["run_id"] != first["run_id"]
    assert (again["docs_seen"], again["docs_skipped"], again["chunks_written"]) == (
        first["docs_seen"],
        first["docs_seen"],
        0,
    )
    table = store.open_chunks(db, fake_cfg.table)
    assert (table.version, table.count_rows()) == before  # no new version, nothing written
    assert table.tags.list()[f"run-{again['run_id']}"]["version"] == table.version
    assert store.read_runs(db, fake_cfg.table, run_id=again["run_id"])[0]["docs_seen"] == len(DOCS)
    # any change goes through the pipeline again: an edit, a deletion, a new label
    edited = old_corpus / "notes/ducks.md"
    edited.write_text("# Geese\n\nGeese are larger than ducks.")
    os.utime(edited, (HOUR_AGO + 60, HOUR_AGO + 60))
    assert ingest(fake_cfg, old_corpus)["docs_updated"] == 1 and len(pipeline_starts) == 2
    edited.unlink()
    assert ingest(fake_cfg, old_corpus)["docs_deleted"] == 1 and len(pipeline_starts) == 3
    assert ingest(fake_cfg, old_corpus)["docs_deleted"] == 0 and len(pipeline_starts) == 3


def test_nothing_changed_runs_the_plans_own_checks():
    listed = [ref("size=1;mtime=5.000000")]
    entry = store.LedgerEntry("h1", "fp", "/src/a.md", "files:/src", "size=1;mtime=5.000000")
    gone = store.LedgerEntry("h2", "fp", "/src/b.md", "files:/src", "size=1;mtime=5.000000")
    other = store.LedgerEntry("h3", "fp", "/elsewhere/c.md", "files:/other", None)
    labeled = entry._replace(acl=("public",))

    def check(listed, pieces, sync="full", fingerprint="fp", labeler=None):
        return nothing_changed(
            listed, iter(pieces), fingerprint, sync, namespace="files:/src", labeler=labeler
        )

    assert check(listed, [{"a.md": labeled}])
    assert check(listed, [{"a.md": labeled}, {"a.md": labeled, "c.md": other}])  # not ours
    assert not check(listed, [{"a.md": labeled, "b.md": gone}])  # b.md would be deleted
    assert check(listed, [{"a.md": labeled, "b.md": gone}], sync="append")
    assert not check(listed, [{}])  # a.md is new
    assert not check(listed, [{"a.md": labeled}], fingerprint="fp2")  # settings changed
    assert not check([ref(None)], [{"a.md": labeled}])  # a listing not to be trusted
    assert not check([ref("size=1;mtime=6.000000")], [{"a.md": labeled}])  # edited or touched
    assert not check(listed + listed, [{"a.md": labeled}])  # a duplicate id
    hr = Labeler((("/src/*", ("hr",)),))
    assert not check(listed, [{"a.md": labeled}], labeler=hr)  # new labels: a relabel
    assert check(listed, [{"a.md": entry._replace(acl=("hr",))}], labeler=hr)
    unsupported = ErrorRecord(stage="read", error_class="UnsupportedFormat", message="x")
    assert not check([*listed, unsupported], [{"a.md": labeled}])  # the errors row is due


def test_an_edited_file_is_read_and_updated(fake_cfg, old_corpus, reads):
    ingest(fake_cfg, old_corpus)
    edited = old_corpus / "notes/ducks.md"
    edited.write_text("# Geese\n\nGeese are larger than ducks, and louder.")
    os.utime(edited, (HOUR_AGO + 60, HOUR_AGO + 60))
    reads.clear()
    row = ingest(fake_cfg, old_corpus)
    assert (row["docs_updated"], row["docs_skipped"]) == (1, len(DOCS) - 1)
    assert {os.path.basename(p) for p in reads} == {"ducks.md"}  # hashed, then parsed


@pytest.mark.slow
def test_a_touched_file_is_read_once_and_skipped(fake_cfg, old_corpus, reads):
    ingest(fake_cfg, old_corpus)
    touched = old_corpus / "notes/ducks.md"
    os.utime(touched, (HOUR_AGO + 60, HOUR_AGO + 60))
    before = versions(fake_cfg)["notes/ducks.md"]
    reads.clear()
    row = ingest(fake_cfg, old_corpus)
    assert row["docs_skipped"] == len(DOCS) and row["chunks_written"] == 0
    assert [os.path.basename(p) for p in reads] == ["ducks.md"]  # hashed, not parsed
    # the new listing metadata is recorded, so the next run does not read it again
    after = versions(fake_cfg)["notes/ducks.md"]
    assert after != before and after == source_version_for(
        touched.stat().st_size, touched.stat().st_mtime, time.time()
    )
    reads.clear()
    assert ingest(fake_cfg, old_corpus)["docs_skipped"] == len(DOCS)
    assert reads == []


def test_same_size_and_mtime_is_the_known_limit_and_full_hash_catches_it(
    fake_cfg, old_corpus, reads
):
    """A rewrite that keeps the size and the modification time (set back with os.utime) is
    not seen by metadata change detection, as by rsync's default; ``--full-hash``
    (``ingest.change_detection: hash``) reads every file and finds it."""
    ingest(fake_cfg, old_corpus)
    path = old_corpus / "notes/ducks.md"
    original = path.read_text()
    path.write_text(original.replace("u", "U"))  # same size, other bytes
    assert len(path.read_text()) == len(original)
    os.utime(path, (HOUR_AGO, HOUR_AGO))
    reads.clear()
    missed = ingest(fake_cfg, old_corpus)
    assert missed["docs_updated"] == 0 and reads == []
    found = ingest(fake_cfg, old_corpus, change_detection="hash")
    assert found["docs_updated"] == 1
    assert len(reads) == len(DOCS) + 1  # every file hashed, the changed one parsed


@pytest.mark.slow
def test_a_fresh_listing_is_not_trusted(fake_cfg, corpus, reads):
    """Files written moments before the run get no source_version (racy), so they are read
    on the next run, which records it; from then on they are skipped unread."""
    ingest(fake_cfg, corpus)
    assert set(versions(fake_cfg).values()) == {None}
    for rel in DOCS:
        os.utime(corpus / rel, (HOUR_AGO, HOUR_AGO))
    reads.clear()
    assert ingest(fake_cfg, corpus)["docs_skipped"] == len(DOCS)
    assert len(reads) == len(DOCS)
    assert None not in versions(fake_cfg).values()
    reads.clear()
    ingest(fake_cfg, corpus)
    assert reads == []


def test_an_unreadable_candidate_keeps_its_chunks(fake_cfg, old_corpus, monkeypatch):
    ingest(fake_cfg, old_corpus)
    os.utime(old_corpus / "notes/ducks.md", (HOUR_AGO + 60, HOUR_AGO + 60))
    open_regular = read.open_regular

    def failing(path, **kw):
        if path.endswith("ducks.md"):
            raise OSError("503 Slow Down")
        return open_regular(path, **kw)

    monkeypatch.setattr(read, "open_regular", failing)
    row = ingest(fake_cfg, old_corpus)
    assert (row["docs_failed"], row["docs_deleted"]) == (1, 0)
    assert "notes/ducks.md" in versions(fake_cfg)


def ref(version, content_hash=""):
    return SourceRef("a.md", "/src/a.md", content_hash, "text/markdown", source_version=version)


def test_screen_trusts_only_an_equal_listing_of_its_own_document():
    entry = ("h1", "fp", "/src/a.md", "files:/src", "size=1;mtime=5.000000")
    same = list(screen([ref("size=1;mtime=5.000000")], [entry], "fp", namespace="files:/src"))
    assert same == [(UNCHANGED, ref("size=1;mtime=5.000000", "h1"))]
    for refs, ledger, fingerprint, namespace in (
        ([ref("size=1;mtime=6.000000")], [entry], "fp", "files:/src"),  # listing changed
        ([ref(None)], [entry], "fp", "files:/src"),  # racy or no metadata
        ([ref("size=1;mtime=5.000000")], [entry[:4]], "fp", "files:/src"),  # old row
        ([ref("size=1;mtime=5.000000")], [entry], "fp2", "files:/src"),  # settings changed
        ([ref("size=1;mtime=5.000000")], [entry], "fp", "files:/other"),  # not its own
        ([ref("size=1;mtime=5.000000")], [], "fp", "files:/src"),  # new
    ):
        assert {tag for tag, _ in screen(refs, ledger, fingerprint, namespace=namespace)} == {
            TO_READ
        }
    assert new_source_version([ref("size=2;mtime=9.000000", "h1")], [entry]) == (
        "a.md",
        "h1",
        "size=2;mtime=9.000000",
    )
    assert new_source_version([ref(None, "h1")], [entry]) is None


def test_full_hash_flag_sets_change_detection():
    args = build_parser().parse_args(["ingest", "docs/", "--full-hash"])
    assert args.full_hash is True
    with pytest.raises(ConfigError, match="change_detection"):
        IngestConfig(change_detection="sometimes")


@pytest.mark.slow
def test_a_table_from_before_the_column_is_upgraded_and_read_as_before(fake_cfg, old_corpus, reads):
    """A table written before ``source_version`` existed has no listing to trust: the first
    run reads and hashes every file as before (all skipped), adds the column and records the
    listings; the next run reads nothing."""
    ingest(fake_cfg, old_corpus)
    db = store.connect(fake_cfg.db)
    table = store.open_chunks(db, fake_cfg.table)
    data = table.to_arrow().drop_columns(["source_version"])
    db.drop_table(fake_cfg.table)
    db.create_table(fake_cfg.table, data=data.replace_schema_metadata(table.schema.metadata))
    reads.clear()
    row = ingest(fake_cfg, old_corpus)
    assert row["docs_skipped"] == len(DOCS) and len(reads) == len(DOCS)
    assert None not in versions(fake_cfg).values()
    reads.clear()
    ingest(fake_cfg, old_corpus)
    assert reads == []


def test_recording_a_listing_needs_the_planned_content_hash(fake_cfg, old_corpus):
    ingest(fake_cfg, old_corpus)
    table = store.open_chunks(store.connect(fake_cfg.db), fake_cfg.table)
    stored = store.read_ledger(table)["readme.txt"]
    assert record_source_versions(table, {"readme.txt": ("other-hash", "size=1;mtime=1")}) == 0
    assert versions(fake_cfg)["readme.txt"] == stored.source_version
    assert record_source_versions(table, {"readme.txt": (stored.content_hash, "v2")}) == 1
    assert versions(fake_cfg)["readme.txt"] == "v2"
