"""``freshindex model list | prepare | gate``: the encoder backends (docs/ENCODERS.md).

freshindex model list                      each backend, its measured gate, what auto picks
freshindex model prepare [--backend B]...  export/verify the cached ONNX model, cosine check
freshindex model gate [--backend B]...     re-run the cosine check on this CPU, print both gates

Every command takes --config and --cache-dir (default: embedding.cache_dir). The cosine
check's results are stored beside the cache; the retrieval (SciFact nDCG@10) figures are
the committed ones (freshindex/encoders/gate.json).
"""

from __future__ import annotations

import dataclasses
import json

from freshindex.cli import add_common_args, config_from_args

PREPARABLE = ("onnx", "onnx-int8", "openvino")


def _embedding_cfg(args):
    cfg = config_from_args(args).embedding
    if args.cache_dir:
        cfg = dataclasses.replace(cfg, cache_dir=args.cache_dir)
    return cfg


def _labels(cfg, backends: list[str]) -> list[str]:
    from freshindex.embedding import resolve_dtype
    from freshindex.encoders import resolve_label

    precision = resolve_dtype(cfg.dtype, cfg.device)
    return [resolve_label(b, precision) for b in backends]


def _print_records(cfg, records: list, as_json: bool) -> None:
    from freshindex.encoders import committed_gate

    gate = committed_gate().get("backends", {})
    rows = []
    for record in records:
        measured = gate.get(record.label, {})
        rows.append(
            {
                **record.to_dict(),
                "ndcg@10": measured.get("ndcg@10"),
                "retrieval_passed": measured.get("passed"),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    for row in rows:
        verdict = "passed" if row["passed"] and row["retrieval_passed"] else "FAILED"
        print(
            f"{row['label']:18s} cosine mean {row['cosine_mean']:.4f} "
            f"(min {row['cosine_min']:.4f}, >= {row['threshold']}) "
            f"nDCG@10 {row['ndcg@10']} -> {verdict}"
        )


def cmd_prepare(args, _beam_args, *, force: bool = False) -> int:
    from freshindex.embedding import prepare_backend

    cfg = _embedding_cfg(args)
    records = [prepare_backend(cfg, label, force=force) for label in _labels(cfg, args.backend)]
    _print_records(cfg, records, args.json)
    return 0


def cmd_gate(args, beam_args) -> int:
    return cmd_prepare(args, beam_args, force=True)


def cmd_list(args, _beam_args) -> int:
    from freshindex.embedding import resolve_backend
    from freshindex.encoders import BACKEND_LABELS, committed_gate

    cfg = _embedding_cfg(args)
    gate = committed_gate()
    measured = gate.get("backends", {})
    rows = [{"backend": label, **measured.get(label, {})} for label in BACKEND_LABELS]
    chosen = resolve_backend(cfg)
    if args.json:
        print(json.dumps({"backends": rows, "resolved": chosen}, indent=1))
        return 0
    for row in rows:
        ndcg = row.get("ndcg@10") or {}
        print(
            f"{row['backend']:18s} passed={row.get('passed')} speed x{row.get('speed_ratio')} "
            + "  ".join(f"{mode} {value:.4f}" for mode, value in ndcg.items())
        )
    print(f"embedding.backend {cfg.backend} -> {chosen}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("model", help="encoder backends: list, prepare, gate")
    sub = p.add_subparsers(dest="model_command", required=True)
    for name, func, help_text in (
        ("list", cmd_list, "each backend's measured gate and what auto resolves to"),
        ("prepare", cmd_prepare, "export and verify the cached model, run the cosine check"),
        ("gate", cmd_gate, "re-run the cosine check on this CPU and print both gates"),
    ):
        q = sub.add_parser(name, help=help_text)
        add_common_args(q)
        q.add_argument("--cache-dir", dest="cache_dir", help="default: embedding.cache_dir")
        if name != "list":
            q.add_argument("--backend", nargs="+", choices=PREPARABLE, default=list(PREPARABLE))
        q.set_defaults(func=func)
