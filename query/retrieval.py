"""Retrieval over a chunks table pinned to a known version: vector, full-text and hybrid.

* **vector**: cosine between the query, embedded with the model recorded in the table's
  metadata, and the stored normalized vectors. The ``memory`` engine holds the pinned
  version's vectors in RAM and scores them exactly with one matrix product (a few ms at 100k
  chunks); the ``lancedb`` engine uses LanceDB's vector search (an ANN index if the table has
  one). ``auto`` picks memory up to ``retrieval.memory_max_rows`` rows.
* **fts**: LanceDB's native BM25 full-text index on ``text`` (built by the write paths; rows
  written after it was built are scanned too, so FTS always sees the whole version).
* **hybrid**: weighted reciprocal rank fusion of both candidate lists,
  ``score = sum(weight_mode / (rrf_k + rank_mode))``.

Filters are structured (see ``freshindex.query.filters``); ``as_of`` takes a version, tag or run id.
Every hit carries its text, doc id, source, score and the table version it was read from.

Example::

    reader = IndexReader.open("./data/lancedb", "docs")
    hits = retrieve(reader, "how do I set a timeout?", mode="hybrid", k=3,
                    filters=["content_type = text/markdown"], as_of="run-20250101T000000Z-abc123")
    batch = retrieve_batch(reader, ["first question", "second question"], mode="vector", k=10)
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.query.config import RetrievalConfig
from freshindex.query.errors import QueryError
from freshindex.query.filters import Filter, arrow_mask, matches_row, parse_filters, split, to_expr
from freshindex.query.rerank import Reranker, get_reranker
from freshindex.query.types import MODES, Hit, Scanned, parse_metadata
from freshindex.schemas.tables import table_metadata

log = logging.getLogger(__name__)

HIT_COLUMNS = (
    "chunk_id",
    "doc_id",
    "chunk_index",
    "text",
    "title",
    "section",
    "page_number",
    "source_uri",
    "content_type",
    "metadata",
)
# Held in RAM by the memory engine beside the vectors: what hits and filters read.
_MEMORY_COLUMNS = (
    *HIT_COLUMNS,
    "token_count",
    "run_id",
    "embedding_model",
    "modified_at",
    "indexed_at",
)
MAX_QUERY_BATCH = 64  # queries scored together in one matrix product
_module_lock = threading.Lock()


# ---------------------------------------------------------------- query embedding

SMALL_BATCH = 8  # up to this many queries are embedded on one torch thread


@contextlib.contextmanager
def _one_torch_thread(active: bool):
    """One torch thread for a few short queries: intra-op threads gain nothing on ~10 tokens,
    and on a busy 2-core machine their spin-waits cost 300 ms instead of 17 ms a query
    (measured with all-MiniLM-L6-v2). Batches keep torch's own setting."""
    torch = sys.modules.get("torch") if active else None  # never import torch for this
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_queries(embedder, queries: Sequence[str]) -> np.ndarray:
    """Normalized float32 query vectors from ``embedder`` (the table's model)."""
    with _one_torch_thread(len(queries) <= SMALL_BATCH):
        vectors = np.asarray(embedder.encode(list(queries)), dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1.0, norms)


# ---------------------------------------------------------------- the memory engine

_blas_libs: list[tuple[object, int]] | None = None  # (controller, its configured threads)
_scan_lock = threading.Lock()


@contextlib.contextmanager
def _single_blas_thread():
    """One BLAS thread for the scan: it is memory-bound, and a second OpenBLAS thread on a
    busy 2-core machine costs a scheduler tick to wake (8 ms instead of 0.7 ms at 10k rows).
    Scans take turns (they would only compete for memory bandwidth); the setting is restored
    after each, so other BLAS users of the process keep theirs."""
    global _blas_libs
    with _scan_lock:
        if _blas_libs is None:
            try:  # installed with scikit-learn, which sentence-transformers depends on
                from threadpoolctl import ThreadpoolController

                libs = ThreadpoolController().select(user_api="blas").lib_controllers
                _blas_libs = [(lib, lib.get_num_threads()) for lib in libs]
            except ImportError:
                _blas_libs = []
        for lib, _ in _blas_libs:
            lib.set_num_threads(1)
        try:
            yield
        finally:
            for lib, threads in _blas_libs:
                lib.set_num_threads(threads)


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    vectors = column.combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(
        flat.reshape(len(vectors), vectors.type.list_size), dtype=np.float32
    )


