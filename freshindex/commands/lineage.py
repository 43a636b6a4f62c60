"""``freshindex diff``, ``freshindex explain`` and ``freshindex status``: what changed, why a
document is as it is, and whether the index is healthy (docs/OPERATIONS.md).

    freshindex diff --from A --to B --table docs [--json]   versions, tags or run ids
    freshindex explain DOC_ID --table docs [--json]
    freshindex status --table docs [--json]   exit status 1 when a threshold is crossed
"""

from __future__ import annotations

import json

EXIT_UNHEALTHY = 1


def cmd_diff(args, _beam_args) -> int:
    from freshindex import store
    from freshindex.cli import _json_default, _print_rows, config_from_args
    from freshindex.query.lineage import diff_versions

    cfg = config_from_args(args)
    diff = diff_versions(store.connect(cfg.db), cfg.table, args.from_ref, args.to_ref)
    if args.json:
        print(json.dumps(diff, default=_json_default, indent=2))
        return 0
    counts = diff["counts"]
    print(
        f"{cfg.table}: version {diff['from']['version']} ({diff['from']['ref']}) -> "
        f"{diff['to']['version']} ({diff['to']['ref']}): {counts['added']} added, "
        f"{counts['updated']} updated, {counts['deleted']} deleted, "
        f"{counts['unchanged']} unchanged; chunks {diff['from']['chunks']} -> "
        f"{diff['to']['chunks']}"
    )
    rows = [{"change": "added", **d} for d in diff["added"]]
    rows += [
        {"change": "updated", "doc_id": d["doc_id"], "chunks": d["chunks_after"]}
        for d in diff["updated"]
    ]
    rows += [{"change": "deleted", **d} for d in diff["deleted"]]
    if rows:
        _print_rows(rows, ["change", "doc_id", "chunks"])
    return 0


def cmd_explain(args, _beam_args) -> int:
    from freshindex import store
    from freshindex.cli import _json_default, _print_rows, config_from_args
    from freshindex.query.lineage import explain_document

    cfg = config_from_args(args)
    doc = explain_document(store.connect(cfg.db), cfg.table, args.doc_id)
    if args.json:
        print(json.dumps(doc, default=_json_default, indent=2))
        return 0
    state = "in the table" if doc["present"] else "NOT in the table's latest version"
    print(f"{doc['doc_id']}: {state} ({cfg.table} version {doc['table_version']})")
    if doc["present"]:
        print(
            f"  source {doc['source_uri']} (namespace {doc['namespace']})\n"
            f"  content hash {doc['content_hash']}; {doc['chunks']} chunks embedded at "
            f"{doc['embedded_at']} by {doc['embedding_model']} (run {doc['run_id']})"
        )
    print("  history:")
    _print_rows(doc["history"], ["version", "change", "chunks", "content_hash", "run_id"])
    print("  errors:")
    _print_rows(doc["errors"], ["occurred_at", "run_id", "stage", "error_class", "message"])
    return 0


def cmd_status(args, _beam_args) -> int:
    from freshindex.cli import _json_default, config_from_args
    from freshindex.query.status import format_status, status_report

    overrides = {
        f"observability.{key}": getattr(args, key)
        for key in ("max_freshness_s", "max_lag", "max_errors_24h")
    }
    cfg = config_from_args(args, **overrides)
    report = status_report(cfg)
    if args.json:
        print(json.dumps(report, default=_json_default, indent=2))
    else:
        print(format_status(report))
    return 0 if report["ok"] else EXIT_UNHEALTHY


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args

    p = subparsers.add_parser(
        "diff",
        help="documents added, updated and deleted between two versions",
        description="A and B are version numbers, tags or run ids.",
    )
    add_common_args(p)
    p.add_argument("--from", dest="from_ref", required=True, help="version, tag or run id")
    p.add_argument("--to", dest="to_ref", required=True, help="version, tag or run id")
    p.set_defaults(func=cmd_diff)

    p = subparsers.add_parser(
        "explain", help="every run and version that touched a document, and its errors"
    )
    p.add_argument("doc_id")
    add_common_args(p)
    p.set_defaults(func=cmd_explain)

    p = subparsers.add_parser(
        "status",
        help="one screen of health; exit status 1 when a threshold is crossed",
        description="Freshness, stream lag, the last runs, errors of the last 24 h, table "
        "shape, index coverage and disk use. Thresholds: the observability section of the "
        "config, or these flags. Exit status 0 healthy, 1 a threshold crossed, 2 an error.",
    )
    add_common_args(p)
    p.add_argument("--max-freshness-s", dest="max_freshness_s", type=float)
    p.add_argument("--max-lag", dest="max_lag", type=int)
    p.add_argument("--max-errors-24h", dest="max_errors_24h", type=int)
    p.set_defaults(func=cmd_status)
