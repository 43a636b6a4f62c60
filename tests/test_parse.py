import pytest

from freshindex.config import ParsingConfig
from freshindex.errors import CorruptDocument, EmptyDocument
from schemas.records import SourceRef, sha256_hex
from tests.conftest import FIXTURES, SAMPLES
from transforms.parse import content_type_for, parse_document


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
