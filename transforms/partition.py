"""Partition: bytes -> elements with unstructured; what runs inside the parse worker process.

Formats: Markdown, HTML, PDF (``fast`` strategy: pdfminer's text layer), DOCX and PPTX
(plain text needs no parser: ``freshindex.transforms.parsing``). Kept apart from the parse
step so the worker imports no Beam and the supervising side
(``freshindex.transforms.parse_pool``) can name these functions.
"""

from __future__ import annotations

import io
import posixpath

from freshindex.config import ParsingConfig
from freshindex.errors import CorruptDocument, EmptyDocument, UnsupportedFormat
from freshindex.runtime import patch_unstructured_spacy, prepare_offline
from freshindex.schemas.records import Element

# extension -> content type recorded on the document
CONTENT_TYPES = {
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".txt": "text/plain",
    ".text": "text/plain",
    ".rst": "text/plain",
}
RECORD_CONTENT_TYPE = "text/plain"
# Element kinds that carry no text worth indexing.
_SKIP_KINDS = {"PageBreak", "Image", "Header", "Footer", "PageNumber"}


def content_type_for(path: str) -> str | None:
    return CONTENT_TYPES.get(posixpath.splitext(path.lower())[1])


# unstructured detects each document's language unless told ``[""]``; nothing here keeps
# the language, and detection cost a third of a text document's parse
_NO_LANGUAGE_DETECTION = {"languages": [""]}


def _partition(data: bytes, content_type: str, filename: str, cfg: ParsingConfig):
    prepare_offline()
    patch_unstructured_spacy()
    stream = io.BytesIO(data)
    skip = _NO_LANGUAGE_DETECTION
    if content_type == "text/markdown":
        from unstructured.partition.md import partition_md

        return partition_md(text=data.decode("utf-8", errors="replace"), **skip)
    if content_type == "text/html":
        from unstructured.partition.html import partition_html

        return partition_html(text=data.decode("utf-8", errors="replace"), **skip)
    if content_type == "application/pdf":
        from unstructured.partition.pdf import partition_pdf

        return partition_pdf(
            file=stream, strategy=cfg.pdf_strategy, metadata_filename=filename, **skip
        )
    if content_type.endswith("wordprocessingml.document"):
        from unstructured.partition.docx import partition_docx

        return partition_docx(file=stream, metadata_filename=filename, **skip)
    if content_type.endswith("presentationml.presentation"):
        from unstructured.partition.pptx import partition_pptx

        return partition_pptx(file=stream, metadata_filename=filename, **skip)
    # plain text never comes here (``parsing.elements_from_text`` splits it in process)
    raise UnsupportedFormat(f"no parser for {content_type}")


def _pdf_page_count(data: bytes) -> int:
    """Pages of a PDF as pdfminer (the ``fast`` strategy's reader) sees them; raises when the
    file has no readable page tree (damaged, truncated, or not a PDF at all)."""
    from pdfminer.pdfpage import PDFPage

    return sum(1 for _ in PDFPage.get_pages(io.BytesIO(data)))


def partition_elements(
    data: bytes, content_type: str, filename: str, cfg: ParsingConfig
) -> tuple[Element, ...]:
    """Bytes -> elements with unstructured. Runs inside the parse worker process.

    A PDF without text is told apart here: one with pages but no text layer (scanned) is an
    EmptyDocument with an OCR hint; one whose pages cannot be read is a CorruptDocument.
    """
    elements = elements_from_unstructured(_partition(data, content_type, filename, cfg))
    if elements or content_type != "application/pdf":
        return elements
    try:
        pages = _pdf_page_count(data)
    except Exception as exc:
        raise CorruptDocument(
            f"the PDF cannot be read: {type(exc).__name__}: {exc}",
            hint="the file is damaged or not a PDF; re-export or re-download it",
        ) from None
    if pages == 0:
        raise CorruptDocument(
            "the PDF has no pages", hint="the file is damaged; re-export or re-download it"
        )
    raise EmptyDocument(
        f"no extractable text on {pages} page(s)",
        hint="a scanned PDF has no text layer; OCR it first (e.g. ocrmypdf)",
    )


_WARM_UP_TEXT = "# Warm-up\n\nThe first parse loads language models; this one pays for it.\n"


def warm_up_parsers() -> None:
    """Import every partitioner and parse a few lines of text once, so a worker's first
    document pays no import or model-loading time against its deadline."""
    prepare_offline()
    patch_unstructured_spacy()
    import pdfminer.pdfpage  # noqa: F401
    import unstructured.partition.docx
    import unstructured.partition.pdf
    import unstructured.partition.pptx  # noqa: F401

    cfg = ParsingConfig()
    html = f"<html><body><h1>Warm-up</h1><p>{_WARM_UP_TEXT}</p></body></html>"
    for content_type, text in (("text/markdown", _WARM_UP_TEXT), ("text/html", html)):
        partition_elements(text.encode(), content_type, "warm-up", cfg)


def elements_from_unstructured(raw_elements) -> tuple[Element, ...]:
    """Keep text-bearing elements, each with the nearest title above it and its page."""
    out: list[Element] = []
    section: str | None = None
    for el in raw_elements:
        kind = type(el).__name__
        text = (el.text or "").strip()
        if not text or kind in _SKIP_KINDS:
            continue
        page = getattr(el.metadata, "page_number", None)
        if kind == "Title":
            section = text[:300]
        out.append(Element(text=text, kind=kind, section=section, page_number=page))
    return tuple(out)
