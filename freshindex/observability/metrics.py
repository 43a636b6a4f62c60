"""Every Prometheus metric freshindex exports, and one ``observe_*`` function per producer.

The metrics live in prometheus-client's default registry, so one process exposes them all:
the stream on ``--metrics-port`` (``serve_port``), ``freshindex serve`` at ``/metrics``, a
batch run in a textfile-collector file at its end (``write_textfile``) and/or pushed to a
Pushgateway (``push``). Names follow Prometheus' conventions (``freshindex_`` prefix, the
unit in the name, ``_total`` counters); label values are bounded sets (outcomes, stages,
error classes, modes, providers, partitions of the topics a stream reads), never document
ids or queries. ``METRIC_NAMES`` lists them all: tests/test_deploy_files.py checks that the
Grafana dashboard and the alert rules use no other name.

    observe_run(row, errors)          # a batch or stream run's manifest row and its errors
    observe_micro_batch(stats, lag_by_partition, commit_seconds)
    observe_upkeep(seconds, versions=..., fragments=..., unindexed_rows=...)
    observe_query(mode, seconds), observe_model_call(record), observe_cache(hit)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    push_to_gateway,
    start_http_server,
    write_to_textfile,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Kafka timestamp -> committed: sub-second to tens of minutes
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
OTHER = "other"  # the label value for anything outside a bounded set

# error classes and stages are code-defined names; the caps keep a bug from exploding them
_MAX_LABEL_CHARS = 64

_DOC_OUTCOMES = ("added", "updated", "deleted", "skipped", "failed", "known_bad")
_CHUNK_OUTCOMES = ("embedded", "reused", "written")

# --- the data plane
RUNS = Counter("freshindex_runs_total", "Finished runs by kind and status", ["kind", "status"])
RUN_DURATION = Histogram(
    "freshindex_run_duration_seconds",
    "Wall time of a run, start to manifest",
    ["kind"],
    buckets=DURATION_BUCKETS,
)
LAST_RUN_TIMESTAMP = Gauge(
    "freshindex_last_run_timestamp_seconds",
    "Unix time a run of this kind last finished",
    ["kind", "status"],
)
DOCUMENTS = Counter(
    "freshindex_documents_total", "Documents by what a run did with them", ["outcome"]
)
CHUNKS = Counter("freshindex_chunks_total", "Chunks by outcome", ["outcome"])
ERRORS = Counter(
    "freshindex_errors_total", "Recorded errors (errors table rows)", ["stage", "error_class"]
)
EMBED_THROUGHPUT = Gauge(
    "freshindex_embedding_chunks_per_second",
    "Chunks embedded per second of the last run (batch) or micro-batch (stream)",
    ["kind"],
)
FRESHNESS = Histogram(
    "freshindex_freshness_seconds",
    "Message age when its micro-batch committed: Kafka timestamp -> committed",
    buckets=FRESHNESS_BUCKETS,
)
CONSUMER_LAG = Gauge(
    "freshindex_consumer_lag_messages",
    "Messages behind the partition's high-water mark after the last micro-batch",
    ["topic", "partition"],
)
MICRO_BATCH_SIZE = Histogram(
    "freshindex_micro_batch_messages", "Messages in a micro-batch", buckets=SIZE_BUCKETS
)
MICRO_BATCH_DURATION = Histogram(
    "freshindex_micro_batch_duration_seconds",
    "A micro-batch, first message decoded to offsets recorded",
    buckets=DURATION_BUCKETS,
)
COMMIT_DURATION = Histogram(
    "freshindex_commit_duration_seconds",
    "Time holding the commit lock for one commit (write, verify, index refresh, record)",
    ["kind"],
    buckets=DURATION_BUCKETS,
)
LAST_COMMIT_TIMESTAMP = Gauge(
    "freshindex_last_commit_timestamp_seconds", "Unix time of the last commit to the table"
)

# --- upkeep and the table's shape
UPKEEP_DURATION = Histogram(
    "freshindex_upkeep_duration_seconds",
    "One table upkeep (compaction, retention, indexes)",
    buckets=DURATION_BUCKETS,
)
LAST_UPKEEP_TIMESTAMP = Gauge(
    "freshindex_last_upkeep_timestamp_seconds", "Unix time the last upkeep finished"
)
TABLE_VERSIONS = Gauge("freshindex_table_versions", "Versions the chunks table keeps")
TABLE_FRAGMENTS = Gauge("freshindex_table_fragments", "Fragments of the chunks table")
TABLE_ROWS = Gauge("freshindex_table_rows", "Rows (chunks) of the table's latest version")
TABLE_UNINDEXED_ROWS = Gauge(
    "freshindex_table_unindexed_rows", "Rows not yet covered by the full-text index"
)
TABLE_DISK_BYTES = Gauge("freshindex_table_disk_bytes", "Bytes of the table on local disk")

# --- the query plane
QUERY_LATENCY = Histogram(
    "freshindex_query_duration_seconds",
    "Search latency by retrieval mode (ask and agent retrieval included)",
    ["mode"],
    buckets=DURATION_BUCKETS,
)
REQUESTS = Counter(
    "freshindex_http_requests_total",
    "HTTP requests served by route and status",
    ["route", "status"],
)
CACHE = Counter("freshindex_model_cache_requests_total", "Model-response cache lookups", ["result"])
MODEL_CALLS = Counter(
    "freshindex_model_calls_total",
    "Model-call attempts by provider and outcome (ok, failed, cached)",
    ["provider", "outcome"],
)
MODEL_TOKENS = Counter(
    "freshindex_model_tokens_total", "Tokens of model calls", ["provider", "direction"]
)
MODEL_COST = Counter("freshindex_model_cost_usd_total", "Cost of model calls", ["provider"])
MODEL_LATENCY = Histogram(
    "freshindex_model_call_duration_seconds",
    "Latency of uncached model-call attempts",
    ["provider"],
    buckets=DURATION_BUCKETS,
)

METRICS = (
    RUNS, RUN_DURATION, LAST_RUN_TIMESTAMP, DOCUMENTS, CHUNKS, ERRORS, EMBED_THROUGHPUT,
    FRESHNESS, CONSUMER_LAG, MICRO_BATCH_SIZE, MICRO_BATCH_DURATION, COMMIT_DURATION,
    LAST_COMMIT_TIMESTAMP, UPKEEP_DURATION, LAST_UPKEEP_TIMESTAMP, TABLE_VERSIONS,
    TABLE_FRAGMENTS, TABLE_ROWS, TABLE_UNINDEXED_ROWS, TABLE_DISK_BYTES, QUERY_LATENCY,
    REQUESTS, CACHE, MODEL_CALLS, MODEL_TOKENS, MODEL_COST, MODEL_LATENCY,
)  # fmt: skip


def _series_names(metric) -> set[str]:
    name = metric._name
    kind = metric._type
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {name, *(f"{name}_{s}" for s in ("bucket", "count", "sum", "created"))}
    return {name}


# every series name a query may use (a counter's _total, a histogram's _bucket/_sum/_count)
METRIC_NAMES: frozenset[str] = frozenset(n for m in METRICS for n in _series_names(m))


def _label(value: Any) -> str:
    text = str(value or "unknown")
    plain = text.replace("_", "").replace(".", "").replace("-", "")
    return text[:_MAX_LABEL_CHARS] if plain.isalnum() else OTHER


# ------------------------------------------------------------------ producers


def observe_run(row: Mapping[str, Any], errors: Iterable[Mapping[str, Any]] = ()) -> None:
    """A finished run's manifest row (``runs``) and its ``errors`` rows."""
    kind = _label(row.get("kind"))
    RUNS.labels(kind, _label(row.get("status"))).inc()
    started, finished = row.get("started_at"), row.get("finished_at")
    if started is not None and finished is not None:
        seconds = max(0.0, (finished - started).total_seconds())
        RUN_DURATION.labels(kind).observe(seconds)
        LAST_RUN_TIMESTAMP.labels(kind, _label(row.get("status"))).set(finished.timestamp())
        if row.get("status") == "succeeded" and row.get("table_version") is not None:
            # the table is current as of this run's end, whichever process committed
            at = max(finished.timestamp(), LAST_COMMIT_TIMESTAMP._value.get())
            LAST_COMMIT_TIMESTAMP.set(at)
        embedded = row.get("chunks_embedded") or 0
        if kind == "batch" and seconds > 0:
            EMBED_THROUGHPUT.labels(kind).set(embedded / seconds)
    if kind == "batch":  # a stream's documents are counted per micro-batch
        _count_outcomes(row)
    for error in errors:
        observe_error(error.get("stage"), error.get("error_class"))


