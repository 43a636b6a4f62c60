"""Batch re-indexing: files or a JSONL corpus -> the versioned LanceDB chunks table.

    python -m pipelines.batch --source docs/ --table docs [--db URI] [--sync full|append] \
        [--runner DirectRunner --direct_num_workers 2 --direct_running_mode multi_processing]

Read -> Plan (against the table's ledger) -> Parse -> Chunk -> Embed -> Write (stage, then
one serialized commit). Every step is a transform from ``transforms/``; the streaming
pipeline composes the same ones.
"""

from __future__ import annotations

import logging
import secrets
import sys
import time
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from freshindex import store
from freshindex.config import Config
from freshindex.embedding import resolve_dtype
from freshindex.errors import TooManyFailures
from freshindex.runtime import prepare_offline
from pipelines.options import FreshIndexOptions
from transforms.chunk import ChunkDocuments
from transforms.embed import Embed
from transforms.parse import Parse, ReadKnownFailures, failure_fingerprint
from transforms.plan import PlanChanges, ReadLedger, TableRef
from transforms.read import ReadSource, SourceSpec, resolve_source
from transforms.write import RunSpec, WriteToIndex

log = logging.getLogger("freshindex.batch")


def new_run_id() -> str:
    """A sortable, human-readable run id: UTC time plus a short random suffix."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def run_settings(cfg: Config) -> dict[str, Any]:
    return {
        "fingerprint": cfg.fingerprint(),
        "embedding": cfg.to_dict()["embedding"],
        # what ``embedding.dtype: auto`` meant on the machine that started the run
        "embedding_dtype_resolved": resolve_dtype(cfg.embedding.dtype, cfg.embedding.device),
        "chunking": cfg.to_dict()["chunking"],
        "parsing": cfg.to_dict()["parsing"],
        "sync": cfg.ingest.sync,
    }


def build_ingest(
    p: beam.Pipeline, cfg: Config, source: SourceSpec, run: RunSpec, retry_failed: bool = False
):
    """Compose the batch pipeline on ``p``; returns the PCollection of the run's manifest row.

    Documents that failed permanently before (same bytes, same settings) are not parsed
    again unless ``retry_failed``.
    """
    read = p | "Read" >> ReadSource(source)
    ledger = p | "Ledger" >> ReadLedger(run.table)
    plan = {"refs": read.refs, "ledger": ledger} | "Plan" >> PlanChanges(
        run.fingerprint, run.sync, source.owner_prefix
    )
    failures_fp = failure_fingerprint(cfg)
    known_bad = (
        None if retry_failed else p | "KnownBad" >> ReadKnownFailures(run.table, failures_fp)
    )
    parsed = plan.process | "Parse" >> Parse(
        cfg.parsing, fingerprint=failures_fp, known_bad=known_bad
    )
    chunked = parsed.docs | "Chunk" >> ChunkDocuments(cfg.chunking, cfg.embedding)
    embedded = chunked.chunked | "Embed" >> Embed(
        cfg.embedding, run.table, cfg.ingest.docs_per_batch
    )
    errors = (
        read.errors,
        plan.errors,
        parsed.errors,
        chunked.errors,
        embedded.errors,
    ) | "AllErrors" >> beam.Flatten()
    return embedded.embedded | "Write" >> WriteToIndex(
        run,
        errors=errors,
        deleted=plan.deleted,
        updated=plan.updated,
        docs_seen=read.refs | "CountSeen" >> beam.combiners.Count.Globally(),
        docs_skipped=plan.skipped | "CountSkipped" >> beam.combiners.Count.Globally(),
        docs_per_file=cfg.ingest.docs_per_batch * 4,
    )


def current_version(db_uri: str, table: str, model: str) -> int | None:
    """The version a run starts from (None for a new table); checks the table's model."""
    db = store.connect(db_uri)
    if table not in store.table_names(db):
        return None
    tbl = db.open_table(table)
    store.check_model(tbl, model)
    return tbl.version


def run_ingest(
    cfg: Config,
    source: str,
    beam_args: list[str] | None = None,
    run_id: str | None = None,
    retry_failed: bool = False,
) -> dict[str, Any]:
    """Run one batch ingest to completion and return its manifest row (see ``runs`` table).

    ``retry_failed`` re-parses documents remembered as permanently bad."""
    prepare_offline()
    spec = resolve_source(source)
    version = current_version(cfg.db, cfg.table, cfg.embedding.model)
    run = RunSpec(
        run_id=run_id or new_run_id(),
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
        maintenance=cfg.maintenance if cfg.maintenance.after_batch else None,
    )
    log.info(
        "run %s: %s -> %s/%s (starting from version %s, sync=%s)",
        run.run_id,
        source,
        cfg.db,
        cfg.table,
        version if version is not None else "none: new table",
        cfg.ingest.sync,
    )
    options = PipelineOptions(beam_args or [])
    pipeline = beam.Pipeline(options=options)
    build_ingest(pipeline, cfg, spec, run, retry_failed)
    pipeline.run().wait_until_finish()
    rows = [
        r for r in store.read_runs(store.connect(cfg.db), cfg.table) if r["run_id"] == run.run_id
    ]
    if not rows:
        raise RuntimeError(f"run {run.run_id} finished without recording its manifest")
    return rows[0]


def known_bad_note(row: dict[str, Any]) -> str:
    """The summary's note on documents skipped as known bad (none in rows of older runs)."""
    known_bad = row.get("docs_known_bad") or 0
    if not known_bad:
        return ""
    return f" ({known_bad} known-bad skipped: unchanged since they failed; --retry-failed)"


def format_summary(row: dict[str, Any]) -> str:
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
    )


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in ("freshindex", "transforms", "pipelines"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)


def exit_code(row: dict[str, Any]) -> int:
    return 0 if row["status"] == "succeeded" else 3


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    options = FreshIndexOptions(argv if argv is not None else sys.argv[1:])
    opts = options.view_as(FreshIndexOptions)
    if not opts.source:
        raise SystemExit("--source is required")
    cfg = opts.to_config()
    row = run_ingest(
        cfg, opts.source, argv if argv is not None else sys.argv[1:], opts.run_id, opts.retry_failed
    )
    print(format_summary(row))
    if row["status"] != "succeeded":
        print(str(TooManyFailures(f"{row['docs_failed']} documents failed")), file=sys.stderr)
    return exit_code(row)


if __name__ == "__main__":
    sys.exit(main())
