"""Running the stream: ``run_stream`` builds and runs the pipeline until it is stopped
(a signal, ``duration_s`` or ``stop_at_end``), then ``finish_run`` tags the run's last
commit and records its manifest row; ``main`` is ``python -m freshindex.pipelines.stream``:

    python -m freshindex.pipelines.stream --streaming --topics docs --table docs [--db URI] \\
        [--kafka_bootstrap_servers host:9092] [--group_id G] [--batch_interval_s 1] \\
        [--stop_at_end | --duration_s S] [--dead_letter_topic docs.dlq] \\
        [--allow_uri_messages --allowed_uri_prefix /srv/docs] [--metrics_port 9108]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from freshindex import store
from freshindex.config import Config
from freshindex.observability import tracing
from freshindex.pipelines.batch import configure_logging, run_settings
from freshindex.pipelines.observe import report_run
from freshindex.pipelines.options import FreshIndexOptions, StreamOptions
from freshindex.pipelines.stream.config import StreamConfig, StreamRun, stream_config_from_flags
from freshindex.pipelines.stream.offsets import PartitionsLost
from freshindex.pipelines.stream.step import build_stream
from freshindex.runtime import prepare_offline
from freshindex.schemas.bookkeeping import RunRecord, new_run_id
from freshindex.store import current_version
from freshindex.transforms.kafka_group import GroupMember, register_member
from freshindex.transforms.kafka_io import (
    KafkaOffsets,
    request_stop,
    reset_stop,
    resolve_start_offsets,
)

log = logging.getLogger("freshindex.stream")


def _pipeline_options(beam_args: Sequence[str] | None) -> tuple[PipelineOptions, Any]:
    """Streaming options, and the runner: the DirectRunner is run as Beam's FnApiRunner in
    this process (the engine it picks for this pipeline), so a stop request reaches the
    reader and the run ends with its summary."""
    options = PipelineOptions(list(beam_args or []))
    options.view_as(StandardOptions).streaming = True
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode not in (None, "in_memory"):
            log.warning("the stream runs in one process: ignoring --direct_running_mode")
        direct.direct_running_mode = "in_memory"
        direct.direct_num_workers = 1
        return options, FnApiRunner()
    return options, None


def _summary_row(run: StreamRun, status: str, table_version, tag) -> RunRecord:
    cfg = run.cfg
    batches = store.read_stream_batches(store.connect(cfg.db), run_id=run.run_id)
    total = {
        name: sum(b[name] or 0 for b in batches)
        for name in (
            "messages",
            "docs_added",
            "docs_updated",
            "docs_deleted",
            "docs_skipped",
            "docs_failed",
            "chunks_embedded",
            "chunks_reused",
            "chunks_written",
        )
    }
    freshness = [f for b in batches for f in (b["freshness_ms"] or ())]
    settings = {
        **run_settings(cfg),
        "topics": list(run.stream.kafka.topics),
        "group_id": run.group_id,
        "membership": run.stream.membership,
        "batch_interval_s": run.stream.batch_interval_s,
        "max_batch_messages": run.stream.max_batch_messages,
        "batches": len(batches),
        "freshness_ms": {
            "p50": float(np.percentile(freshness, 50)) if freshness else None,
            "p99": float(np.percentile(freshness, 99)) if freshness else None,
            "max": max(freshness) if freshness else None,
        },
        "offsets": batches[-1]["offsets"] if batches else [],
    }
    return RunRecord(
        run_id=run.run_id,
        kind="stream",
        table_name=cfg.table,
        source="kafka://" + ",".join(run.stream.kafka.topics),
        settings=settings,
        status=status,
        started_at=dt.datetime.fromtimestamp(run.started_at, dt.UTC),
        finished_at=store.utcnow(),
        docs_seen=total["messages"],
        docs_skipped=total["docs_skipped"],
        docs_added=total["docs_added"],
        docs_updated=total["docs_updated"],
        docs_deleted=total["docs_deleted"],
        docs_failed=total["docs_failed"],
        chunks_embedded=total["chunks_embedded"],
        chunks_reused=total["chunks_reused"],
        chunks_written=total["chunks_written"],
        table_version=table_version,
        tag=tag,
    )


def finish_run(run: StreamRun, status: str) -> dict[str, Any]:
    """Tag the run's last commit ``run-<id>`` and record the run's manifest row (kind
    ``stream``); returns the row."""
    cfg = run.cfg
    db = store.connect(cfg.db)
    batches = store.read_stream_batches(db, run_id=run.run_id, columns=["table_version"])
    written = [b["table_version"] for b in batches if b["table_version"] is not None]
    version, tag = None, None
    table = store.open_if_exists(db, cfg.table)
    if table is not None:
        version = max(written) if written else table.version
        if written:
            tag = store.RUN_TAG_PREFIX + run.run_id
            try:
                store.tag_version(table, tag, version)
            except Exception as exc:  # the version was pruned meanwhile: tag the latest
                log.warning("tagging version %s failed (%s); tagging the latest", version, exc)
                version = table.version
                store.tag_version(table, tag, version)
    record = _summary_row(run, status, version, tag)
    store.append_run(db, record)
    row = record.to_row()
    report_run(cfg, row, with_errors=False)  # the micro-batches counted their errors
    return row


def format_stream_summary(row: dict[str, Any]) -> str:
    elapsed = (row["finished_at"] - row["started_at"]).total_seconds()
    settings = row["settings"]
    if isinstance(settings, str):
        settings = json.loads(settings)
    fresh = settings.get("freshness_ms") or {}
    fresh_text = "n/a"
    if fresh.get("p50") is not None:
        fresh_text = (
            f"p50 {fresh['p50'] / 1000:.2f}s, p99 {fresh['p99'] / 1000:.2f}s, "
            f"max {fresh['max'] / 1000:.2f}s"
        )
    return (
        f"stream run {row['run_id']} {row['status']} after {elapsed:.1f}s -> "
        f"table {row['table_name']} version {row['table_version']} (tag {row['tag']})\n"
        f"  messages: {row['docs_seen']} in {settings.get('batches', 0)} batches; documents: "
        f"{row['docs_added']} added, {row['docs_updated']} updated, {row['docs_deleted']} "
        f"deleted, {row['docs_skipped']} skipped, {row['docs_failed']} failed\n"
        f"  chunks: {row['chunks_embedded']} embedded, {row['chunks_reused']} reused, "
        f"{row['chunks_written']} written; freshness {fresh_text}"
    )


class _StopOnSignals:
    """SIGTERM/SIGINT (and ``duration_s``) ask the reader to stop; the pipeline then drains
    and the run ends with its summary. A second Ctrl-C interrupts at once. ``stopped`` tells
    a stop for good from a group member's stop for a rebalance."""

    def __init__(self, duration_s: float | None):
        self._duration_s = duration_s
        self._previous: dict[int, Any] = {}
        self._timer: threading.Timer | None = None
        self.stopped = threading.Event()

    def stop(self) -> None:
        self.stopped.set()
        request_stop()

    def _handle(self, signum, _frame) -> None:
        log.info("signal %d: stopping after the current micro-batch", signum)
        self.stop()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        if self._duration_s:
            self._timer = threading.Timer(self._duration_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *_exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def _partitions_lost(exc: BaseException) -> PartitionsLost | None:
    """The PartitionsLost a failed pipeline raised, however the runner wrapped it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PartitionsLost):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _run_pipeline(run: StreamRun, beam_args: Sequence[str] | None) -> None:
    """Build the pipeline for ``run`` and run it until the reader stops."""
    for s in run.starts:
        end = f", stop at {s.stop}" if s.stop is not None else ""
        log.info("  %s[%d] from offset %d (%s%s)", s.topic, s.partition, s.start, s.reason, end)
    options, runner = _pipeline_options(beam_args)
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_stream(pipeline, run)
    try:
        pipeline.run().wait_until_finish()
    except Exception as exc:
        lost = _partitions_lost(exc)
        if lost is not None and lost is not exc:
            raise lost from exc  # the runner's wrapping hides the message and its hint
        raise


def _batches_done(run: StreamRun) -> int:
    db = store.connect(run.cfg.db)
    seqs = [b["batch_seq"] for b in store.read_stream_batches(db, run_id=run.run_id)]
    return max(seqs, default=0)


def _run_as_member(run: StreamRun, beam_args, stopper: _StopOnSignals) -> None:
    """``stream.membership: group``: join the consumer group and run the pipeline over the
    partitions it assigns, one pipeline per assignment (docs/STREAMING.md, "Several stream
    processes"). A rebalance stops the pipeline after its current micro-batch, before any
    member gets its new partitions; the next pipeline resumes from the offsets recorded
    with the table's commits."""
    stream, cfg = run.stream, run.cfg
    drained = threading.Event()
    drained.set()
    drain_timeout_s = max(60.0, cfg.commit.lease_timeout_s)

    def on_revoke() -> None:
        request_stop()
        if not drained.wait(timeout=drain_timeout_s):
            log.warning("the pipeline did not stop within %.0fs of a rebalance", drain_timeout_s)

    member = GroupMember(stream.kafka, on_revoke=on_revoke)
    register_member(member)
    member.start()
    log.info("joining consumer group %s", run.group_id)
    try:
        while not stopper.stopped.is_set():
            got = member.wait_assignment(timeout_s=0.5)
            if got is None:
                continue
            generation, partitions = got
            if not partitions:
                log.info("no partitions assigned (more members than partitions): waiting")
                while member.current(generation) and not stopper.stopped.is_set():
                    member.wait_change(generation, timeout_s=0.5)
                continue
            recorded = store.read_stream_offsets(store.connect(cfg.db), cfg.table, run.group_id)
            starts = resolve_start_offsets(
                stream.kafka, recorded, stop_at_end=stream.stop_at_end, partitions=partitions
            )
            this = dataclasses.replace(run, starts=tuple(starts), first_batch=_batches_done(run))
            with member.lock:  # a rebalance that began meanwhile: do not start at all
                if not member.current(generation) or stopper.stopped.is_set():
                    continue
                reset_stop()
                drained.clear()
                if stopper.stopped.is_set():  # a signal between the check and the reset
                    request_stop()
            try:
                log.info("generation %d: indexing %d partitions", generation, len(starts))
                _run_pipeline(this, beam_args)
            except PartitionsLost as lost:  # evicted while stalled: another member went on
                log.warning("%s; rejoining", str(lost).splitlines()[0])
                member.wait_change(generation, timeout_s=drain_timeout_s)
                continue
            finally:
                drained.set()
            if member.current(generation):
                break  # stopped for good, or --stop_at_end reached the end
    finally:
        register_member(None)
        member.close()  # leave the group: the others take the partitions at once


def run_stream(
    cfg: Config,
    stream: StreamConfig,
    beam_args: Sequence[str] | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Run the stream until it is stopped (signal, ``duration_s``, or ``stop_at_end``) and
    return its manifest row (``runs`` table, kind ``stream``)."""
    prepare_offline()
    reset_stop()
    db = store.connect(cfg.db)
    # an alias names the table to write once, at start (store.writer_table); the default
    # consumer group is the table's, so a stream of a migrated index resumes from the
    # offsets of the table it writes, not from those of the one the name served before
    table = store.writer_table(db, cfg.table, cfg.fingerprint())
    if table != cfg.table:
        if stream.kafka.group_id == cfg.stream.group_id_for(cfg.table):
            kafka = dataclasses.replace(stream.kafka, group_id=cfg.stream.group_id_for(table))
            stream = dataclasses.replace(stream, kafka=kafka)
        cfg = dataclasses.replace(cfg, table=table)
    current_version(cfg.db, cfg.table, cfg.embedding.model)  # refuses a model mismatch now
    if stream.dead_letter_topic:  # a missing one would block the first bad message
        offsets = KafkaOffsets(stream.kafka)
        try:
            offsets.partitions(stream.dead_letter_topic)
        finally:
            offsets.close()
    run = StreamRun(
        run_id=run_id or new_run_id(),
        cfg=cfg,
        stream=stream,
        starts=(),
        started_at=time.time(),
    )
    log.info(
        "stream run %s: kafka://%s/%s (group %s, %s) -> %s/%s",
        run.run_id,
        stream.kafka.bootstrap_servers,
        ",".join(stream.kafka.topics),
        run.group_id,
        "a member of it" if stream.membership == "group" else "every partition",
        cfg.db,
        cfg.table,
    )
    status = "failed"
    tracing.configure(cfg.observability)
    try:
        with (
            tracing.span("freshindex.run", run_id=run.run_id, kind="stream", table=cfg.table),
            tracing.run_context(run.run_id),
            _StopOnSignals(stream.duration_s) as stopper,
        ):
            if stream.membership == "group":
                _run_as_member(run, beam_args, stopper)
            else:
                if stream.reader == "python":
                    recorded = store.read_stream_offsets(db, cfg.table, stream.kafka.group_id)
                    starts = resolve_start_offsets(
                        stream.kafka, recorded, stop_at_end=stream.stop_at_end
                    )
                    run = dataclasses.replace(run, starts=tuple(starts))
                _run_pipeline(run, beam_args)
        status = "succeeded"
    finally:
        reset_stop()
        try:
            row = finish_run(run, status)
        except Exception:
            if status == "succeeded":
                raise
            log.exception("could not record the failed run %s", run.run_id)
    return row


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    options = PipelineOptions(argv)
    cfg = options.view_as(FreshIndexOptions).to_config()
    opts = options.view_as(StreamOptions)
    if not opts.topics:
        raise SystemExit("--topics is required")
    stream = stream_config_from_flags(cfg, opts)
    if opts.metrics_port:
        from freshindex.observability.metrics import serve_port

        serve_port(opts.metrics_port)
    row = run_stream(cfg, stream, argv, options.view_as(FreshIndexOptions).run_id)
    print(format_stream_summary(row))
    return 0
