"""Parsing one document: SourceRef (+ bytes) -> Document; Beam-free.

Records that carry their own text (JSONL corpora, Kafka messages) skip unstructured: their
title and paragraphs become elements directly. So do plain-text files (``elements_from_text``:
paragraphs, and a short unpunctuated line alone is a title), in this process: splitting text
needs no parser to isolate, and unstructured's per-paragraph language model cost more than
the encoder (docs/BENCHMARKS.md, "Side by side"). Other files are bounded first (size, and the
zip directory of DOCX/PPTX), then partitioned in a parse worker (``parse_pool``).
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from collections.abc import Sequence

from freshindex.config import ParsingConfig
from freshindex.errors import ArchiveTooLarge, CorruptDocument, EmptyDocument, UnsupportedFormat
from freshindex.schemas.records import Document, Element, SourceRef
from freshindex.transforms.parse_pool import lend_parse_worker, parse_in_worker
from freshindex.transforms.parse_worker import IsolatedWorker
from freshindex.transforms.source_io import read_bounded

_PARAGRAPHS = re.compile(r"\n\s*\n")
_LINE_BREAKS = re.compile(r"\r\n?")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u25aa\u2013]|\d{1,3}[.)])\s+")
# A plain-text title: one line of at most this many words that does not end like a sentence.
_TITLE_MAX_WORDS = 12
_SENTENCE_END = tuple(".!?,;:")
_PLAIN_TEXT = "text/plain"


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


def elements_from_record(title: str | None, text: str) -> tuple[Element, ...]:
    out = [Element(text=title.strip(), kind="Title", section=title.strip())] if title else []
    section = title.strip() if title else None
    for para in _PARAGRAPHS.split(text or ""):
        para = para.strip()
        if para:
            out.append(Element(text=para, kind="NarrativeText", section=section))
    return tuple(out)


def elements_from_text(text: str) -> tuple[Element, ...]:
    """Plain text -> elements without a parser: blank lines separate paragraphs; a paragraph
    that is one short line not ending like a sentence is a Title (the section of what follows);
    a paragraph whose every line starts with a bullet is one ListItem per line; other line
    breaks inside a paragraph are joined (wrapped text).

    >>> [(e.kind, e.text) for e in elements_from_text("Setup\n\nRun it\nonce.\n\n- a\n- b")]
    [('Title', 'Setup'), ('NarrativeText', 'Run it once.'), ('ListItem', 'a'), ('ListItem', 'b')]
    """
    out: list[Element] = []
    section: str | None = None
    for para in _PARAGRAPHS.split(_LINE_BREAKS.sub("\n", text.removeprefix("\ufeff"))):
        lines = [ln.strip() for ln in para.splitlines() if ln.strip()]
        if not lines:
            continue
        if len(lines) > 1 and all(_BULLET.match(ln) for ln in lines):
            for ln in lines:
                item = _BULLET.sub("", ln, count=1).strip()
                if item:
                    out.append(Element(text=item, kind="ListItem", section=section))
            continue
        joined = " ".join(lines)
        if len(lines) == 1 and _is_plain_title(joined):
            section = joined[:300]
            out.append(Element(text=joined, kind="Title", section=section))
        else:
            out.append(Element(text=joined, kind="NarrativeText", section=section))
    return tuple(out)


def _is_plain_title(line: str) -> bool:
    return (
        len(line.split()) <= _TITLE_MAX_WORDS
        and not line.endswith(_SENTENCE_END)
        and any(c.isalpha() for c in line)
    )


def parse_document(
    ref: SourceRef, data: bytes | None, cfg: ParsingConfig, worker: IsolatedWorker | None = None
) -> Document:
    """Parse one document; raises a DocumentError subclass that says what went wrong.

    Files are parsed in ``worker`` (default: one lent by this process's pool) under
    ``cfg.timeout_s`` and ``cfg.max_memory_mb``; DOCX/PPTX are first checked against the
    zip limits. Records with their own text, and plain-text files, need no parser.
    """
    if ref.inline_text is not None:
        elements = elements_from_record(ref.title, ref.inline_text)
        title = ref.title
    else:
        if data is None:
            raise CorruptDocument(f"no bytes read for {ref.source_uri}", doc_id=ref.doc_id)
        if len(data) == 0:
            raise EmptyDocument("the file is empty (0 bytes)", doc_id=ref.doc_id)
        if len(data) > max_file_bytes(cfg):
            raise UnsupportedFormat(
                f"the file is {len(data) / 1e6:.1f} MB, over parsing.max_file_mb",
                doc_id=ref.doc_id,
                hint="raise parsing.max_file_mb if such files are expected",
            )
        check_zip_bounds(data, ref.content_type, cfg, ref.doc_id)
        if ref.content_type == _PLAIN_TEXT:
            elements = elements_from_text(data.decode("utf-8", errors="replace"))
        elif worker is None:
            with lend_parse_worker(cfg) as lent:
                elements = parse_in_worker(ref, data, cfg, lent)
        else:
            elements = parse_in_worker(ref, data, cfg, worker)
        # a producer's title for a file (a stream's ``uri`` message) wins over the file's own
        title = ref.title or next((e.text for e in elements if e.kind == "Title"), None)
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
        source_version=ref.source_version,
        acl=ref.acl,
    )


def max_file_bytes(cfg: ParsingConfig) -> int:
    return int(cfg.max_file_mb * 1024 * 1024)


def read_bytes(uri: str, max_bytes: int, *, roots: Sequence[str] = ()) -> bytes:
    """The bytes of a source file, read to at most ``max_bytes`` (its size is checked
    first); raises UnsupportedFormat for a larger file or one that is not a regular file.
    ``roots``: real local folders the opened file must lie in
    (``freshindex.transforms.source_io``)."""
    return read_bounded(uri, max_bytes, roots=roots)
