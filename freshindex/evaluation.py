"""Retrieval evaluation on a BEIR-format dataset, and the promotion gate built on it.

    freshindex eval ../shared/data/scifact --table scifact [--split test] [--modes vector fts]
    freshindex eval ../shared/data/scifact --table scifact --compare-to results/old.json
    freshindex eval ../shared/data/scifact --table scifact --gate --baseline prod

The corpus is ingested through the batch pipeline (incremental: a second eval embeds
nothing), every query of the split runs in each mode, chunk hits are turned into a
document ranking (a document's score is its best chunk's), and nDCG@10, Recall@10,
Recall@100 and MRR@10 are computed with the standard definitions (graded relevance,
linear gain, as pytrec_eval / trec_eval compute them; the tests check against
pytrec_eval).

Why one module of ~420 lines: the metrics, the run over a BEIR folder and the promotion
gate are read together when a gate decision is questioned; each is short.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from freshindex import store
from freshindex.errors import ConfigError
from freshindex.query.types import MODES

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")
PROD_TAG = "prod"


@dataclass(frozen=True)
class BeirDataset:
    folder: Path
    split: str
    queries: dict[str, str]  # only those with judgements in the split
    qrels: dict[str, dict[str, int]]

    @property
    def corpus(self) -> Path:
        return self.folder / "corpus.jsonl"


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    folder = Path(folder)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    for needed in (folder / "corpus.jsonl", folder / "queries.jsonl", qrels_path):
        if not needed.exists():
            raise ConfigError(
                f"{needed} not found", hint="a BEIR folder has corpus.jsonl, queries.jsonl, qrels/"
            )
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open() as handle:
        for i, line in enumerate(handle):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "query-id":
                continue
            qid, doc_id, score = parts[0], parts[1], int(parts[2])
            qrels.setdefault(qid, {})[doc_id] = score
    queries = {}
    with (folder / "queries.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            if str(record["_id"]) in qrels:
                queries[str(record["_id"])] = record["text"]
    return BeirDataset(folder, split, queries, qrels)


# ------------------------------------------------------------------ metrics (standard)


def ndcg_at_k(ranking: Sequence[str], judged: dict[str, int], k: int) -> float:
    """nDCG@k with linear gain and log2 discount (trec_eval's ndcg_cut)."""
    dcg = sum(
        judged.get(doc, 0) / math.log2(rank + 1)
        for rank, doc in enumerate(ranking[:k], start=1)
        if judged.get(doc, 0) > 0
    )
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 1) for rank, g in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranking: Sequence[str], judged: dict[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant & set(ranking[:k])) / len(relevant) if relevant else 0.0


def mrr_at_k(ranking: Sequence[str], judged: dict[str, int], k: int) -> float:
    for rank, doc in enumerate(ranking[:k], start=1):
        if judged.get(doc, 0) > 0:
            return 1.0 / rank
    return 0.0


def score_query(ranking: Sequence[str], judged: dict[str, int]) -> dict[str, float]:
    return {
        "ndcg@10": ndcg_at_k(ranking, judged, 10),
        "recall@10": recall_at_k(ranking, judged, 10),
        "recall@100": recall_at_k(ranking, judged, 100),
        "mrr@10": mrr_at_k(ranking, judged, 10),
    }


def documents_from_hits(
    hits, first_chunk_only: bool = False, ignore_id: str | None = None
) -> list[str]:
    """Chunk hits (best first) -> document ranking: each document at its best chunk's rank.

    ``first_chunk_only`` represents a document by its first chunk alone (title and the
    opening ~250 word-pieces), which is what a model that truncates whole documents at its
    window sees: the protocol of MTEB's published numbers.

    ``ignore_id``: a document id left out of the ranking, the query's own id under BEIR's
    ``ignore_identical_ids`` (on datasets whose queries are corpus documents, each query
    would otherwise find itself first).
    """
    seen: dict[str, None] = {}
    for hit in hits:
        if first_chunk_only and getattr(hit, "chunk_index", 0) not in (0, None):
            continue
        if ignore_id is not None and hit.doc_id == ignore_id:
            continue
        seen.setdefault(hit.doc_id, None)
    return list(seen)


def mean_scores(per_query: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: statistics.fmean(s[m] for s in per_query.values()) for m in METRICS}


# ------------------------------------------------------------------ running an evaluation

