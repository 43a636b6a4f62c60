"""The batch pipeline end to end on a real LanceDB, with the FAKE embedder (speed).

Covered: incremental re-runs, edits, deletes, bad input, versions/rollback, JSONL
corpora, crashes mid-run, and 1 vs 2 worker processes.

Why one file of ~410 lines: the end-to-end behaviours of one pipeline, each a short test
over the same corpus fixtures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from freshindex import store
from freshindex.cli import rollback
from freshindex.pipelines.batch import format_summary, run_ingest
from freshindex.pipelines.options import FreshIndexOptions
from freshindex.store.upkeep import maintain
from tests.conftest import DOCS, FIXTURES, ROOT, table_rows, write_corpus


def ingest(cfg, source, *beam_args, **ingest_overrides):
    if ingest_overrides:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **ingest_overrides))
    return run_ingest(cfg, str(source), list(beam_args))


def by_chunk(rows):
    return {r["chunk_id"]: r for r in rows}


def content(rows):
    """What a reader sees, without run bookkeeping."""
    return sorted((r["doc_id"], r["chunk_id"], r["text"]) for r in rows)


def versions(cfg):
    return [
        v["version"] for v in store.open_chunks(store.connect(cfg.db), cfg.table).list_versions()
    ]


def test_first_run_indexes_every_document(fake_cfg, corpus):
    row = ingest(fake_cfg, corpus)
    rows = table_rows(fake_cfg.db)
    assert {r["doc_id"] for r in rows} == set(DOCS)
    assert len({r["chunk_id"] for r in rows}) == len(rows) == row["chunks_written"]
    assert row["docs_seen"] == row["docs_added"] == len(DOCS)
    assert row["docs_failed"] == row["docs_updated"] == row["docs_deleted"] == 0
    assert row["chunks_embedded"] == len(rows) and row["status"] == "succeeded"
    tbl = store.open_chunks(store.connect(fake_cfg.db), "docs")
    assert tbl.tags.list()[f"run-{row['run_id']}"]["version"] == tbl.version
    indexed = {tuple(ix.columns) for ix in tbl.list_indices()}
    assert {("chunk_id",), ("doc_id",), ("text_hash",)} <= indexed
    assert len(versions(fake_cfg)) <= 6  # create, one merge, three index builds: few, not per doc


def test_unchanged_rerun_embeds_nothing_and_creates_no_version(fake_cfg, corpus):
    # files older than the racy window (read.RACY_WINDOW_S): a file written moments before
    # a run is read once more by the next run, which records its listing in one more
    # version (tests/test_change_detection.py); from then on re-runs create none
    for rel in DOCS:
        os.utime(corpus / rel, (time.time() - 3600,) * 2)
    first = ingest(fake_cfg, corpus)
    before = versions(fake_cfg)
    again = ingest(fake_cfg, corpus)
    assert again["chunks_embedded"] == again["chunks_written"] == 0
    assert again["docs_skipped"] == len(DOCS)
    assert versions(fake_cfg) == before
    assert again["table_version"] == first["table_version"]


def test_edited_file_changes_only_its_chunks(fake_cfg, corpus):
    ingest(fake_cfg, corpus)
    before = table_rows(fake_cfg.db)
    path = corpus / "guide/timeouts.md"
    path.write_text(path.read_text().replace("free connection", "free slot in the pool"))
    row = ingest(fake_cfg, corpus)
    after = table_rows(fake_cfg.db)
    assert (row["docs_updated"], row["docs_skipped"], row["docs_added"]) == (1, len(DOCS) - 1, 0)
    others_before = [r for r in before if r["doc_id"] != "guide/timeouts.md"]
    others_after = [r for r in after if r["doc_id"] != "guide/timeouts.md"]
    assert sorted(map(str, others_before)) == sorted(map(str, others_after))  # untouched rows
    old = {r["chunk_id"] for r in before if r["doc_id"] == "guide/timeouts.md"}
    new = {r["chunk_id"] for r in after if r["doc_id"] == "guide/timeouts.md"}
    assert old != new and old & new  # the first section did not change
    assert not any("free connection" in r["text"] for r in after)
    # unchanged chunks of the changed document reuse their stored vectors
    assert row["chunks_reused"] >= 1
    assert row["chunks_embedded"] == len(new - old)


def test_removed_file_is_deleted_with_full_sync_and_kept_with_append(fake_cfg, corpus):
    ingest(fake_cfg, corpus)
    (corpus / "notes/ducks.md").unlink()
    kept = ingest(fake_cfg, corpus, sync="append")
    assert kept["docs_deleted"] == 0
    assert "notes/ducks.md" in {r["doc_id"] for r in table_rows(fake_cfg.db)}
    gone = ingest(fake_cfg, corpus, sync="full")
    assert gone["docs_deleted"] == 1
    assert "notes/ducks.md" not in {r["doc_id"] for r in table_rows(fake_cfg.db)}


def test_an_empty_source_never_wipes_the_table(fake_cfg, corpus):
    ingest(fake_cfg, corpus)
    for path in corpus.rglob("*.*"):
        path.unlink()  # e.g. an unmounted share: the folder is there, its files are not
    row = ingest(fake_cfg, corpus)
    assert row["docs_deleted"] == 0
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == set(DOCS)
    errors = store.read_errors(store.connect(fake_cfg.db), run_id=row["run_id"])
    assert [e["error_class"] for e in errors] == ["EmptySource"]


def add_bad_files(corpus: Path) -> None:
    (corpus / "bad").mkdir()
    (corpus / "bad/broken.docx").write_bytes(b"PK\x03\x04 not a real zip")
    (corpus / "bad/empty.md").write_bytes(b"")
    (corpus / "bad/scanned.pdf").write_bytes((FIXTURES / "scanned_page.pdf").read_bytes())
    (corpus / "bad/data.xyz").write_text("what is this")


def test_bad_files_are_recorded_and_the_rest_is_indexed(fake_cfg, corpus):
    add_bad_files(corpus)
    row = ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == set(DOCS)
    errors = store.read_errors(store.connect(fake_cfg.db), run_id=row["run_id"])
    by_doc = {e["doc_id"]: e for e in errors}
    assert set(by_doc) == {"bad/broken.docx", "bad/empty.md", "bad/scanned.pdf", "bad/data.xyz"}
    assert by_doc["bad/broken.docx"]["error_class"] == "CorruptDocument"
    assert by_doc["bad/scanned.pdf"]["error_class"] == "EmptyDocument"
    assert by_doc["bad/data.xyz"]["stage"] == "read"
    assert all(e["message"] for e in errors)
    assert row["docs_failed"] == 4 and row["status"] == "succeeded"

    # a failed file is retried on the next run, and indexed once it is fixed
    (corpus / "bad/empty.md").write_text("# Fixed\n\nNow it has text.")
    again = ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    assert again["docs_added"] == 1 and again["docs_failed"] == 3
    assert "bad/empty.md" in {r["doc_id"] for r in table_rows(fake_cfg.db)}


def test_too_many_failures_mark_the_run(fake_cfg, corpus):
    add_bad_files(corpus)
    row = ingest(fake_cfg, corpus, max_failure_fraction=0.25)
    assert row["status"] == "failed_threshold"
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == set(DOCS)  # good ones committed


def test_versions_and_rollback_round_trip(fake_cfg, corpus):
    first = ingest(fake_cfg, corpus)
    first_rows = content(table_rows(fake_cfg.db))
    (corpus / "notes/ducks.md").write_text("# Geese\n\nGeese are larger than ducks.")
    (corpus / "guide/auth.md").unlink()
    second = ingest(fake_cfg, corpus)
    assert content(table_rows(fake_cfg.db)) != first_rows
    # readers can open the table as of a run (tag) or a version number
    assert content(table_rows(fake_cfg.db, version=first["run_id"])) == first_rows
    assert content(table_rows(fake_cfg.db, version=first["table_version"])) == first_rows
    row = rollback(fake_cfg.db, "docs", first["run_id"])
    assert row["table_version"] > second["table_version"]
    assert content(table_rows(fake_cfg.db)) == first_rows
    runs = store.read_runs(store.connect(fake_cfg.db), "docs")
    assert [r["kind"] for r in runs if r["kind"] != "maintain"] == ["batch", "batch", "rollback"]
    # the next run after a rollback re-applies the source as it is now
    third = ingest(fake_cfg, corpus)
    assert (third["docs_updated"], third["docs_deleted"]) == (1, 1)


def test_upkeep_runs_after_the_commit_and_its_failure_is_an_errors_row(
    fake_cfg, corpus, monkeypatch
):
    import freshindex.pipelines.batch as batch

    first = ingest(fake_cfg, corpus)
    runs = store.read_runs(store.connect(fake_cfg.db), "docs")
    assert [r["kind"] for r in runs] == ["batch", "maintain"]  # upkeep after the batch commit
    assert first["upkeep"].startswith("maintained docs")
    assert (
        f"run-{first['run_id']}"
        in store.open_chunks(store.connect(fake_cfg.db), "docs").tags.list()
    )

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(batch, "maintain", broken)
    (corpus / "notes/ducks.md").write_text("# Geese\n\nGeese are larger than ducks.")
    second = ingest(fake_cfg, corpus)
    assert second["status"] == "succeeded" and second["docs_updated"] == 1
    assert "upkeep failed" in second["upkeep"]
    errors = store.read_errors(store.connect(fake_cfg.db), run_id=second["run_id"])
    assert [(e["stage"], e["error_class"]) for e in errors] == [("maintain", "OSError")]
    unchanged = ingest(fake_cfg, corpus)  # nothing written: no upkeep
    assert "upkeep" not in unchanged


def test_jsonl_corpus_ingests_records_and_records_bad_lines(fake_cfg, tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [
        json.dumps({"_id": "1", "title": "Aspirin", "text": "Aspirin reduces fever."}),
        "not json at all",
        json.dumps({"_id": "2", "title": "", "text": "Ibuprofen is an NSAID."}),
        json.dumps({"title": "no id", "text": "x"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    row = ingest(fake_cfg, path, max_failure_fraction=1.0)
    rows = table_rows(fake_cfg.db)
    assert {r["doc_id"] for r in rows} == {"1", "2"}
    assert any(r["text"].startswith("Aspirin\n") for r in rows)  # title heads the chunk
    errors = store.read_errors(store.connect(fake_cfg.db), run_id=row["run_id"])
    assert len(errors) == 2 and {e["stage"] for e in errors} == {"read"}
    assert ingest(fake_cfg, path, max_failure_fraction=1.0)["chunks_embedded"] == 0


# ---------------------------------------------------------------- crashes and workers


def write_cfg_file(cfg, path: Path, **ingest) -> Path:
    raw = cfg.to_dict()
    raw["ingest"].update(ingest)
    path.write_text(yaml.safe_dump(raw))
    return path


def cli_ingest(
    cfg_file: Path, source: Path, *extra: str, env=None, crash_after_commit=None, **popen
):
    """``freshindex ingest`` in a process; ``crash_after_commit=N``: it exits (137) right
    after commit N of its commit step (tests/crashing.py)."""
    cmd = [sys.executable, "-m", "freshindex.cli"]
    if crash_after_commit is not None:
        cmd = [sys.executable, "-m", "tests.crashing", "batch", "after_commit"]
        cmd += [str(crash_after_commit), "--"]
    cmd += ["ingest", str(source), "--config", str(cfg_file)]
    return subprocess.Popen(
        [*cmd, *extra],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def many_docs(n: int) -> dict[str, str]:
    return {
        f"d{i:03d}.md": f"# Document {i}\n\n" + " ".join(f"fact{i}-{j}." for j in range(120))
        for i in range(n)
    }


@pytest.mark.slow
def test_crash_between_commits_then_rerun_equals_one_clean_run(fake_cfg, tmp_path):
    corpus = write_corpus(tmp_path / "big", many_docs(40))
    clean_cfg = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    ingest(clean_cfg, corpus)
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml", commit_max_rows=50, docs_per_batch=2)
    proc = cli_ingest(cfg_file, corpus, crash_after_commit=1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 137, out
    partial = table_rows(fake_cfg.db)
    assert 0 < len({r["doc_id"] for r in partial}) < 40  # died mid-run, after one commit
    row = ingest(fake_cfg, corpus)
    assert row["docs_skipped"] > 0
    assert content(table_rows(fake_cfg.db)) == content(table_rows(clean_cfg.db))


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_one_clean_run(fake_cfg, tmp_path):
    corpus = write_corpus(tmp_path / "big", many_docs(60))
    clean_cfg = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    ingest(clean_cfg, corpus)
    old = write_corpus(tmp_path / "old", {"d000.md": "# Old\n\nold text"})
    ingest(fake_cfg, old, namespace=f"files:{corpus}")  # the same document, replaced below
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml", docs_per_batch=4)
    proc = cli_ingest(cfg_file, corpus, start_new_session=True)
    staging = Path(fake_cfg.db) / "_staging" / "docs"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not any(staging.glob("*/*.parquet")):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and any worker it started
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {"d000.md"}  # nothing half-written
    killed_runs = {p.parent.name for p in staging.glob("*/*.parquet")}
    rerun = ingest(fake_cfg, corpus)
    assert content(table_rows(fake_cfg.db)) == content(table_rows(clean_cfg.db))
    # the rerun removed its own staging; the killed run's files stay behind, unread
    assert {p.parent.name for p in staging.glob("*/*.parquet")} == killed_runs
    assert rerun["run_id"] not in killed_runs
    # upkeep removes them once untouched for maintenance.staging_max_age_hours, not before
    assert maintain(fake_cfg.db, "docs", fake_cfg.maintenance).staging_removed == 0
    day_ago = time.time() - 25 * 3600
    left_bytes = 0  # the kill may land while a file is still empty
    for path in staging.rglob("*"):
        os.utime(path, (day_ago, day_ago))
        left_bytes += path.stat().st_size if path.is_file() else 0
    report = maintain(fake_cfg.db, "docs", fake_cfg.maintenance)
    assert report.staging_removed == len(killed_runs)
    assert report.staging_bytes_freed == left_bytes
    assert not list(staging.iterdir())
    assert content(table_rows(fake_cfg.db)) == content(table_rows(clean_cfg.db))


@pytest.mark.slow
def test_one_and_two_worker_processes_give_identical_chunk_sets(fake_cfg, tmp_path):
    corpus = write_corpus(tmp_path / "big", many_docs(30))
    one = dataclasses.replace(fake_cfg, db=str(tmp_path / "one"))
    two = dataclasses.replace(fake_cfg, db=str(tmp_path / "two"))
    ingest(one, corpus, "--direct_num_workers=1")
    row = ingest(two, corpus, "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    rows_two = table_rows(two.db)
    assert len({r["chunk_id"] for r in rows_two}) == len(rows_two)  # no duplicate rows
    assert content(rows_two) == content(table_rows(one.db))
    assert row["docs_added"] == 30


def test_two_sources_in_one_table_never_delete_each_other(fake_cfg, corpus, tmp_path):
    other = write_corpus(tmp_path / "other", {"extra/x.md": "# X\n\nanother source"})
    ingest(fake_cfg, corpus)
    row = ingest(fake_cfg, other)  # full sync of the second source
    assert row["docs_deleted"] == 0
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {*DOCS, "extra/x.md"}
    (other / "extra/x.md").unlink()
    (other / "y.md").write_text("# Y\n\nstill another")
    assert ingest(fake_cfg, other)["docs_deleted"] == 1
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == {*DOCS, "y.md"}


def add_known_bad_files(corpus: Path) -> None:
    (corpus / "bad").mkdir(exist_ok=True)
    (corpus / "bad/corrupt.pdf").write_bytes(b"%PDF-1.4\n damaged beyond repair\n")
    (corpus / "bad/empty.md").write_bytes(b"")


def classes_by_doc(cfg, row) -> dict[str, str]:
    errors = store.read_errors(store.connect(cfg.db), run_id=row["run_id"])
    return {e["doc_id"]: e["error_class"] for e in errors}


@pytest.mark.slow
def test_known_bad_files_are_skipped_until_their_bytes_or_the_settings_change(fake_cfg, corpus):
    add_known_bad_files(corpus)
    first = ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    assert classes_by_doc(fake_cfg, first) == {
        "bad/corrupt.pdf": "CorruptDocument",
        "bad/empty.md": "EmptyDocument",
    }
    assert first["docs_known_bad"] == 0
    remembered = store.read_errors(store.connect(fake_cfg.db), run_id=first["run_id"])
    assert all(e["permanent"] and e["content_hash"] and e["fingerprint"] for e in remembered)

    # unchanged: not parsed again, but still failing, visibly
    again = ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    assert classes_by_doc(fake_cfg, again) == {
        "bad/corrupt.pdf": "KnownBadSkipped",
        "bad/empty.md": "KnownBadSkipped",
    }
    assert again["docs_known_bad"] == 2 and again["docs_failed"] == 2
    assert "2 known-bad skipped" in format_summary(again)
    skipped = store.read_errors(store.connect(fake_cfg.db), run_id=again["run_id"])
    assert all(e["message"].startswith(("CorruptDocument: ", "EmptyDocument: ")) for e in skipped)

    # --retry-failed parses them again
    retried = run_ingest(fake_cfg, str(corpus), [], retry_failed=True)
    assert set(classes_by_doc(fake_cfg, retried).values()) == {"CorruptDocument", "EmptyDocument"}
    assert retried["docs_known_bad"] == 0

    # new bytes are parsed (and fixed ones indexed); the unchanged one stays skipped
    (corpus / "bad/corrupt.pdf").write_bytes(b"%PDF-1.4\n damaged differently\n")
    (corpus / "bad/empty.md").write_text("# Fixed\n\nNow it has text.")
    changed = ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    assert classes_by_doc(fake_cfg, changed) == {"bad/corrupt.pdf": "CorruptDocument"}
    assert changed["docs_added"] == 1 and changed["docs_known_bad"] == 0
    assert ingest(fake_cfg, corpus, max_failure_fraction=0.9)["docs_known_bad"] == 1

    # a parsing setting changed: the remembered failure no longer holds
    looser = dataclasses.replace(
        fake_cfg, parsing=dataclasses.replace(fake_cfg.parsing, max_file_mb=60)
    )
    assert ingest(looser, corpus, max_failure_fraction=0.9)["docs_known_bad"] == 0


@pytest.mark.slow
def test_retry_failed_flag_of_the_cli_and_of_the_batch_module(fake_cfg, corpus, tmp_path):
    add_known_bad_files(corpus)
    ingest(fake_cfg, corpus, max_failure_fraction=0.9)
    cfg_file = write_cfg_file(fake_cfg, tmp_path / "cfg.yaml", max_failure_fraction=0.9)
    cli = cli_ingest(cfg_file, corpus, "--retry-failed")
    out, _ = cli.communicate(timeout=600)
    assert cli.returncode == 0, out
    assert "known-bad" not in out and "2 failed" in out
    batch = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshindex.pipelines.batch",
            "--config",
            cfg_file,
            "--source",
            corpus,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert batch.returncode == 0, batch.stderr
    assert "2 known-bad skipped" in batch.stdout
    for flag in ("--retry_failed", "--retry-failed"):
        assert FreshIndexOptions([flag]).view_as(FreshIndexOptions).retry_failed is True
    assert FreshIndexOptions([]).view_as(FreshIndexOptions).retry_failed is False
