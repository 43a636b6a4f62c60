"""Read: a source -> SourceRef per document, with a content hash and a stable doc id.

A source is a folder, a glob, or a Beam filesystem URI (local now; gs:// and s3://
through Beam's filesystems), or a BEIR-style JSONL file of ``{_id, title, text}``
records, so benchmark corpora ingest through the same pipeline.

Files are read in two steps so that unchanged ones are never downloaded: ``ListSource``
turns the listing into refs carrying only listing metadata (``source_version``: size and
modification time), the plan (``freshindex.transforms.plan.ScreenListing``) keeps those the
ledger already holds with the same metadata, and ``HashFiles`` reads and hashes the rest.
``ReadSource`` does both steps for every file (``ingest.change_detection: hash``).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import posixpath
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from freshindex.errors import SourceChanged, SourceError
from freshindex.schemas.access import optional_labels
from freshindex.schemas.records import ErrorRecord, SourceRef, check_metadata, sha256_hex
from freshindex.store.connection import is_local
from freshindex.transforms.parse import RECORD_CONTENT_TYPE, content_type_for
from freshindex.transforms.source_io import inside_root, open_regular

ERRORS_TAG = "errors"
# A listing whose modification time is this close to the moment it is listed is not
# trusted (its source_version is None): a storage with one-second timestamps (S3's
# LastModified) cannot tell two writes within one second apart, so a file rewritten with
# the same size right after it was read would look unchanged. git's "racy" rule.
RACY_WINDOW_S = 2.0
_GLOB_CHARS = set("*?[")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")


@functools.lru_cache(maxsize=64)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    # Beam's own translation, so ownership and ``fileio.MatchFiles`` agree on every path:
    # ``*`` stays inside one folder, ``**`` crosses folders, ``?`` and ``[..]`` as fnmatch
    if pattern.endswith("/"):
        pattern += "*"  # as FileSystem.match does
    return re.compile(FileSystem.translate_pattern(pattern))


def pattern_matches(pattern: str, path: str | None) -> bool:
    """Whether ``path`` (a local path or a URI) is one that matching ``pattern`` can list.

    >>> pattern_matches("/data/dir/*.txt", "/data/dir/guide/a.txt")
    False
    """
    return bool(path) and _glob_regex(pattern).match(path) is not None


@dataclass(frozen=True)
class SourceSpec:
    """A resolved source: what to match, the root that doc ids are relative to, and what
    it owns.

    A source owns exactly the documents its pattern can produce (``owns``): a sync deletes
    nothing else. Its ``namespace`` (default ``files:<root>`` or ``jsonl:<file>``) is the
    set of documents it may write: sources with the same root agree on what each doc id
    means (the path relative to that root), so a folder and a narrower glob of it share one
    namespace, while another folder with the same relative paths does not.
    """

    raw: str
    kind: str  # "files" | "jsonl"
    pattern: str
    root: str
    namespace_override: str | None = None

    @property
    def namespace(self) -> str:
        if self.namespace_override:
            return self.namespace_override
        if self.kind == "jsonl":
            return f"jsonl:{self.raw}"
        return f"files:{self.root.rstrip('/') or '/'}"

    def owns(self, source_uri: str | None) -> bool:
        """Whether a stored document with this source_uri came from what this source reads."""
        if not source_uri:
            return False
        if self.kind == "jsonl":
            # a record's URI is "<file>#<record id>"; a JSONL glob matches the file part
            path, sep, _ = source_uri.rpartition("#")
            return bool(sep) and (path == self.raw or pattern_matches(self.pattern, path))
        return pattern_matches(self.pattern, source_uri)


def resolve_source(source: str, namespace: str | None = None) -> SourceSpec:
    """Decide how to read ``source``; local sources are checked here, where the user gave them,
    and made absolute so document URIs do not depend on the working directory. ``namespace``
    overrides the default one (``SourceSpec.namespace``).

    >>> resolve_source("samples/corpus").kind
    'files'
    """
    local = "://" not in source or source.startswith("file://")
    if local:
        source = os.path.abspath(source.removeprefix("file://"))
    if source.endswith(JSONL_SUFFIXES):
        if local and not os.path.isfile(source):
            raise SourceError(f"JSONL source {source} does not exist")
        return SourceSpec(source, "jsonl", source, posixpath.dirname(source), namespace)
    parts = source.split("/")
    if any(_GLOB_CHARS & set(p) for p in parts):
        fixed = []
        for p in parts:
            if _GLOB_CHARS & set(p):
                break
            fixed.append(p)
        return SourceSpec(source, "files", source, "/".join(fixed) or "/", namespace)
    if local:
        if not os.path.exists(source):
            raise SourceError(
                f"source {source} does not exist", hint="give a folder, a glob or a .jsonl file"
            )
        if os.path.isfile(source):
            return SourceSpec(source, "files", source, os.path.dirname(source), namespace)
    root = source.rstrip("/")
    return SourceSpec(source, "files", root + "/**", root, namespace)


def doc_id_for(path: str, root: str) -> str:
    """The path relative to the source root, with forward slashes."""
    root = root.rstrip("/")
    if "://" not in path:
        path, root = os.path.abspath(path), os.path.abspath(root)
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else posixpath.basename(path)
    return rel.replace(os.sep, "/")


def _hidden(doc_id: str) -> bool:
    return any(part.startswith(".") for part in doc_id.split("/"))


def source_version_for(size: int, mtime: float | None, listed_at: float) -> str | None:
    """The listing metadata a re-run compares instead of the bytes; None when there is none
    to trust (no modification time, or one within RACY_WINDOW_S of the listing).

    >>> source_version_for(42, 1700000000.5, listed_at=1800000000.0)
    'size=42;mtime=1700000000.500000'
    """
    if not mtime or listed_at - mtime < RACY_WINDOW_S:
        return None
    return f"size={size};mtime={mtime:.6f}"


def listed_ref(meta, root: str, listed_at: float) -> SourceRef | ErrorRecord | None:
    """A matched file (Beam's FileMetadata) -> a SourceRef with its listing metadata and no
    content hash (nothing is read); an error row for an unsupported type; None for a hidden
    file or an object store's folder marker."""
    if meta.path.endswith(("/", "\\")):  # a folder marker of an object store
        return None
    doc_id = doc_id_for(meta.path, root)
    if _hidden(doc_id):
        return None
    content_type = content_type_for(meta.path)
    if content_type is None:
        ext = posixpath.splitext(meta.path)[1] or "(none)"
        return ErrorRecord(
            stage="read",
            error_class="UnsupportedFormat",
            message=f"unsupported file type {ext}; supported: md, html, pdf, docx, pptx, txt",
            doc_id=doc_id,
            source_uri=meta.path,
        )
    mtime = meta.last_updated_in_seconds or None
    return SourceRef(
        doc_id=doc_id,
        source_uri=meta.path,
        content_hash="",
        content_type=content_type,
        size=meta.size_in_bytes,
        modified_at=mtime,
        source_version=source_version_for(meta.size_in_bytes, mtime, listed_at),
    )


def list_files(spec: SourceSpec) -> Iterator[SourceRef | ErrorRecord]:
    """What ``ListSource`` lists for a files source, in this process (``listed_ref`` of
    every match of its pattern; no match is no file)."""
    listed_at = time.time()
    for result in FileSystems.match([spec.pattern]):
        for meta in result.metadata_list:
            if (item := listed_ref(meta, spec.root, listed_at)) is not None:
                yield item


class _ListFile(beam.DoFn):
    """A matched file -> ``listed_ref``: its SourceRef, or an error row on ``ERRORS_TAG``."""

    def __init__(self, root: str):
        self._root = root

    def process(self, meta) -> Iterator[SourceRef]:
        item = listed_ref(meta, self._root, time.time())
        if isinstance(item, ErrorRecord):
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, item)
        elif item is not None:
            yield item


