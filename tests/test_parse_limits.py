"""Parsing that cannot hang or blow up: the zip limits, the deadline and the memory ceiling.

The hostile input is real: a DOCX whose ``word/document.xml`` is 20 MB of repeated
paragraphs deflated to a few tens of KB. Parsed, it costs python-docx seconds and hundreds
of MB; the zip check refuses it before any parser runs, and with that check lifted the
worker's deadline or memory ceiling stops the parse.
"""

from __future__ import annotations

import dataclasses
import io
import os
import struct
import time
import zipfile

import pytest

from freshindex.config import ParsingConfig
from freshindex.errors import (
    ArchiveTooLarge,
    ConfigError,
    CorruptDocument,
    ParseMemoryExceeded,
    ParseTimeout,
)
from freshindex.schemas.records import ErrorRecord, SourceRef
from freshindex.transforms.parse import (
    CONTENT_TYPES,
    lend_parse_worker,
    new_parse_worker,
    parse_document,
)
from tests.conftest import SAMPLES

_W = b'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_PARA = b"<w:p><w:r><w:t>bomb</w:t></w:r></w:p>"


def docx_bomb(inflated_mb: int = 20) -> bytes:
    """The sample DOCX with its body replaced by ``inflated_mb`` MB of identical paragraphs."""
    source = zipfile.ZipFile(SAMPLES / "docling_word_sample.docx")
    body = _PARA * (inflated_mb * 1024 * 1024 // len(_PARA))
    xml = b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document ' + _W
    xml += b"><w:body>" + body + b"</w:body></w:document>"
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            if info.filename != "word/document.xml":
                archive.writestr(info.filename, source.read(info))
        archive.writestr("word/document.xml", xml, compresslevel=9)
    return out.getvalue()


def docx_ref(name: str = "bomb.docx") -> SourceRef:
    return SourceRef(name, f"/corpus/{name}", "hash", CONTENT_TYPES[".docx"])


# the zip check lifted, so the parse itself runs into the worker's limits
NO_ZIP_LIMITS = {"max_inflated_mb": 10_000, "max_zip_ratio": 1e9}


def test_a_zip_bomb_is_refused_from_its_directory_before_any_parser_runs():
    bomb = docx_bomb()
    assert len(bomb) < 200_000
    cfg = ParsingConfig()
    worker = new_parse_worker(cfg)
    try:
        with pytest.raises(ArchiveTooLarge, match=r"word/document\.xml inflates") as err:
            parse_document(docx_ref(), bomb, cfg, worker)
        assert "max_zip_ratio" in err.value.hint
        assert worker.starts == 0  # refused before the parser was even started
    finally:
        worker.close()
    error = ErrorRecord.from_exception("parse", err.value, doc_id="bomb.docx", source_uri=None)
    assert error.permanent and error.error_class == "ArchiveTooLarge"


def test_zip_limits_on_total_size_and_member_count(tmp_path):
    real = (SAMPLES / "docling_word_sample.docx").read_bytes()
    with pytest.raises(ArchiveTooLarge, match="max_inflated_mb"):
        parse_document(docx_ref(), real, ParsingConfig(max_inflated_mb=0.1))
    with pytest.raises(ArchiveTooLarge, match="max_zip_members"):
        parse_document(docx_ref(), real, ParsingConfig(max_zip_members=5))
    with pytest.raises(CorruptDocument, match="not a readable DOCX"):
        parse_document(docx_ref(), b"PK\x03\x04" + os.urandom(64), ParsingConfig())


@pytest.mark.slow
def test_a_parse_past_the_deadline_is_stopped_and_the_worker_serves_the_next_document():
    cfg = ParsingConfig(timeout_s=3, max_memory_mb=100_000, **NO_ZIP_LIMITS)
    worker = new_parse_worker(cfg)
    try:
        started = time.monotonic()
        with pytest.raises(ParseTimeout, match=r"longer than 3s") as err:
            parse_document(docx_ref(), docx_bomb(), cfg, worker)
        assert time.monotonic() - started < 300  # liveness only: start-up is not timed
        assert "parsing.timeout_s" in err.value.hint
        error = ErrorRecord.from_exception("parse", err.value, doc_id="bomb.docx", source_uri="")
        assert not error.permanent  # a timeout is retried on the next run
        ref = SourceRef("ok.md", "/corpus/ok.md", "h", "text/markdown")
        doc = parse_document(ref, (SAMPLES / "httpx_async.md").read_bytes(), cfg, worker)
        assert doc.elements and worker.starts == 2
    finally:
        worker.close()


@pytest.mark.slow
def test_a_parse_over_the_memory_ceiling_is_stopped():
    cfg = ParsingConfig(timeout_s=600, max_memory_mb=150, **NO_ZIP_LIMITS)
    worker = new_parse_worker(cfg)
    try:
        with pytest.raises(ParseMemoryExceeded, match="150 MB") as err:
            parse_document(docx_ref(), docx_bomb(), cfg, worker)
        assert "parsing.max_memory_mb" in err.value.hint
    finally:
        worker.close()


@pytest.mark.slow
def test_documents_without_a_worker_of_their_own_parse_in_a_pooled_one():
    """The stream calls parse_document without a worker: it gets the same isolation."""
    cfg = dataclasses.replace(ParsingConfig(), timeout_s=77)
    data = (SAMPLES / "httpx_async.md").read_bytes()
    ref = SourceRef("a.md", "/corpus/a.md", "h", "text/markdown")
    assert parse_document(ref, data, cfg).elements
    with lend_parse_worker(cfg) as worker:  # the one that parsed it, returned warm
        assert worker.pid is not None and worker.pid != os.getpid()
        assert worker.timeout_s == 77 and worker.starts == 1


def lie_about_size(archive: bytes, member_size: int, declared: int) -> bytes:
    """The archive with ``member_size`` replaced by ``declared`` in its local header and its
    central directory: a member that claims to be small and inflates to far more."""
    data = archive.replace(struct.pack("<I", member_size), struct.pack("<I", declared))
    assert data != archive
    return data


@pytest.mark.slow
def test_a_member_that_lies_about_its_size_is_not_inflated_past_the_declared_size():
    bomb = docx_bomb()
    real_size = zipfile.ZipFile(io.BytesIO(bomb)).getinfo("word/document.xml").file_size
    liar = lie_about_size(bomb, real_size, 100)
    (member,) = [m for m in zipfile.ZipFile(io.BytesIO(liar)).infolist() if m.file_size == 100]
    assert member.filename == "word/document.xml"  # passes the directory check ...
    # ... and zipfile stops reading it after the declared 100 bytes: the CRC of the real
    # content then fails, where a reader that inflated it all would have parsed 20 MB
    with pytest.raises(CorruptDocument, match="CRC"):
        parse_document(docx_ref(), liar, ParsingConfig())


@pytest.mark.parametrize(
    "bad", [{"timeout_s": 0}, {"max_memory_mb": -1}, {"max_inflated_mb": 0}, {"max_zip_ratio": 0}]
)
def test_parse_limits_are_validated_where_they_are_given(bad):
    with pytest.raises(ConfigError, match="parsing"):
        ParsingConfig(**bad)