def _fragments(table) -> list[tuple[Any, tuple]]:
    """(fragment, key) of the checked-out version, in scan order. Two versions hold the same
    rows in a fragment exactly when its key (id, data files, deletion file) is the same."""
    out = []
    for fragment in table.to_lance().get_fragments():
        meta = fragment.metadata
        deletion = meta.deletion_file
        files = tuple(f.path for f in meta.data_files())
        out.append((fragment, (meta.id, files, None if deletion is None else deletion.id)))
    return out


class _MemoryIndex:
    """One pinned version's rows in RAM: a float32 matrix of vectors plus the hit columns.

    Built from ``previous`` (an earlier version's index of the same table) where it can:
    fragments that did not change between the versions are copied from it, and only new or
    changed fragments are read. A stream commits every second or so, and each commit adds
    a fragment or two; reading only those makes a new version's index cheap (measured in
    docs/QUERY.md).
    """

    def __init__(self, table, previous: _MemoryIndex | None = None):
        names = [c for c in _MEMORY_COLUMNS if c in table.schema.names]
        self.schema = table.schema
        self.fragments: dict[tuple, tuple[int, int]] = {}  # key -> [start, stop) rows
        self.rows_read = self.rows_reused = 0
        known = previous.fragments if previous and previous.schema == self.schema else {}
        vectors: list[np.ndarray] = []
        columns: list[pa.Table] = []
        start = 0
        for fragment, key in _fragments(table):
            if key in known:
                a, b = known[key]
                vectors.append(previous.vectors[a:b])
                columns.append(previous.columns.slice(a, b - a))
                self.rows_reused += b - a
            else:
                data = fragment.to_table(columns=[*names, "vector"])
                vectors.append(_matrix(data.column("vector")))
                columns.append(data.drop_columns(["vector"]))
                self.rows_read += data.num_rows
            self.fragments[key] = (start, start + len(vectors[-1]))
            start += len(vectors[-1])
        if not vectors:  # an empty table: its schema, no rows
            data = table.search().select([*names, "vector"]).limit(None).to_arrow()
            vectors.append(_matrix(data.column("vector")))
            columns.append(data.drop_columns(["vector"]))
        self.vectors = np.concatenate(vectors) if len(vectors) > 1 else vectors[0]
        self.columns = pa.concat_tables(columns).combine_chunks()  # fast take()
        self.position = {
            cid: i for i, cid in enumerate(self.columns.column("chunk_id").to_pylist())
        }
        self._metadata: list[dict] | None = None
        self._masks: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def num_rows(self) -> int:
        return self.columns.num_rows

    def metadata(self) -> list[dict]:
        with self._lock:
            if self._metadata is None:
                raw = self.columns.column("metadata").to_pylist()
                self._metadata = [parse_metadata(m) for m in raw]
            return self._metadata

    def mask(self, filters: Sequence[Filter]) -> np.ndarray | None:
        """Rows passing ``filters``; the last 32 masks are kept (a metadata filter walks
        every row in Python, ~50 ms at 100k rows, so repeating it per query would hurt)."""
        if not filters:
            return None
        key = tuple(filters)
        with self._lock:
            found = self._masks.get(key)
            if found is not None:
                self._masks.move_to_end(key)
                return found
        needs_meta = any(f.is_metadata for f in filters)
        mask = arrow_mask(self.columns, filters, self.metadata() if needs_meta else None)
        with self._lock:
            self._masks[key] = mask
            while len(self._masks) > 32:
                self._masks.popitem(last=False)
        return mask

    def top(self, query_vectors: np.ndarray, n: int, mask: np.ndarray | None):
        """Per query: (positions, cosine scores), best first, among the rows in ``mask``."""
        allowed = None if mask is None else np.flatnonzero(mask)
        if allowed is not None and len(allowed) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in query_vectors]
        # A selective filter scores only its rows (copying them is cheaper than scoring all);
        # a broad one scores every row and drops the others (no copy of most of the matrix).
        subset = allowed is not None and len(allowed) * 3 < self.num_rows
        matrix = self.vectors[allowed] if subset else self.vectors
        out = []
        for start in range(0, len(query_vectors), MAX_QUERY_BATCH):
            with _single_blas_thread():
                scores = query_vectors[start : start + MAX_QUERY_BATCH] @ matrix.T
            for row in np.atleast_2d(scores):
                if allowed is not None and not subset:
                    row = np.where(mask, row, -np.inf)
                    limit = len(allowed)
                else:
                    limit = row.shape[0]
                take = min(n, limit)
                part = np.argpartition(-row, take - 1)[:take]
                part = part[np.lexsort((part, -row[part]))]  # by score, then position
                positions = allowed[part] if subset else part
                out.append((positions, row[part]))
        return out

    def rows(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        picked = self.columns.take(pa.array(positions, pa.int64()))
        return picked.select([c for c in HIT_COLUMNS if c in picked.schema.names]).to_pylist()


# ---------------------------------------------------------------- pinned table


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
        if embedder is None and base.model != self.model:
            log.info("table %s holds %s vectors; queries use it", self.name, self.model)
        self._embedding = replace(base, model=self.model)
        self._embedder = embedder
        self._memory: _MemoryIndex | None = None
        self._lock = threading.Lock()
        self._rows: int | None = None

    @property
    def ann_params(self) -> dict[str, Any]:
        if self._ann_params is None:
            self._ann_params = self._read_ann_params() if self._read_ann_params else {}
        return self._ann_params

    # ---- embedding

    @property
    def embedder(self):
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

    def memory(self) -> _MemoryIndex:
        with self._lock:
            if self._memory is None:
                self._memory = _MemoryIndex(self.table, self._previous_memory)
                self._previous_memory = None
            return self._memory

    def warm_up(self) -> PinnedTable:
        """Load what the first query would (the model; the vectors for the memory engine)."""
        self.embedder  # noqa: B018 - loads the model
        if self.vector_engine == "memory":
            self.memory()
        return self

    def vectors_for(self, chunk_ids: Sequence[str]) -> dict[str, np.ndarray]:
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
            _filtered(lambda fetch, e, v=v: run(v, fetch, e), n, filters, cap)
            for v in query_vectors
        ]

    def fts_candidates(
        self, query: str, n: int, filters: Sequence[Filter]
    ) -> list[tuple[dict, float]]:
        from lancedb.query import MatchQuery

        if not query.strip():
            return []

        mem = self._memory  # loaded: take the rows from RAM, read only ids and scores

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

        return _filtered(run, n, filters, self.config.max_scan_rows)

    # ---- the agent's tools read through these

    def rows_where(self, filters: Sequence[Filter], limit: int | None = None) -> Scanned:
        """Chunks matching ``filters`` (no query), in document and chunk order, from at most
        ``retrieval.max_scan_rows`` rows read (``scan_capped`` says when that stopped it)."""
        columns, meta = split(filters)
        expr = to_expr(columns) if columns else None
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
        return _to_hit(row, score, self.version, mode, **extra)


