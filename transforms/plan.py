"""Plan: compare the source with the index's own ledger and decide what to do per document.

The ledger is the chunks table itself (content hash, settings fingerprint, source URI and
owning namespace stored beside every chunk), read at the version the run started from.
A document is

- skipped without being read when the source's listing says what the ledger recorded
  (``source_version``: size and modification time) and the fingerprint is unchanged
  (``ScreenListing``, before any file is read; the rest are read and hashed),
- skipped when its content hash and fingerprint are unchanged (not parsed, not embedded);
  when only its listing metadata changed (a ``touch``, the same bytes uploaded again), the
  new ``source_version`` is recorded after the commit (``RecordSourceVersions``), so it
  is not read again on the next run,
- processed when it is new or changed (``updated`` lists those the table already has),
- refused (an ``errors`` row, ``NamespaceConflict``) when the table has it under another
  source's namespace: a folder or a topic never replaces another source's document,
- deleted when the table has it in this source's namespace, the source's pattern can
  produce its URI, and the source no longer has it (``sync: full`` only). A document the
  source listed but could not read (``failed``) is present: a transient read error never
  deletes anything.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import apache_beam as beam

from freshindex import store
from freshindex.config import CommitConfig
from freshindex.schemas.records import ErrorRecord, SourceRef
from freshindex.store.ledger import record_source_versions, relabel
from freshindex.transforms.access import Labeler

log = logging.getLogger(__name__)
PICKLE_PROTOCOL = 5

PROCESS, SKIPPED, UPDATED, DELETED, ERRORS = "process", "skipped", "updated", "deleted", "errors"
UNCHANGED, TO_READ, REFRESHED = "unchanged", "to_read", "refreshed"
RELABELED = "relabeled"  # same bytes and settings, new access labels: (doc_id, hash, labels)
NAMESPACE_CONFLICT = "NamespaceConflict"

# Does a stored document's source_uri come from this source? (``SourceSpec.owns``)
Owns = Callable[[str | None], bool]


@dataclass(frozen=True)
class TableRef:
    """Where a run reads and writes: the database, the table, and the version it started from."""

    db_uri: str
    table: str
    version: int | None  # None: the table does not exist yet


def ledger_entry(stored: Sequence) -> store.LedgerEntry:
    """A ledger value as a LedgerEntry; tests and old callers pass shorter tuples."""
    return store.LedgerEntry(*stored)


def may_write(entry: store.LedgerEntry, namespace: str | None, owns: Owns | None) -> bool:
    """May a source in ``namespace`` replace or delete the stored document ``entry``?

    Yes when the document is in the same namespace. A document written before namespaces
    existed (namespace None) belongs to whichever source could have produced its URI
    (``owns``), so an upgrade neither locks a source out of its own documents nor opens
    them to every producer. ``namespace`` None turns the check off.
    """
    if namespace is None:
        return True
    if entry.namespace is not None:
        return entry.namespace == namespace
    return owns is None or owns(entry.source_uri)


def namespace_conflict(
    doc_id: str, entry: store.LedgerEntry, namespace: str, action: str, source_uri: str | None
) -> ErrorRecord:
    """The errors row of a refused write or delete of another namespace's document."""
    owner = entry.namespace or f"the source of {entry.source_uri}"
    return ErrorRecord(
        stage="plan",
        error_class=NAMESPACE_CONFLICT,
        message=f"refused to {action} document {doc_id!r}: it belongs to namespace {owner!r}, "
        f"this source writes namespace {namespace!r}; the stored document is unchanged. "
        "Give the two sources the same namespace (ingest.namespace / stream.namespace) if "
        "they are meant to share documents, or index them into separate tables",
        doc_id=doc_id,
        source_uri=source_uri,
    )


_REF_FIELDS = tuple(f.name for f in dataclasses.fields(SourceRef))


