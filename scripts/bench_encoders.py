#!/usr/bin/env python
"""Encoder backends side by side: query latency, documents/s, and the mixed-table check.

    scripts/bench_encoders.py speed [--docs 128] [--rounds 3] [--queries 30]
    scripts/bench_encoders.py batching [--docs 512] [--rounds 5]
    scripts/bench_encoders.py mixed --db DB --base torch_float32 --other onnx-int8

speed: for each backend (torch float32 and bfloat16, onnx, onnx-int8, openvino float32 and
bfloat16), the p50 of embedding one short query (warm), and documents/s of encoding the
first ``--docs`` SciFact abstracts (title + text). Backends are interleaved within each
round, and each round's figure is divided by float32 torch's of the same round; medians
over rounds are reported (the machine is shared and noisy).

batching: texts/s of encoding three sets (SciFact abstracts, up to a full window each; the
SciFact queries, ~20 word-pieces; both shuffled together) in fixed batches of
``embedding.batch_size`` texts against token-budget batches (``embedding.batch_tokens``),
(``--budget``, default 4,096: 16 full windows), and for OpenVINO one inference stream
against parallel streams; each round's figure is
divided by the first case's (fixed batches, one stream: the code before batching by length).

mixed: the tables that ``freshindex eval`` built for two backends hold the same chunks
(same ids); a third table takes the base table's rows with every other document's vectors
from the other backend, and SciFact test nDCG@10 (vector, hybrid) is compared with the
base table's. Answers whether one table may hold vectors of two backends.

gate: writes freshindex/encoders/gate.json (what ``auto`` reads) from the eval results of
each backend (``freshindex eval ... --out X.json`` run with FRESHINDEX_EMBEDDING__BACKEND),
the speed results, and the cosine checks stored in the cache:

    scripts/bench_encoders.py gate --eval torch-float32=t.json --eval onnx-int8=i.json \
        --speed bench_encoders_speed.json --cache-dir DIR
    scripts/bench_encoders.py gate --merge --eval openvino-float32=o.json   # add one

Results: --out JSON; docs/BENCHMARKS.md and docs/ENCODERS.md quote them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCIFACT = Path("/work/shared/data/scifact")
CASES = [
    ("torch", "float32"),
    ("torch", "bfloat16"),
    ("onnx", "float32"),
    ("onnx-int8", "float32"),
    ("openvino", "float32"),
    ("openvino", "bfloat16"),
]
QUERY = "Does aspirin reduce the risk of a second heart attack?"


def _abstracts(n: int) -> list[str]:
    texts = []
    with (SCIFACT / "corpus.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            texts.append(f"{record.get('title') or ''}\n{record['text']}".strip())
            if len(texts) >= n:
                break
    return texts


def speed(args) -> dict:
    from freshindex.config import EmbeddingConfig
    from freshindex.embedding import get_embedder

    embedders = {}
    for backend, dtype in CASES:
        cfg = EmbeddingConfig(backend=backend, dtype=dtype, cache_dir=args.cache_dir)
        embedder = get_embedder(cfg)
        embedders[embedder.backend] = embedder
    texts = _abstracts(args.docs)
    for embedder in embedders.values():  # warm
        embedder.encode(texts[:4])
        embedder.encode([QUERY])
    rounds: list[dict] = []
    for r in range(args.rounds):
        row = {}
        for label, embedder in embedders.items():
            latencies = []
            for _ in range(args.queries):
                started = time.perf_counter()
                embedder.encode([QUERY])
                latencies.append(time.perf_counter() - started)
            started = time.perf_counter()
            embedder.encode(texts)
            docs_per_s = len(texts) / (time.perf_counter() - started)
            row[label] = {
                "query_p50_ms": statistics.median(latencies) * 1000,
                "docs_per_s": docs_per_s,
            }
            print(f"round {r}: {label:18s} {row[label]}", flush=True)
        base = row["torch-float32"]
        for figures in row.values():
            figures["docs_ratio"] = figures["docs_per_s"] / base["docs_per_s"]
            figures["query_ratio"] = figures["query_p50_ms"] / base["query_p50_ms"]
        rounds.append(row)
    summary = {
        label: {
            key: statistics.median(r[label][key] for r in rounds)
            for key in ("query_p50_ms", "docs_per_s", "docs_ratio", "query_ratio")
        }
        for label in embedders
    }
    print("\n| backend | query p50 (ms) | × float32 torch | documents/s | × float32 torch |")
    print("|---|---|---|---|---|")
    for label, s in summary.items():
        print(
            f"| {label} | {s['query_p50_ms']:.1f} | {s['query_ratio']:.2f} | "
            f"{s['docs_per_s']:.1f} | {s['docs_ratio']:.2f} |"
        )
    return {"rounds": rounds, "median": summary, "docs": len(texts), "query": QUERY}


def _queries() -> list[str]:
    with (SCIFACT / "queries.jsonl").open() as handle:
        return [json.loads(line)["text"] for line in handle]


def batching(args) -> dict:
    import random

    from freshindex import encoders
    from freshindex.config import EmbeddingConfig
    from freshindex.embedding import get_embedder

    abstracts, queries = _abstracts(args.docs), _queries()[: args.docs]
    both = abstracts + queries
    random.Random(7).shuffle(both)
    sets = {"abstracts": abstracts, "queries": queries, "mixed": both}
    budget = args.budget

    class OneStream(encoders.OpenVinoEmbedder):  # the code before parallel streams
        _run = encoders.runtimes._TokenizedEncoder._run

    def build(backend, dtype, tokens, one_stream=False):
        cfg = EmbeddingConfig(backend=backend, dtype=dtype, batch_tokens=tokens)
        embedder = get_embedder(cfg)
        if one_stream:
            embedder = object.__new__(OneStream)
            embedder.__dict__.update(get_embedder(cfg).__dict__)
        return embedder

    cases = {
        "openvino-bf16 fixed, 1 stream": build("openvino", "bfloat16", 0, one_stream=True),
        "openvino-bf16 fixed, streams": build("openvino", "bfloat16", 0),
        "openvino-bf16 budget, streams": build("openvino", "bfloat16", budget),
        "torch-float32 fixed": build("torch", "float32", 0),
        "torch-float32 budget": build("torch", "float32", budget),
    }
    for embedder in cases.values():
        embedder.encode(both[:64])
    rounds = []
    for r in range(args.rounds):
        row: dict = {}
        for set_name, texts in sets.items():
            for case, embedder in cases.items():
                started = time.perf_counter()
                embedder.encode(texts)
                row[f"{set_name}: {case}"] = len(texts) / (time.perf_counter() - started)
        for set_name in sets:
            base = row[f"{set_name}: {next(iter(cases))}"]
            for case in cases:
                row[f"{set_name}: {case} ratio"] = row[f"{set_name}: {case}"] / base
        print(f"round {r}: " + json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
        rounds.append(row)
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"\n| texts | case | texts/s | × fixed, one stream |  (budget {budget} pieces)")
    print("|---|---|---|---|")
    for set_name in sets:
        for case in cases:
            key = f"{set_name}: {case}"
            print(f"| {set_name} | {case} | {median[key]:.1f} | {median[key + ' ratio']:.2f} |")
    return {"rounds": rounds, "median": median, "budget": budget, "docs": args.docs}


def _half(doc_id: str) -> bool:
    return hashlib.sha256(doc_id.encode()).digest()[0] % 2 == 1


def mixed(args) -> dict:
    import pyarrow as pa

    from freshindex import store
    from freshindex.config import EmbeddingConfig
    from freshindex.evaluation import evaluate, load_beir, table_retriever
    from freshindex.store.indexes import create_fts_index

    db = store.connect(args.db)
    base = db.open_table(args.base).to_arrow()
    other = db.open_table(args.other).to_arrow()
    other_vectors = dict(
        zip(other.column("chunk_id").to_pylist(), other.column("vector").to_pylist(), strict=True)
    )
    ids = base.column("chunk_id").to_pylist()
    docs = base.column("doc_id").to_pylist()
    missing = [c for c in ids if c not in other_vectors]
    if missing:
        raise SystemExit(f"{len(missing)} chunks of {args.base} are not in {args.other}")
    vectors = base.column("vector").to_pylist()
    swapped = 0
    for i, (chunk_id, doc_id) in enumerate(zip(ids, docs, strict=True)):
        if _half(doc_id):
            vectors[i] = other_vectors[chunk_id]
            swapped += 1
    column = pa.array(vectors, type=base.schema.field("vector").type)
    table = base.set_column(base.schema.get_field_index("vector"), "vector", column)
    name = f"{args.base}__mixed_{args.other}".replace("-", "_")
    mixed_table = db.create_table(name, table, mode="overwrite")
    create_fts_index(mixed_table, replace=True)
    dataset = load_beir(SCIFACT, "test")
    query_cfg = EmbeddingConfig(backend="torch", dtype="float32")
    out = {"swapped_chunks": swapped, "chunks": len(ids), "query_backend": "torch-float32"}
    for label, table_name in (("base", args.base), ("mixed", name)):
        retriever = table_retriever(args.db, table_name, None, chunk_k=300, embedding=query_cfg)
        scores = evaluate(dataset, retriever, ["vector", "hybrid"])
        out[label] = {mode: scores[mode]["mean"]["ndcg@10"] for mode in scores}
    out["delta"] = {m: out["mixed"][m] - out["base"][m] for m in out["base"]}
    print(json.dumps(out, indent=1))
    return out


def merge_gate(args) -> dict:
    """Add retrieval measurements of more backends to the committed gate, against its
    baseline's figures; the other entries stay as they are."""
    from freshindex.encoders.gate import COMMITTED_GATE

    gate = json.loads(COMMITTED_GATE.read_text())
    base = gate["backends"][gate["baseline"]]["ndcg@10"]
    for pair in args.eval:
        label, path = pair.split("=", 1)
        modes = json.loads(Path(path).read_text())["modes"]
        ndcg = {m: round(modes[m]["mean"]["ndcg@10"], 4) for m in ("vector", "hybrid")}
        entry = gate["backends"][label]
        entry.pop("note", None)
        entry["ndcg@10"] = ndcg
        entry["delta"] = {m: round(ndcg[m] - base[m], 4) for m in base}
        within = all(abs(d) <= gate["tolerance"] for d in entry["delta"].values())
        entry["passed"] = within and entry.get("cosine_mean", 1.0) >= 0.99
    COMMITTED_GATE.write_text(json.dumps(gate, indent=1) + "\n")
    print(json.dumps(gate["backends"], indent=1))
    return gate


