"""Tests about embeddings load the real bundled all-MiniLM-L6-v2 (offline)."""

from __future__ import annotations

import numpy as np
import pytest

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.pipelines.batch import run_ingest
from freshindex.query.retrieval import vector_search
from freshindex.schemas.tables import table_metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return get_embedder(EmbeddingConfig())


def test_vectors_have_the_models_width_and_unit_norm(minilm):
    vectors = minilm.encode(["a cat sat on the mat", "stock markets fell sharply", ""])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_similar_texts_are_closer_than_unrelated_ones(minilm):
    a, b, c = minilm.encode(
        ["How do I set a request timeout?", "Configure the timeout of HTTP requests", "Ducks swim"]
    )
    assert float(a @ b) > float(a @ c) + 0.3


def test_the_model_loads_once_per_process(minilm):
    assert get_embedder(EmbeddingConfig()) is minilm


def test_pipeline_with_the_real_model_finds_the_right_document(real_cfg, sample_corpus):
    row = run_ingest(real_cfg, str(sample_corpus))
    assert row["docs_added"] == 8 and row["docs_failed"] == 0
    table = store.open_chunks(store.connect(real_cfg.db), "docs")
    meta = table_metadata(table.schema)
    assert meta["embedding_model"] == "all-MiniLM-L6-v2" and meta["vector_dim"] == "384"
    assert table.schema.field("vector").type.list_size == 384
    hits = vector_search(real_cfg.db, "docs", "how do I disable timeouts?", k=3)
    assert hits[0].doc_id == "httpx_advanced_timeouts.md"
    hits = vector_search(real_cfg.db, "docs", "which birds have flat bills and swim?", k=3)
    assert hits[0].doc_id == "docling_wiki_duck.html"
    assert all(h.table_version == table.version for h in hits)


def test_a_table_refuses_vectors_of_another_model(real_cfg, corpus, fake_cfg):
    import dataclasses

    from freshindex.errors import SchemaMismatch

    run_ingest(fake_cfg, str(corpus))
    other = dataclasses.replace(real_cfg, db=fake_cfg.db)
    (corpus / "new.md").write_text("# New\n\nA new document.")
    with pytest.raises(SchemaMismatch, match="holds vectors of 'fake-hash'"):
        run_ingest(other, str(corpus))


def test_bfloat16_encoder_gives_nearly_the_same_vectors():
    from freshindex.config import EMBEDDING_DTYPES, load_config

    fp32 = get_embedder(EmbeddingConfig(dtype="float32"))
    bf16 = get_embedder(EmbeddingConfig(dtype="bfloat16"))
    assert (fp32.dtype, bf16.dtype) == ("float32", "bfloat16")
    texts = ["Aspirin reduces the risk of heart attack.", "Ducks are water birds."]
    cos = (fp32.encode(texts) * bf16.encode(texts)).sum(axis=1)
    assert bf16.encode(texts).dtype == np.float32 and cos.min() > 0.99
    pinned = [load_config(overrides={"embedding.dtype": d}, environ={}) for d in EMBEDDING_DTYPES]
    # precision is not a vector-space change: switching it re-embeds nothing
    assert len({c.fingerprint() for c in pinned}) == 1
