"""``freshindex search | ask | agent | serve``: the query layer's subcommands.

freshindex search QUERY [--mode vector|fts|hybrid] [-k N] [--filter 'FIELD OP VALUE']...
    [--as-of REF] [--as PRINCIPAL[,GROUP...]]
freshindex ask QUESTION [--provider NAME] [same retrieval flags]
freshindex agent QUESTION [--max-steps N] [--planner auto|tools|deterministic]
freshindex serve [--host H] [--port P] [--insecure-no-auth]

Every command takes --config/--db/--table/--json and --query-config (configs/query.yaml).
Heavy imports stay inside the command functions so ``freshindex --help`` stays fast. These
are operator commands (the top floor, beside ``freshindex.cli``): the query plane itself
never imports the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from freshindex.cli import add_common_args, config_from_args
from freshindex.query.types import MODES


def _service(args):
    from freshindex.query.config import load_query_config
    from freshindex.query.service import QueryService

    overrides = {}
    if getattr(args, "no_cache", False):
        overrides["gateway.cache.enabled"] = False
    return QueryService(config_from_args(args), load_query_config(args.query_config, overrides))


def _dump(value) -> None:
    def default(v):
        return v.isoformat() if hasattr(v, "isoformat") else str(v)

    print(json.dumps(value, default=default, indent=2, ensure_ascii=False))


def _hit_lines(hits) -> None:
    if not hits:
        print("(no hits)")
    for h in hits:
        where = f" § {h.section}" if h.section else ""
        print(f"{h.rank:>2}. {h.doc_id}{where}  score={h.score:.4f}  chunk={h.chunk_id[:12]}")
        print(textwrap.indent(textwrap.shorten(" ".join(h.text.split()), 300), "      "))


def cmd_search(args, _beam_args) -> int:
    svc = _service(args)
    result = svc.search(
        args.query,
        mode=args.mode,
        k=args.k,
        filters=args.filter,
        as_of=args.as_of,
        rrf_k=args.rrf_k,
        reranker=args.reranker,
        caller=svc.access(args.principals),
    )
    if args.json:
        _dump(result.to_dict())
        return 0
    print(
        f"{result.mode} search on {result.table} version {result.table_version} "
        f"({result.took_ms:.1f} ms)"
    )
    _hit_lines(result.hits)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _sources(citations) -> None:
    if citations:
        print("\nsources:")
    for c in citations:
        quote = f'  "{textwrap.shorten(c.quote, 120)}"' if c.quote else ""
        print(f"  [{c.marker}] {c.doc_id}#{c.chunk_id[:12]}{quote}")


def cmd_ask(args, _beam_args) -> int:
    from freshindex.query.accounting import format_summary

    svc = _service(args)
    answer = svc.ask(
        args.question,
        mode=args.mode,
        k=args.k,
        filters=args.filter,
        as_of=args.as_of,
        provider=args.provider,
        caller=svc.access(args.principals),
    )
    if args.json:
        _dump(answer.to_dict())
    else:
        print(answer.text)
        _sources(answer.citations)
        cached = ", cached" if answer.cached else ""
        print(f"\n({answer.provider}/{answer.model}{cached}; table version {answer.table_version})")
    print(format_summary(answer.accounting), file=sys.stderr)
    return 0


def cmd_agent(args, _beam_args) -> int:
    from freshindex.query.accounting import format_summary

    svc = _service(args)
    result = svc.agent(
        args.question,
        as_of=args.as_of,
        max_steps=args.max_steps,
        planner=args.planner,
        mode=args.mode,
        k=args.k,
        filters=args.filter,
        caller=svc.access(args.principals),
    )
    if args.json:
        _dump(result.to_dict())
    else:
        print(result.answer)
        _sources(result.citations)
        print(
            f"\ntrace ({result.planner} planner, {result.steps} steps, stopped: {result.stopped}, "
            f"table version {result.table_version}):"
        )
        for s in result.trace:
            what = s.tool or (s.model_call or {}).get("provider") or s.kind
            err = f"  ERROR {s.error}" if s.error else ""
            print(
                f"  {s.step:>2} {s.kind:<5} {what:<14} size={s.result_size:<3} "
                f"{s.latency_ms:8.1f} ms  {textwrap.shorten(s.summary, 70)}{err}"
            )
        if result.trace_path:
            print(f"trace stored: {result.trace_path}")
    print(format_summary(result.accounting), file=sys.stderr)
    return 0


def cmd_serve(args, _beam_args) -> int:
    import uvicorn

    from freshindex.query.api import create_app
    from freshindex.query.guard import check_bind

    svc = _service(args)
    api = svc.qcfg.api
    host = args.host or api.host
    # before anything else: a refused bind must not first load models or open the table
    check_bind(
        host,
        api_key_env=api.api_key_env,
        insecure_no_auth=args.insecure_no_auth,
        keys=bool(api.keys),
    )
    app = create_app(svc)
    if not args.no_warm_up:
        svc.reader.pinned().warm_up()  # load the model and vectors before the first request
    uvicorn.run(app, host=host, port=args.port or api.port, log_level="info")
    return 0


def _retrieval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=MODES, help="default from retrieval.mode (hybrid)")
    p.add_argument("-k", type=int, help="hits to return (default retrieval.k)")
    p.add_argument(
        "--filter",
        action="append",
        metavar="'FIELD OP VALUE'",
        help="repeatable, ANDed; e.g. 'doc_id = guide/auth.md', 'page_number >= 2', "
        "'content_type in text/markdown,text/html', 'metadata.lang = en'",
    )
    p.add_argument("--as-of", dest="as_of", help="version number, tag, or run id")
    p.add_argument(
        "--as",
        dest="principals",
        metavar="PRINCIPAL[,GROUP...]",
        help="read as these principals (admin: every document); without it only documents "
        "labelled public are read (docs/SECURITY.md)",
    )


def _common(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--query-config", dest="query_config", help="default: configs/query.yaml")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("search", help="search the index (vector, fts or hybrid)")
    p.add_argument("query")
    _common(p)
    _retrieval_args(p)
    p.add_argument("--rrf-k", dest="rrf_k", type=int, help="hybrid fusion constant")
    p.add_argument("--reranker", choices=("none", "mmr"))
    p.set_defaults(func=cmd_search)

    p = subparsers.add_parser("ask", help="answer a question from the index, with citations")
    p.add_argument("question")
    _common(p)
    _retrieval_args(p)
    p.add_argument("--provider", help="pin a provider of gateway.providers instead of routing")
    p.add_argument("--no-cache", dest="no_cache", action="store_true")
    p.set_defaults(func=cmd_ask)

    p = subparsers.add_parser("agent", help="multi-step agent with tools, prints its trace")
    p.add_argument("question")
    _common(p)
    _retrieval_args(p)
    p.add_argument("--max-steps", dest="max_steps", type=int)
    p.add_argument("--planner", choices=("auto", "tools", "deterministic"), default="auto")
    p.add_argument("--no-cache", dest="no_cache", action="store_true")
    p.set_defaults(func=cmd_agent)

    p = subparsers.add_parser("serve", help="serve the HTTP API (FastAPI + uvicorn)")
    _common(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--no-warm-up", dest="no_warm_up", action="store_true")
    p.add_argument(
        "--insecure-no-auth",
        dest="insecure_no_auth",
        action="store_true",
        help="serve on a non-loopback address without an API key (refused otherwise)",
    )
    p.set_defaults(func=cmd_serve)
