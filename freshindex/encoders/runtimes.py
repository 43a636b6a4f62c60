"""Embedders that run the cached ONNX export: ONNX Runtime (float32 or int8) and OpenVINO.

They keep the ``Embedder`` contract of the torch one: the model's own fast tokenizer (the
same tokenizer.json, so token counts and spans are identical), at most ``max_seq_length``
word-pieces read, mean pooling inside the exported graph, float32 L2-normalised output.

Texts are tokenized once per call and batched by length (``length_batches``): longest first,
so a batch pads little, and with ``batch_tokens`` as many texts as fit that many padded
word-pieces. OpenVINO runs a call's batches on as many parallel inference streams as the CPU
has cores (``THROUGHPUT``), and a single batch (a query) on one stream using every core
until the process has needed the parallel streams.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

Feed = dict[str, np.ndarray]


def length_batches(
    lengths: Sequence[int], batch_size: int, batch_tokens: int = 0
) -> list[list[int]]:
    """Indices of texts grouped for encoding, longest first so a batch pads little.

    ``batch_tokens`` 0: ``batch_size`` texts a batch. Otherwise a batch takes texts while
    its padded size (texts x the longest one's word-pieces) stays within ``batch_tokens``:
    many short texts a batch, few long ones; a text longer than the budget is alone.

    >>> length_batches([5, 100, 7, 90], batch_size=2)
    [[1, 3], [2, 0]]
    >>> length_batches([5, 100, 7, 90], batch_size=2, batch_tokens=200)
    [[1, 3], [2, 0]]
    >>> length_batches([5, 100, 7, 90], batch_size=2, batch_tokens=100)
    [[1], [3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if batch_tokens <= 0:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class _TokenizedEncoder:
    """Tokenization, batching and normalisation shared by the runtimes; subclasses run
    ``_infer(inputs) -> (batch, dim) float32``."""

    backend = ""
    dtype = "float32"  # what the runtime computes in (the output is float32 either way)

    def __init__(
        self,
        model: str,
        model_dir: str | Path,
        *,
        batch_size: int,
        normalize: bool,
        batch_tokens: int = 0,
    ):
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        self.model_name = model
        self._batch_size, self._batch_tokens = batch_size, batch_tokens
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
        truncating = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        truncating.enable_truncation(max_length=max_seq)
        truncating.no_padding()
        self._truncating = truncating
        pad_token = "[PAD]"
        special = model_dir / "special_tokens_map.json"
        if special.is_file():
            value = json.loads(special.read_text()).get("pad_token", pad_token)
            pad_token = value["content"] if isinstance(value, dict) else value
        self._pad_id = truncating.token_to_id(pad_token) or 0
        config = json.loads((model_dir / "config.json").read_text())
        self.dim = int(config["hidden_size"])
        self._lock = threading.Lock()

    def _padded(self, encodings: list, rows: list[int]) -> Feed:
        width = max(len(encodings[i].ids) for i in rows)
        feed = {name: np.zeros((len(rows), width), dtype=np.int64) for name in INPUT_NAMES}
        feed["input_ids"].fill(self._pad_id)
        for row, i in enumerate(rows):
            e = encodings[i]
            n = len(e.ids)
            feed["input_ids"][row, :n] = e.ids
            feed["attention_mask"][row, :n] = 1
            feed["token_type_ids"][row, :n] = e.type_ids
        return feed

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._truncating.encode_batch(texts)
        batches = length_batches(
            [len(e.ids) for e in encodings], self._batch_size, self._batch_tokens
        )
        with self._lock:  # the runtimes already use every core; threads would only contend
            self._run(batches, lambda rows: self._padded(encodings, rows), out)
        if self._normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out = out / np.where(norms > 0, norms, 1.0)
        return out.astype(np.float32, copy=False)

    def count_tokens(self, text: str) -> int:
        return len(self._counting.encode(text, add_special_tokens=False).ids)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return list(self._counting.encode(text, add_special_tokens=False).offsets)

    def _run(self, batches: list[list[int]], feed: Callable[[list[int]], Feed], out) -> None:
        """Fill ``out[rows]`` for every batch of rows."""
        for rows in batches:
            out[rows] = self._infer(feed(rows))

    def _infer(self, inputs: Feed) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeEmbedder(_TokenizedEncoder):
    """ONNX Runtime's CPU provider on ``onnx_file`` (float32 export or its int8 copy)."""

    def __init__(self, model, model_dir, onnx_file, *, backend, **kwargs):
        super().__init__(model, model_dir, **kwargs)
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
        self._core, self._onnx_file = core, str(onnx_file)
        self._precision = {
            "INFERENCE_PRECISION_HINT": {"bfloat16": "bf16", "float32": "f32"}[precision]
        }
        # compiled at first need, so a process holds one model in most cases (its buffers
        # for 16 full windows are ~0.4-0.6 GB): a call with one batch (a query) before any
        # larger call gets one stream on every core; a call with several batches gets a
        # stream per core, and so do all calls after it
        self._latency = None
        self._parallel = None
        self.backend = f"openvino-{precision}"
        self.dtype = precision

    def _compile(self, hint: str):
        return self._core.compile_model(
            self._onnx_file, "CPU", {**self._precision, "PERFORMANCE_HINT": hint}
        )

    def _infer(self, inputs):
        if self._latency is None:
            compiled = self._compile("LATENCY")
            names = [port.get_any_name() for port in compiled.inputs]
            self._latency = (compiled.create_infer_request(), names, compiled.output(0))
        request, names, output = self._latency
        result = request.infer({name: inputs[name] for name in names})
        return np.asarray(result[output], dtype=np.float32)

    def _run(self, batches, feed, out) -> None:
        if len(batches) < 2 and self._parallel is None:
            super()._run(batches, feed, out)
            return
        import openvino as ov

        if self._parallel is None:
            compiled = self._compile("THROUGHPUT")
            requests = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
            names = [port.get_any_name() for port in compiled.inputs]
            self._parallel = (ov.AsyncInferQueue(compiled, requests), names)
        queue, names = self._parallel

        def done(request, rows) -> None:
            out[rows] = request.get_output_tensor(0).data

        queue.set_callback(done)
        # the next batch is padded while the streams run; start_async waits for a free one
        for rows in batches:
            inputs = feed(rows)
            queue.start_async({name: inputs[name] for name in names}, rows)
        queue.wait_all()
