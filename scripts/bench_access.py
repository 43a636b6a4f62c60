"""Benchmark: hybrid query latency at 100k chunks when the caller may read 1%, 10% or 100%
of them (the access condition applied before ranking), against an unrestricted (admin)
caller in the same run; with and without a LABEL_LIST index on the ``acl`` column.

The synthetic table of ``scripts/bench_query.py`` (random normalized 384-d vectors, Zipf
texts), with labels per document: every document carries ``all``, one in ten ``ten``, one
in a hundred ``one``; callers ``one``, ``ten`` and ``all`` see 1%, 10% and 100%. Query
vectors are random unit vectors (the model's time is not retrieval latency). Cases are
interleaved query by query; p50/p99 per repeat, the median of the repeats is reported.

    python scripts/bench_access.py [--rows 100000] [--queries 200] [--repeats 3]
        [--out .bench/access-result.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_query import DIM, build_table, percentiles, queries, vocabulary  # noqa: E402

from freshindex import store  # noqa: E402
from freshindex.query.access import Access  # noqa: E402
from freshindex.query.config import RetrievalConfig  # noqa: E402
from freshindex.query.retrieval import IndexReader, retrieve  # noqa: E402


def labels(doc: int) -> list[str]:
    out = ["all"]
    if doc % 10 == 0:
        out.append("ten")
    if doc % 100 == 0:
        out.append("one")
    return out


CALLERS = {
    "admin (unrestricted)": Access.admin(),
    "100%": Access.of(["all"]),
    "10%": Access.of(["ten"]),
    "1%": Access.of(["one"]),
}


def run_cases(reader, qs, qvecs, repeats: int, engine: str) -> dict:
    pinned = reader.pinned()
    views = {name: pinned.restricted(access) for name, access in CALLERS.items()}
    pairs = list(zip(qs, qvecs, strict=True))

    def call(name, pair):
        hits = retrieve(views[name], pair[0], mode="hybrid", k=10, query_vector=pair[1])
        assert len(hits) == 10, (name, len(hits))  # k visible hits, whatever the share

    for name in views:  # warm: the memory index, the masks, the FTS index pages
        for pair in pairs[:5]:
            call(name, pair)
    names = list(views)
    runs: dict[str, list] = {name: [] for name in names}
    for _ in range(repeats):
        samples: dict[str, list[float]] = {name: [] for name in names}
        for i, pair in enumerate(pairs):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                started = time.perf_counter()
                call(name, pair)
                samples[name].append((time.perf_counter() - started) * 1000)
        for name in names:
            runs[name].append(percentiles(samples[name]))
    out = {}
    base = statistics.median(r[0] for r in runs[names[0]])
    for name in names:
        p50 = statistics.median(r[0] for r in runs[name])
        p99 = statistics.median(r[1] for r in runs[name])
        out[name] = {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "p50_vs_admin": round(p50 / base, 2),
        }
        print(
            f"  {engine:<8} {name:<22} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  x{p50 / base:.2f}",
            flush=True,
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=str(ROOT / ".bench" / "access"))
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(3)
    words = vocabulary(np.random.default_rng(5))
    folder = Path(args.cache) / f"rows{args.rows}"
    if not (folder / "bench.lance").exists():
        started = time.perf_counter()
        build_table(folder, args.rows, words, labels=labels)
        print(f"built {args.rows} rows in {time.perf_counter() - started:.1f}s", flush=True)
    qs = queries(words, args.queries)
    qvecs = rng.standard_normal((len(qs), DIM)).astype(np.float32)
    qvecs /= np.linalg.norm(qvecs, axis=1, keepdims=True)
    report: dict = {
        "command": "python scripts/bench_access.py " + shlex.join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or '?'}; 2 shared cores",
        "rows": args.rows,
        "queries": len(qs),
        "repeats": args.repeats,
    }
    table = store.open_chunks(store.connect(str(folder)), "bench")
    for found in table.list_indices():  # a previous run's: measure without it first
        if found.columns == ["acl"]:
            table.drop_index(found.name)
    for label_index in (False, True):
        if label_index:
            from lancedb.index import LabelList

            started = time.perf_counter()
            table.create_index("acl", config=LabelList())
            print(f"LABEL_LIST index on acl built in {time.perf_counter() - started:.1f}s")
        for engine in ("memory", "lancedb"):
            cfg = RetrievalConfig(vector_engine=engine, cached_versions=1)
            reader = IndexReader.open(str(folder), "bench", config=cfg)
            key = f"{engine}{' +label_list' if label_index else ''}"
            print(f"{key}:", flush=True)
            report[key] = run_cases(reader, qs, qvecs, args.repeats, engine)
            reader.close()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
