"""The ANN vector index of a chunks table: built once the table is large enough, its search
parameters tuned so that recall@10 against exact search meets the target, its state
recorded in ``ann_state`` (``freshindex.store.bookkeeping``) for the query plane."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from freshindex.config import MaintenanceConfig
from freshindex.store.bookkeeping import ann_search_params, last_ann_state

log = logging.getLogger(__name__)

# (nprobes, refine_factor) tried in order until the recall target is met
SEARCH_LADDER = ((20, None), (20, 5), (40, 10), (80, 20), (160, 40), (320, 80))

__all__ = [
    "SEARCH_LADDER",
    "ann_search_params",
    "ensure_ann_index",
    "last_ann_state",
    "measure_recall",
    "sample_vectors",
    "vector_index",
]


def vector_index(table):
    return next((ix for ix in table.list_indices() if list(ix.columns) == ["vector"]), None)


def _search_ids(table, vector, k: int, *, exact: bool, nprobes=None, refine=None) -> list[str]:
    q = table.search(vector, vector_column_name="vector").distance_type("cosine").limit(k)
    if exact:
        q = q.bypass_vector_index()
    else:
        if nprobes:
            q = q.nprobes(nprobes)
        if refine:
            q = q.refine_factor(refine)
    return [r["chunk_id"] for r in q.select(["chunk_id", "_distance"]).to_list()]


def sample_vectors(table, n: int, seed: int = 0) -> np.ndarray:
    """``n`` stored vectors picked at random: queries drawn from the table's own data."""
    rows = table.count_rows()
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(rows, size=min(n, rows), replace=False))
    ds = table.to_lance()
    vectors = ds.take(picks.tolist(), columns=["vector"]).column("vector")
    return np.stack(vectors.to_numpy(zero_copy_only=False))


def measure_recall(table, queries: np.ndarray, k: int = 10, nprobes=None, refine=None) -> float:
    """Mean recall@k of the ANN search against exact search for ``queries``."""
    hits = 0
    for q in queries:
        exact = set(_search_ids(table, q, k, exact=True))
        approx = set(_search_ids(table, q, k, exact=False, nprobes=nprobes, refine=refine))
        hits += len(exact & approx)
    return hits / (k * len(queries))


def ensure_ann_index(db, table, cfg: MaintenanceConfig) -> dict[str, Any]:
    rows = table.count_rows()
    existing = vector_index(table)
    if rows < cfg.ann_min_rows:
        return {"action": "exact search", "rows": rows}
    state = last_ann_state(db, table.name)
    grown = rows >= state.get("rows_at_build", rows) * cfg.ann_rebuild_growth
    action = "kept"
    if existing is None or grown or not state:
        dim = table.schema.field("vector").type.list_size
        # sqrt(rows) lists, but k-means needs ~256 training vectors per list
        partitions = max(1, min(int(math.sqrt(rows)), rows // 256))
        sub_vectors = dim // 8 if dim % 8 == 0 else dim // 4
        started = time.monotonic()
        table.create_index(
            metric="cosine",
            vector_column_name="vector",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            index_type="IVF_PQ",
            replace=True,
        )
        log.info(
            "built IVF_PQ(%d partitions) on %d rows in %.1fs",
            partitions,
            rows,
            time.monotonic() - started,
        )
        action = "rebuilt" if existing is not None else "built"
        state = {"rows_at_build": rows, "num_partitions": partitions, "index_type": "IVF_PQ"}
    queries = sample_vectors(table, cfg.ann_sample_queries)
    recall, nprobes, refine = 0.0, None, None
    for nprobes, refine in SEARCH_LADDER:
        recall = measure_recall(table, queries, 10, nprobes, refine)
        if recall >= cfg.ann_target_recall:
            break
    return {
        **state,
        "action": action,
        "rows": rows,
        "recall": recall,
        "nprobes": nprobes,
        "refine_factor": refine,
    }
