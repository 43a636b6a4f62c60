"""Unchanged re-run of a batch source: metadata change detection vs hashing every file.

    python scripts/bench_change_detection.py --files 2000 --repeats 3 [--s3]

Writes N small Markdown files (local folder, or a bucket on a moto server it starts with
--s3), ingests them once with the fake embedder, then times unchanged re-runs with
``ingest.change_detection: hash`` (every file read: the behaviour before) and ``metadata``.
Prints the median seconds and the source bytes read. Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from freshindex.config import load_config
from freshindex.pipelines.batch import run_ingest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fi-bench-"))
    docs = {
        f"d{i // 100}/doc{i}.md": f"# Doc {i}\n\nBody of document {i}. " * 3
        for i in range(args.files)
    }
    old = time.time() - 3600
    server = None
    if args.s3:
        import boto3

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.objectstore
        from tests.objectstore import _free_port, s3_environment

        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update(s3_environment(endpoint))
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        for rel, text in docs.items():
            s3.put_object(Bucket="bench", Key=f"docs/{rel}", Body=text.encode())
        time.sleep(3)
        source, db = "s3://bench/docs/", "s3://bench/lancedb"
    else:
        for rel, text in docs.items():
            path = work / "corpus" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            os.utime(path, (old, old))
        source, db = str(work / "corpus"), str(work / "lancedb")
    cfg = load_config(
        overrides={
            "db": db,
            "table": "docs",
            "embedding.model": "fake-hash",
            "maintenance.after_batch": False,
        }
    )
    t = time.perf_counter()
    run_ingest(cfg, source, [])
    print(f"first run: {time.perf_counter() - t:.1f}s")
    # records the listing metadata of racy objects (S3's fresh uploads), untimed
    run_ingest(cfg, source, [])
    for mode in ("hash", "metadata"):
        c = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, change_detection=mode))
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            row = run_ingest(c, source, [])
            times.append(time.perf_counter() - t)
            assert row["docs_skipped"] == args.files, row
        print(
            f"unchanged re-run, change_detection={mode}: median {statistics.median(times):.2f}s "
            f"of {[round(x, 2) for x in times]}"
        )
    if server is not None:
        server.terminate()


if __name__ == "__main__":
    main()
