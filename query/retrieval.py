"""Retrieval over a chunks table pinned to a known version: vector, full-text and hybrid.

* **vector**: cosine between the query, embedded with the model recorded in the table's
  metadata, and the stored normalized vectors. The ``memory`` engine holds the pinned
  version's vectors in RAM and scores them exactly with one matrix product
  (``freshindex.query.memory_index``); the ``lancedb`` engine uses LanceDB's vector search
  (an ANN index if the table has one). ``auto`` picks memory up to
  ``retrieval.memory_max_rows`` rows.
* **fts**: LanceDB's native BM25 full-text index on ``text`` (built by the write paths; rows
  written after it was built are scanned too, so FTS always sees the whole version).
* **hybrid**: weighted reciprocal rank fusion of both candidate lists
  (``freshindex.query.fusion``).

What to read is an ``IndexReader`` (a table; ``as_of`` picks the version, see
``freshindex.query.readers``) or a ``PinnedTable`` (one version, ``freshindex.query.pinning``).
Filters are structured (see ``freshindex.query.filters``); ``as_of`` takes a version, tag or
run id. Every hit carries its text, doc id, source, score and the table version it was read
from.

Example::

    reader = IndexReader.open("./data/lancedb", "docs")
    hits = retrieve(reader, "how do I set a timeout?", mode="hybrid", k=3,
                    filters=["content_type = text/markdown"], as_of="run-20250101T000000Z-abc123")
    batch = retrieve_batch(reader, ["first question", "second question"], mode="vector", k=10)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from freshindex.observability import metrics, tracing
from freshindex.query.config import RetrievalConfig
from freshindex.query.errors import QueryError
from freshindex.query.filters import parse_filters
from freshindex.query.fusion import fuse, rank_hits
from freshindex.query.pinning import PinnedTable, embed_queries
from freshindex.query.readers import IndexReader, ReaderCache
from freshindex.query.rerank import Reranker, get_reranker
from freshindex.query.types import MODES, Hit

Source = IndexReader | PinnedTable  # what to read: a table (any version) or one version

__all__ = [
    "IndexReader",
    "PinnedTable",
    "ReaderCache",
    "Source",
    "embed_queries",
    "fuse",
    "retrieve",
    "retrieve_batch",
    "vector_search",
]


def _check(mode: str, k: int) -> None:
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")


def _pinned(source: Source, as_of: str | int | None) -> PinnedTable:
    if not isinstance(source, IndexReader | PinnedTable):
        raise QueryError(
            f"retrieval reads an IndexReader or a PinnedTable, got {type(source).__name__}",
            hint="IndexReader.open(db_uri, table) for a table, "
            "PinnedTable.checked_out(handle) for a LanceDB table handle",
        )
    return source.pinned(as_of)


def retrieve_batch(
    source: Source,
    queries: Sequence[str],
    mode: str | None = None,
    k: int | None = None,
    filters: Any = None,
    as_of: str | int | None = None,
    *,
    weights: dict[str, float] | None = None,
    rrf_k: int | None = None,
    candidates: int | None = None,
    reranker: str | Reranker | None = None,
    query_vectors: np.ndarray | None = None,
    config: RetrievalConfig | None = None,
) -> list[list[Hit]]:
    """``retrieve`` for many queries: one pinned read, queries embedded in one batch and,
    with the memory engine, scored with one matrix product per 64 queries."""
    pinned = _pinned(source, as_of)
    cfg = config or source.config
    mode = mode or cfg.mode
    k = cfg.k if k is None else k
    _check(mode, k)
    parsed = parse_filters(filters)
    if reranker is None or isinstance(reranker, str):
        ranker = get_reranker(cfg.reranker if reranker is None else reranker)
    else:
        ranker = reranker
    candidates = cfg.candidates if candidates is None else candidates
    n = max(k, candidates) if (ranker or mode == "hybrid") else k
    fts: list = [None] * len(queries)
    if mode == "fts":
        fts = [pinned.fts_candidates(q, n, parsed) for q in queries]
    elif mode == "hybrid":  # overlap the FTS side with embedding and vector scoring
        fts = [pinned.fts_candidates_async(q, n, parsed) for q in queries]
    vectors = None
    vector_cands: list = [None] * len(queries)
    if mode in ("vector", "hybrid") and queries:
        vectors = pinned.embed(queries) if query_vectors is None else np.asarray(query_vectors)
        vector_cands = pinned.vector_candidates(vectors, n, parsed)
    if mode == "hybrid":
        fts = [f.result() for f in fts]
    return [
        rank_hits(
            pinned,
            query,
            None if vectors is None else vectors[i],
            vector_cands[i],
            fts[i],
            mode=mode,
            k=k,
            weights={**cfg.weights, **(weights or {})},
            rrf_k=cfg.rrf_k if rrf_k is None else rrf_k,
            reranker=ranker,
        )
        for i, query in enumerate(queries)
    ]


def retrieve(
    source: Source,
    query: str,
    mode: str | None = None,
    k: int | None = None,
    filters: Any = None,
    as_of: str | int | None = None,
    **kwargs,
) -> list[Hit]:
    """Search a chunks table; returns up to ``k`` hits, best first (a ``Scanned`` list: its
    ``scan_capped`` is True when a metadata filter's scan stopped at
    ``retrieval.max_scan_rows``).

    ``source`` is an ``IndexReader`` (reads version ``as_of``, default the newest) or a
    ``PinnedTable`` (reads its version; ``as_of`` must name it); reuse one across queries.
    ``mode``: vector | fts | hybrid (default from config). ``filters``: see
    ``freshindex.query.filters``. ``as_of``: version number, tag or run id. Keyword options:
    ``weights`` ({"vector": w, "fts": w}), ``rrf_k``, ``candidates`` (per mode before
    fusion), ``reranker`` ("mmr" or a Reranker), ``query_vector``/``query_vectors`` (skip
    embedding), ``config``.
    """
    vector = kwargs.pop("query_vector", None)
    if vector is not None:
        kwargs["query_vectors"] = np.asarray(vector, np.float32)[None, :]
    mode = mode or (kwargs.get("config") or source.config).mode
    started = time.perf_counter()
    with tracing.span("freshindex.retrieval", mode=mode, k=k) as span:
        hits = retrieve_batch(source, [query], mode, k, filters, as_of, **kwargs)[0]
        tracing.set_attributes(span, hits=len(hits))
    metrics.observe_query(mode, time.perf_counter() - started)
    return hits


def vector_search(
    db_uri: str,
    table: str,
    question: str,
    k: int = 5,
    as_of: str | int | None = None,
    *,
    readers: ReaderCache | None = None,
) -> list[Hit]:
    """Cosine search with the model recorded in the table's metadata (kept for old callers).
    Pass a ``ReaderCache`` to reuse the opened table across calls."""
    if readers is not None:
        return retrieve(readers.reader(db_uri, table), question, "vector", k, as_of=as_of)
    with IndexReader.open(db_uri, table) as reader:
        return retrieve(reader, question, "vector", k, as_of=as_of)
