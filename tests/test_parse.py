import pytest

from freshindex.config import ParsingConfig
from freshindex.errors import CorruptDocument, EmptyDocument, UnsupportedFormat
from freshindex.schemas.records import SourceRef, sha256_hex
from freshindex.transforms.parse import content_type_for, max_file_bytes, parse_document, read_bytes
from tests.conftest import FIXTURES, SAMPLES


def parse_file(path, cfg=None):
    cfg = cfg or ParsingConfig()
    data = path.read_bytes()
    ref = SourceRef(path.name, str(path), sha256_hex(data), content_type_for(str(path)))
    return parse_document(ref, data, cfg)


@pytest.mark.parametrize(
    "name, expected_words",
    [
        ("httpx_advanced_timeouts.md", "timeout"),
        ("docling_wiki_duck.html", "duck"),
        ("docling_2305.03393v1-pg9.pdf", "table"),
        ("docling_word_sample.docx", "summer"),
        ("docling_powerpoint_sample.pptx", "test"),
    ],
)
def test_every_supported_format_parses_to_text(name, expected_words):
    doc = parse_file(SAMPLES / name)
    text = " ".join(e.text for e in doc.elements).lower()
    assert expected_words in text
    assert doc.title
    assert doc.content_hash == sha256_hex((SAMPLES / name).read_bytes())


def test_sections_and_pages_are_kept():
    md = parse_file(SAMPLES / "httpx_advanced_timeouts.md")
    first_title = next(i for i, e in enumerate(md.elements) if e.kind == "Title")
    assert all(e.section for e in md.elements[first_title:])
    assert md.elements[first_title + 1].section == md.elements[first_title].text
    pdf = parse_file(SAMPLES / "docling_2305.03393v1-pg9.pdf")
    assert {e.page_number for e in pdf.elements} == {1}


def test_scanned_pdf_without_text_layer_is_an_empty_document():
    with pytest.raises(EmptyDocument, match="no extractable text") as err:
        parse_file(FIXTURES / "scanned_page.pdf")
    assert "OCR" in err.value.hint


@pytest.mark.parametrize(
    "data",
    [b"%PDF-1.4\n garbage garbage\n", b"not a pdf at all" * 10, b"%PDF-1.7\n%%EOF\n"],
    ids=["damaged", "not-a-pdf", "no-pages"],
)
def test_an_unreadable_pdf_is_corrupt_not_scanned(tmp_path, data):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(data)
    with pytest.raises(CorruptDocument, match="PDF") as err:
        parse_file(bad)
    assert "OCR" not in str(err.value) and "scanned" not in str(err.value)


def test_corrupt_and_empty_files_raise_document_errors(tmp_path):
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.7\nthis is not really a pdf\n")
    with pytest.raises((CorruptDocument, EmptyDocument)):
        parse_file(bad)
    bad_docx = tmp_path / "broken.docx"
    bad_docx.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CorruptDocument, match="not a readable DOCX"):
        parse_file(bad_docx)
    empty = tmp_path / "empty.md"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocument, match="empty"):
        parse_file(empty)


def test_records_carry_their_own_text():
    ref = SourceRef("r1", "c.jsonl#r1", "h", "text/plain", title="A title", inline_text="p1\n\np2")
    doc = parse_document(ref, None, ParsingConfig())
    assert [e.text for e in doc.elements] == ["A title", "p1", "p2"]
    assert doc.elements[1].section == "A title"


class _NoParser:
    """FAKE parse worker that fails every call: plain text must never reach one."""

    calls = 0

    def call(self, *args):
        self.calls += 1
        raise AssertionError("plain text went to the parse worker")


