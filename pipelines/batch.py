"""Batch re-indexing: files or a JSONL corpus -> the versioned LanceDB chunks table.

    python -m freshindex.pipelines.batch --source docs/ --table docs [--db URI] \
        [--sync full|append] \
        [--namespace NS] [--allow_mass_delete] [--full_hash] [--if_running skip|wait|fail] \
        [--runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing]

List -> Screen (an unchanged listing is skipped unread) -> Hash -> Plan (against the
table's ledger) -> LoadRecords (a JSONL record's text, read again) -> Parse -> Chunk ->
Embed -> Write (stage, then one serialized commit).
Every step is a transform from ``transforms/``; the streaming pipeline composes the same
ones.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from freshindex import store
from freshindex.config import Config
from freshindex.embedding import resolve_backend, resolve_dtype
from freshindex.observability import tracing
from freshindex.pipelines.observe import report_run
from freshindex.pipelines.options import FreshIndexOptions
from freshindex.runtime import prepare_offline
from freshindex.schemas.bookkeeping import new_run_id
from freshindex.schemas.records import ErrorRecord
from freshindex.store.chunks import current_version
from freshindex.store.upkeep import maintain
from freshindex.transforms.access import Labeler
from freshindex.transforms.chunk import ChunkDocuments
from freshindex.transforms.embed import Embed
from freshindex.transforms.parse import Parse, ReadKnownFailures, failure_fingerprint
from freshindex.transforms.plan import (
    PlanChanges,
    ReadLedger,
    RecordLabels,
    RecordSourceVersions,
    ScreenListing,
    TableRef,
    nothing_changed,
)
from freshindex.transforms.read import (
    ERRORS_TAG,
    HashFiles,
    ListSource,
    LoadRecords,
    ReadSource,
    SourceSpec,
    list_files,
    resolve_source,
)
from freshindex.transforms.write import (
    DELETES_WITHHELD,
    MASS_DELETE_REFUSED,
    REFUSED_MASS_DELETE,
    SUCCEEDED,
    RunSpec,
    WriteToIndex,
    commit_step,
)

log = logging.getLogger("freshindex.batch")


def run_settings(cfg: Config) -> dict[str, Any]:
    return {
        "fingerprint": cfg.fingerprint(),
        "embedding": cfg.to_dict()["embedding"],
        # what ``embedding.dtype: auto`` meant on the machine that started the run
        "embedding_dtype_resolved": resolve_dtype(cfg.embedding.dtype, cfg.embedding.device),
        # and what ``embedding.backend: auto`` meant there (docs/ENCODERS.md)
        "embedding_backend_resolved": resolve_backend(cfg.embedding),
        "chunking": cfg.to_dict()["chunking"],
        "parsing": cfg.to_dict()["parsing"],
        "sync": cfg.ingest.sync,
    }


def _listed_but_unread(error: ErrorRecord):
    """(doc_id, None) for a document the source listed but could not read: it is present."""
    if error.stage == "read" and error.doc_id:
        yield error.doc_id, None


def build_ingest(
    p: beam.Pipeline, cfg: Config, source: SourceSpec, run: RunSpec, retry_failed: bool = False
):
    """Compose the batch pipeline on ``p``; returns the PCollection of the run's manifest row.

    Documents that failed permanently before (same bytes, same settings) are not parsed
    again unless ``retry_failed``.
    """
    ledger = p | "Ledger" >> ReadLedger(run.table)
    refs, read_errors = _read(p, cfg, source, run, ledger)
    failed = read_errors | "ListedButUnread" >> beam.FlatMap(_listed_but_unread)
    plan = {"refs": refs, "ledger": ledger, "failed": failed} | "Plan" >> PlanChanges(
        run.fingerprint, run.sync, source.namespace, source.owns, Labeler.of(cfg.access)
    )
    failures_fp = failure_fingerprint(cfg)
    known_bad = (
        None if retry_failed else p | "KnownBad" >> ReadKnownFailures(run.table, failures_fp)
    )
    # a JSONL record is planned without its text (read.lean_records); only the records to
    # process are read again, so no step before the parse holds the corpus's text
    loaded = plan.process | "LoadRecords" >> LoadRecords()
    parsed = loaded.refs | "Parse" >> Parse(
        cfg.parsing, fingerprint=failures_fp, known_bad=known_bad
    )
    chunked = parsed.docs | "Chunk" >> ChunkDocuments(cfg.chunking, cfg.embedding)
    embedded = chunked.chunked | "Embed" >> Embed(
        cfg.embedding, run.table, cfg.ingest.docs_per_batch, overlap=cfg.ingest.embed_overlap
    )
    errors = (
        read_errors,
        plan.errors,
        loaded.errors,
        parsed.errors,
        chunked.errors,
        embedded.errors,
    ) | "AllErrors" >> beam.Flatten()
    manifest = embedded.embedded | "Write" >> WriteToIndex(
        run,
        errors=errors,
        deleted=plan.deleted,
        updated=plan.updated,
        docs_seen=refs | "CountSeen" >> beam.combiners.Count.Globally(),
        docs_skipped=plan.skipped | "CountSkipped" >> beam.combiners.Count.Globally(),
        docs_per_file=cfg.ingest.docs_per_batch * 4,
    )
    _ = plan.refreshed | "RecordSourceVersions" >> RecordSourceVersions(
        run.table, manifest, run.commit
    )
    _ = plan.relabeled | "RecordLabels" >> RecordLabels(run.table, manifest, run.commit)
    return manifest


def _read(p: beam.Pipeline, cfg: Config, source: SourceSpec, run: RunSpec, ledger):
    """(refs with their content hash, read errors). With ``ingest.change_detection:
    metadata`` a file whose listing metadata the ledger recorded is not read: its ref
    carries the stored content hash and the plan skips it."""
    if source.kind != "files" or cfg.ingest.change_detection == "hash":
        read = p | "Read" >> ReadSource(source)
        return read["refs"], read[ERRORS_TAG]
    listed = p | "List" >> ListSource(source)
    screened = {"listed": listed.refs, "ledger": ledger} | "Screen" >> ScreenListing(
        run.fingerprint, source.namespace, source.owns
    )
    hashed = screened.to_read | "Hash" >> HashFiles(source.root)
    refs = (screened.unchanged, hashed.refs) | "Refs" >> beam.Flatten()
    errors = (listed.errors, hashed.errors) | "ReadErrors" >> beam.Flatten()
    return refs, errors


def run_ingest(
    cfg: Config,
    source: str,
    beam_args: list[str] | None = None,
    run_id: str | None = None,
    *,
    allow_mass_delete: bool = False,
    retry_failed: bool = False,
    physical: bool = False,
) -> dict[str, Any]:
    """Run one batch ingest to completion and return its manifest row (see ``runs`` table).

    ``allow_mass_delete`` lets a ``sync: full`` run delete more than
    ``ingest.max_delete_fraction`` of the source's documents; ``retry_failed`` re-parses
    documents remembered as permanently bad. ``cfg.table`` may be an alias: the run writes
    the table it names now (``store.writer_table``); ``physical`` writes the table of that
    name itself (a migration catching up a table that no alias serves).

    The whole run holds the table's run lock (``store.run_lock``): when another batch run
    holds it, ``ingest.if_running`` decides: ``skip`` raises ``RunSkipped`` (exit status 75),
    ``fail`` raises ``RunInProgress``, ``wait`` waits for it first. The table's version is
    read only once the lock is held, so a run never plans against a table that another
    run is still changing.
    """
    prepare_offline()
    if not physical:
        table = store.writer_table(store.connect(cfg.db), cfg.table, cfg.fingerprint())
        cfg = cfg if table == cfg.table else dataclasses.replace(cfg, table=table)
    spec = resolve_source(source, cfg.ingest.namespace)
    run_id = run_id or new_run_id()
    tracing.configure(cfg.observability)
    try:
        with (
            tracing.span("freshindex.run", run_id=run_id, kind="batch", table=cfg.table) as span,
            tracing.run_context(run_id),
            store.run_lock(
                cfg.db,
                cfg.table,
                run_id,
                if_running=cfg.ingest.if_running,
                wait_s=cfg.ingest.if_running_wait_s,
                commit=cfg.commit,
            ),
        ):
            row = _run_locked(cfg, source, spec, run_id, beam_args, allow_mass_delete, retry_failed)
            tracing.set_attributes(
                span,
                status=row["status"],
                table_version=row["table_version"],
                docs_seen=row["docs_seen"],
                chunks_written=row["chunks_written"],
            )
    except store.RunSkipped as skipped:
        log.warning("run %s %s", run_id, skipped)
        raise
    report_run(cfg, row)
    return row


def _run_locked(
    cfg: Config,
    source: str,
    spec: SourceSpec,
    run_id: str,
    beam_args: list[str] | None,
    allow_mass_delete: bool,
    retry_failed: bool,
) -> dict[str, Any]:
    """The run itself, under the run lock."""
    version = current_version(cfg.db, cfg.table, cfg.embedding.model)
    run = RunSpec(
        run_id=run_id,
        kind="batch",
        source=source,
        table=TableRef(cfg.db, cfg.table, version),
        fingerprint=cfg.fingerprint(),
        model=cfg.embedding.model,
        settings=run_settings(cfg),
        sync=cfg.ingest.sync,
        started_at=time.time(),
        max_failure_fraction=cfg.ingest.max_failure_fraction,
        commit_max_rows=cfg.ingest.commit_max_rows,
        namespace=spec.namespace,
        owns=spec.owns,
        max_delete_fraction=cfg.ingest.max_delete_fraction,
        allow_mass_delete=allow_mass_delete,
        commit=cfg.commit,
    )
    log.info(
        "run %s: %s -> %s/%s (starting from version %s, sync=%s, namespace %s)",
        run.run_id,
        source,
        cfg.db,
        cfg.table,
        version if version is not None else "none: new table",
        cfg.ingest.sync,
        spec.namespace,
    )
    if not _recorded_unchanged(cfg, spec, run):
        pipeline = beam.Pipeline(options=PipelineOptions(beam_args or []))
        build_ingest(pipeline, cfg, spec, run, retry_failed)
        pipeline.run().wait_until_finish()
    rows = store.read_runs(store.connect(cfg.db), cfg.table, run_id=run.run_id)
    if not rows:
        raise RuntimeError(f"run {run.run_id} finished without recording its manifest")
    row = rows[0]
    if cfg.maintenance.after_batch and (row["chunks_written"] or row["docs_deleted"]):
        row["upkeep"] = upkeep_after_run(cfg, run.run_id)
    return row


def _recorded_unchanged(cfg: Config, spec: SourceSpec, run: RunSpec) -> bool:
    """Record the run without starting the pipeline when the plan would only skip: a files
    source with metadata change detection whose every file the table holds unchanged, and
    nothing to delete, relabel or re-record (``plan.nothing_changed``, which runs the plan's
    own functions). Beam's start costs about a second, the largest part of such a run.
    False, and the pipeline runs, in any other case."""
    if spec.kind != "files" or cfg.ingest.change_detection == "hash" or run.table.version is None:
        return False
    try:
        listed = list(list_files(spec))
        table = store.open_chunks(store.connect(cfg.db), cfg.table)
        table.checkout(run.table.version)
        unchanged = nothing_changed(
            listed,
            store.iter_ledger(table),
            run.fingerprint,
            run.sync,
            spec.owns,
            namespace=spec.namespace,
            labeler=Labeler.of(cfg.access),
        )
    except Exception as exc:  # nothing lost: the pipeline lists and reads it, and records why
        log.info("run %s: the pipeline will plan it (quick check: %s)", run.run_id, exc)
        return False
    if not unchanged:
        return False
    log.info(
        "run %s: all %d documents unchanged; recorded without starting the pipeline",
        run.run_id,
        len(listed),
    )
    commit_step(run, [], [], [], [], len(listed), len(listed))
    return True


def upkeep_after_run(cfg: Config, run_id: str) -> str:
    """Table upkeep once the run's commit is done (``maintenance.after_batch``); returns its
    summary. Upkeep runs here, in the launching process after the pipeline finished, not in
    the commit step: it is the table's housekeeping, not part of the run's data. A failure
    is an ``errors`` row (stage ``maintain``) and the run still succeeded: the data is
    committed, and the next upkeep retries."""
    try:
        report = maintain(cfg.db, cfg.table, cfg.maintenance, commit=cfg.commit)
    except Exception as exc:  # the data is committed; upkeep is retried next time
        log.warning("table upkeep failed: %s", exc)
        error = ErrorRecord.from_exception("maintain", exc, doc_id=None, source_uri=cfg.table)
        store.append_errors(store.connect(cfg.db), run_id, cfg.table, [error])
        return f"table upkeep failed: {error.error_class}: {error.message}"
    log.info("%s", report.summary())
    return report.summary()


def known_bad_note(row: dict[str, Any]) -> str:
    """The summary's note on documents skipped as known bad (none in rows of older runs)."""
    known_bad = row.get("docs_known_bad") or 0
    if not known_bad:
        return ""
    return f" ({known_bad} known-bad skipped: unchanged since they failed; --retry-failed)"