def write_gate(args) -> dict:
    if args.merge:
        return merge_gate(args)
    if not args.cache_dir:
        raise SystemExit("gate: --cache-dir is required (or --merge)")
    from freshindex.encoders.gate import BACKEND_LABELS, BASELINE, COMMITTED_GATE

    tolerance = 0.005
    ndcg = {}
    for pair in args.eval:
        label, path = pair.split("=", 1)
        result = json.loads(Path(path).read_text())
        ndcg[label] = {
            mode: round(result["modes"][mode]["mean"]["ndcg@10"], 4)
            for mode in ("vector", "hybrid")
        }
        if label == BASELINE:
            ndcg_source = {"date": result["date"], "table": result["table"]}
    speed_ratio = {}
    if args.speed:
        for label, figures in json.loads(Path(args.speed).read_text())["median"].items():
            speed_ratio[label] = round(figures["docs_ratio"], 2)
    cosine = {}
    gate_dir = Path(args.cache_dir) / "all-MiniLM-L6-v2" / "gate"
    for path in sorted(gate_dir.glob("*.json")):
        record = json.loads(path.read_text())
        cosine[record["label"]] = record["cosine_mean"]
    base = ndcg[BASELINE]
    documented = {}
    for pair in args.documented or []:  # LABEL=VECTOR_DELTA,HYBRID_DELTA measured elsewhere
        label, deltas = pair.split("=", 1)
        vector, hybrid = (float(d) for d in deltas.split(","))
        documented[label] = {"vector": vector, "hybrid": hybrid}
    backends = {}
    for label in BACKEND_LABELS:
        entry: dict = {"ndcg@10": ndcg.get(label), "speed_ratio": speed_ratio.get(label, 0.0)}
        if label in cosine:
            entry["cosine_mean"] = cosine[label]
        if label in ndcg:
            entry["delta"] = {m: round(ndcg[label][m] - base[m], 4) for m in base}
        elif label in documented:
            entry["delta"] = documented[label]
            entry["source"] = "docs/BENCHMARKS.md (float32 and this backend, one earlier run)"
        if "delta" in entry:
            within = all(abs(d) <= tolerance for d in entry["delta"].values())
            entry["passed"] = within and entry.get("cosine_mean", 1.0) >= 0.99
        else:
            entry["passed"] = False
            entry["note"] = "retrieval not measured: not selectable by auto"
        backends[label] = entry
    gate = {
        "model": "all-MiniLM-L6-v2",
        "dataset": "SciFact test (BEIR), 300 queries; nDCG@10 of vector and hybrid search",
        "tolerance": tolerance,
        "baseline": BASELINE,
        "baseline_run": ndcg_source,
        "commands": "docs/ENCODERS.md",
        "backends": backends,
    }
    COMMITTED_GATE.write_text(json.dumps(gate, indent=1) + "\n")
    print(json.dumps(gate, indent=1))
    return gate


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--docs", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--queries", type=int, default=30)
    p.add_argument("--cache-dir", default="")
    p.add_argument("--out", default="bench_encoders_speed.json")
    p = sub.add_parser("batching")
    p.add_argument("--docs", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=int, default=4096, help="embedding.batch_tokens to try")
    p.add_argument("--out", default="bench_encoders_batching.json")
    p = sub.add_parser("mixed")
    p.add_argument("--db", required=True)
    p.add_argument("--base", default="torch_float32")
    p.add_argument("--other", default="onnx-int8")
    p.add_argument("--out", default="bench_encoders_mixed.json")
    p = sub.add_parser("gate")
    p.add_argument("--eval", action="append", required=True, metavar="LABEL=RESULT.json")
    p.add_argument("--documented", action="append", metavar="LABEL=DVECTOR,DHYBRID")
    p.add_argument("--speed")
    p.add_argument("--cache-dir", help="required unless --merge")
    p.add_argument(
        "--merge",
        action="store_true",
        help="add these --eval results to the committed gate (its baseline, speeds and "
        "cosines kept) instead of writing it anew",
    )
    p.add_argument("--out", default="bench_encoders_gate.json")
    args = parser.parse_args(argv)
    from freshindex.runtime import prepare_offline

    prepare_offline()
    commands = {"speed": speed, "batching": batching, "mixed": mixed, "gate": write_gate}
    result = commands[args.command](args)
    result["machine"] = {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
