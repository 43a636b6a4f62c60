"""What a pipeline may read (``transforms/source_io.py``): allowed prefixes on path-segment
boundaries, no ``..`` or symlink escape, regular files only (a FIFO never blocks), reads
bounded by the limit whatever the file's size claims; and the batch reader, which must not
follow a symlink out of its source root nor hang on a FIFO in its folder. Real files, a
real LanceDB, the FAKE embedder."""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from freshindex import store
from freshindex.config import normalize_uri_prefix
from freshindex.errors import ConfigError, UnsupportedFormat
from freshindex.transforms.source_io import (
    SourceNotAllowed,
    inside_root,
    open_regular,
    read_bounded,
    resolve_allowed,
)
from tests.conftest import DOCS, table_rows

SECRET = "AWS_SECRET_ACCESS_KEY=do-not-index-me"


def call_with_liveness_bound(fn, fifo=None, bound_s=60.0):
    """fn() in a thread; a hang is the bug, so a generous bound checks liveness only. A reader
    stuck on ``fifo`` is released (a writer opens and closes it) before the test fails."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound_s)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        pytest.fail(f"blocked for more than {bound_s:.0f}s (on a FIFO?)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def tree(tmp_path):
    """docs/ (allowed), docs-secret/ (a sibling whose name starts alike), secret.txt outside,
    and inside docs/ a good file, links out, a link within, and a FIFO."""
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "good.md").write_text("# Good\n\nA document that may be read.")
    (docs / "sub" / "inner.md").write_text("# Inner\n\nAlso fine.")
    (tmp_path / "docs-secret").mkdir()
    (tmp_path / "docs-secret" / "plan.md").write_text(SECRET)
    (tmp_path / "secret.txt").write_text(SECRET)
    (docs / "escape.md").symlink_to(tmp_path / "secret.txt")
    (docs / "dirlink").symlink_to(tmp_path / "docs-secret", target_is_directory=True)
    (docs / "inner-link.md").symlink_to(docs / "sub" / "inner.md")
    (docs / "null.md").symlink_to("/dev/null")
    os.mkfifo(docs / "pipe.md")
    return tmp_path


def test_prefixes_are_absolute_and_never_the_whole_filesystem(tmp_path):
    assert normalize_uri_prefix(str(tmp_path) + "/") == os.path.realpath(tmp_path)
    assert normalize_uri_prefix("file://" + str(tmp_path)) == os.path.realpath(tmp_path)
    assert normalize_uri_prefix("s3://bucket/docs") == "s3://bucket/docs/"
    assert normalize_uri_prefix("gs://bucket") == "gs://bucket/"
    for bad, says in [
        ("docs", "absolute"),
        ("/", "whole filesystem"),
        ("/proc", "pseudo filesystem"),
        ("/dev/shm", "pseudo filesystem"),
        ("s3://", "bucket"),
        ("s3://bucket/a/../b", "bucket"),
        ("", "non-empty"),
    ]:
        with pytest.raises(ConfigError, match=says):
            normalize_uri_prefix(bad)


def test_only_real_paths_inside_a_prefix_are_allowed(tree):
    docs = normalize_uri_prefix(str(tree / "docs"))
    prefixes = [docs, "s3://bucket/docs/"]
    assert resolve_allowed(str(tree / "docs/good.md"), prefixes) == f"{docs}/good.md"
    assert resolve_allowed(f"file://{tree}/docs/sub/inner.md", prefixes) == f"{docs}/sub/inner.md"
    # a link inside the prefix to a file inside it is the file; its real name counts
    assert resolve_allowed(str(tree / "docs/inner-link.md"), prefixes) == f"{docs}/sub/inner.md"
    assert resolve_allowed("s3://bucket/docs/a/b.pdf", prefixes) == "s3://bucket/docs/a/b.pdf"
    refused = [
        str(tree / "docs-secret/plan.md"),  # a prefix matches whole path segments only
        str(tree / "docs/../secret.txt"),
        str(tree / "docs/escape.md"),  # a symlink out of the prefix
        str(tree / "docs/dirlink/plan.md"),  # a folder link out of the prefix
        str(tree / "docs/null.md"),  # a link to a device
        "/proc/self/environ",
        "/etc/passwd",
        "docs/good.md",  # relative: to what?
        "s3://bucket/docs-secret/a.pdf",
        "s3://bucket/docs/../secret/a.pdf",
        "s3://other/docs/a.pdf",
        "gs://bucket/docs/a.pdf",
    ]
    for uri in refused:
        with pytest.raises(SourceNotAllowed):
            resolve_allowed(uri, prefixes, doc_id="d")


def test_only_regular_files_are_opened_and_a_fifo_never_blocks(tree):
    docs = str(tree / "docs")
    with open_regular(f"{docs}/good.md") as handle:
        assert handle.read().startswith(b"# Good")
    fifo = f"{docs}/pipe.md"
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        call_with_liveness_bound(lambda: read_bounded(fifo, 1000), fifo=fifo)
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        read_bounded(f"{docs}/sub", 1000)
    for pseudo in ("/proc/self/environ", "/dev/zero", f"{docs}/null.md"):
        with pytest.raises(SourceNotAllowed, match="pseudo filesystem"):
            read_bounded(pseudo, 1000)
    # roots are checked on the file actually opened
    with pytest.raises(SourceNotAllowed):
        open_regular(f"{docs}/escape.md", roots=[os.path.realpath(docs)])
    assert inside_root(f"{docs}/inner-link.md", docs).endswith("/sub/inner.md")
    with pytest.raises(SourceNotAllowed, match="outside the source root"):
        inside_root(f"{docs}/escape.md", docs)


def test_reads_stop_at_the_limit_before_and_while_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.pdf"
    with open(big, "wb") as handle:  # sparse: 315 MB that take no disk
        handle.truncate(315 * 1024 * 1024)
    with pytest.raises(UnsupportedFormat, match=r"315\.0 MiB, over the limit of 1\.0 MiB") as info:
        read_bounded(str(big), 1024 * 1024)
    assert "max_file_mb" in info.value.hint
    small = tmp_path / "small.md"
    small.write_bytes(b"x" * 5000)
    assert read_bounded(str(small), 5000) == b"x" * 5000
    # a size that lies (a growing file, a pseudo file claiming 0 bytes): the read itself
    # stops one byte past the limit
    real_fstat = os.fstat

    def lying_fstat(fd):
        result = real_fstat(fd)
        fields = list(result)
        fields[6] = 10  # st_size
        return os.stat_result(fields)

    monkeypatch.setattr(os, "fstat", lying_fstat)
    with pytest.raises(UnsupportedFormat, match="larger than that"):
        read_bounded(str(small), 4999)


def test_the_batch_reader_refuses_links_out_of_its_root_and_skips_fifos(fake_cfg, tree):
    from freshindex.pipelines.batch import run_ingest

    cfg = dataclasses.replace(
        fake_cfg, ingest=dataclasses.replace(fake_cfg.ingest, max_failure_fraction=1.0)
    )
    docs = str(tree / "docs")
    row = call_with_liveness_bound(lambda: run_ingest(cfg, docs, []), fifo=f"{docs}/pipe.md")
    rows = table_rows(cfg.db)
    assert {r["doc_id"] for r in rows} == {"good.md", "sub/inner.md", "inner-link.md"}
    assert not any("do-not-index-me" in r["text"] for r in rows)
    errors = {
        e["doc_id"]: (e["error_class"], e["message"])
        for e in store.read_errors(store.connect(cfg.db), run_id=row["run_id"])
    }
    # Beam's match does not descend into linked folders: dirlink/ is not even listed
    assert set(errors) == {"escape.md", "null.md", "pipe.md"}
    assert errors["escape.md"][0] == errors["null.md"][0] == "SourceNotAllowed"
    assert "outside the source root" in errors["escape.md"][1]
    assert errors["pipe.md"] == (
        "UnsupportedFormat",
        f"{docs}/pipe.md is not a regular file (a FIFO, socket or device)\n"
        "  hint: only regular files are read; remove it from the source",
    )


def test_the_batch_reader_still_reads_a_corpus_whose_root_is_a_link(fake_cfg, corpus, tmp_path):
    from freshindex.pipelines.batch import run_ingest

    link = tmp_path / "corpus-link"
    link.symlink_to(corpus, target_is_directory=True)
    row = run_ingest(fake_cfg, str(link), [])
    assert row["docs_failed"] == 0
    assert {r["doc_id"] for r in table_rows(fake_cfg.db)} == set(DOCS)
