"""Vectors for chunked documents: stored ones reused by text hash, the rest encoded; Beam-free.

A chunk whose text the table already holds a vector for (same model, same text hash) is
not embedded again, even inside a changed document: the stored vector is reused.
"""

from __future__ import annotations

import numpy as np

from freshindex import store
from freshindex.schemas.records import ChunkedDocument, EmbeddedDocument
from freshindex.transforms.plan import TableRef


class VectorReuse:
    """Looks up stored vectors by text hash in the table version a run started from, then in
    the table it records as its vectors' other source (a migration's shadow names the live
    table: ``store.reuse_source``), for the same model."""

    def __init__(self, ref: TableRef | None, model: str):
        self._ref, self._model, self._tables = ref, model, None

    def _open(self) -> list:
        db = store.connect(self._ref.db_uri)
        table = store.open_chunks(db, self._ref.table)
        table.checkout(self._ref.version)
        tables = [table]
        source = store.reuse_source(table)
        if source is not None and source in store.table_names(db):
            tables.append(store.open_chunks(db, source))
        return tables

    def lookup(self, text_hashes: list[str]) -> dict[str, np.ndarray]:
        if self._ref is None or self._ref.version is None:
            return {}
        if self._tables is None:
            self._tables = self._open()
        found: dict[str, np.ndarray] = {}
        for table in self._tables:
            missing = [h for h in text_hashes if h not in found]
            if not missing:
                break
            found.update(store.lookup_vectors(table, missing, self._model))
        return found


def embed_documents(
    batch: list[ChunkedDocument], embedder, reuse: VectorReuse
) -> list[EmbeddedDocument]:
    """Vectors for every chunk of ``batch``: stored ones where they exist, else encoded."""
    hashes = [c.text_hash for d in batch for c in d.chunks]
    known = reuse.lookup(hashes)
    missing: dict[str, str] = {}
    for doc in batch:
        for c in doc.chunks:
            if c.text_hash not in known:
                missing.setdefault(c.text_hash, c.text)
    fresh: dict[str, np.ndarray] = {}
    if missing:
        encoded = embedder.encode(list(missing.values()))
        fresh = dict(zip(missing.keys(), encoded))
    out = []
    for doc in batch:
        vectors = np.stack([fresh.get(c.text_hash, known.get(c.text_hash)) for c in doc.chunks])
        n_reused = sum(1 for c in doc.chunks if c.text_hash in known)
        out.append(
            EmbeddedDocument(
                document=doc.document,
                chunks=doc.chunks,
                vectors=vectors.astype(np.float32),
                embedded=len(doc.chunks) - n_reused,
                reused=n_reused,
            )
        )
    return out
