"""Encoder backends (freshindex/encoders): settings, the checksummed export cache, the gate
and the ``auto`` choice.

Fast tests use a model folder of small files and a ModelCache whose export step writes
bytes derived from those files (``BytesCache``, a stand-in for torch.onnx.export, which
takes a minute): what is tested is the cache's own logic (checksums, staleness, rebuild,
locking, atomic rename). Tests with the real model and real exports are marked slow
(tests/test_encoders_real.py).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from freshindex.config import EmbeddingConfig, load_config
from freshindex.embedding import FAKE_MODEL, resolve_backend
from freshindex.encoders import ModelCache, cache_root, choose_backend, committed_gate
from freshindex.encoders.cache import EXPORT_FORMAT
from freshindex.encoders.gate import (
    BACKEND_LABELS,
    BASELINE,
    GateRecord,
    auto_order,
    cosine_gate,
    load_local,
    resolve_label,
    store_local,
)
from freshindex.errors import ConfigError


class BytesCache(ModelCache):
    """STAND-IN export: the 'model' is the sha256 of the source files, so a changed source
    gives a changed file; each build appends a line to ``builds.log`` (counted by tests)."""

    def _export(self, out: Path) -> None:
        digest = hashlib.sha256(json.dumps(self.sources, sort_keys=True).encode()).digest()
        out.write_bytes(digest * 1000)
        with (self.root / "builds.log").open("a") as handle:
            handle.write(f"{os.getpid()}\n")


def _model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 8}')
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("not part of the checksum")
    return folder


def _builds(cache: ModelCache) -> int:
    log = cache.root / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


# ---------------------------------------------------------------- settings


def test_backend_setting_validated():
    with pytest.raises(ConfigError, match=r"embedding\.backend must be one of"):
        EmbeddingConfig(backend="tensorrt")
    for backend in ("auto", "torch", "onnx", "onnx-int8", "openvino"):
        assert EmbeddingConfig(backend=backend).backend == backend


def test_backend_from_environment_and_file(tmp_path):
    cfg = load_config(None, environ={"FRESHINDEX_EMBEDDING__BACKEND": "onnx-int8"})
    assert cfg.embedding.backend == "onnx-int8"
    path = tmp_path / "c.yaml"
    path.write_text("embedding:\n  backend: openvino\n  cache_dir: /x/models\n")
    cfg = load_config(str(path), environ={})
    assert (cfg.embedding.backend, cfg.embedding.cache_dir) == ("openvino", "/x/models")
    with pytest.raises(ConfigError):
        load_config(None, environ={"FRESHINDEX_EMBEDDING__BACKEND": "gpu"})


def test_backend_not_in_fingerprint():
    # measured: one table may hold vectors of several backends (docs/ENCODERS.md)
    base = load_config(None, environ={})
    other = load_config(None, environ={"FRESHINDEX_EMBEDDING__BACKEND": "onnx-int8"})
    assert base.fingerprint() == other.fingerprint()


def test_cache_root(monkeypatch, tmp_path):
    assert cache_root("~/m") == Path.home() / "m"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root("") == tmp_path / "freshindex" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root("") == Path.home() / ".cache" / "freshindex" / "models"


def test_labels():
    assert resolve_label("torch", "bfloat16") == "torch-bfloat16"
    assert resolve_label("openvino", "float32") == "openvino-float32"
    assert resolve_label("onnx-int8", "bfloat16") == "onnx-int8"
    assert resolve_backend(EmbeddingConfig(model=FAKE_MODEL)) == "fake"
    assert resolve_backend(EmbeddingConfig(backend="torch", dtype="float32")) == "torch-float32"
    assert resolve_backend(EmbeddingConfig(backend="openvino", dtype="bfloat16")) == (
        "openvino-bfloat16"
    )
    # the gate's figures are the bundled model's: auto keeps any other model on torch
    other = EmbeddingConfig(model="/some/other/model", dtype="float32")
    assert resolve_backend(other) == "torch-float32"
    assert resolve_backend(EmbeddingConfig(device="cuda", dtype="auto")) == "torch-float32"


# ---------------------------------------------------------------- the cache


def test_cache_builds_once_and_verifies(tmp_path):
    cache = BytesCache("m", _model_dir(tmp_path), tmp_path / "cache")
    path = cache.ensure("onnx")
    assert path.is_file() and _builds(cache) == 1
    record = json.loads(cache.checksum_file("onnx").read_text())
    assert record["format"] == EXPORT_FORMAT
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert set(record["sources"]) == {"config.json", "tokenizer.json"}  # README excluded
    assert cache.ensure("onnx") == path and _builds(cache) == 1  # verified, not rebuilt
    assert not list(cache.folder("onnx").glob("*.tmp"))


def test_corrupt_file_is_rebuilt(tmp_path):
    cache = BytesCache("m", _model_dir(tmp_path), tmp_path / "cache")
    path = cache.ensure("onnx")
    good = path.read_bytes()
    path.write_bytes(good[:100])  # truncated, as by a crash mid-copy
    assert cache.verify("onnx") is None
    cache.ensure("onnx")
    assert _builds(cache) == 2 and path.read_bytes() == good


@pytest.mark.parametrize("damage", ["checksum-missing", "checksum-garbage", "format"])
def test_untrusted_checksum_is_rebuilt(tmp_path, damage):
    cache = BytesCache("m", _model_dir(tmp_path), tmp_path / "cache")
    cache.ensure("onnx")
    checksum = cache.checksum_file("onnx")
    if damage == "checksum-missing":
        checksum.unlink()
    elif damage == "checksum-garbage":
        checksum.write_text("{not json")
    else:
        record = json.loads(checksum.read_text())
        checksum.write_text(json.dumps({**record, "format": EXPORT_FORMAT - 1}))
    assert cache.verify("onnx") is None
    cache.ensure("onnx")
    assert _builds(cache) == 2 and cache.verify("onnx") is not None


def test_changed_source_model_makes_cache_stale(tmp_path):
    model_dir = _model_dir(tmp_path)
    BytesCache("m", model_dir, tmp_path / "cache").ensure("onnx")
    (model_dir / "config.json").write_text('{"hidden_size": 16}')
    cache = BytesCache("m", model_dir, tmp_path / "cache")  # a new process sees new sources
    assert cache.verify("onnx") is None
    before = cache.model_file("onnx").read_bytes()
    cache.ensure("onnx")
    assert _builds(cache) == 2 and cache.model_file("onnx").read_bytes() != before


def test_failed_build_leaves_nothing(tmp_path):
    class Failing(BytesCache):
        def _export(self, out):
            out.write_bytes(b"half")
            raise RuntimeError("export broke")

    cache = Failing("m", _model_dir(tmp_path), tmp_path / "cache")
    with pytest.raises(RuntimeError, match="export broke"):
        cache.ensure("onnx")
    assert not cache.model_file("onnx").exists()
    assert not list(cache.folder("onnx").iterdir())  # no temp file left behind


def test_not_a_model_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a model folder"):
        ModelCache("sentence-transformers/x", "sentence-transformers/x", tmp_path)
    with pytest.raises(ConfigError, match="no ONNX file"):
        BytesCache("m", _model_dir(tmp_path), tmp_path / "c").ensure("openvino")


def _first_use(model_dir: str, root: str, barrier) -> None:
    cache = BytesCache("m", model_dir, root)
    barrier.wait()
    cache.ensure("onnx")


def test_concurrent_first_use_builds_once(tmp_path):
    model_dir, root = _model_dir(tmp_path), tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(3)
    workers = [
        context.Process(target=_first_use, args=(str(model_dir), str(root), barrier))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    cache = BytesCache("m", model_dir, root)
    assert _builds(cache) == 1 and cache.verify("onnx") is not None


# ---------------------------------------------------------------- the gate


def test_cosine_gate_passes_and_fails():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20, 8)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    texts = [str(i) for i in range(20)]

    def close(batch):
        return reference[[int(t) for t in batch]]

    def far(batch):
        out = close(batch) + 0.5 * rng.normal(size=(len(batch), 8)).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    good = cosine_gate("onnx", close, reference, texts)
    assert good.passed and good.cosine_mean == pytest.approx(1.0, abs=1e-5)
    bad = cosine_gate("onnx-int8", far, reference, texts)
    assert not bad.passed and bad.cosine_mean < 0.99 and bad.texts == 20


def test_local_gate_record_tied_to_file(tmp_path):
    record = GateRecord("onnx", 0.999, 0.99, 0.99, True, 10, "abc", 12.0, "now")
    store_local(tmp_path, record)
    assert load_local(tmp_path, "onnx", "abc") == record
    assert load_local(tmp_path, "onnx", "another-file") is None
    assert load_local(tmp_path, "onnx-int8", "abc") is None


def test_auto_order_takes_passed_fastest_runnable():
    gate = {
        "backends": {
            "torch-float32": {"passed": True, "speed_ratio": 1.0},
            "torch-bfloat16": {"passed": True, "speed_ratio": 2.0},
            "onnx-int8": {"passed": False, "speed_ratio": 2.5},
            "openvino-bfloat16": {"passed": True, "speed_ratio": 3.0},
            "openvino-float32": {"passed": True, "speed_ratio": 1.8},
        }
    }
    assert auto_order(gate, bf16_capable=True) == [
        "openvino-bfloat16",
        "torch-bfloat16",
        "openvino-float32",
        "torch-float32",
    ]
    assert auto_order(gate, bf16_capable=False) == ["openvino-float32", "torch-float32"]


def test_choose_backend_skips_failed_and_broken():
    def usable(label):
        if label == "openvino-bfloat16":
            raise RuntimeError("no OpenVINO here")
        return label != "onnx"

    label, skipped = choose_backend(
        ["openvino-bfloat16", "onnx", "onnx-int8"], usable, fallback="torch-float32"
    )
    assert label == "onnx-int8"
    assert any("no OpenVINO" in s for s in skipped) and any("onnx:" in s for s in skipped)
    assert choose_backend(["onnx"], lambda _: False, "torch-float32")[0] == "torch-float32"


def test_committed_gate_is_consistent():
    gate = committed_gate()
    backends = gate["backends"]
    assert set(backends) <= set(BACKEND_LABELS) and BASELINE in backends
    base = backends[BASELINE]["ndcg@10"]
    for label, entry in backends.items():
        if entry.get("ndcg@10") is not None:
            measured = {mode: entry["ndcg@10"][mode] - base[mode] for mode in base}
            assert entry["delta"] == pytest.approx(measured, abs=2e-4), label
        if entry.get("delta") is None:
            assert not entry.get("passed"), f"{label}: passed without a measurement"
            continue
        within = all(abs(d) <= gate["tolerance"] for d in entry["delta"].values())
        assert bool(entry["passed"]) == (within and entry.get("cosine_mean", 1.0) >= 0.99), label
    # what auto takes first on a CPU with bfloat16, and without
    assert auto_order(gate, bf16_capable=True)[0] == "openvino-bfloat16"
    assert "onnx-int8" not in auto_order(gate, bf16_capable=True)


def test_openvino_sends_no_telemetry():
    """openvino-telemetry is not installed (pyproject.toml says why): OpenVINO's tools fall
    back to their stub, so no process is forked to post usage data anywhere."""
    import importlib.util

    assert importlib.util.find_spec("openvino_telemetry") is None
    from openvino.tools.ovc import telemetry_utils

    assert telemetry_utils.tm.__name__.endswith("telemetry_stub")


# ------------------------------------------------------------------ batching by length


@pytest.mark.parametrize("batch_tokens", [0, 64, 512, 4096])
def test_length_batches_cover_every_text_once_longest_first(batch_tokens):
    from freshindex.encoders import length_batches

    rng = np.random.default_rng(7)
    lengths = [int(n) for n in rng.integers(3, 257, size=300)]
    batches = length_batches(lengths, batch_size=16, batch_tokens=batch_tokens)
    flat = [i for rows in batches for i in rows]
    assert sorted(flat) == list(range(300))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for rows in batches:
        padded = len(rows) * max(lengths[i] for i in rows)
        if batch_tokens == 0:
            assert len(rows) <= 16
        else:
            assert padded <= batch_tokens or len(rows) == 1


def test_a_token_budget_packs_short_texts_into_fewer_batches():
    from freshindex.encoders import length_batches

    short, long = [12] * 200, [256] * 32
    assert len(length_batches(short, 16, 4096)) == 1  # 200 x 12 = 2,400 pieces
    assert len(length_batches(short, 16, 0)) == 13
    assert len(length_batches(long, 16, 4096)) == 2  # full windows: 16 a batch, as before


def test_batch_tokens_is_validated():
    with pytest.raises(ConfigError, match="batch_tokens"):
        EmbeddingConfig(batch_tokens=-1)
