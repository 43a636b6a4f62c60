"""Benchmark: both cores busy. The batch pipeline on SciFact abstracts (one text file each),
three ways, interleaved, each in a fresh process and database:

- ``sync``: the embed step encodes in the runner's thread (``ingest.embed_overlap: false``);
- ``overlap``: it encodes on a background thread while the next batch is parsed and chunked
  (``ingest.embed_overlap: true``, the default);
- ``2 workers``: ``--direct_num_workers 2 --direct_running_mode multi_processing`` with the
  embed step synchronous and torch at one thread per worker.

Reports documents/s per case (median of ``--repeats``) and the ratio to ``sync``.

    python scripts/bench_embed_overlap.py [--docs 500] [--repeats 2] [--out .bench/overlap.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_peers import DEFAULT_DATA, prepare  # noqa: E402

CASES = {
    "sync": ({"FRESHINDEX_INGEST__EMBED_OVERLAP": "false"}, []),
    "overlap": ({"FRESHINDEX_INGEST__EMBED_OVERLAP": "true"}, []),
    "2 workers": (
        {"FRESHINDEX_INGEST__EMBED_OVERLAP": "false", "OMP_NUM_THREADS": "1"},
        ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    ),
}


def run(files: Path, env_extra: dict, beam_args: list[str]) -> float:
    db = tempfile.mkdtemp(prefix="bench-overlap-")
    cmd = [sys.executable, "-m", "freshindex.pipelines.batch", "--source", str(files)]
    cmd += ["--db", db, "--table", "docs", *beam_args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **env_extra)
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(db, ignore_errors=True)
    if proc.returncode:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-2000:])
        raise SystemExit(f"ingest failed: {cmd}")
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--docs", type=int, default=500)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--only", nargs="+", choices=list(CASES))
    p.add_argument("--out", default=".bench/overlap-result.json")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-files-"))
    spec = prepare(Path(args.data), args.docs, tmp)
    cases = {k: v for k, v in CASES.items() if not args.only or k in args.only}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        for name in list(cases) if repeat % 2 == 0 else list(reversed(cases)):
            seconds[name].append(run(tmp, *cases[name]))
            print(f"  {name:10s} {seconds[name][-1]:7.1f}s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(seconds["sync"]) if "sync" in seconds else None
    summary = {}
    for name, runs in seconds.items():
        median = statistics.median(runs)
        summary[name] = {
            "seconds": runs,
            "median_s": median,
            "docs_per_s": spec["docs"] / median,
            "speedup_vs_sync": base / median if base else None,
        }
        speedup = f"{base / median:.2f}x" if base else "-"
        print(f"{name:10s} median {median:7.1f}s  {spec['docs'] / median:6.2f} docs/s  {speedup}")
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "docs": spec["docs"]}
    out["cases"] = summary
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