def _filtered(run, n: int, filters: Sequence[Filter], max_scan: int) -> Scanned:
    """Call ``run(fetch, expr)`` with the column filters pushed down; apply metadata filters
    to the results, fetching 4x more until ``n`` pass, the candidates run out, or ``max_scan``
    rows were fetched: a metadata filter that matches nothing must not read the whole table
    (the result is then ``scan_capped``)."""
    columns, meta = split(filters)
    expr = to_expr(columns) if columns else None
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


def _to_hit(row: dict, score: float, version: int, mode: str, **extra) -> Hit:
    return Hit(
        chunk_id=row["chunk_id"],
        doc_id=row["doc_id"],
        text=row["text"],
        source_uri=row.get("source_uri") or "",
        section=row.get("section"),
        score=float(score),
        table_version=version,
        title=row.get("title"),
        page_number=row.get("page_number"),
        content_type=row.get("content_type"),
        chunk_index=row.get("chunk_index"),
        metadata=parse_metadata(row.get("metadata")),
        mode=mode,
        **extra,
    )


# ---------------------------------------------------------------- reader


class IndexReader:
    """A chunks table opened once; hands out ``PinnedTable``s for versions, tags and run ids.

    ``as_of=None`` reads the newest version at call time. Pinned versions are kept in a
    small LRU (``retrieval.cached_versions``), so repeated queries reuse them.
    """

    def __init__(
        self,
        db,
        table_name: str,
        *,
        config: RetrievalConfig | None = None,
        embedding: EmbeddingConfig | None = None,
        embedder=None,
    ):
        self.db = db
        self.table_name = table_name
        self.config = config or RetrievalConfig()
        self.embedding = embedding
        self._embedder = embedder
        self._head = store.open_chunks(db, table_name)
        self._pinned: collections.OrderedDict[int, PinnedTable] = collections.OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, db_uri: str, table_name: str, **kwargs) -> IndexReader:
        return cls(store.connect(db_uri), table_name, **kwargs)

    def resolve(self, as_of: str | int | None = None) -> int:
        with self._lock:
            if as_of is None or as_of == "":
                self._head.checkout_latest()
                return int(self._head.version)
            return store.resolve_version(self._head, as_of)

    def pinned(self, as_of: str | int | None = None) -> PinnedTable:
        version = self.resolve(as_of)
        with self._lock:
            found = self._pinned.get(version)
            if found is not None:
                self._pinned.move_to_end(version)
                return found
            # the newest version pinned so far: a new version's memory index starts from it
            previous = max(self._pinned.values(), key=lambda p: p.version, default=None)
        table = self.db.open_table(self.table_name)
        table.checkout(version)
        from freshindex.store import ann_search_params

        pinned = PinnedTable(
            table,
            version,
            config=self.config,
            embedding=self.embedding,
            embedder=self._embedder,
            read_ann_params=functools.partial(ann_search_params, self.db, self.table_name),
            previous=previous,
        )
        with self._lock:  # the embedder is shared: get_embedder caches one per model
            pinned = self._pinned.setdefault(version, pinned)
            while len(self._pinned) > self.config.cached_versions:
                self._pinned.popitem(last=False)
        return pinned

    def retrieve(self, query: str, **kwargs) -> list[Hit]:
        return retrieve(self, query, **kwargs)


