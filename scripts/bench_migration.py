"""Benchmark: what a blue-green migration costs and what the gate sees, on SciFact.

Builds the live index (default settings, the bundled all-MiniLM-L6-v2) from a SciFact
subset (the first ``--queries`` test queries, their judged abstracts and ``--extra``
times as many others; ``--queries 0``: the whole corpus), then for each ``--to`` setting
runs ``migrate start`` (time, vectors embedded, disk of both tables) and ``migrate check``
(nDCG@10 and the other metrics of both tables, the gate's verdict), then ``migrate
abort``. On a shared 2-core machine the times are noisy: quote them as ratios to the
live table's build, measured in the same run.

    python scripts/bench_migration.py [--dataset ../shared/data/scifact] [--queries 100]
        [--to chunking.max_tokens=32,chunking.overlap_tokens=0 ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from freshindex import migration
from freshindex.config import load_config
from freshindex.evaluation import METRICS
from freshindex.pipelines.batch import run_ingest
from freshindex.runtime import prepare_offline

DEFAULT_TO = (
    "chunking.max_tokens=32,chunking.overlap_tokens=0",
    "chunking.max_tokens=128,chunking.overlap_tokens=16",
)


def subset(dataset: Path, out: Path, n_queries: int, extra: int) -> Path:
    """A BEIR folder with the first ``n_queries`` test queries (0: all, the whole corpus)."""
    if n_queries == 0:
        return dataset
    (out / "qrels").mkdir(parents=True)
    lines = (dataset / "qrels" / "test.tsv").read_text().splitlines()[1:]
    qrels = [line.split("\t") for line in lines]
    queries = sorted({q for q, _, _ in qrels}, key=int)[:n_queries]
    kept = [(q, d, s) for q, d, s in qrels if q in queries]
    judged = {d for _, d, _ in kept}
    corpus = []
    with (dataset / "corpus.jsonl").open() as handle:
        for line in handle:
            if json.loads(line)["_id"] in judged or len(corpus) < (1 + extra) * len(judged):
                corpus.append(line.rstrip("\n"))
    (out / "corpus.jsonl").write_text("\n".join(corpus) + "\n")
    (out / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in kept)
    )
    with (dataset / "queries.jsonl").open() as src:
        picked = [line for line in src if json.loads(line)["_id"] in queries]
    (out / "queries.jsonl").write_text("".join(picked))
    return out


def parse_overrides(text: str) -> dict[str, object]:
    out = {}
    for part in text.split(","):
        key, value = part.split("=", 1)
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="../shared/data/scifact")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--extra", type=int, default=2)
    parser.add_argument("--to", nargs="+", default=list(DEFAULT_TO))
    parser.add_argument("--tolerance", type=float, default=migration.DEFAULT_TOLERANCE)
    parser.add_argument("--out")
    args = parser.parse_args()
    prepare_offline()
    work = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    data = subset(Path(args.dataset), work / "data", args.queries, args.extra)
    cfg = load_config(overrides={"db": str(work / "lancedb"), "table": "docs"}, environ={})
    started = time.perf_counter()
    row = run_ingest(cfg, str(data / "corpus.jsonl"), [])
    live_s = time.perf_counter() - started
    docs = sum(1 for _ in (data / "corpus.jsonl").open())
    result = {
        "dataset": str(data),
        "docs": docs,
        "live": {
            "seconds": live_s,
            "chunks": row["chunks_embedded"],
            "disk_bytes": migration._table_bytes(cfg.db, "docs"),
        },
        "migrations": [],
    }
    print(f"live: {docs} docs, {row['chunks_embedded']} chunks, {live_s:.1f} s")
    for to in args.to:
        overrides = parse_overrides(to)
        new_cfg = load_config(overrides={"db": cfg.db, "table": "docs", **overrides}, environ={})
        t0 = time.perf_counter()
        state = migration.start(new_cfg, "docs", log=lambda *_: None)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        verdict = migration.check(
            cfg, "docs", str(data), tolerance=args.tolerance, log=lambda *_: None
        )
        check_s = time.perf_counter() - t0
        entry = {
            "to": to,
            "build_seconds": build_s,
            "build_ratio_to_live": build_s / live_s,
            "chunks": state["chunks_embedded"],
            "disk_bytes": migration._table_bytes(cfg.db, state["new_table"]),
            "check_seconds": check_s,
            "passed": verdict["passed"],
            "old": verdict["old"]["vector"],
            "new": verdict["new"]["vector"],
        }
        result["migrations"].append(entry)
        print(
            f"{to}: build {build_s:.1f} s ({entry['build_ratio_to_live']:.2f}x live), "
            f"{entry['chunks']} chunks, {entry['disk_bytes'] / 1e6:.1f} MB, check "
            f"{check_s:.1f} s, gate {'passed' if verdict['passed'] else 'refused'}"
        )
        for m in METRICS:
            print(f"    {m:12s} {entry['old'][m]:.4f} -> {entry['new'][m]:.4f}")
        migration.abort(cfg, "docs")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