def _count_outcomes(row: Mapping[str, Any]) -> None:
    for outcome in _DOC_OUTCOMES:
        DOCUMENTS.labels(outcome).inc(row.get(f"docs_{outcome}") or 0)
    for outcome in _CHUNK_OUTCOMES:
        CHUNKS.labels(outcome).inc(row.get(f"chunks_{outcome}") or 0)


def observe_error(stage: str | None, error_class: str | None) -> None:
    ERRORS.labels(_label(stage), _label(error_class)).inc()


def observe_micro_batch(
    stats: Mapping[str, Any],
    lag_by_partition: Mapping[tuple[str, int], int],
    commit_seconds: float | None,
) -> None:
    """One committed micro-batch of the stream: its ``stream_batches`` row as a mapping, the
    lag per (topic, partition) after it, and how long its commit held the lock (None: it
    committed nothing)."""
    MICRO_BATCH_SIZE.observe(stats.get("messages") or 0)
    seconds = (stats.get("duration_ms") or 0) / 1000
    MICRO_BATCH_DURATION.observe(seconds)
    for ms in stats.get("freshness_ms") or ():
        FRESHNESS.observe(ms / 1000)
    for (topic, partition), lag in lag_by_partition.items():
        CONSUMER_LAG.labels(_label(topic), str(int(partition))).set(lag)
    _count_outcomes(stats)
    if seconds > 0:
        EMBED_THROUGHPUT.labels("stream").set((stats.get("chunks_embedded") or 0) / seconds)
    if commit_seconds is not None:
        observe_commit("stream", commit_seconds)