_readers: collections.OrderedDict[tuple[str, str], IndexReader] = collections.OrderedDict()
_raw_pins: collections.OrderedDict[tuple[str, str, int], PinnedTable] = collections.OrderedDict()


def _pinned_for(target, table: str | None, as_of, config: RetrievalConfig | None) -> PinnedTable:
    """Accept a PinnedTable, IndexReader, LanceDB table, connection or URI."""
    if isinstance(target, PinnedTable):
        if as_of is not None and store.resolve_version(target.table, as_of) != target.version:
            raise QueryError(
                f"this PinnedTable reads version {target.version}, not {as_of!r}",
                hint="pass an IndexReader to read other versions",
            )
        return target
    if isinstance(target, IndexReader):
        return target.pinned(as_of)
    if hasattr(target, "checkout") and hasattr(target, "search"):  # a LanceDB table
        if as_of is not None:
            raise QueryError(
                "a table handle is read at its checked-out version; as_of needs a reader",
                hint="IndexReader(db, name).pinned(as_of), or table.checkout(...) first",
            )
        key = (str(target.uri), target.name, int(target.version))
        with _module_lock:
            if key not in _raw_pins:
                _raw_pins[key] = PinnedTable(target, target.version, config=config)
                while len(_raw_pins) > 4:
                    _raw_pins.popitem(last=False)
            return _raw_pins[key]
    if table is None:
        raise QueryError("retrieve(db, ...) needs table=NAME")
    if isinstance(target, str):
        key = (target, table)
        with _module_lock:  # retrieve(uri, ...) in a loop must not reopen the table
            if key not in _readers:
                _readers[key] = IndexReader.open(target, table, config=config)
                while len(_readers) > 8:
                    _readers.popitem(last=False)
            _readers.move_to_end(key)
            reader = _readers[key]
        return reader.pinned(as_of)
    return IndexReader(target, table, config=config).pinned(as_of)


