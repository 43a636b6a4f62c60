"""The ONNX export of an installed model, cached on disk with a checksum file.

    <cache_dir>/<model>/onnx/model.onnx        float32 export (mean pooling included)
    <cache_dir>/<model>/onnx/checksum.json     sha256 of model.onnx and of the source files
    <cache_dir>/<model>/onnx-int8/model.onnx   dynamically quantized from the float32 export
    <cache_dir>/<model>/openvino/              OpenVINO's compiled-model cache (reads onnx/)

A file is used only when its checksum file matches the file *and* the installed model it
was made from (so a corrupt, half-written or stale export is rebuilt, never trusted), and
it is only ever made from the installed model: nothing is downloaded. Builders write to a
temporary name and rename it into place, holding an exclusive lock on the model's folder,
so two processes starting at once build it once and neither reads a partial file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from freshindex.errors import ConfigError

log = logging.getLogger("freshindex.encoders")

# Bumped when the export changes (inputs, pooling, opset, quantization): older caches are
# then stale and rebuilt.
EXPORT_FORMAT = 1
OPSET = 17
ONNX_BACKENDS = ("onnx", "onnx-int8")
# Files of a sentence-transformers folder that do not change the vectors.
_NOT_SOURCE = {"README.md", ".gitattributes"}


def cache_root(configured: str = "") -> Path:
    """``embedding.cache_dir``, else $XDG_CACHE_HOME/freshindex/models, else
    ~/.cache/freshindex/models."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "freshindex" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_checksums(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of the installed model that shapes its vectors."""
    out = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and path.name not in _NOT_SOURCE and ".cache" not in path.parts:
            out[path.relative_to(model_dir).as_posix()] = sha256_file(path)
    return out


def _slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", model).strip("-") or "model"


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ModelCache:
    """The cached exports of one installed model (``model_dir``) under ``root``.

    >>> cache = ModelCache("all-MiniLM-L6-v2", model_dir, cache_root())
    >>> cache.ensure("onnx-int8")   # builds (locked, atomic) or verifies, returns the path
    """

    def __init__(self, model: str, model_dir: str | Path, root: str | Path):
        self.model = model
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(
                f"the ONNX backends export a locally installed model; {model!r} is not a "
                f"model folder ({self.model_dir})",
                hint="use embedding.backend: torch, or a model folder / the bundled model",
            )
        self.root = Path(root) / _slug(model)
        self._sources: dict[str, str] | None = None

    def folder(self, backend: str) -> Path:
        return self.root / backend

    def model_file(self, backend: str) -> Path:
        return self.folder(backend) / "model.onnx"

    def checksum_file(self, backend: str) -> Path:
        return self.folder(backend) / "checksum.json"

    @property
    def sources(self) -> dict[str, str]:
        if self._sources is None:
            self._sources = source_checksums(self.model_dir)
        return self._sources

    # ---- verification

    def verify(self, backend: str) -> dict[str, Any] | None:
        """The checksum record when ``backend``'s file is present, intact and made from the
        installed model with this export format; else None (with the reason logged)."""
        model_file, checksum_file = self.model_file(backend), self.checksum_file(backend)
        if not model_file.is_file() or not checksum_file.is_file():
            return None
        try:
            record = json.loads(checksum_file.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable checksum file, rebuilding", checksum_file)
            return None
        if record.get("format") != EXPORT_FORMAT or record.get("sources") != self.sources:
            log.warning("%s: made from another model or export format, rebuilding", model_file)
            return None
        if sha256_file(model_file) != record.get("sha256"):
            log.warning("%s: checksum mismatch (corrupt or partial), rebuilding", model_file)
            return None
        return record

    def ensure(self, backend: str) -> Path:
        """The verified file of ``backend`` ("onnx" or "onnx-int8"), built if missing,
        corrupt or stale."""
        if backend not in ONNX_BACKENDS:
            raise ConfigError(f"no ONNX file for backend {backend!r}")
        if self.verify(backend) is not None:
            return self.model_file(backend)
        with self.lock():
            return self._ensure_locked(backend)

    def _ensure_locked(self, backend: str) -> Path:
        """``ensure`` for a caller holding ``lock()`` (flock is not re-entrant)."""
        if self.verify(backend) is None:  # another process may have built it meanwhile
            self._build(backend)
        return self.model_file(backend)

    @contextlib.contextmanager
    def lock(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- building

    def _build(self, backend: str) -> None:
        folder = self.folder(backend)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".model.", suffix=".onnx.tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            if backend == "onnx":
                self._export(tmp)
            else:
                source = self._ensure_locked("onnx")
                extra["from_onnx_sha256"] = json.loads(self.checksum_file("onnx").read_text())[
                    "sha256"
                ]
                _quantize(source, tmp)
            os.chmod(tmp, 0o644)
            # the checksum file goes first: a file without a matching one is never trusted
            self.checksum_file(backend).unlink(missing_ok=True)
            os.replace(tmp, self.model_file(backend))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        record = {
            "format": EXPORT_FORMAT,
            "backend": backend,
            "model": self.model,
            "file": "model.onnx",
            "sha256": sha256_file(self.model_file(backend)),
            "sources": self.sources,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
            **_versions(),
        }
        _atomic_write_text(self.checksum_file(backend), json.dumps(record, indent=1))
        elapsed = time.perf_counter() - started
        log.info("%s: %s built in %.1f s", self.model_file(backend), backend, elapsed)

    def _export(self, out: Path) -> None:
        """torch.onnx.export (TorchScript exporter: works offline, no onnxscript) of the
        transformer with mean pooling; batch and sequence axes dynamic."""
        import torch
        from transformers import AutoModel

        pooling = self.model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            modes = json.loads(pooling.read_text())
            others = [
                key
                for key, on in modes.items()
                if key.startswith("pooling_mode_") and on and "mean" not in key
            ]
            if not modes.get("pooling_mode_mean_tokens") or others:
                raise ConfigError(
                    f"{self.model}: the ONNX export implements mean pooling only",
                    hint="use embedding.backend: torch for this model",
                )
        model = AutoModel.from_pretrained(str(self.model_dir)).eval()
        wrapped = _MeanPooled(model)
        inputs = ("input_ids", "attention_mask", "token_type_ids")
        example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in inputs)
        axes = {name: {0: "batch", 1: "sequence"} for name in inputs}
        axes["embedding"] = {0: "batch"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes and control flow
            torch.onnx.export(
                wrapped,
                example,
                str(out),
                input_names=list(inputs),
                output_names=["embedding"],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )


class _MeanPooled:
    """Built lazily (torch is imported only when exporting)."""

    def __new__(cls, model):
        import torch

        class MeanPooled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids):
                hidden = self.inner(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

        return MeanPooled(model)


def _quantize(source: Path, out: Path) -> None:
    """Dynamic int8 quantization (weights per channel, activations at run time): per-tensor
    weights lose too much on MiniLM (mean cosine 0.93 to float32, docs/ENCODERS.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, advice = logging.getLogger(), _DropAdvice()
    # the quantizer logs each tensor (and a static-quantization tip) to the root logger
    root.addFilter(advice)
    try:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.removeFilter(advice)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out
