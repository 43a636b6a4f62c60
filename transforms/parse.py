"""Parse: SourceRef -> Document, as a Beam step (``Parse``); bad documents become ErrorRecords.

The step itself, with its per-document isolation, is ``freshindex.transforms.process.parse``
(the stream's micro-batches take it too); parsing one document is
``freshindex.transforms.parsing``, the unstructured side ``partition`` (run in a worker
process of ``parse_pool``). Here: the DoFn that holds a warm worker for its lifetime, and
the known-bad side input (documents that failed permanently under the same settings are
skipped, not parsed again).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import apache_beam as beam

from freshindex import store
from freshindex.config import Config, ParsingConfig
from freshindex.runtime import prepare_offline
from freshindex.schemas.records import KNOWN_BAD, Document, ErrorRecord, SourceRef, sha256_hex
from freshindex.transforms import process
from freshindex.transforms.parse_pool import POOL, lend_parse_worker, new_parse_worker
from freshindex.transforms.parse_worker import IsolatedWorker
from freshindex.transforms.parsing import (
    check_zip_bounds,
    elements_from_record,
    max_file_bytes,
    parse_document,
    read_bytes,
)
from freshindex.transforms.partition import (
    CONTENT_TYPES,
    RECORD_CONTENT_TYPE,
    content_type_for,
    elements_from_unstructured,
    partition_elements,
)
from freshindex.transforms.plan import TableRef

# the per-document functions, for callers that parse outside a pipeline
__all__ = [
    "CONTENT_TYPES",
    "ERRORS_TAG",
    "RECORD_CONTENT_TYPE",
    "Parse",
    "ReadKnownFailures",
    "check_zip_bounds",
    "content_type_for",
    "elements_from_record",
    "elements_from_unstructured",
    "failure_fingerprint",
    "lend_parse_worker",
    "max_file_bytes",
    "new_parse_worker",
    "parse_document",
    "partition_elements",
    "read_bytes",
]

ERRORS_TAG = "errors"


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
        # started at its first document: plain text needs none (``parsing.elements_from_text``)
        self._worker = POOL.acquire(self._cfg)

    def teardown(self) -> None:
        if self._worker is not None:
            POOL.release(self._worker)
            self._worker = None

    def process(self, ref: SourceRef, known_bad=None) -> Iterator[Document]:
        result = process.parse(
            ref, self._cfg, worker=self._worker, fingerprint=self._fingerprint, known_bad=known_bad
        )
        if isinstance(result, ErrorRecord):
            if result.error_class == KNOWN_BAD:
                self._known_bad.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, result)
            return
        self._parsed.inc()
        yield result


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
