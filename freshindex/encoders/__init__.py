"""Encoder backends: the bundled model run by torch, ONNX Runtime or OpenVINO.

``freshindex.embedding`` picks one (``embedding.backend``); this package holds what the
non-torch backends need: the ONNX export of the installed model and its checksummed disk
cache (``cache``), the embedders that run it (``runtimes``), and the quality gate with the
``auto`` choice (``gate``). docs/ENCODERS.md explains the choices and the figures.
"""

from freshindex.encoders.cache import ModelCache, cache_root
from freshindex.encoders.gate import (
    BACKEND_LABELS,
    GateRecord,
    choose_backend,
    committed_gate,
    cosine_gate,
    resolve_label,
)
from freshindex.encoders.runtimes import OnnxRuntimeEmbedder, OpenVinoEmbedder, length_batches

__all__ = [
    "BACKEND_LABELS",
    "GateRecord",
    "ModelCache",
    "OnnxRuntimeEmbedder",
    "OpenVinoEmbedder",
    "cache_root",
    "choose_backend",
    "committed_gate",
    "cosine_gate",
    "length_batches",
    "resolve_label",
]
