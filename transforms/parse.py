"""Parse: SourceRef -> Document, with unstructured. Bad documents become ErrorRecords.

Formats: Markdown, HTML, PDF (``fast`` strategy: pdfminer's text layer), DOCX, PPTX and
plain text. Records that carry their own text (JSONL corpora, Kafka messages) skip
unstructured: their title and paragraphs become elements directly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import posixpath
import re
import threading
import zipfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import apache_beam as beam

from freshindex import store
from freshindex.config import Config, ParsingConfig
from freshindex.errors import (
    ArchiveTooLarge,
    CorruptDocument,
    DocumentError,
    EmptyDocument,
    ParseMemoryExceeded,
    ParserCrashed,
    ParseTimeout,
    SourceChanged,
    UnsupportedFormat,
)
from freshindex.runtime import patch_unstructured_spacy, prepare_offline
from freshindex.schemas.records import (
    KNOWN_BAD,
    Document,
    Element,
    ErrorRecord,
    SourceRef,
    sha256_hex,
)
from freshindex.transforms.parse_worker import (
    IsolatedWorker,
    RemoteError,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerTimeout,
)
from freshindex.transforms.source_io import read_bounded

if TYPE_CHECKING:
    from freshindex.transforms.plan import TableRef

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
    for content_type, text in (
        ("text/markdown", _WARM_UP_TEXT),
        ("text/html", html),
        ("text/plain", _WARM_UP_TEXT),
    ):
        partition_elements(text.encode(), content_type, "warm-up", cfg)


def new_parse_worker(cfg: ParsingConfig) -> IsolatedWorker:
    """A worker process for ``partition_elements`` under ``cfg``'s deadline and ceiling."""
    return IsolatedWorker(
        partition_elements,
        warm_up=warm_up_parsers,
        timeout_s=cfg.timeout_s,
        max_memory_mb=cfg.max_memory_mb,
    )


class _WorkerPool:
    """Warm parse workers of this process, each lent to one caller at a time, so runs and
    stream batches in a long-lived process do not pay the parser's start-up again. Holds at
    most as many workers as callers ever ran at once; workers with other limits are closed."""

    def __init__(self) -> None:
        self._idle: list[IsolatedWorker] = []
        self._lock = threading.Lock()

    def acquire(self, cfg: ParsingConfig) -> IsolatedWorker:
        limits = (cfg.timeout_s, cfg.max_memory_mb)
        with self._lock:
            stale = [w for w in self._idle if (w.timeout_s, w.max_memory_mb) != limits]
            self._idle = [w for w in self._idle if w not in stale]
            worker = self._idle.pop() if self._idle else None
        for w in stale:
            w.close()
        return worker or new_parse_worker(cfg)

    def release(self, worker: IsolatedWorker) -> None:
        with self._lock:
            self._idle.append(worker)


_POOL = _WorkerPool()


@contextlib.contextmanager
def lend_parse_worker(cfg: ParsingConfig) -> Iterator[IsolatedWorker]:
    """A warm worker of this process's pool for ``cfg``'s limits, returned afterwards."""
    worker = _POOL.acquire(cfg)
    try:
        yield worker
    finally:
        _POOL.release(worker)


_ZIP_FORMATS = {"wordprocessingml.document": "DOCX", "presentationml.presentation": "PPTX"}
# Below this inflated size a member's compression ratio is not suspicious whatever it is
# (a tiny, highly repetitive styles part).
_RATIO_FLOOR_BYTES = 1024 * 1024