Retriever = Callable[[list[str], str], list[list[Any]]]


def evaluate(
    dataset: BeirDataset,
    retrieve: Retriever,
    modes: Sequence[str],
    log=print,
    first_chunk_only: bool = False,
    ignore_identical_ids: bool = True,
) -> dict[str, Any]:
    """Per-mode mean and per-query scores; ``retrieve(queries, mode)`` returns hit lists.

    ``ignore_identical_ids`` (BEIR's default): a retrieved document whose id is the
    query's id is not ranked."""
    qids = sorted(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    out: dict[str, Any] = {}
    for mode in modes:
        started = time.perf_counter()
        results = retrieve(texts, mode)
        per_query = {
            qid: score_query(
                documents_from_hits(
                    hits, first_chunk_only, ignore_id=qid if ignore_identical_ids else None
                ),
                dataset.qrels[qid],
            )
            for qid, hits in zip(qids, results)
        }
        out[mode] = {
            "mean": mean_scores(per_query),
            "per_query": per_query,
            "seconds": time.perf_counter() - started,
        }
        log(f"  {mode:7s} " + "  ".join(f"{m} {v:.4f}" for m, v in out[mode]["mean"].items()))
    return out


def table_retriever(
    db_uri: str, table: str, as_of, *, chunk_k: int, embedding=None, **options
) -> Retriever:
    """Retrieval through the query layer, pinned to one version for every query.

    ``embedding``: the settings queries are embedded with (the run's ``cfg.embedding``, so
    queries and documents share a backend and dtype; without it the query layer's default
    applies)."""
    from freshindex.query.retrieval import IndexReader, retrieve_batch

    reader = IndexReader.open(db_uri, table, embedding=embedding)
    pinned = reader.pinned(as_of)

    def run(queries: list[str], mode: str):
        return retrieve_batch(pinned, queries, mode=mode, k=chunk_k, **options)

    run.version = pinned.version  # type: ignore[attr-defined]
    run.pinned = pinned  # type: ignore[attr-defined]
    return run


def run_eval(
    cfg,
    dataset_dir: str | Path,
    *,
    split: str = "test",
    modes: Sequence[str] = MODES,
    as_of=None,
    ingest: bool = True,
    chunk_k: int = 300,
    retrieval_options: dict[str, Any] | None = None,
    beam_args: list[str] | None = None,
    first_chunk_only: bool = False,
    ignore_identical_ids: bool = True,
    log=print,
) -> dict[str, Any]:
    """Ingest (incrementally) and evaluate; returns the result document written as JSON.

    Queries are embedded with ``cfg.embedding`` (dtype included), as the documents were."""
    dataset = load_beir(dataset_dir, split)
    ingest_row = None
    if ingest and as_of is None:
        from freshindex.pipelines.batch import run_ingest

        ingest_row = run_ingest(cfg, str(dataset.corpus), beam_args or [])
        log(
            f"ingest: {ingest_row['chunks_embedded']} chunks embedded, "
            f"{ingest_row['docs_skipped']} documents unchanged -> version "
            f"{ingest_row['table_version']}"
        )
    retriever = table_retriever(
        cfg.db,
        cfg.table,
        as_of,
        chunk_k=chunk_k,
        embedding=cfg.embedding,
        **(retrieval_options or {}),
    )
    log(
        f"evaluating {len(dataset.queries)} {split} queries on {cfg.table} version "
        f"{retriever.version}"
    )
    scores = evaluate(
        dataset,
        retriever,
        modes,
        log=log,
        first_chunk_only=first_chunk_only,
        ignore_identical_ids=ignore_identical_ids,
    )
    return {
        "dataset": str(dataset.folder),
        "split": split,
        "queries": len(dataset.queries),
        "table": cfg.table,
        "table_version": retriever.version,
        "as_of": as_of,
        "settings": {
            "fingerprint": cfg.fingerprint(),
            "embedding_model": cfg.embedding.model,
            "chunking": cfg.to_dict()["chunking"],
            "chunk_k": chunk_k,
            "retrieval": retrieval_options or {},
            "document_representation": "first chunk" if first_chunk_only else "best chunk",
            "ignore_identical_ids": ignore_identical_ids,
            "query_dtype": cfg.embedding.dtype,
        },
        "ingest_run": ingest_row["run_id"] if ingest_row else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "modes": scores,
    }


FUSION_GRID = {
    "rrf_k": (5, 10, 20, 30, 60, 100),
    "vector_weight": (0.5, 0.75, 1.0, 1.25, 1.5, 2.0),
}


def tune_fusion(
    cfg,
    dataset_dir,
    *,
    split: str = "train",
    chunk_k: int = 300,
    grid=FUSION_GRID,
    ignore_identical_ids: bool = True,
    log=print,
) -> dict[str, Any]:
    """Grid-search hybrid fusion (rrf_k, vector weight; FTS weight 1) for nDCG@10 on ``split``.

    Vector and FTS candidates are retrieved once per query; each grid point only re-fuses
    them (the same weighted RRF the query layer runs). Tune on ``train``, report ``test``.
    """
    from freshindex.query.retrieval import fuse

    dataset = load_beir(dataset_dir, split)
    retriever = table_retriever(cfg.db, cfg.table, None, chunk_k=chunk_k, embedding=cfg.embedding)
    qids = sorted(dataset.queries)
    texts = [dataset.queries[q] for q in qids]
    ranked = {mode: retriever(texts, mode) for mode in ("vector", "fts")}
    results = []
    for rrf_k in grid["rrf_k"]:
        for weight in grid["vector_weight"]:
            per_query = {}
            for i, qid in enumerate(qids):
                lists = {
                    mode: [
                        ({"chunk_id": h.chunk_id, "doc_id": h.doc_id}, h.score)
                        for h in ranked[mode][i]
                    ]
                    for mode in ranked
                }
                fused = fuse(lists, weights={"vector": weight, "fts": 1.0}, rrf_k=rrf_k)
                docs = list(
                    dict.fromkeys(
                        row["doc_id"]
                        for row, _, _ in fused
                        if not (ignore_identical_ids and row["doc_id"] == qid)
                    )
                )
                per_query[qid] = score_query(docs, dataset.qrels[qid])
            mean = mean_scores(per_query)
            results.append({"rrf_k": rrf_k, "vector_weight": weight, **mean})
    best = max(results, key=lambda r: (r["ndcg@10"], r["recall@100"]))
    default = next(r for r in results if r["rrf_k"] == 60 and r["vector_weight"] == 1.0)
    log(
        f"tuned on {split} ({len(qids)} queries): rrf_k={best['rrf_k']} "
        f"vector_weight={best['vector_weight']} -> nDCG@10 {best['ndcg@10']:.4f} "
        f"(default rrf_k=60, weight 1.0: "
        f"{default['ndcg@10']:.4f})"
    )
    return {
        "split": split,
        "best": best,
        "grid": results,
        "options": {
            "rrf_k": best["rrf_k"],
            "weights": {"vector": best["vector_weight"], "fts": 1.0},
        },
    }


def compare(new: dict[str, Any], old: dict[str, Any], top: int = 5) -> dict[str, Any]:
    """Per-mode metric deltas and the queries whose nDCG@10 changed most."""
    out = {}
    for mode in new["modes"]:
        if mode not in old["modes"]:
            continue
        a, b = old["modes"][mode], new["modes"][mode]
        deltas = {m: b["mean"][m] - a["mean"][m] for m in METRICS}
        changes = sorted(
            (
                (b["per_query"][q]["ndcg@10"] - a["per_query"][q]["ndcg@10"], q)
                for q in b["per_query"]
                if q in a["per_query"]
            ),
        )
        out[mode] = {
            "delta": deltas,
            "better": [(q, d) for d, q in reversed(changes) if d > 0][:top],
            "worse": [(q, d) for d, q in changes if d < 0][:top],
            "n_better": sum(1 for d, _ in changes if d > 0),
            "n_worse": sum(1 for d, _ in changes if d < 0),
        }
    return out


def gate(new: dict[str, Any], baseline: dict[str, Any], tolerance: float) -> tuple[bool, list]:
    """Promote only when no metric of any mode drops by more than ``tolerance``."""
    drops = [
        (mode, metric, delta)
        for mode, diff in compare(new, baseline).items()
        for metric, delta in diff["delta"].items()
        if delta < -tolerance
    ]
    return not drops, drops


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{'mode':8s}" + "".join(f"{m:>12s}" for m in METRICS)]
    for mode, scores in result["modes"].items():
        lines.append(f"{mode:8s}" + "".join(f"{scores['mean'][m]:12.4f}" for m in METRICS))
    return "\n".join(lines)


def cmd_eval(args, beam_args) -> int:
    from freshindex.cli import config_from_args
    from freshindex.pipelines.batch import configure_logging

    configure_logging()
    cfg = config_from_args(args)
    options = {}
    tuning = None
    if args.tune_on:
        if not args.no_ingest and args.as_of is None:
            from freshindex.pipelines.batch import run_ingest

            run_ingest(cfg, str(load_beir(args.dataset, args.tune_on).corpus), beam_args)
        tuning = tune_fusion(
            cfg,
            args.dataset,
            split=args.tune_on,
            chunk_k=args.chunk_k,
            ignore_identical_ids=not args.keep_identical_ids,
        )
        options.update(tuning["options"])
    if args.rrf_k is not None:
        options["rrf_k"] = args.rrf_k
    if args.weights:
        options["weights"] = {"vector": args.weights[0], "fts": args.weights[1]}
    common = dict(
        split=args.split,
        modes=args.modes,
        chunk_k=args.chunk_k,
        retrieval_options=options,
        beam_args=beam_args,
        first_chunk_only=args.first_chunk_only,
        ignore_identical_ids=not args.keep_identical_ids,
    )
    result = run_eval(cfg, args.dataset, as_of=args.as_of, ingest=not args.no_ingest, **common)
    if tuning:
        result["tuning"] = tuning
    print(format_table(result))
    out = Path(args.out or f"eval-{cfg.table}-v{result['table_version']}-{args.split}.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    if args.compare_to:
        old = json.loads(Path(args.compare_to).read_text())
        for mode, diff in compare(result, old).items():
            deltas = "  ".join(f"{m} {d:+.4f}" for m, d in diff["delta"].items())
            print(
                f"{mode:7s} {deltas}  ({diff['n_better']} queries better, {diff['n_worse']} worse)"
            )
            print(f"        worse: {diff['worse']}\n        better: {diff['better']}")
    if args.gate:
        db = store.connect(cfg.db)
        table = store.open_chunks(db, cfg.table)
        try:
            store.resolve_version(table, args.baseline)
        except Exception:
            print(
                f"no baseline {args.baseline!r} yet: promoting version "
                f"{result['table_version']} as the first {PROD_TAG}"
            )
            store.tag_version(table, PROD_TAG, result["table_version"])
            return 0
        baseline = run_eval(cfg, args.dataset, as_of=args.baseline, ingest=False, **common)
        ok, drops = gate(result, baseline, args.tolerance)
        if ok:
            store.tag_version(table, PROD_TAG, result["table_version"])
            print(f"promoted: {PROD_TAG} -> version {result['table_version']}")
            return 0
        print(f"not promoted: {drops} exceed tolerance {args.tolerance}", file=sys.stderr)
        return 1
    return 0


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args

    p = subparsers.add_parser(
        "eval", help="retrieval quality on a BEIR dataset; optionally gate promotion to prod"
    )
    p.add_argument("dataset", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    add_common_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--as-of", dest="as_of", help="evaluate this version/tag (no ingest)")
    p.add_argument("--no-ingest", action="store_true", help="evaluate the table as it is")
    p.add_argument("--chunk-k", type=int, default=300, help="chunks retrieved per query")
    p.add_argument("--rrf-k", type=int, default=None)
    p.add_argument("--weights", type=float, nargs=2, metavar=("VECTOR", "FTS"))
    p.add_argument("--tune-on", metavar="SPLIT", help="tune hybrid fusion on this split first")
    p.add_argument(
        "--first-chunk-only",
        action="store_true",
        help="represent a document by its first chunk (MTEB's truncation protocol)",
    )
    p.add_argument(
        "--keep-identical-ids",
        action="store_true",
        help="rank a retrieved document whose id is the query's id (BEIR ignores it by default)",
    )
    p.add_argument("--out", help="result JSON path")
    p.add_argument("--compare-to", help="an earlier result JSON")
    p.add_argument("--gate", action="store_true", help=f"move the {PROD_TAG!r} tag if no drop")
    p.add_argument("--baseline", default=PROD_TAG, help="version/tag to compare against")
    p.add_argument("--tolerance", type=float, default=0.005)
    p.set_defaults(func=cmd_eval, beam=True)
