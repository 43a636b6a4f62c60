"""The memory engine: one pinned version's vectors in RAM, scored exactly with a matrix product.

``MemoryIndex`` holds a float32 matrix of the version's vectors beside the columns hits and
filters read. A new version's index is built from the previous one: fragments that did not
change are copied, only new ones are read (a stream commits every second or so, adding a
fragment or two). Costs are measured in docs/QUERY.md.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from freshindex.query.filters import Filter, arrow_mask
from freshindex.query.threads import single_blas_thread
from freshindex.query.types import HIT_COLUMNS, parse_metadata

# Held in RAM beside the vectors: what hits and filters read.
MEMORY_COLUMNS = (
    *HIT_COLUMNS,
    "token_count",
    "run_id",
    "embedding_model",
    "modified_at",
    "indexed_at",
    "acl",  # the access condition is a mask like any filter (freshindex.query.access)
)
MAX_QUERY_BATCH = 64  # queries scored together in one matrix product
MAX_CACHED_MASKS = 32  # filter masks kept per index


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


class MemoryIndex:
    """One pinned version's rows in RAM: a float32 matrix of vectors plus the hit columns.

    Built from ``previous`` (an earlier version's index of the same table) where it can:
    fragments that did not change between the versions are copied from it, and only new or
    changed fragments are read. A stream commits every second or so, and each commit adds
    a fragment or two; reading only those makes a new version's index cheap (measured in
    docs/QUERY.md).
    """

    def __init__(self, table, previous: MemoryIndex | None = None):
        names = [c for c in MEMORY_COLUMNS if c in table.schema.names]
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
            while len(self._masks) > MAX_CACHED_MASKS:
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
            with single_blas_thread():
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