def observe_commit(kind: str, seconds: float, at: float | None = None) -> None:
    import time

    COMMIT_DURATION.labels(_label(kind)).observe(seconds)
    LAST_COMMIT_TIMESTAMP.set(at if at is not None else time.time())


def observe_upkeep(seconds: float, **shape: int | None) -> None:
    """One upkeep; ``shape``: versions, fragments, rows, unindexed_rows, disk_bytes after it."""
    import time

    UPKEEP_DURATION.observe(seconds)
    LAST_UPKEEP_TIMESTAMP.set(time.time())
    observe_table_shape(**shape)


def observe_table_shape(
    *,
    versions: int | None = None,
    fragments: int | None = None,
    rows: int | None = None,
    unindexed_rows: int | None = None,
    disk_bytes: int | None = None,
) -> None:
    for gauge, value in (
        (TABLE_VERSIONS, versions),
        (TABLE_FRAGMENTS, fragments),
        (TABLE_ROWS, rows),
        (TABLE_UNINDEXED_ROWS, unindexed_rows),
        (TABLE_DISK_BYTES, disk_bytes),
    ):
        if value is not None:
            gauge.set(value)


def observe_query(mode: str, seconds: float) -> None:
    QUERY_LATENCY.labels(_label(mode)).observe(seconds)


def observe_request(route: str, status: int) -> None:
    REQUESTS.labels(_label(route.strip("/").replace("/", "_") or "root"), str(status)).inc()


def observe_cache(hit: bool) -> None:
    CACHE.labels("hit" if hit else "miss").inc()


def observe_model_call(record: Any) -> None:
    """One ``CallRecord`` (query.types) of the gateway: an attempt, failed, ok or cached."""
    provider = _label(record.provider)
    outcome = "cached" if record.cached else ("ok" if record.ok else "failed")
    MODEL_CALLS.labels(provider, outcome).inc()
    MODEL_TOKENS.labels(provider, "input").inc(record.tokens_in or 0)
    MODEL_TOKENS.labels(provider, "output").inc(record.tokens_out or 0)
    MODEL_COST.labels(provider).inc(max(0.0, record.cost_usd or 0.0))
    if not record.cached:
        MODEL_LATENCY.labels(provider).observe((record.latency_ms or 0) / 1000)


# ------------------------------------------------------------------ exposition


def exposition() -> bytes:
    """The text format of every metric of this process (``/metrics``)."""
    return generate_latest(REGISTRY)


def serve_port(port: int, addr: str = "0.0.0.0") -> None:
    """Expose ``/metrics`` on ``port`` from a daemon thread (the stream's ``--metrics-port``)."""
    start_http_server(port, addr=addr)
    log.info("metrics on http://%s:%d/metrics", addr, port)


def write_textfile(path: str | Path) -> Path:
    """Write every metric to ``path`` for node_exporter's textfile collector (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), REGISTRY)
    return path


def push(gateway: str, job: str = "freshindex_batch") -> None:
    """Push every metric to a Prometheus Pushgateway (``host:port`` or a URL)."""
    push_to_gateway(gateway, job=job, registry=REGISTRY)