def packed_ref(ref: SourceRef) -> bytes:
    """A ref as the plan's joins carry it: its field values pickled, a few hundred bytes.
    The in-memory runner's shuffle keeps each grouped value as a Python object, and a
    SourceRef or LedgerEntry object costs several times its packed bytes (docs/BENCHMARKS.md,
    scaling)."""
    return pickle.dumps(tuple(getattr(ref, name) for name in _REF_FIELDS), PICKLE_PROTOCOL)


def unpacked_ref(packed: bytes) -> SourceRef:
    return SourceRef(*pickle.loads(packed))


def packed_entry(entry: Sequence) -> bytes:
    """A ledger entry as the plan's joins carry it (``packed_ref``)."""
    return pickle.dumps(tuple(entry), PICKLE_PROTOCOL)


def unpacked_entry(packed: bytes) -> store.LedgerEntry:
    return store.LedgerEntry(*pickle.loads(packed))


def _keyed_packed_ref(ref: SourceRef) -> tuple[str, bytes]:
    return ref.doc_id, packed_ref(ref)


def _packed_ledger(item: tuple[str, Sequence]) -> tuple[str, bytes]:
    return item[0], packed_entry(item[1])


class _LoadLedger(beam.DoFn):
    def process(self, ref: TableRef) -> Iterator[tuple[str, store.LedgerEntry]]:
        if ref.version is None:
            return
        table = store.open_chunks(store.connect(ref.db_uri), ref.table)
        table.checkout(ref.version)
        # piece by piece: this worker never holds the whole ledger (a document whose chunks
        # fall in two pieces is emitted twice, with the same entry; decide() takes the first)
        for piece in store.iter_ledger(table):
            yield from piece.items()


class ReadLedger(beam.PTransform):
    """(doc_id, LedgerEntry) for every document in the table at ``ref.version``."""

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
    ledger: list[Sequence],
    fingerprint: str,
    sync: str,
    owns: Owns | None = None,
    *,
    namespace: str | None = None,
    failed: bool = False,
) -> Iterator[tuple[str, object]]:
    """The plan for one document id: (tag, value) pairs. Pure, so tests call it directly.

    ``ledger`` holds the stored LedgerEntry (content_hash, fingerprint[, source_uri,
    namespace]) of a document the table has; ``owns(source_uri)`` says whether this
    source's pattern can produce a URI (None: any); ``namespace`` is the namespace this
    source writes (None: no ownership checks); ``failed``: the source listed the document
    but could not read it, so it is present, not gone.
    """
    entry = ledger_entry(ledger[0]) if ledger else None
    if not refs:
        if entry is None or sync != "full" or failed:
            return
        if may_write(entry, namespace, owns) and (owns is None or owns(entry.source_uri)):
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
    if entry is not None:
        if not may_write(entry, namespace, owns):
            yield ERRORS, namespace_conflict(doc_id, entry, namespace, "replace", ref.source_uri)
            return
        if entry.content_hash == ref.content_hash and entry.fingerprint == fingerprint:
            if ref.acl is not None and entry.acl != tuple(ref.acl):
                yield RELABELED, (doc_id, ref.content_hash, tuple(ref.acl))
            yield SKIPPED, doc_id
            return
        yield UPDATED, doc_id
    yield PROCESS, ref


def screen(
    refs: list[SourceRef],
    ledger: list[Sequence],
    fingerprint: str,
    owns: Owns | None = None,
    *,
    namespace: str | None = None,
) -> Iterator[tuple[str, SourceRef]]:
    """Listing-only refs of one doc id -> (UNCHANGED, ref with the stored content hash) when
    the ledger holds the document with the same ``source_version`` and fingerprint and this
    source may write it, so it is skipped without being read; (TO_READ, ref) otherwise.

    Anything the screen does not vouch for is read and goes through ``decide`` as before:
    a document without a ``source_version`` (old rows, a racy listing), a duplicate id,
    another namespace's document.
    """
    entry = ledger_entry(ledger[0]) if ledger else None
    if (
        len(refs) == 1
        and entry is not None
        and refs[0].source_version is not None
        and entry.source_version == refs[0].source_version
        and entry.fingerprint == fingerprint
        and may_write(entry, namespace, owns)
    ):
        yield UNCHANGED, dataclasses.replace(refs[0], content_hash=entry.content_hash)
        return
    for ref in refs:
        yield TO_READ, ref