def test_plain_text_files_are_split_without_a_parser(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(
        "\ufeffRelease notes\r\n\r\nThe index is rebuilt\r\nevery night.\r\n\r\n"
        "- faster parsing\n- fewer copies\n\n"
        "What changed:\n\nA line that is long enough to be a sentence and not a title at all, "
        "really\n".encode()
    )
    data = path.read_bytes()
    ref = SourceRef(path.name, str(path), sha256_hex(data), content_type_for(str(path)))
    worker = _NoParser()
    doc = parse_document(ref, data, ParsingConfig(), worker=worker)
    assert worker.calls == 0
    assert [(e.kind, e.text) for e in doc.elements] == [
        ("Title", "Release notes"),
        ("NarrativeText", "The index is rebuilt every night."),
        ("ListItem", "faster parsing"),
        ("ListItem", "fewer copies"),
        ("NarrativeText", "What changed:"),  # ends like a sentence's first half
        (
            "NarrativeText",
            "A line that is long enough to be a sentence and not a title at all, really",
        ),
    ]
    assert doc.title == "Release notes"
    assert {e.section for e in doc.elements[1:]} == {"Release notes"}


@pytest.mark.parametrize(
    "text, title",
    [
        ("Introduction\n\nBody text here.", "Introduction"),
        ("2024\n\nBody text here.", None),  # no letter: not a title
        ("One line only.", None),
        ("Heading\nsecond line\n\nBody.", None),  # two lines: a paragraph
    ],
)
def test_a_plain_text_title_is_one_short_unpunctuated_line(tmp_path, text, title):
    from freshindex.transforms.parsing import elements_from_text

    titles = [e.text for e in elements_from_text(text) if e.kind == "Title"]
    assert titles == ([title] if title else [])


def test_plain_text_that_is_only_whitespace_is_empty(tmp_path):
    path = tmp_path / "blank.txt"
    path.write_bytes(b" \n\n\t\r\n ")
    with pytest.raises(EmptyDocument, match="no extractable text"):
        parse_file(path)


# ------------------------------------------------------------------ reading, bounded


def parse_errors(ref, cfg):
    """What the Parse step emits for ``ref``: (documents, error records)."""
    from apache_beam.pvalue import TaggedOutput

    from freshindex.transforms.parse import _ParseFn

    fn = _ParseFn(cfg)
    fn.setup()
    try:
        out = list(fn.process(ref))
    finally:
        fn.teardown()
    return [o for o in out if not isinstance(o, TaggedOutput)], [
        o.value for o in out if isinstance(o, TaggedOutput)
    ]


def test_a_file_over_max_file_mb_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    big = tmp_path / "big.pdf"
    with open(big, "wb") as handle:  # sparse: 315 MiB that take no disk
        handle.truncate(315 * 1024 * 1024)
    cfg = ParsingConfig(max_file_mb=1)
    ref = SourceRef("big.pdf", str(big), "h", "application/pdf", size=315 * 1024 * 1024)
    tracemalloc.start()
    try:
        docs, errors = parse_errors(ref, cfg)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024  # the old code read all 315 MiB, then refused
    assert not docs
    (error,) = errors
    assert (error.doc_id, error.error_class) == ("big.pdf", "UnsupportedFormat")
    assert "315.0 MiB, over the limit of 1.0 MiB" in error.message
    assert "raise parsing.max_file_mb" in error.message
    with pytest.raises(UnsupportedFormat, match="over the limit"):
        read_bytes(str(big), max_file_bytes(cfg))


def test_a_fifo_or_folder_is_refused_without_blocking(tmp_path):
    import os

    from tests.test_source_io import call_with_liveness_bound

    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    ref = SourceRef("pipe.md", str(fifo), "h", "text/markdown")
    docs, errors = call_with_liveness_bound(
        lambda: parse_errors(ref, ParsingConfig()), fifo=str(fifo)
    )
    assert not docs and errors[0].error_class == "UnsupportedFormat"
    assert "is not a regular file" in errors[0].message
    with pytest.raises(UnsupportedFormat, match="not a regular file"):
        read_bytes(str(tmp_path), 100)


def test_a_file_swapped_after_it_was_hashed_is_refused_not_indexed(tmp_path):
    """The batch hashes a file when it lists it and reads it again to parse: bytes that differ
    from the planned hash (a file rewritten, or swapped for a link to a secret) are refused
    as a transient error and retried on the next run."""
    path = tmp_path / "guide.md"
    path.write_text("# Guide\n\nThe planned text.\n")
    ref = SourceRef(
        doc_id="guide.md",
        source_uri=str(path),
        content_hash=sha256_hex(path.read_bytes()),
        content_type="text/markdown",
        size=path.stat().st_size,
    )
    secret = tmp_path / "secret.md"
    secret.write_text("# Secret\n\nAPI_KEY=hunter2\n")
    path.unlink()
    path.symlink_to(secret)

    docs, errors = parse_errors(ref, ParsingConfig())
    assert not docs
    (error,) = errors
    assert error.error_class == "SourceChanged"
    assert not error.permanent
    assert "hunter2" not in error.message
