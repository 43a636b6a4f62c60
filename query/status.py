"""One screen of a table's health, for ``freshindex status``, the API's ``GET /status`` and
the console: freshness, stream lag, the last runs, errors of the last 24 h, the table's
shape, index coverage and disk use, each threshold of ``observability`` checked.

    report = status_report(cfg)       # report["ok"] is False when a threshold is crossed
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from typing import Any

from freshindex import store
from freshindex.config import Config
from freshindex.store.shape import table_shape

LAST_RUNS = 10
_RUN_FIELDS = (
    "run_id",
    "kind",
    "status",
    "started_at",
    "finished_at",
    "table_version",
    "docs_seen",
    "docs_added",
    "docs_updated",
    "docs_deleted",
    "docs_failed",
    "chunks_written",
)


def _check(name: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "limit": limit,
        "unit": unit,
        "ok": value is None or value <= limit,
    }


def status_report(cfg: Config, *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The health of ``cfg.table`` (the table it names now, when it is an alias); ``ok`` is
    False when any ``checks`` entry is over its ``observability`` threshold (or the table
    does not exist)."""
    now = now or store.utcnow()
    limits = cfg.observability
    db = store.connect(cfg.db)
    cfg = dataclasses.replace(cfg, table=store.resolve_alias(db, cfg.table).table)
    runs = store.read_runs(db, cfg.table)
    day_ago = now - dt.timedelta(hours=24)
    errors = store.read_errors(db, table_name=cfg.table, since=day_ago)
    by_kind = collections.Counter(f"{e['stage']}/{e['error_class']}" for e in errors)
    batches = store.read_stream_batches(
        db, table_name=cfg.table, since=day_ago, columns=["group_id", "lag", "freshness_ms"]
    )
    lag_by_group: dict[str, int | None] = {}
    freshness_ms: list[int] = []
    for b in batches:  # oldest first: the last row of a group is its lag now
        lag_by_group[b["group_id"]] = b["lag"]
        freshness_ms = list(b["freshness_ms"] or ()) or freshness_ms
    # a micro-batch that changed nothing still shows the stream is current
    last_batch_at = batches[-1]["committed_at"] if batches else None
    lag = max((v for v in lag_by_group.values() if v is not None), default=None)
    try:
        shape = table_shape(cfg.db, cfg.table)
        table = store.open_chunks(db, cfg.table)
        versions = table.list_versions()
        newest = max(v["timestamp"] for v in versions)
    except Exception as exc:  # a missing table is the answer, not a crash
        return {
            "table": cfg.table,
            "ok": False,
            "problems": [f"table {cfg.table!r} cannot be read: {str(exc).splitlines()[0]}"],
            "checks": [],
            "runs": [{k: r.get(k) for k in _RUN_FIELDS} for r in runs[-LAST_RUNS:]],
            "errors_24h": len(errors),
            "errors_by_kind": dict(by_kind.most_common()),
        }
    if newest.tzinfo is None:
        newest = newest.astimezone(dt.UTC)
    finished = [r["finished_at"] for r in runs if r["finished_at"] and r["status"] == "succeeded"]
    last_activity = max([newest, *finished, *([last_batch_at] if last_batch_at else [])])
    freshness_s = max(0.0, (now - last_activity).total_seconds())
    ann = store.last_ann_state(db, cfg.table)
    checks = [
        _check("freshness", round(freshness_s, 1), limits.max_freshness_s, "s"),
        _check("lag", lag, limits.max_lag, "messages"),
        _check("errors_24h", len(errors), limits.max_errors_24h, "errors"),
        _check("unindexed_rows", shape["unindexed_rows"], limits.max_unindexed_rows, "rows"),
    ]
    problems = [
        f"{c['name']} {c['value']} {c['unit']} is over {c['limit']}" for c in checks if not c["ok"]
    ]
    return {
        "table": cfg.table,
        "db": cfg.db,
        "at": now,
        "ok": not problems,
        "problems": problems,
        "checks": checks,
        "freshness_s": round(freshness_s, 1),
        "last_commit_at": newest,
        "stream": {
            "lag_by_group": lag_by_group,
            "lag": lag,
            "last_batch_freshness_ms_max": max(freshness_ms, default=None),
        },
        "runs": [{k: r.get(k) for k in _RUN_FIELDS} for r in runs[-LAST_RUNS:]],
        "last_run_by_kind": {r["kind"]: r["status"] for r in runs},
        "errors_24h": len(errors),
        "errors_by_kind": dict(by_kind.most_common()),
        "shape": shape,
        "index_coverage": {
            "rows": shape["rows"],
            "fts_unindexed_rows": shape["unindexed_rows"],
            "fts_coverage": None
            if shape["unindexed_rows"] is None or not shape["rows"]
            else round(1 - shape["unindexed_rows"] / shape["rows"], 4),
            "ann_rows_at_build": ann.get("rows_at_build"),
            "ann_index": ann.get("index_type"),
        },
        "disk_bytes": shape["disk_bytes"],
    }


def format_status(report: dict[str, Any]) -> str:
    """The one screen of ``freshindex status``."""
    head = "OK" if report["ok"] else "PROBLEM"
    lines = [
        f"{head}  table {report['table']}" + (f"  ({report.get('db')})" if "db" in report else "")
    ]
    lines += [f"  ! {p}" for p in report["problems"]]
    if "shape" in report:
        shape, cov = report["shape"], report["index_coverage"]
        lines.append(
            f"  freshness: last change {report['freshness_s']:.0f}s ago "
            f"(version {shape['version']} at {report['last_commit_at']:%Y-%m-%d %H:%M:%S})"
        )
        stream = report["stream"]
        if stream["lag_by_group"]:
            groups = ", ".join(f"{g}: {v}" for g, v in stream["lag_by_group"].items())
            lines.append(f"  stream lag: {groups} messages")
        else:
            lines.append("  stream lag: no stream batch in the last 24 h")
        lines.append(
            f"  table: {shape['rows']} rows, {shape['versions']} versions, "
            f"{shape['fragments']} fragments"
            + (f", {shape['disk_bytes']:,} bytes on disk" if shape["disk_bytes"] else "")
        )
        fts = (
            "no FTS index"
            if cov["fts_unindexed_rows"] is None
            else (f"FTS {cov['fts_unindexed_rows']} rows not indexed")
        )
        ann = (
            f"ANN built at {cov['ann_rows_at_build']} rows"
            if cov["ann_rows_at_build"]
            else "no ANN index"
        )
        lines.append(f"  indexes: {fts}; {ann}")
    by_kind = ", ".join(f"{k}: {n}" for k, n in list(report["errors_by_kind"].items())[:5])
    lines.append(f"  errors (24 h): {report['errors_24h']}" + (f" ({by_kind})" if by_kind else ""))
    lines.append("  last runs:")
    for r in report["runs"][-5:]:
        when = r["started_at"].strftime("%Y-%m-%d %H:%M:%S") if r["started_at"] else "?"
        lines.append(
            f"    {when}  {r['kind']:<8} {r['status']:<20} {r['run_id']}  "
            f"version {r['table_version']}"
        )
    return "\n".join(lines)
