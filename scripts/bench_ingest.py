"""Benchmark: batch ingestion of BEIR SciFact (5,183 abstracts) on this machine.

For each repetition, measured in the same run so machine noise hits both alike:

- ceiling: plain ``SentenceTransformer.encode`` of exactly the chunk texts the pipeline
  produces (same model, batch size, normalization) plus one LanceDB table write;
- pipeline: ``freshindex ingest corpus.jsonl`` end to end in a fresh process (Beam start,
  model load, parse, chunk, embed, stage, commit, indexes), into an empty database;
- re-run: the same command again, unchanged (incremental: nothing embedded).

Reports medians, the pipeline/ceiling ratio (goal >= 0.8), the re-run/first-run time
ratio (goal <= 0.05) and the pipeline's peak memory.

    python scripts/bench_ingest.py [--corpus ../shared/data/scifact/corpus.jsonl] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def chunk_texts(corpus: Path, limit: int | None, cfg) -> list[str]:
    from freshindex.embedding import get_embedder
    from freshindex.transforms.chunk import chunk_document
    from freshindex.transforms.parse import parse_document
    from freshindex.transforms.read import ref_from_record

    embedder = get_embedder(cfg.embedding)
    texts = []
    with corpus.open() as handle:
        for i, line in enumerate(handle):
            if limit is not None and i >= limit:
                break
            ref = ref_from_record(line, str(corpus))
            doc = parse_document(ref, None, cfg.parsing)
            texts.extend(c.text for c in chunk_document(doc, cfg.chunking, embedder))
    return texts


def ceiling(texts: list[str], cfg, workdir: Path) -> float:
    """Seconds for encode + one table write of ``texts`` (model already loaded)."""
    import lancedb
    import pyarrow as pa

    from freshindex.embedding import get_embedder

    embedder = get_embedder(cfg.embedding)
    started = time.perf_counter()
    vectors = embedder.encode(texts)
    table = pa.table(
        {
            "text": texts,
            "vector": pa.FixedSizeListArray.from_arrays(
                pa.array(vectors.reshape(-1)), vectors.shape[1]
            ),
        }
    )
    db = lancedb.connect(str(workdir / "ceiling"))
    db.create_table("t", table, mode="overwrite")
    return time.perf_counter() - started


def run_cli(corpus: Path, db: Path, extra: list[str]) -> tuple[float, dict, int]:
    """(wall seconds, manifest row, peak RSS in MB of the child) for one ingest process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "freshindex.cli",
            "ingest",
            str(corpus),
            "--db",
            str(db),
            "--table",
            "scifact",
            "--json",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row = json.loads(out.stdout[out.stdout.index("{") :])
    return wall, row, max(peak, before) // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path(os.environ.get("FRESHINDEX_SCIFACT_CORPUS", DEFAULT_CORPUS)),
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N records only")
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    args = parser.parse_args()
    if not args.corpus.exists():
        print(f"skip: corpus {args.corpus} not found (set --corpus)")
        return 0

    from freshindex.config import load_config
    from freshindex.runtime import prepare_offline

    prepare_offline()
    cfg = load_config(environ={})
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    corpus = args.corpus
    if args.limit:
        corpus = work / "corpus.jsonl"
        with args.corpus.open() as src, corpus.open("w") as dst:
            for i, line in enumerate(src):
                if i >= args.limit:
                    break
                dst.write(line)
    texts = chunk_texts(corpus, None, cfg)
    print(
        f"corpus: {corpus} -> {len(texts)} chunks (chunking.max_tokens="
        f"{cfg.chunking.max_tokens}); {args.runs} runs",
        flush=True,
    )
    results = []
    for rep in range(args.runs):
        ceil_s = ceiling(texts, cfg, work)
        db = work / f"db{rep}"
        first_s, first_row, peak_mb = run_cli(corpus, db, [])
        rerun_s, rerun_row, _ = run_cli(corpus, db, [])
        assert first_row["chunks_embedded"] == len(texts), (first_row, len(texts))
        assert rerun_row["chunks_embedded"] == 0
        r = {
            "ceiling_chunks_per_s": len(texts) / ceil_s,
            "pipeline_chunks_per_s": len(texts) / first_s,
            "ratio": ceil_s / first_s,
            "first_run_s": first_s,
            "rerun_s": rerun_s,
            "rerun_ratio": rerun_s / first_s,
            "peak_rss_mb": peak_mb,
        }
        results.append(r)
        print(f"run {rep + 1}: " + ", ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
        shutil.rmtree(db, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    summary = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "corpus": str(args.corpus),
        "documents": sum(1 for _ in corpus.open()),
        "chunks": len(texts),
        "runs": args.runs,
        "median": med,
        "all": results,
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
