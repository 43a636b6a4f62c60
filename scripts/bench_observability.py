"""Benchmark: what the metrics and spans cost a search.

On the query test kit's fixture index (built by the batch pipeline with the FAKE embedder,
so retrieval itself is as cheap as it gets and the instrumentation's share is at its
largest), each round runs every query through ``retrieve_batch`` (no metrics, no span: the
baseline) and through ``retrieve`` (a ``freshindex.retrieval`` span and the query-latency
histogram), interleaved. Phase 1 runs with traces off (the default: a no-op span), phase 2
after ``tracing.configure`` with the SDK's in-memory exporter (every span recorded). The
report gives per-query medians and the ratio instrumented / baseline of each phase, and the
time of one ``/metrics`` exposition.

    python scripts/bench_observability.py [--rounds 15] \
        [--markdown docs/benchmarks/observability.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freshindex.observability import metrics, tracing  # noqa: E402
from freshindex.query.config import load_query_config  # noqa: E402
from freshindex.query.retrieval import IndexReader, retrieve, retrieve_batch  # noqa: E402
from freshindex.runtime import prepare_offline  # noqa: E402
from freshindex.testing import fixture_index, index_config  # noqa: E402

QUERIES = [
    "pool timeout",
    "digest authentication password",
    "ducks water birds",
    "caching responses",
    "aspirin fever",
    "anti-inflammatory drug pain",
    "lighthouse keepers",
    "disable the timeout",
]


def run_phase(pinned, modes, rounds: int) -> dict[str, dict[str, list[float]]]:
    """mode -> case -> per-query seconds, cases interleaved within every round."""
    out = {m: {"baseline": [], "instrumented": []} for m in modes}
    for _ in range(rounds):
        for mode in modes:
            for case in ("baseline", "instrumented"):
                for q in QUERIES:
                    started = time.perf_counter()
                    if case == "baseline":
                        retrieve_batch(pinned, [q], mode, 5)
                    else:
                        retrieve(pinned, q, mode, 5)
                    out[mode][case].append(time.perf_counter() - started)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--markdown")
    args = parser.parse_args(argv)
    prepare_offline()
    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    qcfg = load_query_config(environ={})
    reader = IndexReader.open(cfg.db, cfg.table, config=qcfg.retrieval, embedding=cfg.embedding)
    pinned = reader.pinned()
    modes = ("fts", "vector", "hybrid")
    run_phase(pinned, modes, 2)  # warm up: caches, FTS threads
    phases = {"traces off": run_phase(pinned, modes, args.rounds)}
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    phases["traces on (in-memory exporter)"] = run_phase(pinned, modes, args.rounds)
    spans = len(exporter.get_finished_spans())
    expositions = []
    for _ in range(200):
        started = time.perf_counter()
        metrics.exposition()
        expositions.append(time.perf_counter() - started)

    cpu = platform.processor() or platform.machine()
    lines = [
        "# Instrumentation overhead of a search",
        "",
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {cpu}, "
        f"{os.cpu_count()} cores (shared, noisy), Python {platform.python_version()}; "
        f"`python scripts/bench_observability.py {shlex.join(argv or sys.argv[1:])}`; "
        f"{args.rounds} rounds x {len(QUERIES)} queries per mode and case, interleaved; "
        f"fixture index (FAKE embedder, {pinned.num_rows} chunks); {spans} spans recorded "
        "in phase 2.",
        "",
        "| phase | mode | baseline p50 (ms) | instrumented p50 (ms) | ratio |",
        "|---|---|---|---|---|",
    ]
    for phase, results in phases.items():
        for mode, cases in results.items():
            base = statistics.median(cases["baseline"]) * 1000
            inst = statistics.median(cases["instrumented"]) * 1000
            lines.append(f"| {phase} | {mode} | {base:.3f} | {inst:.3f} | {inst / base:.3f} |")
    lines += [
        "",
        f"One `/metrics` exposition (every metric of the process): median "
        f"{statistics.median(expositions) * 1000:.3f} ms over 200.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
