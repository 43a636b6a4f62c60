"""Write: EmbeddedDocument -> rows of the versioned LanceDB chunks table, in few commits.

Two steps, so parallel workers never race on the table:

1. **Stage** (parallel): each worker writes its documents' rows as Parquet files under
   ``<db>/_staging/<table>/<run id>/``. A document's rows always land in one file.
2. **Commit** (a single step, under the table's commit lock, ``store.commit_lock``: a file
   lock, or the S3 lease whose fencing token the manifest row records; each merge is
   checked afterwards, ``store.verify_commit``): the staged files are merged
   with ``merge_insert`` on ``chunk_id`` in batches of whole documents. Each merge also
   deletes the old chunks of the documents it replaces (and, in the last one, documents
   gone from the source), so a reader sees a document's old chunks or its new ones,
   never both and never none. The final version is tagged ``run-<run id>`` and the run's
   manifest row and errors are recorded.

Deletes are decided before the first commit and only when it is safe: a run with more
failures than ``max_failure_fraction`` deletes nothing, and a run that would delete more
than ``max_delete_fraction`` of its source's documents refuses to, unless the operator
allowed it (``--allow-mass-delete``). Under the commit lock, documents that another
namespace took since the plan was made are dropped from the commit (``NamespaceConflict``).

A run that dies before the commit leaves the table as it was; the next run redoes the work.

Runners retry a failed bundle and may run one twice, so both steps are idempotent: a
staged file is named by its rows (a retried bundle rewrites the same file), the commit
uses each staged file once and each chunk id once, and the manifest and errors rows are
recorded under the commit lock, last: a commit step that finds its run's manifest row
returns it without committing again; one retried after a crash between its merges redoes
them (upserts by chunk id) and ends as one clean commit would.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from freshindex import store
from freshindex.config import CommitConfig
from freshindex.errors import RunnerContractBroken
from freshindex.observability import metrics, tracing
from freshindex.schemas.bookkeeping import RunRecord
from freshindex.schemas.predicates import in_list
from freshindex.schemas.records import KNOWN_BAD, EmbeddedDocument, ErrorRecord
from freshindex.transforms.plan import Owns, TableRef, may_write, namespace_conflict
from freshindex.transforms.process import rows as rows_isolated
from freshindex.transforms.rows import utc_time

log = logging.getLogger(__name__)

# Run statuses (``runs.status``) and the errors rows that explain withheld deletes.
SUCCEEDED, FAILED_THRESHOLD, REFUSED_MASS_DELETE = (
    "succeeded",
    "failed_threshold",
    "refused_mass_delete",
)
DELETES_WITHHELD, MASS_DELETE_REFUSED = "DeletesWithheld", "MassDeleteRefused"


STAGE_ERRORS = "errors"  # the stage step's tagged output of ErrorRecords


@dataclass(frozen=True)
class RunSpec:
    """Everything the write step needs to know about the run, fixed when the pipeline is built."""

    run_id: str
    kind: str
    source: str
    table: TableRef
    fingerprint: str
    model: str
    settings: dict[str, Any]
    sync: str
    started_at: float
    max_failure_fraction: float
    commit_max_rows: int
    namespace: str | None = None  # the namespace the run writes; None: no ownership checks
    owns: Owns | None = None  # which stored source URIs the source's pattern can produce
    max_delete_fraction: float = 1.0  # refuse to delete more of the source's documents
    allow_mass_delete: bool = False  # the operator's override of max_delete_fraction
    commit: CommitConfig | None = None  # the commit lock's settings (None: the defaults)

    @property
    def staging_uri(self) -> str:
        return store.staging_dir(self.table.db_uri, self.table.table, self.run_id)


@dataclass(frozen=True)
class StagedBatch:
    path: str
    doc_ids: tuple[str, ...]
    rows: int
    embedded: int
    reused: int


@dataclass
class CommitResult:
    """What one commit did; summed over a run into the manifest. Counts, not sets of ids:
    a document's rows are staged in one file, so the groups' documents are disjoint."""

    versions: list[int] = field(default_factory=list)
    docs_added: int = 0
    docs_updated: int = 0
    docs_deleted: int = 0
    rows: int = 0


def staged_name(table: pa.Table) -> str:
    """A staged file's name, from its rows' identities: a retried or duplicated bundle that
    stages the same documents writes the same file again, never a second copy beside it."""
    ids = sorted(set(table["doc_id"].to_pylist())) + sorted(table["chunk_id"].to_pylist())
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:32] + ".parquet"


def stage_rows(table: pa.Table, staging_uri: str) -> str:
    fs, root = store.filesystem(staging_uri)
    fs.create_dir(root, recursive=True)
    name = staged_name(table)
    path = f"{root.rstrip('/')}/{name}"
    pq.write_table(table, path, filesystem=fs)
    return f"{staging_uri.rstrip('/')}/{name}"


def read_staged(paths: Iterable[str], columns: Sequence[str] | None = None) -> pa.Table:
    tables = []
    for path in paths:
        fs, p = store.filesystem(path)
        tables.append(pq.read_table(p, filesystem=fs, columns=columns))
    return pa.concat_tables(tables) if tables else None


def _without_docs(data: pa.Table, doc_ids: pa.Array | None) -> pa.Table:
    if doc_ids is None:
        return data
    return data.filter(pc.invert(pc.is_in(data["doc_id"], value_set=doc_ids)))


def staged_rows(
    paths: Sequence[str], schema: pa.Schema, exclude_docs: Iterable[str] = ()
) -> pa.RecordBatchReader:
    """The rows of the staged files at ``paths`` as one stream in the table's ``schema``,
    read one file at a time while the merge consumes them: a commit of ``commit_max_rows``
    rows never holds more than one staged file in memory. Rows of ``exclude_docs`` are
    left out (documents another namespace took since the plan)."""
    excluded = sorted(set(exclude_docs))
    drop = pa.array(excluded, pa.string()) if excluded else None

    def batches() -> Iterator[pa.RecordBatch]:
        seen: set[str] = set()  # each chunk id once in one merge (drop_repeated_chunks)
        for path in paths:
            fs, p = store.filesystem(path)
            data = _without_docs(pq.read_table(p, filesystem=fs), drop)
            data = drop_repeated_chunks(data, seen)
            # by name, in the table's order: columns added by upgrades (namespace,
            # source_version) stand at the end of an old table but in their pinned place
            # in new rows
            yield from data.select(schema.names).cast(schema).to_batches()

    return pa.RecordBatchReader.from_batches(schema, batches())


def staged_chunk_ids(paths: Sequence[str], exclude_docs: Iterable[str] = ()) -> list[str]:
    """The chunk ids of the staged files at ``paths`` (two columns read, not the rows), less
    those of ``exclude_docs``: what the commit of these files must leave in the table."""
    excluded = sorted(set(exclude_docs))
    keys = read_staged(paths, columns=["chunk_id", "doc_id"])
    if keys is None:
        return []
    keys = _without_docs(keys, pa.array(excluded, pa.string()) if excluded else None)
    return list(dict.fromkeys(keys["chunk_id"].to_pylist()))  # once each, as merged


def remove_staging(staging_uri: str) -> None:
    fs, root = store.filesystem(staging_uri)
    with contextlib.suppress(FileNotFoundError, OSError):
        fs.delete_dir(root)


def unique_staged(staged: Iterable[StagedBatch]) -> list[StagedBatch]:
    """Each staged file once: a bundle that a runner ran twice staged the same file twice."""
    return list({b.path: b for b in staged}.values())


def drop_repeated_chunks(data: pa.Table, seen: set[str] | None = None) -> pa.Table:
    """``data`` with each chunk id once (the first), also leaving out those in ``seen``
    (updated in place): a document staged by two bundles that batched it differently must
    not make one merge match a row twice."""
    seen = set() if seen is None else seen
    ids = data["chunk_id"].to_pylist()
    keep = [not (c in seen or seen.add(c)) for c in ids]
    return data if all(keep) else data.filter(pa.array(keep))


def group_for_commits(staged: Sequence[StagedBatch], max_rows: int) -> list[list[StagedBatch]]:
    """Consecutive groups of staged files of at most ``max_rows`` rows (one file may exceed)."""
    groups: list[list[StagedBatch]] = []
    current: list[StagedBatch] = []
    rows = 0
    for batch in sorted(staged, key=lambda b: b.path):
        if current and rows + batch.rows > max_rows:
            groups.append(current)
            current, rows = [], 0
        current.append(batch)
        rows += batch.rows
    if current:
        groups.append(current)
    return groups


def commit_changes(
    table,
    data: pa.Table | pa.RecordBatchReader | None,
    *,
    replace_docs: Iterable[str] = (),
    delete_docs: Iterable[str] = (),
) -> int | None:
    """One atomic commit: upsert ``data`` by chunk id; drop other chunks of ``replace_docs``
    and every chunk of ``delete_docs``. Returns the new version, or None if nothing to do.
    ``data`` may be a stream (``staged_rows``, in the table's schema): the merge reads it
    batch by batch."""
    clear = sorted(set(replace_docs) | set(delete_docs))
    condition = in_list("doc_id", clear).expr() if clear else None
    if data is None or (isinstance(data, pa.Table) and data.num_rows == 0):
        if condition is None:
            return None
        table.delete(condition)
        return table.version
    if isinstance(data, pa.Table) and data.schema != table.schema:
        # by name, in the table's order: columns added by upgrades (namespace, source_version)
        # stand at the end of an old table but in their pinned place in new rows
        data = data.select(table.schema.names).cast(table.schema)
    builder = table.merge_insert("chunk_id").when_matched_update_all().when_not_matched_insert_all()
    if condition is not None:
        builder = builder.when_not_matched_by_source_delete(condition)
    builder.execute(data)
    return table.version


class _StageFn(beam.DoFn):
    """A batch of embedded documents -> one staged Parquet file of their rows. A document
    whose rows cannot be built is its ``write`` ErrorRecord (``ERRORS``); the others are
    staged (``freshindex.transforms.process.rows``, the path the stream takes too)."""

    def __init__(self, spec: RunSpec):
        self._spec = spec

    def process(self, batch: list[EmbeddedDocument]) -> Iterator[StagedBatch]:
        if not batch:
            return
        dim = int(np.asarray(batch[0].vectors).shape[1])
        table, kept, errors = rows_isolated(
            batch,
            fingerprint=self._spec.fingerprint,
            model=self._spec.model,
            run_id=self._spec.run_id,
            dim=dim,
            namespace=self._spec.namespace,
        )
        for error in errors:
            yield beam.pvalue.TaggedOutput(STAGE_ERRORS, error)
        if table is None:
            return
        path = stage_rows(table, self._spec.staging_uri)
        yield StagedBatch(
            path=path,
            doc_ids=tuple(d.document.doc_id for d in kept),
            rows=table.num_rows,
            embedded=sum(d.embedded for d in kept),
            reused=sum(d.reused for d in kept),
        )


def _vector_dim(spec: RunSpec, staged: Sequence[StagedBatch], db) -> int:
    """The vector width: from the table or the staged rows; loads the model only when neither."""
    table = store.open_if_exists(db, spec.table.table)
    if table is not None:
        return table.schema.field("vector").type.list_size
    if staged:
        fs, path = store.filesystem(staged[0].path)
        first = pq.read_schema(path, filesystem=fs)
        return first.field("vector").type.list_size
    from freshindex.config import EmbeddingConfig
    from freshindex.embedding import get_embedder

    return get_embedder(EmbeddingConfig(model=spec.model)).dim


def _failed_ids(errors: Iterable[ErrorRecord]) -> set[str]:
    return {e.doc_id or f"{e.source_uri}:{e.message}" for e in errors}


def failure_status(spec: RunSpec, errors: Sequence[ErrorRecord], docs_seen: int) -> str:
    """``succeeded`` or ``failed_threshold``: more documents failed than the run allows."""
    total = max(docs_seen + sum(1 for e in errors if e.stage == "read"), 1)
    over = len(_failed_ids(errors)) / total > spec.max_failure_fraction
    return FAILED_THRESHOLD if over else SUCCEEDED


def guard_deletes(
    spec: RunSpec,
    deleted: list[str],
    errors: Sequence[ErrorRecord],
    *,
    docs_seen: int,
) -> tuple[list[str], str, list[ErrorRecord]]:
    """(deletes to commit, run status, notices): decided before the first commit.

    A run over ``max_failure_fraction`` deletes nothing (its view of the source is not
    trusted); one that would delete more than ``max_delete_fraction`` of the source's
    documents (those it still lists, readable or not, plus those it would delete) refuses
    unless ``allow_mass_delete``. Notices are errors rows that say what was withheld and why.
    """
    status = failure_status(spec, errors, docs_seen)
    if not deleted:
        return deleted, status, []
    if status == FAILED_THRESHOLD:
        notice = ErrorRecord(
            stage="commit",
            error_class=DELETES_WITHHELD,
            message=f"nothing was deleted: {len(_failed_ids(errors))} documents failed, over "
            f"ingest.max_failure_fraction={spec.max_failure_fraction}, so the "
            f"{len(deleted)} documents missing from the source were kept; fix the failures "
            "(freshindex errors --run latest) and re-run",
            source_uri=spec.source,
        )
        return [], status, [notice]
    owned = len(deleted) + docs_seen + sum(1 for e in errors if e.stage == "read" and e.doc_id)
    if len(deleted) / owned > spec.max_delete_fraction and not spec.allow_mass_delete:
        notice = ErrorRecord(
            stage="commit",
            error_class=MASS_DELETE_REFUSED,
            message=f"refused to delete {len(deleted)} of the source's {owned} documents in "
            f"the table (over ingest.max_delete_fraction={spec.max_delete_fraction}); "
            "nothing was deleted. If the source really lost them, re-run with "
            "--allow-mass-delete (or raise ingest.max_delete_fraction); if not, check the "
            "source (an unmounted share, a wrong path or glob)",
            source_uri=spec.source,
        )
        return [], REFUSED_MASS_DELETE, [notice]
    return deleted, status, []


def foreign_documents(
    table, doc_ids: Iterable[str], namespace: str | None, owns: Owns | None
) -> dict[str, store.LedgerEntry]:
    """Those of ``doc_ids`` the table now holds under another namespace (read at commit time,
    under the commit lock: another writer may have taken one since the plan was made)."""
    if namespace is None:
        return {}
    entries = store.ledger_of(table, doc_ids)
    return {d: e for d, e in entries.items() if not may_write(e, namespace, owns)}


def commit_run(
    spec: RunSpec,
    staged: Sequence[StagedBatch],
    errors: Sequence[ErrorRecord],
    deleted: Sequence[str],
    updated: Sequence[str],
    docs_seen: int,
    docs_skipped: int,
) -> dict[str, Any]:
    """The single commit step of a run; returns the manifest row it recorded."""
    db = store.connect(spec.table.db_uri)
    errors = list(errors)
    deleted = sorted(set(deleted)) if spec.sync == "full" else []
    if deleted and docs_seen == 0:
        errors.append(
            ErrorRecord(
                stage="commit",
                error_class="EmptySource",
                message=f"the source matched no documents; refusing to delete all "
                f"{len(deleted)} documents of the table",
                source_uri=spec.source,
            )
        )
        deleted = []
    updated_set = set(updated)
    deleted, status, notices = guard_deletes(spec, deleted, errors, docs_seen=docs_seen)
    staged = unique_staged(staged)
    result = CommitResult()
    with store.commit_lock(spec.table.db_uri, spec.table.table, spec.commit) as lease:
        done = store.read_runs(db, spec.table.table, run_id=spec.run_id)
        if done:  # a retried or duplicated commit step: the run is in the table already
            log.warning("run %s was committed already; not committing it again", spec.run_id)
            remove_staging(spec.staging_uri)
            return done[0]
        table = store.open_or_create_chunks(
            db,
            spec.table.table,
            dim=_vector_dim(spec, staged, db),
            model=spec.model,
            settings=spec.settings,
        )
        foreign: dict[str, store.LedgerEntry] = {}
        if table.version != spec.table.version and table.count_rows():
            # written since the plan (by a stream, another run): check ownership again
            staged_ids = {d for b in staged for d in b.doc_ids}
            foreign = foreign_documents(table, staged_ids | set(deleted), spec.namespace, spec.owns)
            for doc_id, entry in sorted(foreign.items()):
                action = "delete" if doc_id in deleted else "replace"
                errors.append(namespace_conflict(doc_id, entry, spec.namespace, action, None))
            deleted = [d for d in deleted if d not in foreign]
        groups = group_for_commits(staged, spec.commit_max_rows)
        for i, group in enumerate(groups):
            paths = [b.path for b in group]
            docs_here = {d for b in group for d in b.doc_ids} - foreign.keys()
            chunk_ids = staged_chunk_ids(paths, foreign.keys())
            # streamed file by file into the merge, never concatenated (staged_rows)
            data = staged_rows(paths, table.schema, foreign.keys()) if docs_here else None
            last = i == len(groups) - 1
            store.check_held(lease)  # a holder that stalled past its TTL never commits
            version = commit_changes(
                table,
                data,
                replace_docs=docs_here & updated_set,
                delete_docs=deleted if last else (),
            )
            store.verify_commit(
                db,
                spec.table.table,
                version,
                chunk_ids=chunk_ids,
                replaced_docs=docs_here & updated_set,
                deleted_docs=deleted if last else (),
            )
            result.versions.append(version)
            result.docs_updated += len(docs_here & updated_set)
            result.docs_added += len(docs_here) - len(docs_here & updated_set)
            result.rows += len(chunk_ids)
            log.info(
                "commit %d/%d: %d rows -> version %s", i + 1, len(groups), len(chunk_ids), version
            )
        if not groups and deleted:
            store.check_held(lease)
            version = commit_changes(table, None, delete_docs=deleted)
            store.verify_commit(db, spec.table.table, version, deleted_docs=deleted)
            result.versions.append(version)
        result.docs_deleted = len(deleted)
        store.check_held(lease)
        store.ensure_scalar_indexes(table)
        final_version = table.version
        lease_token = store.token_of(lease)  # read while held: a released lease has none
        tag = store.RUN_TAG_PREFIX + spec.run_id
        store.tag_version(table, tag, final_version)
        if status == SUCCEEDED:  # conflicts found under the lock count as failures too
            status = failure_status(spec, errors, docs_seen)
        record = RunRecord(
            run_id=spec.run_id,
            kind=spec.kind,
            table_name=spec.table.table,
            source=spec.source,
            settings=spec.settings,
            status=status,
            started_at=utc_time(spec.started_at),
            finished_at=store.utcnow(),
            docs_seen=docs_seen,
            docs_skipped=docs_skipped,
            docs_added=result.docs_added,
            docs_updated=result.docs_updated,
            docs_deleted=result.docs_deleted,
            docs_failed=len(_failed_ids(errors)),
            chunks_embedded=sum(b.embedded for b in staged),
            chunks_reused=sum(b.reused for b in staged),
            chunks_written=result.rows,
            table_version=final_version,
            tag=tag,
            docs_known_bad=sum(1 for e in errors if e.error_class == KNOWN_BAD),
            lease_token=lease_token,
        )
        errors.extend(notices)
        # under the lock, last: a commit step retried after a crash before this point
        # redoes the (idempotent) merges above; one retried after it returns above
        if not store.read_errors(db, run_id=spec.run_id):  # one append: all or none
            store.append_errors(db, spec.run_id, spec.table.table, errors)
        store.append_run(db, record)
    remove_staging(spec.staging_uri)
    return record.to_dict()


# What each list side input of the commit step holds; checked before anything is committed.
COMMIT_INPUTS = {"staged": StagedBatch, "errors": ErrorRecord, "deleted": str, "updated": str}


def check_commit_inputs(**inputs: Sequence[Any]) -> None:
    """Refuse side inputs that hold other types than their PCollections carry: a runner
    that mixes PCollections would otherwise feed documents or errors in as deletes."""
    for name, values in inputs.items():
        want = COMMIT_INPUTS[name]
        wrong = next((v for v in values if not isinstance(v, want)), None)
        if wrong is not None:
            raise RunnerContractBroken(
                f"the commit step's side input {name!r} holds a {type(wrong).__name__}, not "
                f"a {want.__name__}: the runner mixed PCollections; nothing was committed",
                hint="Beam's DaskRunner mixes the outputs of multi-output steps: run with "
                "--runner freshindex.pipelines.dask_runner.DaskRunner (docs/ARCHITECTURE.md)",
            )


class _CommitFn(beam.DoFn):
    def __init__(self, spec: RunSpec):
        self._spec = spec

    def process(self, _, staged, errors, deleted, updated, docs_seen, docs_skipped):
        check_commit_inputs(staged=staged, errors=errors, deleted=deleted, updated=updated)
        yield commit_step(self._spec, staged, errors, deleted, updated, docs_seen, docs_skipped)


def commit_step(spec: RunSpec, *args) -> dict[str, Any]:
    """``commit_run`` traced and timed: the batch commit step, in the pipeline or for a run
    that needs no pipeline (``pipelines.batch``, an unchanged source)."""
    started = time.monotonic()
    with tracing.span("freshindex.commit", run_id=spec.run_id, kind="batch"):
        row = commit_run(spec, *args)
    seconds = time.monotonic() - started
    metrics.observe_commit("batch", seconds)  # seen where the runner runs this step
    log.info("commit step took %.1fs", seconds)
    return row


class WriteToIndex(beam.PTransform):
    """EmbeddedDocument -> one manifest row (dict) after the run's commits.

    The other inputs arrive as side inputs, so the commit runs once, after every worker
    has staged its rows:  ``errors`` (ErrorRecord), ``deleted`` and ``updated`` (doc ids),
    ``docs_seen`` and ``docs_skipped`` (singleton counts).
    """

    def __init__(
        self, spec: RunSpec, *, errors, deleted, updated, docs_seen, docs_skipped, docs_per_file=256
    ):
        super().__init__()
        self._spec, self._docs_per_file = spec, docs_per_file
        self._side = (errors, deleted, updated, docs_seen, docs_skipped)

    def expand(self, embedded):
        errors, deleted, updated, docs_seen, docs_skipped = self._side
        stage = (
            embedded
            | "BatchForStaging"
            >> beam.BatchElements(
                min_batch_size=self._docs_per_file, max_batch_size=self._docs_per_file
            )
            | "StageRows"
            >> beam.ParDo(_StageFn(self._spec)).with_outputs(STAGE_ERRORS, main="staged")
        )
        staged = stage.staged
        errors = (errors, stage[STAGE_ERRORS]) | "WithStageErrors" >> beam.Flatten()
        return (
            embedded.pipeline
            | "CommitTrigger" >> beam.Create([None])
            | "Commit"
            >> beam.ParDo(
                _CommitFn(self._spec),
                beam.pvalue.AsList(staged),
                beam.pvalue.AsList(errors),
                beam.pvalue.AsList(deleted),
                beam.pvalue.AsList(updated),
                beam.pvalue.AsSingleton(docs_seen),
                beam.pvalue.AsSingleton(docs_skipped),
            )
        )