def format_summary(row: dict[str, Any], errors: Sequence[dict[str, Any]] = ()) -> str:
    """The run's summary; ``errors`` (its errors rows) add why deletes were withheld."""
    elapsed = (row["finished_at"] - row["started_at"]).total_seconds()
    rate = row["chunks_embedded"] / elapsed if elapsed > 0 else 0.0
    return (
        f"run {row['run_id']} {row['status']} in {elapsed:.1f}s -> "
        f"table {row['table_name']} version {row['table_version']} (tag {row['tag']})\n"
        f"  documents: {row['docs_seen']} seen, {row['docs_skipped']} skipped, "
        f"{row['docs_added']} added, {row['docs_updated']} updated, "
        f"{row['docs_deleted']} deleted, {row['docs_failed']} failed"
        f"{known_bad_note(row)}\n"
        f"  chunks: {row['chunks_embedded']} embedded, {row['chunks_reused']} reused, "
        f"{row['chunks_written']} written; {rate:.1f} chunks/s embedded"
    ) + "".join(
        f"\n  {e['error_class']}: {e['message']}"
        for e in errors
        if e["error_class"] in (DELETES_WITHHELD, MASS_DELETE_REFUSED)
    )


def failure_message(row: dict[str, Any], cfg: Config) -> str | None:
    """What went wrong with a run that did not succeed (None when it did), for stderr."""
    if row["status"] == REFUSED_MASS_DELETE:
        return (
            "error: refused a mass delete: more than ingest.max_delete_fraction="
            f"{cfg.ingest.max_delete_fraction} of the source's documents are missing from it, "
            "so nothing was deleted (new and changed documents were written). Re-run with "
            "--allow-mass-delete if the source really lost them"
        )
    if row["status"] != SUCCEEDED:
        return (
            f"error: {row['docs_failed']} of {row['docs_seen']} documents failed, over "
            f"ingest.max_failure_fraction={cfg.ingest.max_failure_fraction}; nothing was deleted"
        )
    return None


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in ("freshindex", "transforms", "pipelines"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


# sysexits.h EX_TEMPFAIL ("try again later"): distinct from success and from every failure
EXIT_SKIPPED = 75


def exit_code(row: dict[str, Any]) -> int:
    """0: succeeded; 3: too many documents failed; 4: a mass delete was refused (75: skipped,
    another run holds the table: ``EXIT_SKIPPED``; 2: any other error)."""
    return {SUCCEEDED: 0, REFUSED_MASS_DELETE: 4}.get(row["status"], 3)


def skipped_summary(skipped: store.RunSkipped) -> str:
    """The summary of a run that ``ingest.if_running: skip`` did not start."""
    return (
        f"run {skipped.run_id} skipped: another batch run holds the table\n"
        f"  held by: {skipped.holder}\n"
        f"  nothing was read or written; exit status {EXIT_SKIPPED} (ingest.if_running: skip)"
    )


def skipped_row(skipped: store.RunSkipped) -> dict[str, Any]:
    """The machine-readable form of ``skipped_summary`` (``--json``)."""
    return {"run_id": skipped.run_id, "status": "skipped", "held_by": skipped.holder}


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    options = FreshIndexOptions(argv if argv is not None else sys.argv[1:])
    opts = options.view_as(FreshIndexOptions)
    if not opts.source:
        raise SystemExit("--source is required")
    cfg = opts.to_config()
    try:
        row = run_ingest(
            cfg,
            opts.source,
            argv if argv is not None else sys.argv[1:],
            opts.run_id,
            allow_mass_delete=bool(opts.allow_mass_delete),
            retry_failed=bool(opts.retry_failed),
        )
    except store.RunSkipped as skipped:
        print(skipped_summary(skipped))
        return EXIT_SKIPPED
    except store.RunInProgress as busy:  # if_running: fail, or wait gave up
        print(f"error: {busy}", file=sys.stderr)
        return 2
    print(format_summary(row, store.read_errors(store.connect(cfg.db), run_id=row["run_id"])))
    message = failure_message(row, cfg)
    if message is not None:
        print(message, file=sys.stderr)
    return exit_code(row)


if __name__ == "__main__":
    sys.exit(main())
