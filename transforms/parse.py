"""Parse: SourceRef -> Document, with unstructured. Bad documents become ErrorRecords.

Formats: Markdown, HTML, PDF (``fast`` strategy: pdfminer's text layer), DOCX, PPTX and
plain text. Records that carry their own text (JSONL corpora, Kafka messages) skip
unstructured: their title and paragraphs become elements directly.
"""

from __future__ import annotations

import io
import logging
import posixpath
import re
from collections.abc import Iterator, Sequence

import apache_beam as beam

from freshindex.config import ParsingConfig
from freshindex.errors import CorruptDocument, DocumentError, EmptyDocument, UnsupportedFormat
from freshindex.runtime import patch_unstructured_spacy, prepare_offline
from schemas.records import Document, Element, ErrorRecord, SourceRef
from transforms.source_io import read_bounded

log = logging.getLogger(__name__)

ERRORS_TAG = "errors"

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
_PARAGRAPHS = re.compile(r"\n\s*\n")


def content_type_for(path: str) -> str | None:
    return CONTENT_TYPES.get(posixpath.splitext(path.lower())[1])


def _partition(data: bytes, content_type: str, filename: str, cfg: ParsingConfig):
    prepare_offline()
    patch_unstructured_spacy()
    stream = io.BytesIO(data)
    if content_type == "text/markdown":
        from unstructured.partition.md import partition_md

        return partition_md(text=data.decode("utf-8", errors="replace"))
    if content_type == "text/html":
        from unstructured.partition.html import partition_html

        return partition_html(text=data.decode("utf-8", errors="replace"))
    if content_type == "application/pdf":
        from unstructured.partition.pdf import partition_pdf

        return partition_pdf(file=stream, strategy=cfg.pdf_strategy, metadata_filename=filename)
    if content_type.endswith("wordprocessingml.document"):
        from unstructured.partition.docx import partition_docx

        return partition_docx(file=stream, metadata_filename=filename)
    if content_type.endswith("presentationml.presentation"):
        from unstructured.partition.pptx import partition_pptx

        return partition_pptx(file=stream, metadata_filename=filename)
    from unstructured.partition.text import partition_text

    return partition_text(text=data.decode("utf-8", errors="replace"))


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


def elements_from_record(title: str | None, text: str) -> tuple[Element, ...]:
    out = [Element(text=title.strip(), kind="Title", section=title.strip())] if title else []
    section = title.strip() if title else None
    for para in _PARAGRAPHS.split(text or ""):
        para = para.strip()
        if para:
            out.append(Element(text=para, kind="NarrativeText", section=section))
    return tuple(out)


def parse_document(ref: SourceRef, data: bytes | None, cfg: ParsingConfig) -> Document:
    """Parse one document; raises a DocumentError subclass that says what went wrong."""
    if ref.inline_text is not None:
        elements = elements_from_record(ref.title, ref.inline_text)
        title = ref.title
    else:
        if data is None:
            raise CorruptDocument(f"no bytes read for {ref.source_uri}", doc_id=ref.doc_id)
        if len(data) == 0:
            raise EmptyDocument("the file is empty (0 bytes)", doc_id=ref.doc_id)
        if len(data) > cfg.max_file_mb * 1024 * 1024:
            raise UnsupportedFormat(
                f"the file is {len(data) / 1e6:.1f} MB, over parsing.max_file_mb",
                doc_id=ref.doc_id,
                hint="raise parsing.max_file_mb if such files are expected",
            )
        try:
            raw = _partition(data, ref.content_type, posixpath.basename(ref.source_uri), cfg)
        except DocumentError:
            raise
        except Exception as exc:
            raise CorruptDocument(
                f"{ref.content_type} parser failed: {type(exc).__name__}: {exc}",
                doc_id=ref.doc_id,
            ) from exc
        elements = elements_from_unstructured(raw)
        title = next((e.text for e in elements if e.kind == "Title"), None)
        title = title or posixpath.splitext(posixpath.basename(ref.doc_id))[0]
    if not elements:
        hint = (
            "a scanned PDF has no text layer; OCR it first (e.g. ocrmypdf)"
            if ref.content_type == "application/pdf"
            else None
        )
        raise EmptyDocument("no extractable text", doc_id=ref.doc_id, hint=hint)
    return Document(
        doc_id=ref.doc_id,
        source_uri=ref.source_uri,
        content_hash=ref.content_hash,
        content_type=ref.content_type,
        title=title,
        modified_at=ref.modified_at,
        elements=elements,
        metadata=dict(ref.metadata),
    )


def max_file_bytes(cfg: ParsingConfig) -> int:
    return int(cfg.max_file_mb * 1024 * 1024)


def read_bytes(uri: str, max_bytes: int, *, roots: Sequence[str] = ()) -> bytes:
    """The bytes of a source file, read to at most ``max_bytes`` (its size is checked
    first); raises UnsupportedFormat for a larger file or one that is not a regular file.
    ``roots``: real local folders the opened file must lie in (``transforms.source_io``)."""
    return read_bounded(uri, max_bytes, roots=roots)


class _ParseFn(beam.DoFn):
    def __init__(self, cfg: ParsingConfig):
        self._cfg = cfg
        self._parsed = beam.metrics.Metrics.counter("freshindex", "docs_parsed")

    def setup(self) -> None:
        prepare_offline()

    def process(self, ref: SourceRef) -> Iterator[Document]:
        try:
            data = None
            if ref.inline_text is None:
                data = read_bytes(ref.source_uri, max_file_bytes(self._cfg))
            doc = parse_document(ref, data, self._cfg)
        except Exception as exc:  # every failure is recorded with its document, never lost
            log.warning("parse failed for %s: %s", ref.doc_id, exc)
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord.from_exception(
                    "parse", exc, doc_id=ref.doc_id, source_uri=ref.source_uri
                ),
            )
            return
        self._parsed.inc()
        yield doc


class Parse(beam.PTransform):
    """SourceRef -> Document; ``.errors`` of the result holds ErrorRecords.

    Example::

        parsed = refs | Parse(cfg.parsing)
        docs, errors = parsed.docs, parsed.errors
    """

    def __init__(self, cfg: ParsingConfig):
        super().__init__()
        self._cfg = cfg

    def expand(self, refs):
        return refs | "ParseDocuments" >> beam.ParDo(_ParseFn(self._cfg)).with_outputs(
            ERRORS_TAG, main="docs"
        )