class _HashFile(beam.DoFn):
    """A listed SourceRef -> the same ref with its content hash. A local file is read only
    if it is a regular file whose real path stays inside the source root
    (``freshindex.transforms.source_io``): a symlink out of the root or a FIFO becomes an
    error row, never a read or a hang."""

    def __init__(self, root: str):
        self._root = root

    def setup(self) -> None:
        self._real_root = os.path.realpath(self._root) if is_local(self._root) else None

    def _open(self, path: str, doc_id: str):
        if self._real_root is None or not is_local(path):
            return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
        real = inside_root(path, self._root, doc_id=doc_id)
        return open_regular(real, roots=(self._real_root,))

    def process(self, ref: SourceRef) -> Iterator[SourceRef]:
        try:
            digest = hashlib.sha256()
            with self._open(ref.source_uri, ref.doc_id) as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except Exception as exc:  # unreadable or not allowed: recorded, the run goes on
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord.from_exception(
                    "read", exc, doc_id=ref.doc_id, source_uri=ref.source_uri
                ),
            )
            return
        yield dataclasses.replace(ref, content_hash=digest.hexdigest())


def ref_from_record(line: str, source_uri: str) -> SourceRef:
    """One BEIR-style JSONL record -> SourceRef; raises ValueError on a bad record
    (including ``metadata`` over the caps of ``freshindex.schemas.records.check_metadata``)."""
    try:
        record = json.loads(line)
    except RecursionError:
        raise ValueError("the record nests too deeply to decode") from None
    if not isinstance(record, dict):
        raise ValueError("a JSONL record must be an object")
    doc_id = record.get("_id", record.get("id", record.get("doc_id")))
    if doc_id is None or str(doc_id) == "":
        raise ValueError("record has no _id")
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError(f"record {doc_id} has no text string")
    title = record.get("title") or None
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    try:
        check_metadata(metadata)
    except ValueError as exc:
        raise ValueError(f"record {doc_id}: {exc}") from None
    try:  # who may read it; not part of the content hash: a relabel is not a change
        acl = optional_labels(record.get("acl"))
    except ValueError as exc:
        raise ValueError(f"record {doc_id}: {exc}") from None
    canonical = json.dumps(
        {"title": title, "text": text, "metadata": metadata}, sort_keys=True, ensure_ascii=False
    )
    return SourceRef(
        doc_id=str(doc_id),
        source_uri=f"{source_uri}#{doc_id}",
        content_hash=sha256_hex(canonical),
        content_type=RECORD_CONTENT_TYPE,
        size=len(text),
        title=title,
        inline_text=text,
        metadata=metadata,
        acl=acl,
    )


