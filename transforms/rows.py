"""The chunks table's rows for embedded documents: the pinned schema, one row per chunk,
each beside its document's ledger columns (content hash, settings fingerprint, namespace,
source version). Beam-free; the batch stage step and the stream's micro-batch build their
rows here (through ``freshindex.transforms.process.rows``, which isolates a bad document).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from freshindex import store
from freshindex.schemas.records import EmbeddedDocument
from freshindex.schemas.tables import chunks_schema


def utc_time(epoch: float | None) -> dt.datetime | None:
    """An epoch time as a UTC datetime (None for none or 0)."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC) if epoch else None


def rows_for(
    docs: Sequence[EmbeddedDocument],
    *,
    fingerprint: str,
    model: str,
    run_id: str,
    dim: int,
    namespace: str | Mapping[str, str] | None = None,
) -> pa.Table:
    """Arrow rows of the chunks table for ``docs`` (the pinned schema, vectors float32).

    ``namespace``: the owning namespace of every document, or doc_id -> namespace.
    """
    now = store.utcnow()
    cols: dict[str, list] = {name: [] for name in chunks_schema(dim).names}
    vectors = []
    for d in docs:
        doc = d.document
        meta = json.dumps(doc.metadata, sort_keys=True, default=str) if doc.metadata else None
        owner = namespace.get(doc.doc_id) if isinstance(namespace, Mapping) else namespace
        for chunk in d.chunks:
            cols["chunk_id"].append(chunk.chunk_id)
            cols["doc_id"].append(doc.doc_id)
            cols["chunk_index"].append(chunk.chunk_index)
            cols["text"].append(chunk.text)
            cols["text_hash"].append(chunk.text_hash)
            cols["token_count"].append(chunk.token_count)
            cols["title"].append(doc.title)
            cols["section"].append(chunk.section)
            cols["page_number"].append(chunk.page_number)
            cols["source_uri"].append(doc.source_uri)
            cols["content_type"].append(doc.content_type)
            cols["content_hash"].append(doc.content_hash)
            cols["modified_at"].append(utc_time(doc.modified_at))
            cols["fingerprint"].append(fingerprint)
            cols["embedding_model"].append(model)
            cols["metadata"].append(meta)
            cols["run_id"].append(run_id)
            cols["indexed_at"].append(now)
            cols["namespace"].append(owner)
            cols["source_version"].append(doc.source_version)
            cols["acl"].append(None if doc.acl is None else list(doc.acl))
        vectors.append(np.asarray(d.vectors, dtype=np.float32).reshape(len(d.chunks), dim))
    flat = np.concatenate(vectors).reshape(-1) if vectors else np.zeros(0, np.float32)
    schema = chunks_schema(dim)
    arrays = []
    for f in schema:
        if f.name == "vector":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim))
        else:
            arrays.append(pa.array(cols[f.name], f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
