"""The ``freshindex maintain`` command: run table upkeep on demand and print what it did.

    freshindex maintain --table docs [--db URI] [--no-ann] [--json]

The engine (compaction, index refresh, retention, the ANN index) is
``freshindex.store.upkeep``; this module is only the operator's command.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from freshindex.store.upkeep import maintain


def cmd_maintain(args, _extra) -> int:
    from freshindex.cli import config_from_args

    cfg = config_from_args(args)
    report = maintain(cfg.db, cfg.table, cfg.maintenance, ann=not args.no_ann, commit=cfg.commit)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(report.summary())
    return 0


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args

    p = subparsers.add_parser(
        "maintain", help="compact, refresh indexes, apply version retention, tune the ANN index"
    )
    add_common_args(p)
    p.add_argument("--no-ann", action="store_true", help="skip the vector index step")
    p.set_defaults(func=cmd_maintain)
