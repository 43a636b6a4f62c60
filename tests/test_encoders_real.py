"""Encoder backends with the real bundled model (slow: exports it to ONNX once per module,
into a temporary cache, through ``freshindex model prepare``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json

import numpy as np
import pytest

from freshindex import encoders
from freshindex.cli import main
from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder, model_cache, resolve_backend, resolve_model_path
from freshindex.encoders.gate import GateRecord, load_local, sample_texts, store_local

pytestmark = pytest.mark.slow

TEXTS = [
    "How do I reset my password?",
    "Mitochondria produce ATP through oxidative phosphorylation. " * 12,  # > 256 pieces
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "ok",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache_dir = str(tmp_path_factory.mktemp("models"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(
            [
                *("model", "prepare", "--backend", "onnx", "onnx-int8"),
                *("--cache-dir", cache_dir, "--json"),
            ]
        )
    return cache_dir, rc, json.loads(out.getvalue())


def test_model_prepare_builds_verified_cache(prepared):
    cache_dir, rc, rows = prepared
    assert rc == 0
    assert [r["label"] for r in rows] == ["onnx", "onnx-int8"]
    assert all(r["passed"] and r["cosine_mean"] >= 0.99 for r in rows)
    cache = model_cache(EmbeddingConfig(cache_dir=cache_dir))
    for backend in ("onnx", "onnx-int8"):
        record = cache.verify(backend)
        assert (
            record is not None
            and record["sha256"] == rows[0 if backend == "onnx" else 1]["model_sha256"]
        )
        assert (cache.root / "gate" / f"{backend}.json").is_file()
    # int8 weights: about a quarter of the float32 file
    assert (
        cache.model_file("onnx-int8").stat().st_size < cache.model_file("onnx").stat().st_size / 2
    )


@pytest.mark.parametrize(
    "backend,dtype",
    [
        ("onnx", "float32"),
        ("onnx-int8", "float32"),
        ("openvino", "float32"),
        ("openvino", "bfloat16"),
    ],
)
def test_backend_matches_float32_torch(prepared, backend, dtype):
    cache_dir = prepared[0]
    reference = get_embedder(EmbeddingConfig(backend="torch", dtype="float32"))
    embedder = get_embedder(EmbeddingConfig(backend=backend, dtype=dtype, cache_dir=cache_dir))
    assert embedder.backend == encoders.resolve_label(backend, dtype)
    texts = TEXTS + sample_texts(resolve_model_path(embedder.model_name))
    vectors = embedder.encode(texts)
    expected = reference.encode(texts)
    assert vectors.shape == (len(texts), 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.min() >= 0.95 and cosines.mean() >= 0.99, cosines
    assert (embedder.dim, embedder.max_tokens) == (reference.dim, reference.max_tokens)
    for text in TEXTS:
        assert embedder.count_tokens(text) == reference.count_tokens(text)
        assert embedder.token_spans(text) == reference.token_spans(text)
    assert embedder.encode([]).shape == (0, 384)


def test_auto_refuses_failed_backend(prepared, monkeypatch):
    cache_dir = prepared[0]
    cfg = EmbeddingConfig(backend="auto", dtype="float32", cache_dir=cache_dir)
    gate = {
        "backends": {
            "torch-float32": {"passed": True, "speed_ratio": 1.0},
            "onnx": {"passed": True, "speed_ratio": 1.5},
            "onnx-int8": {"passed": False, "speed_ratio": 3.0},  # failed retrieval gate
        }
    }
    monkeypatch.setattr(encoders, "committed_gate", lambda: gate)
    resolve_backend.cache_clear()
    try:
        assert resolve_backend(cfg) == "onnx"
        # the same backend failing the cosine check on this CPU is refused too
        root, sha = model_cache(cfg).root, model_cache(cfg).verify("onnx")["sha256"]
        measured = load_local(root, "onnx", sha)
        store_local(root, GateRecord("onnx", 0.9, 0.8, 0.99, False, 4, sha, 1.0, "now"))
        resolve_backend.cache_clear()
        assert resolve_backend(cfg) == "torch-float32"
        # chosen explicitly, a failed backend still runs (with a warning)
        explicit = dataclasses.replace(cfg, backend="onnx-int8")
        assert resolve_backend(explicit) == "onnx-int8"
        store_local(root, measured)
    finally:
        resolve_backend.cache_clear()


@pytest.mark.parametrize(
    "backend,dtype", [("torch", "float32"), ("onnx", "float32"), ("openvino", "bfloat16")]
)
def test_batching_by_length_does_not_change_vectors(prepared, backend, dtype):
    """Many texts of mixed lengths in token-budget batches (OpenVINO: on parallel streams)
    give each text the vector it gets alone, in its own row."""
    cache_dir = prepared[0]
    texts = list(sample_texts(resolve_model_path("all-MiniLM-L6-v2"))) + TEXTS
    texts = texts * 3  # several batches at a 1,024-piece budget
    cfg = EmbeddingConfig(backend=backend, dtype=dtype, cache_dir=cache_dir, batch_tokens=1024)
    budgeted = get_embedder(cfg).encode(texts)
    fixed = get_embedder(dataclasses.replace(cfg, batch_tokens=0, batch_size=1))
    alone = np.stack([fixed.encode([t])[0] for t in texts[: len(texts) // 3]])
    cosines = np.sum(budgeted[: len(alone)] * alone, axis=1)
    assert cosines.min() >= 0.999, cosines
    copies = np.sum(budgeted[: len(alone)] * budgeted[len(alone) : 2 * len(alone)], axis=1)
    assert copies.min() >= 0.999, copies  # each copy, in another batch, in its own row
