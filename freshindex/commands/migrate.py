"""``freshindex migrate`` and ``freshindex alias``: the commands over
``freshindex.migration`` (blue-green migration) and ``freshindex.store.aliases``.

    freshindex migrate start --index docs --config new.yaml [--source DIR | --topics T ...]
    freshindex migrate status|cutover [--force]|rollback|abort|finish --index docs
    freshindex migrate check --index docs --dataset BEIR_DIR | --queries Q.jsonl --qrels Q.tsv
    freshindex alias list | show NAME | set NAME TABLE [--version N]

Procedure and costs: docs/MIGRATION.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from freshindex import migration, store


def _print(value: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(value, indent=1, default=str))
        return
    for key, item in value.items():
        print(f"{key:16s} {item}")


def cmd_migrate(args, beam_args) -> int:
    from freshindex.cli import config_from_args
    from freshindex.evaluation import METRICS

    cfg = config_from_args(args)
    index = args.index or cfg.table
    action = args.action
    if action == "start":
        state = migration.start(
            cfg,
            index,
            args.source,
            topics=args.topics,
            bootstrap_servers=args.bootstrap_servers,
            beam_args=beam_args,
        )
    elif action == "status":
        state = migration.status(cfg.db, index)
    elif action == "check":
        verdict = migration.check(
            cfg,
            index,
            args.dataset,
            queries=args.queries,
            qrels=args.qrels,
            split=args.split,
            modes=args.modes,
            tolerance=args.tolerance,
        )
        for mode in verdict["new"]:
            print(f"{mode}: {'metric':12s} {'live':>8s} {'shadow':>8s} {'delta':>8s}")
            for m in METRICS:
                old, new = verdict["old"][mode][m], verdict["new"][mode][m]
                print(f"      {m:12s} {old:8.4f} {new:8.4f} {new - old:+8.4f}")
        print("gate: " + ("passed" if verdict["passed"] else f"refused {verdict['drops']}"))
        return 0 if verdict["passed"] else 1
    elif action == "cutover":
        state = migration.cutover(cfg, index, force=args.force, beam_args=beam_args)
    elif action == "rollback":
        state = migration.rollback(cfg, index, beam_args=beam_args)
    elif action == "abort":
        state = migration.abort(cfg, index)
    else:
        state = migration.finish(cfg, index)
    _print({k: v for k, v in state.items() if k != "config"}, args.json)
    return 0


def cmd_alias(args, _beam_args) -> int:
    from freshindex.cli import config_from_args

    cfg = config_from_args(args)
    db = store.connect(cfg.db)
    if args.action == "set":
        target = store.set_alias(
            cfg.db, args.name, args.target, args.version, reason="alias set", commit=cfg.commit
        )
        print(f"{target.name} -> {target.table}" + (f"@{target.version}" * bool(target.version)))
    elif args.action == "show":
        target = store.resolve_alias(db, args.name)
        print(f"{target.name} -> {target.table}" + (f"@{target.version}" * bool(target.version)))
        for row in store.alias_history(db, args.name):
            version = "" if row["version"] is None else f"@{row['version']}"
            print(
                f"  {row['seq']:4d} {row['changed_at']:%Y-%m-%d %H:%M:%S} "
                f"{row['table']}{version}  {row['reason'] or ''}"
            )
    else:
        for target in store.list_aliases(db):
            version = "" if target.version is None else f"@{target.version}"
            print(f"{target.name} -> {target.table}{version}")
    return 0


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args
    from freshindex.query.types import MODES

    p = subparsers.add_parser("alias", help="index names readers use -> physical tables")
    p.add_argument("action", choices=("list", "show", "set"))
    p.add_argument("name", nargs="?", help="the alias (show, set)")
    p.add_argument("target", nargs="?", help="the physical table (set)")
    p.add_argument("--version", type=int, help="pin this version of the target (set)")
    add_common_args(p)
    p.set_defaults(func=_checked_alias, beam=False)

    p = subparsers.add_parser(
        "migrate", help="blue-green migration to new settings, gated on retrieval quality"
    )
    p.add_argument(
        "action", choices=("start", "status", "check", "cutover", "rollback", "abort", "finish")
    )
    p.add_argument("--index", help="the index name readers use (default: --table)")
    p.add_argument("--source", help="start: the source (default: the live table's last run's)")
    p.add_argument("--topics", nargs="+", help="start: a stream-fed index's Kafka topics")
    p.add_argument("--kafka-bootstrap-servers", dest="bootstrap_servers")
    p.add_argument("--dataset", help="check: a BEIR folder (corpus, queries.jsonl, qrels/)")
    p.add_argument("--queries", help="check: your own queries.jsonl (with --qrels)")
    p.add_argument("--qrels", help="check: your own qrels TSV (query-id, corpus-id, score)")
    p.add_argument("--split", default="test")
    p.add_argument("--modes", nargs="+", default=["vector"], choices=MODES)
    p.add_argument("--tolerance", type=float, default=migration.DEFAULT_TOLERANCE)
    p.add_argument("--force", action="store_true", help="cutover: skip the gate")
    add_common_args(p)
    p.set_defaults(func=cmd_migrate, beam=True)


def _checked_alias(args, beam_args) -> int:
    if args.action in ("show", "set") and not args.name:
        print("alias show|set: name the alias", file=sys.stderr)
        return 2
    if args.action == "set" and not args.target:
        print("alias set NAME TABLE: name the table", file=sys.stderr)
        return 2
    return cmd_alias(args, beam_args)
