"""Embedders that run the cached ONNX export: ONNX Runtime (float32 or int8) and OpenVINO.

They keep the ``Embedder`` contract of the torch one: the model's own fast tokenizer (the
same tokenizer.json, so token counts and spans are identical), at most ``max_seq_length``
word-pieces read, mean pooling inside the exported graph, float32 L2-normalised output.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class _TokenizedEncoder:
    """Tokenization, batching and normalisation shared by the runtimes; subclasses run
    ``_infer(inputs) -> (batch, dim) float32``."""

    backend = ""
    dtype = "float32"  # what the runtime computes in (the output is float32 either way)

    def __init__(self, model: str, model_dir: str | Path, *, batch_size: int, normalize: bool):
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.model_name = model
        self._batch_size = batch_size
        self._normalize = normalize
        max_seq = 512
        st_config = model_dir / "sentence_bert_config.json"
        if st_config.is_file():
            max_seq = int(json.loads(st_config.read_text()).get("max_seq_length") or max_seq)
        self.max_tokens = max_seq - 2  # [CLS] and [SEP]
        counting = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        counting.no_truncation()
        counting.no_padding()
        self._counting = counting
        batching = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        batching.enable_truncation(max_length=max_seq)
        pad_token = "[PAD]"
        special = model_dir / "special_tokens_map.json"
        if special.is_file():
            value = json.loads(special.read_text()).get("pad_token", pad_token)
            pad_token = value["content"] if isinstance(value, dict) else value
        batching.enable_padding(pad_id=batching.token_to_id(pad_token) or 0, pad_token=pad_token)
        self._batching = batching
        config = json.loads((model_dir / "config.json").read_text())
        self.dim = int(config["hidden_size"])
        self._lock = threading.Lock()

    def _inputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._batching.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # longest first, like sentence-transformers: a batch holds texts of similar length
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        with self._lock:  # the runtimes already use every core; threads would only contend
            for start in range(0, len(order), self._batch_size):
                rows = order[start : start + self._batch_size]
                out[rows] = self._infer(self._inputs([texts[i] for i in rows]))
        if self._normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        return len(self._counting.encode(text, add_special_tokens=False).ids)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return list(self._counting.encode(text, add_special_tokens=False).offsets)

    def _infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeEmbedder(_TokenizedEncoder):
    """ONNX Runtime's CPU provider on ``onnx_file`` (float32 export or its int8 copy)."""

    def __init__(self, model, model_dir, onnx_file, *, backend, batch_size, normalize):
        super().__init__(model, model_dir, batch_size=batch_size, normalize=normalize)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self._names = [i.name for i in self._session.get_inputs()]
        self.backend = backend
        self.dtype = "int8" if backend.endswith("int8") else "float32"

    def _infer(self, inputs):
        feed = {name: inputs[name] for name in self._names}
        return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)


class OpenVinoEmbedder(_TokenizedEncoder):
    """OpenVINO's CPU plugin on the float32 ONNX export, computing in ``precision``
    (bfloat16 uses the CPU's AVX512-BF16/AMX units; float32 is exact)."""

    def __init__(self, model, model_dir, onnx_file, *, precision, compiled_cache, **kwargs):
        super().__init__(model, model_dir, **kwargs)
        import openvino as ov

        core = ov.Core()
        Path(compiled_cache).mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(compiled_cache)})
        hint = {"bfloat16": "bf16", "float32": "f32"}[precision]
        self._compiled = core.compile_model(
            str(onnx_file), "CPU", {"INFERENCE_PRECISION_HINT": hint}
        )
        self._request = self._compiled.create_infer_request()
        self._names = [port.get_any_name() for port in self._compiled.inputs]
        self.backend = f"openvino-{precision}"
        self.dtype = precision

    def _infer(self, inputs):
        result = self._request.infer({name: inputs[name] for name in self._names})
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32)