class _RefFromRecord(beam.DoFn):
    def __init__(self, source_uri: str):
        self._source_uri = source_uri

    def process(self, line: str) -> Iterator[SourceRef]:
        if not line.strip():
            return
        try:
            yield ref_from_record(line, self._source_uri)
        except (ValueError, TypeError) as exc:
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord.from_exception(
                    "read", exc, doc_id=None, source_uri=f"{self._source_uri}: {line[:80]}"
                ),
            )


# A single JSONL file is read in byte ranges of this size, one range per element, so
# several workers share a large corpus.
RECORD_RANGE_BYTES = 32 << 20


def byte_ranges(size: int, range_bytes: int = RECORD_RANGE_BYTES) -> list[tuple[int, int]]:
    """[start, end) ranges that cover ``size`` bytes.

    >>> byte_ranges(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(start, min(start + range_bytes, size)) for start in range(0, size, range_bytes)]


def lines_in_range(handle, start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of every line of a seekable binary ``handle`` that starts in
    [start, end): each line of a file belongs to exactly one of ``byte_ranges``."""
    if start > 0:
        handle.seek(start - 1)
        handle.readline()  # the rest of a line that started before ``start``
    else:
        handle.seek(0)
    offset = handle.tell()
    while offset < end:
        line = handle.readline()
        if not line:
            return
        yield offset, line
        offset += len(line)


def lean_record_ref(ref: SourceRef, offset: int) -> SourceRef:
    """``ref`` without its text, title and metadata, with where its line starts: what the
    plan needs, a fraction of the record's size."""
    return dataclasses.replace(ref, title=None, inline_text=None, metadata={}, record_offset=offset)


