"""What a query reads: a chunks table pinned to one version (``PinnedTable``).

A ``PinnedTable`` is one table version with what searching it needs: the model recorded in
the table's metadata, the in-RAM index, the tuned ANN parameters, and candidate generation
(vector and full-text, with metadata filters applied to a bounded scan). Immutable once
built, so threads share it and every query on it reads the same version. Readers that pin
versions by number, tag or run id are in ``freshindex.query.readers``; a raw LanceDB table
handle is pinned explicitly with ``PinnedTable.checked_out(table)``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.query.config import RetrievalConfig
from freshindex.query.errors import QueryError
from freshindex.query.filters import Filter, matches_row, split, to_expr, to_where
from freshindex.query.memory_index import MemoryIndex
from freshindex.query.threads import SMALL_BATCH, one_torch_thread
from freshindex.query.types import HIT_COLUMNS, Hit, Scanned, parse_metadata
from freshindex.schemas.tables import table_metadata

log = logging.getLogger(__name__)

FTS_THREADS = 2  # hybrid search runs its full-text side on these while it embeds and scores


def embed_queries(embedder, queries: Sequence[str]) -> np.ndarray:
    """Normalized float32 query vectors from ``embedder`` (the table's model)."""
    with one_torch_thread(len(queries) <= SMALL_BATCH):
        vectors = np.asarray(embedder.encode(list(queries)), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


class FtsPool:
    """A thread pool started on first use and shut down by its owner."""

    def __init__(self):
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn, *args) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FTS_THREADS, thread_name_prefix="freshindex-fts")
            return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class PinnedTable:
    """A chunks table checked out at one version, with what searching it needs.

    Immutable once built: every search on it reads the same version, so it can be shared
    by threads and reused across queries (open it once for a 300-query evaluation).
    """

    def __init__(
        self,
        table,
        version: int,
        *,
        config: RetrievalConfig | None = None,
        embedding: EmbeddingConfig | None = None,
        embedder=None,
        read_ann_params: Callable[[], dict[str, Any]] | None = None,
        previous: PinnedTable | None = None,
        fts_pool: FtsPool | None = None,
    ):
        self.table = table
        # an earlier version's in-RAM index, to build this one from (only its index is kept,
        # not the PinnedTable, so versions never chain)
        self._previous_memory = previous._memory if previous is not None else None
        self.name = table.name
        # reads the nprobes / refine_factor that upkeep tuned for the ANN index (lancedb
        # engine only): called on the first ANN search, so pinning a version (every commit
        # of a stream) does not read the runs table
        self._read_ann_params = read_ann_params
        self._ann_params: dict[str, Any] | None = None
        self.version = int(version)
        self.config = config or RetrievalConfig()
        meta = table_metadata(table.schema)
        base = embedding or EmbeddingConfig()
        self.model = meta.get("embedding_model") or base.model
        if embedder is not None and getattr(embedder, "model_name", self.model) != self.model:
            # a reader's embedder for another table (an alias switched to a table of another
            # model): queries must be embedded with this table's recorded model
            embedder = None
        if embedder is None and base.model != self.model:
            log.info("table %s holds %s vectors; queries use it", self.name, self.model)
        self._embedding = replace(base, model=self.model)
        self._embedder = embedder
        self._memory: MemoryIndex | None = None
        self._lock = threading.Lock()
        self._rows: int | None = None
        self._fts_pool = fts_pool or FtsPool()  # a reader's, or this table's own
        # a caller's view (``restricted``): the access condition every read adds, and the
        # unrestricted table whose in-RAM index and ANN parameters it shares
        self.access: Any = None
        self._visible: tuple[Filter, ...] = ()
        self._sees_nothing = False
        self._base: PinnedTable | None = None

    def restricted(self, access, hidden_docs: Sequence[str] = ()) -> PinnedTable:
        """This version as ``access`` (``freshindex.query.access.Access``) may read it: every
        candidate list, listing and lookup is filtered by the caller's labels before
        ranking; ``hidden_docs`` are left out too (an as-of read's documents whose labels
        no longer admit the caller). Shares this table's in-RAM index; cheap, so built per
        request."""
        base = self._base or self
        view = copy.copy(base)
        view._base, view.access = base, access
        visible, view._sees_nothing = access.conditions(base.table.schema)
        if hidden_docs:  # built directly: the list may be longer than a caller's filter
            visible = (*visible, Filter("doc_id", "not_in", tuple(sorted(hidden_docs))))
        view._visible = visible
        return view

    def _with_access(self, filters: Sequence[Filter]) -> tuple[Filter, ...]:
        return (*filters, *self._visible)

    @classmethod
    def checked_out(cls, table, *, config: RetrievalConfig | None = None) -> PinnedTable:
        """A LanceDB table handle read at the version it has checked out."""
        return cls(table, table.version, config=config)

    def pinned(self, as_of: str | int | None = None) -> PinnedTable:
        """Itself; ``as_of`` must name this version (a reader pins other versions)."""
        if as_of is not None and store.resolve_version(self.table, as_of) != self.version:
            raise QueryError(
                f"this PinnedTable reads version {self.version}, not {as_of!r}",
                hint="pass an IndexReader to read other versions",
            )
        return self

    @property
    def ann_params(self) -> dict[str, Any]:
        if self._base is not None:
            return self._base.ann_params
        if self._ann_params is None:
            self._ann_params = self._read_ann_params() if self._read_ann_params else {}
        return self._ann_params

    # ---- embedding

    @property
    def embedder(self):
        if self._base is not None:
            return self._base.embedder
        if self._embedder is None:
            from freshindex.embedding import get_embedder

            self._embedder = get_embedder(self._embedding)
        return self._embedder

    def embed(self, queries: Sequence[str]) -> np.ndarray:
        return embed_queries(self.embedder, queries)

    # ---- facts

    @property
    def num_rows(self) -> int:
        if self._rows is None:
            self._rows = self.table.count_rows()
        return self._rows

    @property
    def vector_engine(self) -> str:
        engine = self.config.vector_engine
        if engine == "auto":
            engine = "memory" if self.num_rows <= self.config.memory_max_rows else "lancedb"
        return engine

    def memory(self) -> MemoryIndex:
        if self._base is not None:
            return self._base.memory()
        with self._lock:
            if self._memory is None:
                self._memory = MemoryIndex(self.table, self._previous_memory)
                self._previous_memory = None
            return self._memory

    def warm_up(self) -> PinnedTable:
        """Load what the first query would (the model; the vectors for the memory engine)."""
        self.embedder  # noqa: B018 - loads the model
        if self.vector_engine == "memory":
            self.memory()
        return self

    def vectors_for(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
        # of candidates already read through the access condition (the reranker's)
        if self._base is not None:
            return self._base.vectors_for(chunk_ids)
        if self._memory is not None:
            mem = self._memory
            return {c: mem.vectors[mem.position[c]] for c in chunk_ids if c in mem.position}
        if not chunk_ids:
            return {}
        rows = (
            self.table.search()
            .where(to_expr([Filter("chunk_id", "in", tuple(chunk_ids))]))
            .select(["chunk_id", "vector"])
            .limit(None)
            .to_arrow()
        )
        return {
            cid: np.asarray(vec, np.float32)
            for cid, vec in zip(rows["chunk_id"].to_pylist(), rows["vector"].to_pylist())
        }

    # ---- candidate generation: (row, score) lists, best first

    def vector_candidates(
        self, query_vectors: np.ndarray, n: int, filters: Sequence[Filter]
    ) -> list[list[tuple[dict, float]]]:
        if self._sees_nothing:
            return [[] for _ in query_vectors]
        filters = self._with_access(filters)
        if self.vector_engine == "memory":
            mem = self.memory()
            mask = mem.mask(filters)
            return [
                list(zip(mem.rows(positions), map(float, scores)))
                for positions, scores in mem.top(query_vectors, n, mask)
            ]

        def run(vector, fetch, expr):
            q = self.table.search(vector, vector_column_name="vector").distance_type("cosine")
            if self.ann_params.get("nprobes"):
                q = q.nprobes(int(self.ann_params["nprobes"]))
            if self.ann_params.get("refine_factor"):
                q = q.refine_factor(int(self.ann_params["refine_factor"]))
            if expr is not None:
                q = q.where(expr, prefilter=True)
            data = q.select([*HIT_COLUMNS, "_distance"]).limit(fetch).to_arrow()
            return [(r, 1.0 - float(r.pop("_distance"))) for r in data.to_pylist()]

        cap = self.config.max_scan_rows
        return [
            scan_filtered(lambda fetch, e, v=v: run(v, fetch, e), n, filters, cap)
            for v in query_vectors
        ]

    def fts_candidates(
        self, query: str, n: int, filters: Sequence[Filter]
    ) -> list[tuple[dict, float]]:
        from lancedb.query import MatchQuery

        if not query.strip() or self._sees_nothing:
            return []
        filters = self._with_access(filters)
        base = self._base or self
        mem = base._memory  # loaded: take the rows from RAM, read only ids and scores

        def run(fetch, expr):
            q = self.table.search(MatchQuery(query, store.FTS_COLUMN), query_type="fts")
            if expr is not None:
                q = q.where(expr, prefilter=True)
            if mem is not None:
                data = q.select(["chunk_id", "_score"]).limit(fetch).to_arrow()
                positions = [mem.position[c] for c in data["chunk_id"].to_pylist()]
                return list(zip(mem.rows(positions), data["_score"].to_pylist()))
            data = q.select([*HIT_COLUMNS, "_score"]).limit(fetch).to_arrow()
            return [(r, float(r.pop("_score"))) for r in data.to_pylist()]

        return scan_filtered(run, n, filters, self.config.max_scan_rows)

    def fts_candidates_async(self, query: str, n: int, filters: Sequence[Filter]) -> Future:
        """``fts_candidates`` on the owner's FTS threads (hybrid search overlaps it with
        embedding and vector scoring on the calling thread)."""
        return self._fts_pool.submit(self.fts_candidates, query, n, filters)

    # ---- the agent's tools read through these

    def rows_where(self, filters: Sequence[Filter], limit: int | None = None) -> Scanned:
        """Chunks matching ``filters`` (no query), in document and chunk order, from at most
        ``retrieval.max_scan_rows`` rows read (``scan_capped`` says when that stopped it)."""
        if self._sees_nothing:
            return Scanned.of([], False)
        columns, meta = split(self._with_access(filters))
        expr = to_where(columns)
        q = self.table.search()
        if expr is not None:
            q = q.where(expr)
        cap = self.config.max_scan_rows
        rows = q.select(list(HIT_COLUMNS)).limit(cap).to_arrow().to_pylist()
        capped = len(rows) >= cap
        if meta:
            rows = [r for r in rows if matches_row(parse_metadata(r["metadata"]), meta)]
        rows.sort(key=lambda r: (r["doc_id"], r["chunk_index"] or 0))
        return Scanned.of(rows if limit is None else rows[:limit], capped)

    def hit(self, row: dict, score: float, mode: str, **extra) -> Hit:
        return Hit.from_row(row, score, self.version, mode, **extra)


def scan_filtered(run, n: int, filters: Sequence[Filter], max_scan: int) -> Scanned:
    """Call ``run(fetch, expr)`` with the column filters pushed down; apply metadata filters
    to the results, fetching 4x more until ``n`` pass, the candidates run out, or ``max_scan``
    rows were fetched: a metadata filter that matches nothing must not read the whole table
    (the result is then ``scan_capped``)."""
    columns, meta = split(filters)
    expr = to_where(columns)
    if not meta:
        return Scanned(run(n, expr))
    fetch = min(max(4 * n, 40), max_scan)
    while True:
        got = run(fetch, expr)
        kept = [(r, s) for r, s in got if matches_row(parse_metadata(r.get("metadata")), meta)]
        if len(kept) >= n or len(got) < fetch:
            return Scanned(kept[:n])
        if fetch >= max_scan:
            return Scanned.of(kept[:n], scan_capped=True)
        fetch = min(fetch * 4, max_scan)
