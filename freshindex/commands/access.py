"""``freshindex access``: who may read what (docs/SECURITY.md, access model).

freshindex access show DOC_ID              the labels of a document's chunks
freshindex access visible --as P[,G...]    what a principal can see, counted by source
freshindex access test QUERY --as P[,G...] [--mode M] [-k N] [--as-of REF]
                                           a search as that principal (ids and titles)
freshindex access hash-key                 reads an API key on stdin, prints its api.keys hash

Operator commands (the top floor); the enforcement itself is ``freshindex.query.access``.
"""

from __future__ import annotations

import json
import sys

from freshindex.cli import add_common_args, config_from_args
from freshindex.query.types import MODES


def _service(args):
    from freshindex.query.config import load_query_config
    from freshindex.query.service import QueryService

    qcfg = load_query_config(args.query_config, {"gateway.cache.enabled": False})
    return QueryService(config_from_args(args), qcfg)


def cmd_show(args, _beam_args) -> int:
    from freshindex.query.access import document_labels

    svc = _service(args)
    found = document_labels(svc.reader.pinned(args.as_of), args.doc_id)
    if args.json:
        print(json.dumps({"doc_id": args.doc_id, "labels": found}))
    elif found is None:
        print(f"no document {args.doc_id!r}")
    else:
        for labels in found:
            shown = "(none: unlabelled)" if labels is None else ", ".join(labels) or "(admin only)"
            print(f"{args.doc_id}: {shown}")
    return 0 if found is not None else 1


def cmd_visible(args, _beam_args) -> int:
    from freshindex.cli import _print_rows
    from freshindex.query.access import visible_counts

    svc = _service(args)
    rows = visible_counts(svc.reader.pinned(args.as_of), svc.access(args.principals))
    if args.json:
        print(json.dumps(rows))
    else:
        _print_rows(rows, ["source", "visible_docs", "docs", "visible_chunks", "chunks"])
    return 0


def cmd_test(args, _beam_args) -> int:
    svc = _service(args)
    caller = svc.access(args.principals)
    result = svc.search(args.query, mode=args.mode, k=args.k, as_of=args.as_of, caller=caller)
    hits = [
        {"rank": h.rank, "doc_id": h.doc_id, "title": h.title, "score": round(h.score, 4)}
        for h in result.hits
    ]
    if args.json:
        print(
            json.dumps(
                {"as": caller.describe(), "table_version": result.table_version, "hits": hits}
            )
        )
        return 0
    print(f"as {caller.describe()}: {len(hits)} hits on version {result.table_version}")
    for h in hits:
        print(f"{h['rank']:>3}. {h['doc_id']}  {h['title'] or ''}  score={h['score']}")
    return 0


def cmd_hash_key(_args, _beam_args) -> int:
    from freshindex.query.access import hash_key

    print(hash_key(sys.stdin.readline()))
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("access", help="document labels and what a principal can see")
    sub = p.add_subparsers(dest="access_command", required=True)

    def common(q, principals: bool = False):
        add_common_args(q)
        q.add_argument("--query-config", dest="query_config", help="default: configs/query.yaml")
        q.add_argument("--as-of", dest="as_of", help="version number, tag, or run id")
        if principals:
            q.add_argument(
                "--as",
                dest="principals",
                required=True,
                metavar="PRINCIPAL[,GROUP...]",
                help="the principals to check (admin: every document)",
            )

    q = sub.add_parser("show", help="the access labels of a document")
    q.add_argument("doc_id")
    common(q)
    q.set_defaults(func=cmd_show)
    q = sub.add_parser("visible", help="what a principal can see, counted by source")
    common(q, principals=True)
    q.set_defaults(func=cmd_visible)
    q = sub.add_parser("test", help="search as a principal (ids and titles)")
    q.add_argument("query")
    common(q, principals=True)
    q.add_argument("--mode", choices=MODES)
    q.add_argument("-k", type=int)
    q.set_defaults(func=cmd_test)
    q = sub.add_parser("hash-key", help="print the api.keys hash of a key read on stdin")
    q.set_defaults(func=cmd_hash_key)
