"""The ``freshindex`` command: one entry point, one subcommand per job.

freshindex ingest SOURCE --table NAME [--db URI] [--sync full|append] [--namespace NS]
    [--allow-mass-delete] [--retry-failed] [--full-hash] [--if-running skip|wait|fail]
    [Beam options]   (exit status: 0 ok, 2 error, 3 too many failures, 4 mass delete
    refused, 75 skipped: another batch run holds the table)
freshindex versions --table NAME
freshindex rollback --to RUN_OR_VERSION --table NAME
freshindex errors --table NAME [--run RUN_ID]
freshindex diff --from A --to B --table NAME     (freshindex.commands.lineage)
freshindex explain DOC_ID --table NAME
freshindex status --table NAME   (exit status 1: a threshold crossed)
freshindex upgrade --table NAME [--db URI]
freshindex config show [--config FILE] [--query-config FILE] [--json]
freshindex config defaults [--query]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
from typing import Any

from freshindex import store
from freshindex.config import IF_RUNNING, load_config
from freshindex.errors import FreshIndexError
from freshindex.query.versions import version_rows
from freshindex.runtime import prepare_offline
from freshindex.schemas.bookkeeping import RunRecord, new_run_id

# Modules that contribute subcommands through ``register_cli(subparsers)``.
PLUGIN_MODULES = (
    "freshindex.commands.stream",
    "freshindex.commands.query",
    "freshindex.commands.access",
    "freshindex.commands.model",
    "freshindex.maintain",
    "freshindex.evaluation",
    "freshindex.commands.lineage",
    "freshindex.commands.migrate",
)


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """--config, --db, --table, --json: every subcommand that touches a table takes them."""
    parser.add_argument(
        "--config", help="YAML config file with the keys to change (see `freshindex config show`)"
    )
    parser.add_argument("--db", help="LanceDB URI; env FRESHINDEX_DB")
    parser.add_argument("--table", help="chunks table; env FRESHINDEX_TABLE")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def config_from_args(args, **extra):
    """The typed config for a subcommand: file, environment, then its flags."""
    return load_config(args.config, overrides={"db": args.db, "table": args.table, **extra})


def _json_default(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _print_rows(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_ingest(args, beam_args: list[str]) -> int:
    from freshindex.pipelines.batch import (
        EXIT_SKIPPED,
        configure_logging,
        exit_code,
        failure_message,
        format_summary,
        run_ingest,
        skipped_row,
        skipped_summary,
    )

    configure_logging(args.verbose)
    cfg = config_from_args(
        args,
        **{
            "ingest.sync": args.sync,
            "ingest.namespace": args.namespace,
            "ingest.change_detection": "hash" if args.full_hash else None,
            "ingest.if_running": args.if_running,
        },
    )
    try:
        row = run_ingest(
            cfg,
            args.source,
            beam_args,
            args.run_id,
            allow_mass_delete=args.allow_mass_delete,
            retry_failed=args.retry_failed,
        )
    except store.RunSkipped as skipped:  # if_running: skip; fail and wait's timeout: exit 2
        print(json.dumps(skipped_row(skipped)) if args.json else skipped_summary(skipped))
        return EXIT_SKIPPED
    if args.json:
        print(json.dumps(row, default=_json_default, indent=2))
    else:
        errors = store.read_errors(store.connect(cfg.db), run_id=row["run_id"])
        print(format_summary(row, errors))
        if errors:
            print(f"  {len(errors)} errors recorded: freshindex errors --run {row['run_id']}")
    message = failure_message(row, cfg)
    if message is not None:
        print(message, file=sys.stderr)
    return exit_code(row)


def cmd_versions(args, _beam_args) -> int:
    cfg = config_from_args(args)
    rows = version_rows(store.connect(cfg.db), cfg.table)
    if args.json:
        print(json.dumps(rows, default=_json_default, indent=2))
    else:
        _print_rows(
            rows,
            [
                "version",
                "timestamp",
                "rows",
                "tags",
                "run",
                "kind",
                "added",
                "updated",
                "deleted",
                "failed",
            ],
        )
    return 0


def rollback(db_uri: str, table_name: str, ref: str, commit=None) -> dict[str, Any]:
    """Restore the table to a version, tag or run id as a new version; records a manifest row.
    ``commit``: the commit lock's settings (``Config.commit``)."""
    db = store.connect(db_uri)
    with store.commit_lock(db_uri, table_name, commit) as lease:
        table = store.open_chunks(db, table_name)
        target = store.resolve_version(table, ref)
        started = store.utcnow()
        store.check_held(lease)
        table.restore(target)
        run_id = new_run_id()
        tag = f"rollback-{run_id}"
        store.tag_version(table, tag, table.version)
        record = RunRecord(
            run_id=run_id,
            kind="rollback",
            table_name=table_name,
            source=f"version {target} ({ref})",
            status="succeeded",
            started_at=started,
            finished_at=store.utcnow(),
            table_version=table.version,
            tag=tag,
            lease_token=store.token_of(lease),
        )
    store.append_run(db, record)
    return record.to_dict()


def cmd_rollback(args, _beam_args) -> int:
    cfg = config_from_args(args)
    row = rollback(cfg.db, cfg.table, args.to, cfg.commit)
    print(
        f"restored {cfg.table} to {row['source']}: now version {row['table_version']} "
        f"(tag {row['tag']})"
    )
    return 0