def _open_binary(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class _ReadRecordRange(beam.DoFn):
    """A byte range of one JSONL file -> a lean SourceRef per record (``lean_record_ref``),
    or a ``read`` ErrorRecord for a bad record."""

    def __init__(self, path: str):
        self._path = path

    def process(self, byte_range: tuple[int, int]) -> Iterator[SourceRef]:
        start, end = byte_range
        with _open_binary(self._path) as handle:
            for offset, raw in lines_in_range(handle, start, end):
                line = raw.decode("utf-8", errors="replace")
                if not line.strip():
                    continue
                try:
                    yield lean_record_ref(ref_from_record(line, self._path), offset)
                except (ValueError, TypeError) as exc:
                    yield beam.pvalue.TaggedOutput(
                        ERRORS_TAG,
                        ErrorRecord.from_exception(
                            "read", exc, doc_id=None, source_uri=f"{self._path}: {line[:80]}"
                        ),
                    )


def _record_ranges(path: str) -> list[tuple[int, int]]:
    return byte_ranges(FileSystems.match([path])[0].metadata_list[0].size_in_bytes)


class _LoadRecord(beam.DoFn):
    """A lean record ref -> the record read again at its offset, with its text; an error
    row (``SourceChanged``) when the line there is no longer the record that was planned
    (the file changed during the run: the next run indexes it). Other refs pass through."""

    def start_bundle(self) -> None:
        self._handles: dict[str, Any] = {}

    def finish_bundle(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def process(self, ref: SourceRef) -> Iterator[SourceRef]:
        if ref.record_offset is None:
            yield ref
            return
        path = ref.source_uri.rpartition("#")[0]
        try:
            if path not in self._handles:
                self._handles[path] = _open_binary(path)
            handle = self._handles[path]
            handle.seek(ref.record_offset)
            line = handle.readline().decode("utf-8", errors="replace")
            full = ref_from_record(line, path)
            if (full.doc_id, full.content_hash) != (ref.doc_id, ref.content_hash):
                raise SourceChanged(
                    f"record {ref.doc_id!r} at byte {ref.record_offset} of {path} changed "
                    "during the run",
                    doc_id=ref.doc_id,
                    hint="nothing was written for it; the next run indexes the file as it is",
                )
        except Exception as exc:  # changed or unreadable: recorded, the run goes on
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord.from_exception(
                    "read", exc, doc_id=ref.doc_id, source_uri=ref.source_uri
                ),
            )
            return
        yield dataclasses.replace(full, acl=ref.acl)  # the labels the plan decided with


class LoadRecords(beam.PTransform):
    """Refs the plan decided to process -> the same refs with their record's text read
    again (``SourceRef.record_offset``; other refs unchanged) (``.refs``), and ``read``
    ErrorRecords of records that changed since they were listed (``.errors``)."""

    def expand(self, refs):
        return refs | "LoadRecord" >> beam.ParDo(_LoadRecord()).with_outputs(
            ERRORS_TAG, main="refs"
        )


def lean_records(spec: SourceSpec) -> bool:
    """Whether the records of a JSONL source are listed without their text
    (``lean_record_ref``): one plain, uncompressed file, which can be read again at an
    offset; a glob or a .gz is read whole, text and all."""
    return (
        spec.kind == "jsonl"
        and not spec.raw.endswith(".gz")
        and not any(_GLOB_CHARS & set(part) for part in spec.raw.split("/"))
    )


class ListSource(beam.PTransform):
    """Source -> SourceRef (``.refs``) and ErrorRecord (``.errors``) without reading a file:
    a file's ref carries its listing metadata and an empty content hash (``HashFiles``
    fills it in). A JSONL corpus has no per-record listing: its refs are complete."""

    def __init__(self, spec: SourceSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        spec = self._spec
        if lean_records(spec):
            return (
                pbegin
                | "RecordFile" >> beam.Create([spec.raw])
                | "ByteRanges" >> beam.FlatMap(_record_ranges)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadRecords"
                >> beam.ParDo(_ReadRecordRange(spec.raw)).with_outputs(ERRORS_TAG, main="refs")
            )
        if spec.kind == "jsonl":
            lines = pbegin | "ReadJsonLines" >> beam.io.ReadFromText(spec.pattern)
            return lines | "RecordToRef" >> beam.ParDo(_RefFromRecord(spec.raw)).with_outputs(
                ERRORS_TAG, main="refs"
            )
        files = pbegin | "MatchFiles" >> fileio.MatchFiles(
            spec.pattern, empty_match_treatment="ALLOW"
        )
        return files | "ListFiles" >> beam.ParDo(_ListFile(spec.root)).with_outputs(
            ERRORS_TAG, main="refs"
        )


class HashFiles(beam.PTransform):
    """Listed file refs -> the same refs with their content hash (``.refs``), and the
    ``read`` ErrorRecords of files that could not be read (``.errors``)."""

    def __init__(self, root: str):
        super().__init__()
        self._root = root

    def expand(self, refs):
        return refs | "HashFiles" >> beam.ParDo(_HashFile(self._root)).with_outputs(
            ERRORS_TAG, main="refs"
        )


class ReadSource(beam.PTransform):
    """Source -> SourceRef with its content hash (``["refs"]``) and ErrorRecord
    (``["errors"]``): every file is read (``ingest.change_detection: hash``)."""

    def __init__(self, spec: SourceSpec):
        super().__init__()
        self._spec = spec

    def expand(self, pbegin):
        listed = pbegin | "List" >> ListSource(self._spec)
        if self._spec.kind == "jsonl":
            return listed
        hashed = listed.refs | "Hash" >> HashFiles(self._spec.root)
        errors = (listed.errors, hashed.errors) | "ReadErrors" >> beam.Flatten()
        return {"refs": hashed.refs, ERRORS_TAG: errors}
