"""Vector retrieval over a chunks table, pinned to a known version.

Example::

    hits = vector_search("./data/lancedb", "docs", "how do I set a timeout?", k=3)
    hits[0].doc_id, hits[0].score, hits[0].table_version
"""

from __future__ import annotations

from dataclasses import dataclass

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from schemas.tables import table_metadata


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    text: str
    source_uri: str
    section: str | None
    score: float
    table_version: int


def vector_search(
    db_uri: str, table: str, question: str, k: int = 5, as_of: str | int | None = None
) -> list[Hit]:
    """Cosine search with the model recorded in the table's metadata."""
    tbl = store.open_as_of(store.connect(db_uri), table, as_of)
    model = table_metadata(tbl.schema).get("embedding_model") or EmbeddingConfig().model
    vector = get_embedder(EmbeddingConfig(model=model)).encode([question])[0]
    rows = (
        tbl.search(vector, vector_column_name="vector")
        .distance_type("cosine")
        .select(["chunk_id", "doc_id", "text", "source_uri", "section", "_distance"])
        .limit(k)
        .to_list()
    )
    version = tbl.version
    return [
        Hit(
            chunk_id=r["chunk_id"],
            doc_id=r["doc_id"],
            text=r["text"],
            source_uri=r["source_uri"],
            section=r["section"],
            score=1.0 - float(r["_distance"]),
            table_version=version,
        )
        for r in rows
    ]
