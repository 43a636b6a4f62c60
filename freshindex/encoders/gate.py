"""The quality gate of the encoder backends and the ``auto`` choice built on it.

Two checks, both against float32 torch (the model as published):
- retrieval: SciFact test nDCG@10, dense and hybrid, within ``tolerance`` (0.005). Slow (a
  full ingestion per backend), so it is measured once on the reference machine and
  committed in ``gate.json`` beside this file, with each backend's measured speed
  (scripts/bench_encoders.py; docs/ENCODERS.md has the commands and figures);
- vectors: mean cosine >= 0.99 on a fixed sample of texts, run on the user's CPU when a
  backend is prepared (``freshindex model prepare|gate``, or the first use of ``auto``) and
  stored beside the cached model, valid while that model file is unchanged.

``auto`` takes backends in the committed speed order (fastest first; the ranking measured
on the reference machine, not re-measured per CPU) and uses the first that passed both
checks and can run here (bfloat16 needs AVX512-BF16 or AMX). A failed backend can still be
chosen explicitly; it then logs a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("freshindex.encoders")

BACKEND_LABELS = (
    "torch-float32",
    "torch-bfloat16",
    "onnx",
    "onnx-int8",
    "openvino-float32",
    "openvino-bfloat16",
)
BASELINE = "torch-float32"
COSINE_THRESHOLD = 0.99
COMMITTED_GATE = Path(__file__).with_name("gate.json")

# The fixed sample of the cosine check: sentences of several kinds and lengths, plus the
# paragraphs of the installed model's README (long texts are where quantization drifts).
_SAMPLE = (
    "How do I reset my password?",
    "Aspirin lowers the risk of a second heart attack in patients with coronary disease.",
    "The quarterly report shows revenue grew 12% while operating costs fell.",
    "def add(a, b):\n    return a + b",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Mitochondria produce ATP through oxidative phosphorylation in the inner membrane.",
    "Install the package, then run the command with --help to see the options.",
    "A stable identity for every chunk makes re-ingestion idempotent.",
    "Patients receiving the vaccine showed a 95% reduction in symptomatic infection "
    "compared with placebo over a median follow-up of two months.",
    "ok",
)


def sample_texts(model_dir: str | Path | None = None, limit: int = 48) -> list[str]:
    texts = list(_SAMPLE)
    readme = Path(model_dir) / "README.md" if model_dir else None
    if readme is not None and readme.is_file():
        paragraphs = [p.strip() for p in readme.read_text().split("\n\n")]
        paragraphs = [p for p in paragraphs if len(p) >= 80]
        texts += paragraphs
        texts.append(" ".join(paragraphs))  # one text past the model's window
    return texts[:limit]


def resolve_label(backend: str, precision: str) -> str:
    """The backend as recorded and gated: torch and openvino carry their precision."""
    if backend in ("torch", "openvino"):
        return f"{backend}-{precision}"
    return backend


def needs_bf16(label: str) -> bool:
    return label.endswith("bfloat16")


def committed_gate(path: str | Path = COMMITTED_GATE) -> dict[str, Any]:
    """The measured retrieval gate and speeds (``gate.json``); empty when absent."""
    path = Path(path)
    if not path.is_file():
        return {"backends": {}}
    return json.loads(path.read_text())


def retrieval_passed(label: str, gate: dict[str, Any]) -> bool | None:
    """True/False as measured for the bundled model; None where not measured."""
    entry = gate.get("backends", {}).get(label)
    if entry is None or entry.get("delta") is None:
        return None
    return bool(entry.get("passed"))


def auto_order(gate: dict[str, Any], bf16_capable: bool) -> list[str]:
    """Labels ``auto`` may pick, fastest first: measured, passed, runnable here."""
    entries = gate.get("backends", {})
    ranked = sorted(entries, key=lambda label: -float(entries[label].get("speed_ratio", 0)))
    return [
        label
        for label in ranked
        if entries[label].get("passed") and (bf16_capable or not needs_bf16(label))
    ]


@dataclasses.dataclass(frozen=True)
class GateRecord:
    """One backend's cosine check on this machine."""

    label: str
    cosine_mean: float
    cosine_min: float
    threshold: float
    passed: bool
    texts: int
    model_sha256: str  # the cached file checked ("" for torch)
    docs_per_s: float
    date: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cosine_gate(
    label: str,
    candidate: Callable[[list[str]], np.ndarray],
    reference: np.ndarray,
    texts: list[str],
    *,
    model_sha256: str = "",
    threshold: float = COSINE_THRESHOLD,
) -> GateRecord:
    """Mean cosine of ``candidate(texts)`` to ``reference`` (float32 torch's vectors of the
    same texts, L2-normalised); also times the candidate's encode, for information."""
    candidate(texts[:2])  # warm up (first-call allocations, OpenVINO's shape compile)
    started = time.perf_counter()
    vectors = candidate(texts)
    elapsed = time.perf_counter() - started
    cosines = np.sum(vectors * reference, axis=1)
    mean = float(np.mean(cosines))
    return GateRecord(
        label=label,
        cosine_mean=round(mean, 6),
        cosine_min=round(float(np.min(cosines)), 6),
        threshold=threshold,
        passed=mean >= threshold,
        texts=len(texts),
        model_sha256=model_sha256,
        docs_per_s=round(len(texts) / elapsed, 2) if elapsed > 0 else 0.0,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def local_gate_file(cache_root: Path, label: str) -> Path:
    return Path(cache_root) / "gate" / f"{label}.json"


def load_local(cache_root: Path, label: str, model_sha256: str) -> GateRecord | None:
    """The stored cosine check of ``label``, if it was made on the file now cached."""
    path = local_gate_file(cache_root, label)
    try:
        record = GateRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return record if record.model_sha256 == model_sha256 else None


def store_local(cache_root: Path, record: GateRecord) -> Path:
    from freshindex.encoders.cache import _atomic_write_text

    path = local_gate_file(cache_root, record.label)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(record.to_dict(), indent=1))
    return path


def choose_backend(
    order: list[str], usable: Callable[[str], bool], fallback: str
) -> tuple[str, list[str]]:
    """The first label of ``order`` that ``usable`` accepts (it prepares the backend and
    runs its cosine check), else ``fallback``; with the reasons for the ones skipped."""
    skipped = []
    for label in order:
        try:
            if usable(label):
                return label, skipped
            skipped.append(f"{label}: failed the cosine check on this CPU")
        except Exception as exc:  # a backend that cannot run here is skipped, not fatal
            skipped.append(f"{label}: {exc}")
    return fallback, skipped