def new_source_version(refs: list[SourceRef], ledger: list[Sequence]):
    """(doc_id, content_hash, source_version) of a document skipped as unchanged whose
    listing metadata is not the recorded one (touched, re-uploaded, or first seen with a
    trusted listing): recording it spares the next run from reading it. None otherwise."""
    if len(refs) != 1 or not ledger:
        return None
    ref, entry = refs[0], ledger_entry(ledger[0])
    if ref.source_version is None or ref.source_version == entry.source_version:
        return None
    return ref.doc_id, entry.content_hash, ref.source_version


def nothing_changed(
    listed: Sequence[SourceRef | ErrorRecord],
    ledger: Iterator[dict[str, store.LedgerEntry]],
    fingerprint: str,
    sync: str,
    owns: Owns | None = None,
    *,
    namespace: str | None = None,
    labeler: Labeler | None = None,
) -> bool:
    """Would the plan skip every listed document and do nothing else? Pure, like ``screen``
    and ``plan_document``, which it runs on each document: True only when the listing has no
    error, every listed file is ``UNCHANGED`` by its metadata, its plan is then only the skip
    (no new labels, no new listing metadata to record), and no stored document would be
    deleted.

    A batch run of an unchanged source then records its run without starting the pipeline
    (``pipelines.batch``); anything else, or any doubt, goes through the pipeline.
    ``ledger``: the table's ledger in pieces (``store.iter_ledger``); it is read only until
    the first document that would change.
    """
    refs: dict[str, list[SourceRef]] = {}
    for item in listed:
        if isinstance(item, ErrorRecord):
            return False
        refs.setdefault(item.doc_id, []).append(item)
    stored: set[str] = set()
    for piece in ledger:
        for doc_id, entry in piece.items():
            if doc_id in stored:  # a document whose chunks fell in two pieces
                continue
            stored.add(doc_id)
            if not _only_skipped(
                doc_id, refs.get(doc_id, []), entry, fingerprint, sync, owns, namespace, labeler
            ):
                return False
    return stored >= refs.keys()  # a listed document the table lacks is new


def _only_skipped(doc_id, refs, entry, fingerprint, sync, owns, namespace, labeler) -> bool:
    def plan(refs):
        return list(
            plan_document(
                doc_id, refs, [entry], fingerprint, sync, owns, namespace=namespace, labeler=labeler
            )
        )

    if not refs:  # stored, not listed: nothing unless the plan would delete it
        return plan([]) == []
    screened = list(screen(refs, [entry], fingerprint, owns, namespace=namespace))
    if [tag for tag, _ in screened] != [UNCHANGED]:
        return False
    return plan([screened[0][1]]) == [(SKIPPED, doc_id)]


def plan_document(
    doc_id: str,
    refs: list[SourceRef],
    ledger: list[Sequence],
    fingerprint: str,
    sync: str,
    owns: Owns | None = None,
    *,
    namespace: str | None = None,
    failed: bool = False,
    labeler: Labeler | None = None,
) -> Iterator[tuple[str, object]]:
    """``decide`` on the refs with their access labels, and (REFRESHED, ...) before the skip
    of a document whose listing metadata is new (``new_source_version``): the whole plan of
    one document, as the pipeline's plan step and ``nothing_changed`` both run it."""
    labeler = labeler or Labeler()
    refs = [labeler.label(r) for r in refs]
    for tag, value in decide(
        doc_id, refs, ledger, fingerprint, sync, owns, namespace=namespace, failed=failed
    ):
        if tag == SKIPPED and (refreshed := new_source_version(refs, ledger)):
            yield REFRESHED, refreshed
        yield tag, value


