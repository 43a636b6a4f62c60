"""Benchmark: table health after many small commits, and ANN recall at scale.

Part 1 (``--commits``, default 10,000): two tables receive the same stream of one-document
upserts (384-d vectors), one commit each. ``without`` never runs upkeep; ``with`` runs
``freshindex.store.upkeep`` on the stream's schedule with the retention policy of
``--policy``: ``shipped`` (default: the ``maintenance:`` section of configs/default.yaml,
which keeps every version of the last hour), or ``last20`` (only the last 20 versions, the
policy of the earlier runs). Then, for each table: query latency p50/p99 (exact vector
search, top 10, and a doc_id lookup), size on disk, versions and fragments; and for
``with``, one more upkeep as if the table had then stood still for a day and for 100 days
(``now`` moved forward): what the policy thins the history to once the window has passed.
``--no-baseline`` skips the ``without`` table, whose commits dominate the run time;
``--keep-all-hours H`` overrides the window (and lowers ``min_version_age_minutes`` to it),
e.g. to hold a stream's steady state: with a
window shorter than the run, upkeep removes what falls out of it, as in a stream that
commits more slowly for longer.

Part 2 (``--ann-rows``, default 100000): recall@10 of the IVF_PQ index that upkeep builds,
against exact search, on clustered synthetic 384-d vectors; build time; ANN vs exact
latency. 1,000,000 rows: ``--ann-rows 1000000`` (minutes of CPU, ~1.5 GB of vectors).

    python scripts/bench_maintain.py [--commits 10000] [--policy shipped|last20] [--no-baseline]
        [--ann-rows 100000 1000000]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from freshindex import store  # noqa: E402
from freshindex.config import MaintenanceConfig, load_config  # noqa: E402
from freshindex.schemas.records import Chunk, Document, EmbeddedDocument, chunk_id_for, sha256_hex  # noqa: E402
from freshindex.store.upkeep import (  # noqa: E402
    UpkeepSchedule,
    disk_bytes,
    maintain,
    measure_recall,
    sample_vectors,
)
from freshindex.transforms.rows import rows_for  # noqa: E402
from freshindex.transforms.write import commit_changes  # noqa: E402

DIM = 384


def docs_table(ids, vectors):
    docs = []
    for doc_id, vec in zip(ids, vectors):
        text = f"chunk of {doc_id}"
        chunk = Chunk(chunk_id_for(doc_id, text, 0), doc_id, 0, text, sha256_hex(text), 4)
        doc = Document(doc_id, "mem://", sha256_hex(doc_id), "text/plain", None, None, ())
        docs.append(EmbeddedDocument(doc, (chunk,), vec[None, :], 1, 0))
    return rows_for(docs, fingerprint="fp", model="synthetic", run_id="bench", dim=DIM)


def clustered(rng, n, centers):
    v = centers[rng.integers(0, len(centers), n)] + 0.3 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def latency(table, queries, ids, nprobes=None, refine=None, exact=True) -> dict[str, float]:
    vec_ms, key_ms = [], []
    for q, doc_id in zip(queries, ids):
        t = time.perf_counter()
        s = table.search(q).distance_type("cosine").limit(10).select(["chunk_id", "_distance"])
        if exact:
            s = s.bypass_vector_index()
        else:
            s = s.nprobes(nprobes)
            if refine:
                s = s.refine_factor(refine)
        s.to_list()
        vec_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        table.search().where(f"doc_id = '{doc_id}'").select(["chunk_id"]).limit(10).to_list()
        key_ms.append((time.perf_counter() - t) * 1000)
    p = lambda xs, q: float(np.percentile(xs, q))  # noqa: E731
    return {
        "vector_p50_ms": p(vec_ms, 50),
        "vector_p99_ms": p(vec_ms, 99),
        "lookup_p50_ms": p(key_ms, 50),
        "lookup_p99_ms": p(key_ms, 99),
    }


POLICIES = {
    "shipped": lambda: load_config(environ={}).maintenance,
    "last20": lambda: MaintenanceConfig(
        keep_versions=20,
        keep_all_hours=0,
        min_version_age_minutes=0,
        checkpoint_hourly_days=0,
        checkpoint_daily_days=0,
    ),
}


def part1(
    work: Path,
    commits: int,
    distinct_docs: int,
    policy_name: str,
    baseline: bool,
    keep_all_hours: float | None = None,
) -> dict:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, DIM))
    policy = POLICIES[policy_name]()
    if keep_all_hours is not None:  # the floor must not hide a short window
        policy = dataclasses.replace(
            policy,
            keep_all_hours=keep_all_hours,
            min_version_age_minutes=min(policy.min_version_age_minutes, keep_all_hours * 60),
        )
    out: dict = {"policy": policy_name, **dataclasses.asdict(policy)}
    tables = {}
    for name in ("without", "with") if baseline else ("with",):
        uri = str(work / name)
        tables[name] = (
            uri,
            store.open_or_create_chunks(
                store.connect(uri), "docs", dim=DIM, model="synthetic", settings={}
            ),
        )
    # the stream's every_commits; its every_minutes would make the schedule depend on speed
    sched = UpkeepSchedule(dataclasses.replace(policy, every_minutes=1e9))
    write_s = dict.fromkeys(tables, 0.0)
    per_thousand: dict[str, list[float]] = {name: [] for name in tables}  # s per 1,000 commits
    window_s = dict.fromkeys(tables, 0.0)
    upkeep_s: list[float] = []
    held = 0
    upkeep_window: list[float] = []  # upkeep seconds within the current 1,000 commits
    upkeep_per_thousand: list[dict] = []  # mean upkeep and versions held, per 1,000 commits
    started = time.perf_counter()
    for i in range(commits):
        doc_id = f"doc{i % distinct_docs}"
        data = docs_table([doc_id], clustered(rng, 1, centers))
        for name, (_uri, table) in tables.items():
            t = time.perf_counter()
            commit_changes(table, data, replace_docs=[doc_id])
            write_s[name] += time.perf_counter() - t
            window_s[name] += time.perf_counter() - t
            if i == 0:
                store.ensure_scalar_indexes(table)
        if sched.committed():
            t = time.perf_counter()
            report = maintain(tables["with"][0], "docs", policy, ann=False, record=False)
            upkeep_s.append(time.perf_counter() - t)
            upkeep_window.append(upkeep_s[-1])
            held = report.versions_after
            tables["with"] = (
                tables["with"][0],
                store.open_chunks(store.connect(tables["with"][0]), "docs"),
            )
        if (i + 1) % 1000 == 0:
            for name in window_s:
                per_thousand[name].append(round(window_s[name], 3))
                window_s[name] = 0.0
            upkeep_per_thousand.append(
                {
                    "upkeep_s_mean": round(statistics.mean(upkeep_window or [0.0]), 3),
                    "versions_held": held,
                }
            )
            upkeep_window = []
            means = ", ".join(f"{n} {v[-1]:.0f} ms" for n, v in per_thousand.items())
            means += f"; upkeep {upkeep_per_thousand[-1]['upkeep_s_mean']:.2f} s, {held} versions"
            print(
                f"  {i + 1}/{commits} commits, {time.perf_counter() - started:.0f}s; mean "
                f"commit of the last 1,000: {means}",
                flush=True,
            )
    for name, (uri, _) in tables.items():
        table = store.open_chunks(store.connect(uri), "docs")
        queries = sample_vectors(table, 200, seed=3)
        ids = [f"doc{j}" for j in rng.integers(0, distinct_docs, 200)]
        out[name] = {
            **latency(table, queries, ids),
            "bytes_on_disk": disk_bytes(uri, "docs"),
            "versions": len(table.list_versions()),
            "fragments": table.stats()["fragment_stats"]["num_fragments"],
            "rows": table.count_rows(),
            "commit_ms_mean": write_s[name] / commits * 1000,
            "commit_ms_mean_per_1000": per_thousand[name],
        }
    out["upkeep_runs"] = len(upkeep_s)
    out["upkeep_s_median"] = statistics.median(upkeep_s) if upkeep_s else 0
    out["upkeep_s_max"] = max(upkeep_s, default=0)
    out["upkeep_s_last"] = upkeep_s[-1] if upkeep_s else 0
    out["upkeep_per_1000_commits"] = upkeep_per_thousand
    uri = tables["with"][0]
    for days in (1, 100):
        later = dt.datetime.now() + dt.timedelta(days=days)
        t = time.perf_counter()
        report = maintain(uri, "docs", policy, ann=False, record=False, now=later)
        out[f"after_{days}_days"] = {
            "versions": report.versions_after,
            "versions_removed": report.versions_removed,
            "checkpoints_tagged": report.checkpoints_tagged,
            "bytes_on_disk": disk_bytes(uri, "docs"),
            "upkeep_s": time.perf_counter() - t,
        }
    return out


def part2(work: Path, rows: int) -> dict:
    rng = np.random.default_rng(rows)
    centers = rng.normal(size=(max(50, rows // 2000), DIM))
    uri = str(work / f"ann{rows}")
    table = store.open_or_create_chunks(
        store.connect(uri), "docs", dim=DIM, model="synthetic", settings={}
    )
    for start in range(0, rows, 50_000):
        n = min(50_000, rows - start)
        ids = [f"r{start + j}" for j in range(n)]
        table.add(docs_table(ids, clustered(rng, n, centers)))
    cfg = dataclasses.replace(POLICIES["last20"](), ann_min_rows=1, ann_sample_queries=100)
    t = time.perf_counter()
    report = maintain(uri, "docs", cfg)
    build_s = time.perf_counter() - t
    table = store.open_chunks(store.connect(uri), "docs")
    fresh = sample_vectors(table, 100, seed=12345)
    ann = report.ann
    recall_fresh = measure_recall(table, fresh, 10, ann["nprobes"], ann["refine_factor"])
    ids = [f"r{j}" for j in rng.integers(0, rows, 100)]
    exact = latency(table, fresh, ids, exact=True)
    approx = latency(table, fresh, ids, ann["nprobes"], ann["refine_factor"], exact=False)
    shutil.rmtree(uri, ignore_errors=True)
    return {
        "rows": rows,
        "build_and_tune_s": build_s,
        "recall_tuning_queries": ann["recall"],
        "recall_fresh_queries": recall_fresh,
        "nprobes": ann["nprobes"],
        "refine_factor": ann["refine_factor"],
        "num_partitions": ann["num_partitions"],
        "exact_p50_ms": exact["vector_p50_ms"],
        "exact_p99_ms": exact["vector_p99_ms"],
        "ann_p50_ms": approx["vector_p50_ms"],
        "ann_p99_ms": approx["vector_p99_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--distinct-docs", type=int, default=2_000)
    parser.add_argument("--policy", choices=sorted(POLICIES), default="shipped")
    parser.add_argument("--keep-all-hours", type=float, help="override the policy's window")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the table that never runs upkeep"
    )
    parser.add_argument("--ann-rows", type=int, nargs="*", default=[100_000])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-maintain-"))
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "commits": args.commits,
    }
    if args.commits:
        print(f"part 1: {args.commits} small commits, policy {args.policy}", flush=True)
        result["small_commits"] = part1(
            work,
            args.commits,
            args.distinct_docs,
            args.policy,
            not args.no_baseline,
            args.keep_all_hours,
        )
        print(json.dumps(result["small_commits"], indent=2), flush=True)
    result["ann"] = []
    for rows in args.ann_rows:
        print(f"part 2: ANN recall at {rows} rows", flush=True)
        result["ann"].append(part2(work, rows))
        print(json.dumps(result["ann"][-1], indent=2), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