def _check(mode: str, k: int) -> None:
    if mode not in MODES:
        raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(k, int) or k < 1:
        raise QueryError(f"k must be a positive integer, got {k!r}")


def fuse(
    ranked: dict[str, list[tuple[dict, float]]],
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


def _search_one(
    pinned: PinnedTable,
    query: str,
    vector: np.ndarray | None,
    vector_cands: list[tuple[dict, float]] | None,
    fts_cands: list[tuple[dict, float]] | None,
    *,
    mode: str,
    k: int,
    weights: dict[str, float],
    rrf_k: int,
    reranker: Reranker | None,
) -> list[Hit]:
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
        pinned.hit(row, score, mode, vector_score=raw.get("vector"), fts_score=raw.get("fts"))
        for row, score, raw in scored
    ]
    if reranker is not None and hits:
        qv = vector if vector is not None else pinned.embed([query])[0]
        hits = reranker.rerank(query, qv, hits, pinned.vectors_for)
    capped = any(getattr(c, "scan_capped", False) for c in (vector_cands, fts_cands))
    return Scanned.of([replace(h, rank=i) for i, h in enumerate(hits[:k], start=1)], capped)


_fts_pool: ThreadPoolExecutor | None = None


def _fts_executor() -> ThreadPoolExecutor:
    """Hybrid runs the FTS side here while the calling thread embeds and scores vectors."""
    global _fts_pool
    with _module_lock:
        if _fts_pool is None:
            _fts_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="freshindex-fts")
        return _fts_pool


def retrieve_batch(
    target,
    queries: Sequence[str],
    mode: str | None = None,
    k: int | None = None,
    filters: Any = None,
    as_of: str | int | None = None,
    *,
    table: str | None = None,
    weights: dict[str, float] | None = None,
    rrf_k: int | None = None,
    candidates: int | None = None,
    reranker: str | Reranker | None = None,
    query_vectors: np.ndarray | None = None,
    config: RetrievalConfig | None = None,
) -> list[list[Hit]]:
    """``retrieve`` for many queries: one pinned read, queries embedded in one batch and,
    with the memory engine, scored with one matrix product per 64 queries."""
    if isinstance(target, PinnedTable | IndexReader):
        cfg = config or target.config
    else:
        cfg = config or RetrievalConfig()
    mode = mode or cfg.mode
    k = cfg.k if k is None else k
    _check(mode, k)
    pinned = _pinned_for(target, table, as_of, cfg)
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
        pool = _fts_executor()
        fts = [pool.submit(pinned.fts_candidates, q, n, parsed) for q in queries]
    vectors = None
    vector_cands: list = [None] * len(queries)
    if mode in ("vector", "hybrid") and queries:
        vectors = pinned.embed(queries) if query_vectors is None else np.asarray(query_vectors)
        vector_cands = pinned.vector_candidates(vectors, n, parsed)
    if mode == "hybrid":
        fts = [f.result() for f in fts]
    return [
        _search_one(
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
    target,
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

    ``target`` is an ``IndexReader`` or ``PinnedTable`` (reuse one across queries), a LanceDB
    table handle (read at its checked-out version), or a db URI/connection with
    ``table=NAME``. ``mode``: vector | fts | hybrid (default from config). ``filters``: see
    ``freshindex.query.filters``. ``as_of``: version number, tag or run id. Keyword options:
    ``weights``
    ({"vector": w, "fts": w}), ``rrf_k``, ``candidates`` (per mode before fusion),
    ``reranker`` ("mmr" or a Reranker), ``query_vectors`` (skip embedding), ``config``.
    """
    vector = kwargs.pop("query_vector", None)
    if vector is not None:
        kwargs["query_vectors"] = np.asarray(vector, np.float32)[None, :]
    return retrieve_batch(target, [query], mode, k, filters, as_of, **kwargs)[0]


def vector_search(
    db_uri: str, table: str, question: str, k: int = 5, as_of: str | int | None = None
) -> list[Hit]:
    """Cosine search with the model recorded in the table's metadata (kept for old callers)."""
    return retrieve(db_uri, question, mode="vector", k=k, as_of=as_of, table=table)
