"""Benchmark: query latency of vector, FTS and hybrid retrieval at 10k and 100k chunks.

Synthetic chunks tables (random normalized 384-d vectors, ~120-word texts drawn from a
Zipf-distributed vocabulary of 30k pseudo-words) are built once into ``.bench/query/`` with
the pinned chunks schema and the indexes the pipelines create (BTREE keys + FTS on text).
Queries are 2-5 words drawn from the same vocabulary; their vectors come from the real
embedding model, whose time is measured on its own and excluded from retrieval latency.

For each size and mode: ``--queries`` queries, k=10, repeated ``--repeats`` times; p50/p99
per repeat, and the median of those is reported. Also: the memory engine's load time, and
LanceDB's own flat vector scan (the engine used past ``retrieval.memory_max_rows``).

    python scripts/bench_query.py [--sizes 10000 100000] [--queries 200] [--repeats 3]
        [--out result.json] [--markdown docs/benchmarks/query.md] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freshindex import store  # noqa: E402
from freshindex.config import EmbeddingConfig  # noqa: E402
from freshindex.query.config import RetrievalConfig  # noqa: E402
from freshindex.query.retrieval import IndexReader, embed_queries, retrieve  # noqa: E402
from freshindex.runtime import prepare_offline  # noqa: E402
from freshindex.schemas.tables import chunks_schema  # noqa: E402

DIM = 384
MODEL = "all-MiniLM-L6-v2"
VOCAB = 30_000
WORDS_PER_CHUNK = 120
SYLLABLES = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]


def vocabulary(rng: np.random.Generator) -> list[str]:
    words: set[str] = set()
    while len(words) < VOCAB:
        n = int(rng.integers(2, 5))
        words.add("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)))
    return sorted(words)


def zipf_ranks(rng: np.random.Generator, shape) -> np.ndarray:
    return (rng.zipf(1.15, size=shape) - 1) % VOCAB


def build_table(folder: Path, rows: int, words: list[str], seed: int = 7, labels=None) -> None:
    """``labels(doc number)``: a document's access labels (default: public)."""
    labels = labels or (lambda _doc: ["public"])
    rng = np.random.default_rng(seed)
    db = store.connect(str(folder))
    schema = chunks_schema(DIM, model=MODEL, settings={"synthetic": True})
    table = db.create_table("bench", schema=schema)
    now = store.utcnow()
    vocab = np.array(words)
    for start in range(0, rows, 20_000):
        n = min(20_000, rows - start)
        vectors = rng.standard_normal((n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [" ".join(vocab[r]) for r in zipf_ranks(rng, (n, WORDS_PER_CHUNK))]
        ids = [f"c{start + i:07d}" for i in range(n)]
        cols = {
            "chunk_id": ids,
            "doc_id": [f"doc{(start + i) // 8:06d}" for i in range(n)],
            "chunk_index": [(start + i) % 8 for i in range(n)],
            "text": texts,
            "text_hash": ids,
            "token_count": [WORDS_PER_CHUNK] * n,
            "title": [None] * n,
            "section": [None] * n,
            "page_number": [None] * n,
            "source_uri": [f"mem://doc{(start + i) // 8:06d}" for i in range(n)],
            "content_type": ["text/plain" if i % 4 else "text/markdown" for i in range(n)],
            "content_hash": ids,
            "modified_at": [now] * n,
            "fingerprint": ["bench"] * n,
            "embedding_model": [MODEL] * n,
            "metadata": [json.dumps({"shard": (start + i) % 10}) for i in range(n)],
            "run_id": ["bench"] * n,
            "indexed_at": [now] * n,
            "namespace": ["bench"] * n,
            "source_version": [None] * n,
            "acl": [labels((start + i) // 8) for i in range(n)],
        }
        arrays = []
        for f in schema:
            if f.name == "vector":
                flat = pa.array(vectors.reshape(-1), pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, DIM))
            else:
                arrays.append(pa.array(cols[f.name], f.type))
        table.add(pa.Table.from_arrays(arrays, schema=schema))
    store.ensure_scalar_indexes(table)  # BTREE keys + the FTS index, as the pipelines do


def queries(words: list[str], n: int, seed: int = 11) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 6))
        ranks = rng.integers(20, 3000, length)  # neither stop-word frequent nor unseen
        out.append(" ".join(words[r] for r in ranks))
    return out


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    ordered = sorted(samples_ms)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return p50, p99


def time_calls(fn, items) -> list[float]:
    out = []
    for item in items:
        started = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - started) * 1000)
    return out