class _Screen(beam.DoFn):
    def __init__(self, fingerprint: str, namespace: str | None, owns: Owns | None):
        self._fingerprint, self._namespace, self._owns = fingerprint, namespace, owns

    def process(self, grouped):
        _, groups = grouped
        refs = [unpacked_ref(r) for r in groups["listed"]]
        ledger = [unpacked_entry(e) for e in groups["ledger"]]
        for tag, ref in screen(
            refs, ledger, self._fingerprint, self._owns, namespace=self._namespace
        ):
            yield ref if tag == TO_READ else beam.pvalue.TaggedOutput(tag, ref)


class ScreenListing(beam.PTransform):
    """{listed, ledger} -> ``to_read`` (refs to read and hash) and ``unchanged`` (refs the
    ledger vouches for by their listing metadata, with the stored content hash: nothing is
    read). Both then go through ``PlanChanges`` like any ref, so deletes, ownership and
    the counts are decided in one place."""

    def __init__(self, fingerprint: str, namespace: str | None, owns: Owns | None):
        super().__init__()
        self._fingerprint, self._namespace, self._owns = fingerprint, namespace, owns

    def expand(self, inputs):
        keyed = inputs["listed"] | "KeyListed" >> beam.Map(_keyed_packed_ref)
        ledger = inputs["ledger"] | "PackLedger" >> beam.Map(_packed_ledger)
        grouped = {"listed": keyed, "ledger": ledger} | "JoinLedger" >> beam.CoGroupByKey()
        return grouped | "Screen" >> beam.ParDo(
            _Screen(self._fingerprint, self._namespace, self._owns)
        ).with_outputs(UNCHANGED, main=TO_READ)


class _RecordSourceVersions(beam.DoFn):
    def __init__(self, table: TableRef, commit: CommitConfig | None):
        self._table, self._commit = table, commit

    def process(self, versions, manifest):
        # ``manifest`` (the run's runs row) is a side input only so that this runs after
        # the run's commit, never racing it
        if not versions:
            return
        ref = self._table
        try:
            with store.commit_lock(ref.db_uri, ref.table, self._commit) as lease:
                table = store.open_chunks(store.connect(ref.db_uri), ref.table)
                store.check_held(lease)  # like every commit under the lock
                recorded = record_source_versions(
                    table, {doc_id: (content_hash, v) for doc_id, content_hash, v in versions}
                )
        except Exception as exc:  # the run's data is committed; this only saves reads
            # nothing is lost: the documents keep their old source_version, so the next run
            # reads and hashes them again and retries the recording
            log.warning(
                "recording the listing of %d unchanged documents failed: %s", len(versions), exc
            )
            return
        log.info("recorded the new listing metadata of %d unchanged documents", recorded)
        yield recorded


class _AfterTheRunsCommit(beam.PTransform):
    """All of its input, collected into one list, handed to one ``_fn`` DoFn (a commit of
    its own) after the run's commit: ``manifest`` (the runs row) is its side input only
    for that order."""

    _step = ""
    _fn: type[beam.DoFn]

    def __init__(self, table: TableRef, manifest, commit: CommitConfig | None = None):
        super().__init__()
        self._table, self._manifest, self._commit = table, manifest, commit

    def expand(self, items):
        return (
            items
            | "Collect" >> beam.combiners.ToList()
            | self._step
            >> beam.ParDo(
                self._fn(self._table, self._commit),
                manifest=beam.pvalue.AsList(self._manifest),
            )
        )


class RecordSourceVersions(_AfterTheRunsCommit):
    """(doc_id, content_hash, source_version) of documents skipped as unchanged whose
    listing metadata changed -> one commit that records the new ``source_version`` on
    their rows (only where the stored content hash is still the one planned with), after
    the run's own commit (``manifest``, the runs row, is its side input). Outputs the
    number of documents recorded."""

    _step, _fn = "Record", _RecordSourceVersions


