"""Plan: compare the source with the index's own ledger and decide what to do per document.

The ledger is the chunks table itself (content hash and settings fingerprint stored
beside every chunk), read at the version the run started from. A document is

- skipped when its content hash and fingerprint are unchanged (not parsed, not embedded),
- processed when it is new or changed (``updated`` lists those the table already has),
- deleted when the table has it, the source does not, and the document came from this
  source (``sync: full`` only). Ownership is by ``source_uri``: a table fed by two folders,
  or by a folder and a Kafka topic, never loses one source's documents to the other's sync.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import apache_beam as beam

from freshindex import store
from schemas.records import ErrorRecord, SourceRef

PROCESS, SKIPPED, UPDATED, DELETED, ERRORS = "process", "skipped", "updated", "deleted", "errors"


@dataclass(frozen=True)
class TableRef:
    """Where a run reads and writes: the database, the table, and the version it started from."""

    db_uri: str
    table: str
    version: int | None  # None: the table does not exist yet


def owned_by(source_prefix: str | None):
    """Ownership test for ``sync: full``: does a stored document's source_uri come from here?"""
    if source_prefix is None:
        return None
    return lambda uri: bool(uri) and uri.startswith(source_prefix)


class _LoadLedger(beam.DoFn):
    def process(self, ref: TableRef) -> Iterator[tuple[str, tuple[str, str]]]:
        if ref.version is None:
            return
        table = store.open_chunks(store.connect(ref.db_uri), ref.table)
        table.checkout(ref.version)
        yield from store.read_ledger(table).items()


class ReadLedger(beam.PTransform):
    """(doc_id, (content_hash, fingerprint)) for every document in the table at ``ref.version``."""

    def __init__(self, ref: TableRef):
        super().__init__()
        self._ref = ref

    def expand(self, pbegin):
        return (
            pbegin
            | "TableRef" >> beam.Create([self._ref])
            | "LoadLedger" >> beam.ParDo(_LoadLedger())
        )


def decide(
    doc_id: str,
    refs: list[SourceRef],
    ledger: list[tuple[str, str]],
    fingerprint: str,
    sync: str,
    owns=None,
) -> Iterator[tuple[str, object]]:
    """The plan for one document id: (tag, value) pairs. Pure, so tests call it directly.

    ``ledger`` holds (content_hash, fingerprint[, source_uri]) for a document the table has;
    ``owns(source_uri)`` says whether a missing document may be deleted (None: any).
    """
    if not refs:
        if ledger and sync == "full":
            source_uri = ledger[0][2] if len(ledger[0]) > 2 else None
            if owns is None or owns(source_uri):
                yield DELETED, doc_id
        return
    if len(refs) > 1:
        uris = sorted(r.source_uri for r in refs)
        yield (
            ERRORS,
            ErrorRecord(
                stage="plan",
                error_class="DuplicateDocumentId",
                message=f"{len(refs)} source entries share doc id {doc_id!r}: {uris[:3]}; "
                "the last one by source order was kept",
                doc_id=doc_id,
                source_uri=uris[0],
            ),
        )
    ref = sorted(refs, key=lambda r: r.source_uri)[-1]
    if ledger:
        content_hash, stored_fingerprint = ledger[0][:2]
        if content_hash == ref.content_hash and stored_fingerprint == fingerprint:
            yield SKIPPED, doc_id
            return
        yield UPDATED, doc_id
    yield PROCESS, ref


class _Decide(beam.DoFn):
    def __init__(self, fingerprint: str, sync: str, source_prefix: str | None):
        self._fingerprint, self._sync, self._prefix = fingerprint, sync, source_prefix

    def process(self, grouped):
        doc_id, groups = grouped
        refs, ledger = list(groups["refs"]), list(groups["ledger"])
        owns = owned_by(self._prefix)
        for tag, value in decide(doc_id, refs, ledger, self._fingerprint, self._sync, owns):
            yield value if tag == PROCESS else beam.pvalue.TaggedOutput(tag, value)


class PlanChanges(beam.PTransform):
    """{refs, ledger} -> outputs ``process`` (SourceRef), ``skipped``, ``updated``, ``deleted``
    (doc ids) and ``errors``."""

    def __init__(self, fingerprint: str, sync: str, source_prefix: str | None):
        super().__init__()
        self._fingerprint, self._sync, self._prefix = fingerprint, sync, source_prefix

    def expand(self, inputs):
        keyed_refs = inputs["refs"] | "KeyRefs" >> beam.Map(lambda r: (r.doc_id, r))
        grouped = {"refs": keyed_refs, "ledger": inputs["ledger"]} | "JoinLedger" >> (
            beam.CoGroupByKey()
        )
        return grouped | "Decide" >> beam.ParDo(
            _Decide(self._fingerprint, self._sync, self._prefix)
        ).with_outputs(SKIPPED, UPDATED, DELETED, ERRORS, main=PROCESS)
