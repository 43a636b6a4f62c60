"""From candidates to hits: weighted reciprocal rank fusion, optional reranking, ranks.

Hybrid search fuses the vector and full-text candidate lists with
``score = sum(weight_mode / (rrf_k + rank_mode))``; every hit keeps its per-mode raw scores
(``vector_score``, ``fts_score``) as the evidence behind the fused one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from freshindex.query.rerank import Reranker
from freshindex.query.types import Hit, Scanned

if TYPE_CHECKING:
    from freshindex.query.pinning import PinnedTable

Candidates = list[tuple[dict, float]]  # (row, raw score), best first


def fuse(
    ranked: dict[str, Candidates],
    *,
    weights: dict[str, float],
    rrf_k: int,
) -> list[tuple[dict, float, dict[str, float]]]:
    """Weighted reciprocal rank fusion: (row, fused score, {mode: raw score}), best first."""
    fused: dict[str, list] = {}
    for mode, items in ranked.items():
        weight = float(weights.get(mode, 1.0))
        for rank, (row, score) in enumerate(items, start=1):
            entry = fused.setdefault(row["chunk_id"], [row, 0.0, {}])
            entry[1] += weight / (rrf_k + rank)
            entry[2][mode] = score
    ordered = sorted(fused.values(), key=lambda e: (-e[1], e[0]["chunk_id"]))
    return [(row, score, raw) for row, score, raw in ordered]


def rank_hits(
    pinned: PinnedTable,
    query: str,
    vector: np.ndarray | None,
    vector_cands: Candidates | None,
    fts_cands: Candidates | None,
    *,
    mode: str,
    k: int,
    weights: dict[str, float],
    rrf_k: int,
    reranker: Reranker | None,
) -> Scanned:
    """The ``k`` best hits of one query from its candidates (fused in hybrid mode, reranked
    when a reranker is given), ranked from 1; ``scan_capped`` if a candidate list was."""
    if mode == "vector":
        scored = [(r, s, {"vector": s}) for r, s in vector_cands or []]
    elif mode == "fts":
        scored = [(r, s, {"fts": s}) for r, s in fts_cands or []]
    else:
        scored = fuse(
            {"vector": vector_cands or [], "fts": fts_cands or []}, weights=weights, rrf_k=rrf_k
        )
    if reranker is None:
        scored = scored[:k]
    hits = [
        Hit.from_row(
            row,
            score,
            pinned.version,
            mode,
            vector_score=raw.get("vector"),
            fts_score=raw.get("fts"),
        )
        for row, score, raw in scored
    ]
    if reranker is not None and hits:
        qv = vector if vector is not None else pinned.embed([query])[0]
        hits = reranker.rerank(query, qv, hits, pinned.vectors_for)
    capped = any(getattr(c, "scan_capped", False) for c in (vector_cands, fts_cands))
    return Scanned.of([replace(h, rank=i) for i, h in enumerate(hits[:k], start=1)], capped)