class _RecordLabels(beam.DoFn):
    def __init__(self, table: TableRef, commit: CommitConfig | None):
        self._table, self._commit = table, commit

    def process(self, relabels, manifest):
        # after the run's commit (``manifest`` is a side input only for that); unlike the
        # listing metadata a failure here fails the run: a revoked label must not linger
        if not relabels:
            return
        ref = self._table
        with store.commit_lock(ref.db_uri, ref.table, self._commit) as lease:
            table = store.open_chunks(store.connect(ref.db_uri), ref.table)
            store.check_held(lease)
            done = relabel(table, {doc_id: (h, acl) for doc_id, h, acl in relabels})
        log.info("relabelled %d unchanged documents (new access labels)", done)
        yield done


class RecordLabels(_AfterTheRunsCommit):
    """(doc_id, content_hash, labels) of unchanged documents whose access labels changed ->
    one commit that sets the labels on all their rows (``store.relabel``), after the run's
    own commit. Nothing is parsed or embedded. Outputs the number relabelled."""

    _step, _fn = "Relabel", _RecordLabels


def with_source(error: ErrorRecord, **where) -> ErrorRecord:
    """``error`` with the fields that say where it came from (topic, partition, offset)."""
    return dataclasses.replace(error, **where)


class _Decide(beam.DoFn):
    def __init__(
        self,
        fingerprint: str,
        sync: str,
        namespace: str | None,
        owns: Owns | None,
        labeler: Labeler | None = None,
    ):
        self._fingerprint, self._sync = fingerprint, sync
        self._namespace, self._owns = namespace, owns
        self._labeler = labeler

    def process(self, grouped):
        doc_id, groups = grouped
        for tag, value in plan_document(
            doc_id,
            [unpacked_ref(r) for r in groups["refs"]],
            [unpacked_entry(e) for e in groups["ledger"]],
            self._fingerprint,
            self._sync,
            self._owns,
            namespace=self._namespace,
            failed=any(True for _ in groups.get("failed", ())),
            labeler=self._labeler,
        ):
            yield value if tag == PROCESS else beam.pvalue.TaggedOutput(tag, value)


class PlanChanges(beam.PTransform):
    """{refs, ledger[, failed]} -> outputs ``process`` (SourceRef), ``skipped``, ``updated``,
    ``deleted`` (doc ids), ``errors``, ``refreshed`` (``new_source_version``) and
    ``relabeled`` (unchanged documents with new access labels, from ``labeler``).

    ``failed`` holds (doc_id, None) for documents the source listed but could not read;
    they count as present. ``namespace`` is the namespace the run writes; ``owns`` tells
    which stored source URIs this source's pattern can produce (``SourceSpec.owns``).
    """

    def __init__(
        self,
        fingerprint: str,
        sync: str,
        namespace: str | None,
        owns: Owns | None,
        labeler: Labeler | None = None,
    ):
        super().__init__()
        self._fingerprint, self._sync = fingerprint, sync
        self._namespace, self._owns = namespace, owns
        self._labeler = labeler

    def expand(self, inputs):
        # packed (``packed_ref``): the join holds every document of the source and the table
        keyed_refs = inputs["refs"] | "KeyRefs" >> beam.Map(_keyed_packed_ref)
        ledger = inputs["ledger"] | "PackLedger" >> beam.Map(_packed_ledger)
        joined = {"refs": keyed_refs, "ledger": ledger}
        if "failed" in inputs:
            joined["failed"] = inputs["failed"]
        grouped = joined | "JoinLedger" >> beam.CoGroupByKey()
        return grouped | "Decide" >> beam.ParDo(
            _Decide(self._fingerprint, self._sync, self._namespace, self._owns, self._labeler)
        ).with_outputs(SKIPPED, UPDATED, DELETED, ERRORS, REFRESHED, RELABELED, main=PROCESS)