def bench_new_version(folder: Path, commits: int = 5) -> dict:
    """The memory engine after a stream-sized commit (8 new chunks): building the new
    version's index from the previous one vs reading it from scratch, alternately, on a
    copy of the table (the cached one stays as it is). Medians over ``commits``."""
    from freshindex.query.memory_index import MemoryIndex

    work = Path(tempfile.mkdtemp(prefix="bench-query-"))
    try:
        shutil.copytree(folder, work / "db")
        reader = IndexReader.open(str(work / "db"), "bench")
        reader.pinned().memory()
        table = store.open_chunks(store.connect(str(work / "db")), "bench")
        sample = table.search().limit(8).to_arrow()
        incremental, scratch = [], []
        for i in range(commits):
            ids = pa.array([f"new{i}-{c}" for c in sample["chunk_id"].to_pylist()])
            table.add(sample.set_column(sample.schema.get_field_index("chunk_id"), "chunk_id", ids))
            pinned = reader.pinned()
            started = time.perf_counter()
            mem = pinned.memory()
            incremental.append(time.perf_counter() - started)
            assert mem.rows_read == 8, mem.rows_read
            started = time.perf_counter()
            MemoryIndex(pinned.table)
            scratch.append(time.perf_counter() - started)
        return {
            "new_version_incremental_s": round(statistics.median(incremental), 3),
            "new_version_from_scratch_s": round(statistics.median(scratch), 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_size(rows, cache: Path, words, qs, qvecs, repeats, flat_queries) -> dict:
    folder = cache / f"rows{rows}"
    built = 0.0
    if not (folder / "bench.lance").exists():
        started = time.perf_counter()
        build_table(folder, rows, words)
        built = time.perf_counter() - started
        print(f"  built {rows} rows in {built:.1f}s", flush=True)
    reader = IndexReader.open(str(folder), "bench", config=RetrievalConfig(cached_versions=1))
    pinned = reader.pinned()
    assert pinned.num_rows == rows and pinned.vector_engine == "memory"
    started = time.perf_counter()
    pinned.memory()
    load_s = time.perf_counter() - started
    result: dict = {"rows": rows, "build_s": round(built, 1), "memory_load_s": round(load_s, 2)}
    result.update(bench_new_version(folder))
    pairs = list(zip(qs, qvecs))
    filters = ["content_type = text/markdown"]
    cases = {
        "vector": lambda p: retrieve(pinned, p[0], mode="vector", k=10, query_vector=p[1]),
        "fts": lambda p: retrieve(pinned, p[0], mode="fts", k=10),
        "hybrid": lambda p: retrieve(pinned, p[0], mode="hybrid", k=10, query_vector=p[1]),
        "hybrid+filter": lambda p: retrieve(
            pinned, p[0], mode="hybrid", k=10, query_vector=p[1], filters=filters
        ),
    }
    for fn in cases.values():
        time_calls(fn, pairs[:10])  # warm caches
    names = list(cases)
    runs: dict[str, list] = {name: [] for name in names}
    for _ in range(repeats):
        # modes interleaved query by query, so a noisy neighbour hits them all alike
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i, pair in enumerate(pairs):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                samples[name] += time_calls(cases[name], [pair])
        for name in names:
            runs[name].append(percentiles(samples[name]))
    for name in names:
        p50 = statistics.median(r[0] for r in runs[name])
        p99 = statistics.median(r[1] for r in runs[name])
        result[name] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "runs": runs[name]}
        print(f"  {rows:>7} {name:<14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms", flush=True)
    lance = IndexReader.open(
        str(folder), "bench", config=RetrievalConfig(vector_engine="lancedb", cached_versions=1)
    ).pinned()
    samples = time_calls(
        lambda p: retrieve(lance, p[0], mode="vector", k=10, query_vector=p[1]),
        pairs[:flat_queries],
    )
    p50, p99 = percentiles(samples)
    result["vector_lancedb_flat"] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    print(f"  {rows:>7} {'vector (lancedb flat)':<14} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    return result


def markdown(report: dict) -> str:
    lines = [
        "# Query latency (issue 4)",
        "",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- machine: {report['machine']}",
        f"- method: {report['method']}",
        "",
        "Retrieval latency, excluding query embedding (k=10; median over "
        f"{report['repeats']} repeats of {report['queries']} queries each):",
        "",
        "| chunks | mode | p50 ms | p99 ms |",
        "| ---: | --- | ---: | ---: |",
    ]
    for size in report["sizes"]:
        for mode in ("vector", "fts", "hybrid", "hybrid+filter", "vector_lancedb_flat"):
            r = size[mode]
            label = "vector (LanceDB flat scan)" if mode == "vector_lancedb_flat" else mode
            lines.append(f"| {size['rows']:,} | {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    e = report["embedding"]
    lines += [
        "",
        f"Query embedding ({report['model']}, one query per call, CPU): p50 "
        f"{e['p50_ms']:.2f} ms, p99 {e['p99_ms']:.2f} ms.",
        "",
        "Memory engine load (the pinned version's vectors into RAM, once per version): "
        + ", ".join(f"{s['rows']:,} rows {s['memory_load_s']:.2f} s" for s in report["sizes"])
        + ". A new version after a commit of 8 chunks, built from the previous version's "
        "index vs read from scratch (medians of 5): "
        + ", ".join(
            f"{s['rows']:,} rows {s['new_version_incremental_s']:.3f} s vs "
            f"{s['new_version_from_scratch_s']:.3f} s"
            for s in report["sizes"]
        )
        + ".",
        "",
        f"Goal at 100k: hybrid p50 <= 20 ms and p99 <= 50 ms excluding embedding: "
        f"**{report['goal']}**.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flat-queries", type=int, default=20, help="LanceDB flat scan runs")
    parser.add_argument("--cache", default=str(ROOT / ".bench" / "query"))
    parser.add_argument("--out", help="write the JSON report here")
    parser.add_argument("--markdown", help="write the Markdown summary here")
    parser.add_argument("--quick", action="store_true", help="10k rows, 50 queries, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.repeats, args.flat_queries = [10_000], 50, 1, 5
    prepare_offline()
    load_before = os.getloadavg()[0]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    words = vocabulary(np.random.default_rng(3))
    qs = queries(words, args.queries)

    from freshindex.embedding import get_embedder

    embedder = get_embedder(EmbeddingConfig(model=MODEL))
    embedder.encode(qs[:4])  # load and warm the model
    embed_ms = time_calls(lambda q: embed_queries(embedder, [q]), qs)  # as retrieve() does
    qvecs = embed_queries(embedder, qs)
    e50, e99 = percentiles(embed_ms)
    print(f"  query embedding p50 {e50:.2f} ms   p99 {e99:.2f} ms", flush=True)

    sizes = [
        bench_size(n, cache, words, qs, qvecs, args.repeats, args.flat_queries) for n in args.sizes
    ]
    big = next((s for s in sizes if s["rows"] == 100_000), None)
    goal = "not measured (no 100k run)"
    if big:
        ok = big["hybrid"]["p50_ms"] <= 20 and big["hybrid"]["p99_ms"] <= 50
        goal = ("met" if ok else "missed") + (
            f" (hybrid p50 {big['hybrid']['p50_ms']:.1f} ms, p99 {big['hybrid']['p99_ms']:.1f} ms)"
        )
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/bench_query.py " + shlex.join(argv or sys.argv[1:]),
        "machine": f"{os.cpu_count()} cores shared with other work (noisy), "
        f"{platform.machine()}, Python {platform.python_version()}; load average "
        f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end",
        "method": "synthetic chunks (random normalized 384-d vectors, Zipf texts of "
        f"{WORDS_PER_CHUNK} pseudo-words), BTREE + FTS indexes, vector engine 'memory' "
        "(auto below retrieval.memory_max_rows), candidates 50 per mode for hybrid",
        "model": MODEL,
        "queries": args.queries,
        "repeats": args.repeats,
        "embedding": {"p50_ms": round(e50, 2), "p99_ms": round(e99, 2)},
        "sizes": sizes,
        "goal": goal,
    }
    print(f"goal at 100k: {goal}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