def check_zip_bounds(data: bytes, content_type: str, cfg: ParsingConfig, doc_id: str) -> None:
    """Refuse a DOCX/PPTX whose zip directory declares more than the parser should inflate.

    Reads only the central directory (nothing is inflated). The declared sizes bind: Python's
    zipfile, which python-docx and python-pptx read through, stops a member at its declared
    size and fails its CRC check, so a member that lies about its size cannot inflate more.
    """
    kind = next(
        (name for suffix, name in _ZIP_FORMATS.items() if content_type.endswith(suffix)), None
    )
    if kind is None:
        return
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise CorruptDocument(
            f"not a readable {kind} file (a zip archive): {exc}",
            doc_id=doc_id,
            hint="the file is damaged or has the wrong extension",
        ) from None
    hint = (
        "an archive this size is unusual for an office document (a zip bomb?); if it is "
        "expected, raise parsing.{key}"
    )
    if len(members) > cfg.max_zip_members:
        raise ArchiveTooLarge(
            f"the archive has {len(members)} members, over parsing.max_zip_members="
            f"{cfg.max_zip_members}",
            doc_id=doc_id,
            hint=hint.format(key="max_zip_members"),
        )
    total = sum(m.file_size for m in members)
    if total > cfg.max_inflated_mb * 1024 * 1024:
        biggest = max(members, key=lambda m: m.file_size)
        raise ArchiveTooLarge(
            f"the archive inflates to {total / 2**20:.1f} MB (largest member {biggest.filename}: "
            f"{biggest.file_size / 2**20:.1f} MB), over parsing.max_inflated_mb="
            f"{cfg.max_inflated_mb:g}",
            doc_id=doc_id,
            hint=hint.format(key="max_inflated_mb"),
        )
    for m in members:
        ratio = m.file_size / max(m.compress_size, 1)
        if m.file_size > _RATIO_FLOOR_BYTES and ratio > cfg.max_zip_ratio:
            raise ArchiveTooLarge(
                f"member {m.filename} inflates {ratio:.0f}x ({m.compress_size} bytes -> "
                f"{m.file_size / 2**20:.1f} MB), over parsing.max_zip_ratio={cfg.max_zip_ratio:g}",
                doc_id=doc_id,
                hint=hint.format(key="max_zip_ratio"),
            )


# DocumentErrors the worker raises, rebuilt by name on this side of the pipe.
_WORKER_ERRORS = {cls.__name__: cls for cls in (CorruptDocument, EmptyDocument, UnsupportedFormat)}


def _parse_in_worker(ref: SourceRef, data: bytes, cfg: ParsingConfig, worker: IsolatedWorker):
    filename = posixpath.basename(ref.source_uri)
    try:
        return worker.call(data, ref.content_type, filename, cfg)
    except WorkerTimeout as exc:
        raise ParseTimeout(
            f"{ref.content_type} parse stopped: {exc}",
            doc_id=ref.doc_id,
            hint=f"raise parsing.timeout_s (now {cfg.timeout_s:g}) if such documents are "
            "expected; a timed-out document is retried on the next run",
        ) from None
    except WorkerMemoryExceeded as exc:
        raise ParseMemoryExceeded(
            f"{ref.content_type} parse stopped: {exc}",
            doc_id=ref.doc_id,
            hint=f"raise parsing.max_memory_mb (now {cfg.max_memory_mb:g}) if such documents "
            "are expected",
        ) from None
    except WorkerCrashed as exc:
        raise ParserCrashed(
            f"{ref.content_type} parse failed: {exc}",
            doc_id=ref.doc_id,
            hint="retried on the next run; if it keeps failing, lower parsing.max_memory_mb "
            "or give the machine more memory",
        ) from None
    except RemoteError as exc:
        cls = _WORKER_ERRORS.get(exc.type_name)
        if cls is not None:
            raise cls(exc.message, doc_id=ref.doc_id, hint=exc.hint) from None
        raise CorruptDocument(
            f"{ref.content_type} parser failed: {exc.type_name}: {exc.message}",
            doc_id=ref.doc_id,
        ) from None


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


