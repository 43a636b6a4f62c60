"""Recompute the MTEB reproduction documented in docs/BENCHMARKS.md and compare.

SciFact test, dense retrieval, a document represented by its first chunk (MTEB's truncation
protocol), float32 encoder, a fresh table: the same as

    FRESHINDEX_EMBEDDING_DTYPE=float32 freshindex eval ../shared/data/scifact --split test \
        --modes vector --first-chunk-only

The documented figure is read from docs/BENCHMARKS.md (the ``mteb-first-chunk-float32``
marker), so the document and this check cannot disagree unnoticed: the script exits 1 when
the recomputed nDCG@10 differs from it by more than ``--tolerance`` (default 0.001) and says
by how much. About 3 minutes on 2 idle cores (10,317 chunks in float32 with ``auto``
= openvino-float32; ~10 minutes with torch).

    python scripts/check_mteb.py [--data ../shared/data/scifact] [--db DIR] [--tolerance 0.001]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
MARKER = re.compile(r"<!--\s*mteb-first-chunk-float32:\s*([0-9.]+)\s*-->")
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "scifact"
if not DEFAULT_DATA.exists():  # a worktree beside the main checkout
    DEFAULT_DATA = Path("/work/shared/data/scifact")
MTEB_PUBLISHED = 0.6451  # all-MiniLM-L6-v2 on SciFact, MTEB leaderboard


def documented_figure(path: Path = BENCHMARKS) -> float:
    """The nDCG@10 docs/BENCHMARKS.md gives for the first-chunk protocol in float32."""
    found = MARKER.search(path.read_text())
    if found is None:
        raise SystemExit(f"no <!-- mteb-first-chunk-float32: X --> marker in {path}")
    return float(found.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--db", help="database folder to (re)use; default: a fresh temporary one")
    p.add_argument("--tolerance", type=float, default=0.001)
    args = p.parse_args()

    from freshindex.config import load_config
    from freshindex.evaluation import run_eval
    from freshindex.pipelines.batch import configure_logging

    configure_logging()
    expected = documented_figure()
    db = args.db or tempfile.mkdtemp(prefix="check-mteb-")
    cfg = load_config(
        overrides={"db": db, "table": "scifact_f32", "embedding.dtype": "float32"}, environ={}
    )
    try:
        result = run_eval(cfg, args.data, split="test", modes=["vector"], first_chunk_only=True)
    finally:
        if not args.db:
            shutil.rmtree(db, ignore_errors=True)
    got = result["modes"]["vector"]["mean"]["ndcg@10"]
    delta = got - expected
    print(
        f"first-chunk protocol, float32: nDCG@10 {got:.4f}; documented {expected:.4f} "
        f"(delta {delta:+.4f}, tolerance {args.tolerance}); MTEB {MTEB_PUBLISHED} "
        f"(delta {got - MTEB_PUBLISHED:+.4f})"
    )
    if abs(delta) > args.tolerance:
        print("DRIFT: the documented figure no longer reproduces", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
