"""Optional reranking of retrieved candidates, behind one small interface (none by default).

A reranker gets the query, its vector, the fused candidates (best first) and a function that
returns the stored vectors of chunks, and returns the candidates in a new order. ``mmr``
(maximal marginal relevance) trades a little relevance for diversity, so that five near-copies
of one paragraph do not fill the top five.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from freshindex.errors import ConfigError
from freshindex.query.types import Hit

VectorLookup = Callable[[Sequence[str]], dict[str, np.ndarray]]


class Reranker(Protocol):
    name: str

    def rerank(
        self, query: str, query_vector: np.ndarray, hits: list[Hit], vectors: VectorLookup
    ) -> list[Hit]: ...


class MMRReranker:
    """Greedy MMR: each pick maximizes ``lam * relevance - (1 - lam) * max similarity`` to the
    chunks already picked; relevance is the candidate's fused rank turned into [0, 1]."""

    name = "mmr"

    def __init__(self, lam: float = 0.7):
        if not 0 <= lam <= 1:
            raise ConfigError(f"mmr lambda must be within [0, 1], got {lam}")
        self.lam = lam

    def rerank(
        self, query: str, query_vector: np.ndarray, hits: list[Hit], vectors: VectorLookup
    ) -> list[Hit]:
        if len(hits) < 3:
            return hits
        stored = vectors([h.chunk_id for h in hits])
        relevance = np.linspace(1.0, 0.0, len(hits), dtype=np.float32)
        remaining = list(range(len(hits)))
        picked: list[int] = []
        while remaining:
            best, best_value = remaining[0], -np.inf
            for i in remaining:
                vec = stored.get(hits[i].chunk_id)
                redundancy = 0.0
                if vec is not None and picked:
                    redundancy = max(
                        (
                            float(vec @ stored[hits[j].chunk_id])
                            for j in picked
                            if hits[j].chunk_id in stored
                        ),
                        default=0.0,
                    )
                value = self.lam * relevance[i] - (1 - self.lam) * redundancy
                if value > best_value:
                    best, best_value = i, value
            picked.append(best)
            remaining.remove(best)
        return [hits[i] for i in picked]


def get_reranker(name: str | None) -> Reranker | None:
    """The reranker named in config (``none``: no reranking)."""
    if name in (None, "", "none"):
        return None
    if name == "mmr":
        return MMRReranker()
    raise ConfigError(f"unknown reranker {name!r}", hint="retrieval.reranker: none | mmr")