def parse_document(
    ref: SourceRef, data: bytes | None, cfg: ParsingConfig, worker: IsolatedWorker | None = None
) -> Document:
    """Parse one document; raises a DocumentError subclass that says what went wrong.

    Files are parsed in ``worker`` (default: one lent by this process's pool) under
    ``cfg.timeout_s`` and ``cfg.max_memory_mb``; DOCX/PPTX are first checked against the
    zip limits. Records with their own text need no parser.
    """
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
        check_zip_bounds(data, ref.content_type, cfg, ref.doc_id)
        if worker is None:
            with lend_parse_worker(cfg) as lent:
                elements = _parse_in_worker(ref, data, cfg, lent)
        else:
            elements = _parse_in_worker(ref, data, cfg, worker)
        title = next((e.text for e in elements if e.kind == "Title"), None)
        title = title or posixpath.splitext(posixpath.basename(ref.doc_id))[0]
    if not elements:
        raise EmptyDocument("no extractable text", doc_id=ref.doc_id)
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
    ``roots``: real local folders the opened file must lie in
    (``freshindex.transforms.source_io``)."""
    return read_bounded(uri, max_bytes, roots=roots)


def failure_fingerprint(cfg: Config) -> str:
    """The settings a remembered parse failure holds for: the run's fingerprint and every
    parsing limit, so raising a limit (or any setting that changes chunks) retries it."""
    material = {"run": cfg.fingerprint(), "parsing": dataclasses.asdict(cfg.parsing)}
    return sha256_hex(json.dumps(material, sort_keys=True))[:16]


class _LoadKnownFailures(beam.DoFn):
    def __init__(self, fingerprint: str):
        self._fingerprint = fingerprint

    def process(self, ref: TableRef) -> Iterator[tuple[tuple[str, str], str]]:
        db = store.connect(ref.db_uri)
        yield from store.read_known_failures(db, ref.table, self._fingerprint).items()


class ReadKnownFailures(beam.PTransform):
    """((doc_id, content_hash), reason) of every document that failed permanently under
    ``fingerprint`` (``failure_fingerprint``); read once per run, like the ledger."""

    def __init__(self, ref: TableRef, fingerprint: str):
        super().__init__()
        self._ref, self._fingerprint = ref, fingerprint

    def expand(self, pbegin):
        return (
            pbegin
            | "TableRef" >> beam.Create([self._ref])
            | "LoadKnownFailures" >> beam.ParDo(_LoadKnownFailures(self._fingerprint))
        )


class _ParseFn(beam.DoFn):
    def __init__(self, cfg: ParsingConfig, fingerprint: str | None = None):
        self._cfg, self._fingerprint = cfg, fingerprint
        self._parsed = beam.metrics.Metrics.counter("freshindex", "docs_parsed")
        self._known_bad = beam.metrics.Metrics.counter("freshindex", "docs_known_bad")
        self._worker: IsolatedWorker | None = None

    def setup(self) -> None:
        prepare_offline()
        self._worker = _POOL.acquire(self._cfg)
        self._worker.start()  # a new one warms up while the first documents are read

    def teardown(self) -> None:
        if self._worker is not None:
            _POOL.release(self._worker)
            self._worker = None

    def _error(self, ref: SourceRef, exc: BaseException, **kw) -> ErrorRecord:
        remembered = self._fingerprint is not None and ref.inline_text is None
        return ErrorRecord.from_exception(
            "parse",
            exc,
            doc_id=ref.doc_id,
            source_uri=ref.source_uri,
            content_hash=ref.content_hash if remembered else None,
            fingerprint=self._fingerprint if remembered else None,
            **kw,
        )

    def process(self, ref: SourceRef, known_bad=None) -> Iterator[Document]:
        reason = (known_bad or {}).get((ref.doc_id, ref.content_hash))
        if reason is not None:
            self._known_bad.inc()
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord(
                    stage="parse",
                    error_class=KNOWN_BAD,
                    message=reason,
                    doc_id=ref.doc_id,
                    source_uri=ref.source_uri,
                    content_hash=ref.content_hash,
                    fingerprint=self._fingerprint,
                    permanent=True,
                ),
            )
            return
        try:
            data = None
            if ref.inline_text is None:
                data = read_bytes(ref.source_uri, max_file_bytes(self._cfg))
                if sha256_hex(data) != ref.content_hash:
                    # replaced (or swapped for a link) since it was listed and hashed: what
                    # was planned is not what would be indexed; the next run sees it anew
                    raise SourceChanged(
                        f"{ref.doc_id} changed between listing and parsing",
                        doc_id=ref.doc_id,
                        hint="it is indexed on the next run",
                    )
            doc = parse_document(ref, data, self._cfg, self._worker)
        except Exception as exc:  # every failure is recorded with its document, never lost
            log.warning("parse failed for %s: %s", ref.doc_id, exc)
            # only a DocumentError is about the bytes; anything else (an I/O error) is retried
            permanent = isinstance(exc, DocumentError) and exc.permanent
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, self._error(ref, exc, permanent=permanent))
            return
        self._parsed.inc()
        yield doc


class Parse(beam.PTransform):
    """SourceRef -> Document; ``.errors`` of the result holds ErrorRecords.

    With ``fingerprint``, permanent failures are recorded with the document's content hash
    and that fingerprint; ``known_bad`` (the output of ``ReadKnownFailures``) lists those to
    skip: each becomes a ``KnownBadSkipped`` errors row instead of being parsed again.

    Example::

        parsed = refs | Parse(cfg.parsing)
        docs, errors = parsed.docs, parsed.errors
    """

    def __init__(self, cfg: ParsingConfig, *, fingerprint: str | None = None, known_bad=None):
        super().__init__()
        self._cfg, self._fingerprint, self._known_bad = cfg, fingerprint, known_bad

    def expand(self, refs):
        side = () if self._known_bad is None else (beam.pvalue.AsDict(self._known_bad),)
        return refs | "ParseDocuments" >> beam.ParDo(
            _ParseFn(self._cfg, self._fingerprint), *side
        ).with_outputs(ERRORS_TAG, main="docs")