def cmd_errors(args, _beam_args) -> int:
    cfg = config_from_args(args)
    db = store.connect(cfg.db)
    run_id = args.run
    if run_id == "latest":
        runs = [r for r in store.read_runs(db, cfg.table) if r["kind"] in ("batch", "stream")]
        run_id = runs[-1]["run_id"] if runs else None
    rows = store.read_errors(db, table_name=cfg.table, run_id=run_id)
    rows = sorted(rows, key=lambda r: r["occurred_at"])[-args.limit :]
    if args.json:
        print(json.dumps(rows, default=_json_default, indent=2))
    else:
        for r in rows:
            r["when"] = r["occurred_at"].strftime("%Y-%m-%d %H:%M:%S")
            r["where"] = r["doc_id"] or r["source_uri"] or ""
            if r.get("topic"):
                r["where"] = f"{r['topic']}[{r['partition']}]@{r['offset']} {r['where']}"
            r["message"] = r["message"].splitlines()[0][:100]
        _print_rows(rows, ["when", "run_id", "stage", "error_class", "where", "message"])
    return 0


def cmd_upgrade(args, _beam_args) -> int:
    cfg = config_from_args(args)
    report = store.apply_upgrades(cfg.db, cfg.table, commit=cfg.commit)
    if args.json:
        print(json.dumps(report.added, indent=2))
    else:
        print(report.summary())
    return 0


def _setting_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def cmd_config_show(args, _beam_args) -> int:
    """The effective settings, each with the layer that set it; secrets as references."""
    from freshindex.config import explain_config
    from freshindex.query.config import explain_query_config

    planes = {
        "pipelines": explain_config(args.config, {"db": args.db, "table": args.table}),
        "query": explain_query_config(args.query_config),
    }
    if args.json:
        print(json.dumps({name: loaded.rows() for name, loaded in planes.items()}, indent=2))
        return 0
    for name, loaded in planes.items():
        print(f"# {name}")
        # long values (routes, prices) are cut here; --json has them whole
        rows = [{**r, "value": _setting_text(r["value"])[:60]} for r in loaded.rows()]
        _print_rows(rows, ["key", "value", "source"])
        print()
    return 0


def cmd_config_defaults(args, _beam_args) -> int:
    """The shipped configs/default.yaml (or configs/query.yaml), rendered from the model."""
    if args.query:
        from freshindex.query.config import default_query_yaml as render
    else:
        from freshindex.config import default_yaml as render
    sys.stdout.write(render())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="freshindex", description="Keep an AI knowledge index fresh."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "ingest",
        help="batch (re-)index a folder, glob, URI or JSONL corpus",
        description="Unknown flags are Beam pipeline options (--runner, --direct_num_workers...).",
    )
    p.add_argument("source")
    add_common_args(p)
    p.add_argument("--sync", choices=("full", "append"), help="default from config: full")
    p.add_argument("--run-id", dest="run_id")
    p.add_argument(
        "--namespace", help="who owns what this source writes; default files:<root> / jsonl:<file>"
    )
    p.add_argument(
        "--allow-mass-delete",
        action="store_true",
        help="let a full sync delete more than ingest.max_delete_fraction of the source",
    )
    p.add_argument(
        "--retry-failed",
        dest="retry_failed",
        action="store_true",
        help="re-parse documents that failed permanently before (skipped while their bytes "
        "and the settings are unchanged)",
    )
    p.add_argument(
        "--full-hash",
        dest="full_hash",
        action="store_true",
        help="read and hash every file, also those whose listed size and modification time "
        "are the indexed ones (ingest.change_detection: hash)",
    )
    p.add_argument(
        "--if-running",
        "--if_running",
        dest="if_running",
        choices=IF_RUNNING,
        help="when another batch run holds the table: skip (exit status 75, nothing done), "
        "wait for it, or fail (exit status 2); default from config: skip",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_ingest, beam=True)

    p = sub.add_parser("versions", help="list table versions with their tags and runs")
    add_common_args(p)
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("rollback", help="restore the table to a version, tag or run")
    add_common_args(p)
    p.add_argument("--to", required=True, help="version number, tag, or run id")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("errors", help="show recorded bad inputs")
    add_common_args(p)
    p.add_argument("--run", help="a run id, or 'latest'")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_errors)

    p = sub.add_parser(
        "upgrade",
        help="apply pending schema upgrades to a table and the bookkeeping tables",
        description="Adds the columns newer freshindex versions write (null in old rows) to "
        "the chunks table and to runs, errors, stream_batches and ann_state. Idempotent.",
    )
    add_common_args(p)
    p.set_defaults(func=cmd_upgrade)
    p = sub.add_parser("config", help="show the effective settings, or the shipped defaults")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    p = config_sub.add_parser(
        "show", help="every setting with where it came from (default, file, env, flag)"
    )
    add_common_args(p)
    p.add_argument("--query-config", dest="query_config", help="query layer YAML file")
    p.set_defaults(func=cmd_config_show)
    p = config_sub.add_parser(
        "defaults", help="print the shipped configs/default.yaml, rendered from the code"
    )
    p.add_argument("--query", action="store_true", help="configs/query.yaml instead")
    p.set_defaults(func=cmd_config_defaults)

    # Other planes add their own subcommands; each module keeps heavy imports inside the
    # command functions so `freshindex --help` stays fast.
    for name in PLUGIN_MODULES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    prepare_offline()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "beam", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    started = time.monotonic()
    try:
        return args.func(args, extra)
    except FreshIndexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if getattr(args, "verbose", False):
            print(f"({time.monotonic() - started:.1f}s)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
