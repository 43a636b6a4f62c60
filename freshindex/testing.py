"""Test kit of the query layer: a fixture index and a chat-completions stand-in server.

It lives at the top floor, beside the operator commands, not in ``freshindex.query``: the
fixture index is built with the batch pipeline, which the query plane must not import.

``StandInChatServer`` is a STAND-IN for an OpenAI-compatible server (``http.server`` in a
thread, on 127.0.0.1): it replays scripted replies (a completion, tool calls, an HTTP error,
a delay) and records every request, so the provider, gateway and agent can be tested without
a model. It is not a model and never leaves the machine.

``fixture_index(model)`` builds a small real index with the batch pipeline once per process.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- the stand-in server


@dataclass
class Reply:
    """One scripted reply. ``status`` != 200 sends an error; ``delay`` sleeps first."""

    text: str | None = "ok"
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    usage: dict[str, int] | None = field(
        default_factory=lambda: {"prompt_tokens": 10, "completion_tokens": 5}
    )
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None  # raw body, instead of a completion

    @staticmethod
    def tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }


class StandInChatServer:
    """STAND-IN chat-completions server: ``with StandInChatServer() as srv: srv.script(...)``.

    When the script runs out, ``default`` is replayed.
    """

    def __init__(self, default: Reply | None = None):
        self.default = default or Reply()
        self.requests: list[dict[str, Any]] = []
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "json": payload}
                    )
                    reply = server._script.popleft() if server._script else server.default
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    blob = reply.body.encode()
                elif reply.status != 200:
                    blob = json.dumps({"error": {"message": f"stand-in {reply.status}"}}).encode()
                else:
                    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
                    if reply.tool_calls:
                        message["tool_calls"] = reply.tool_calls
                    body: dict[str, Any] = {
                        "id": "chatcmpl-standin",
                        "object": "chat.completion",
                        "model": payload.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": message,
                                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                            }
                        ],
                    }
                    if reply.usage is not None:
                        body["usage"] = {
                            **reply.usage,
                            "total_tokens": sum(reply.usage.values()),
                        }
                    blob = json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(blob)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(blob)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def script(self, *replies: Reply) -> StandInChatServer:
        with self._lock:
            self._script.extend(replies)
        return self

    def __enter__(self) -> StandInChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# ---------------------------------------------------------------- the fixture index

DOCS = {
    "guide/timeouts.md": "# Timeouts\n\nHTTPX times out after five seconds by default. "
    "Pass timeout=None to disable the timeout.\n\n## Pool\n\nThe pool timeout limits how long "
    "a request waits for a free connection from the pool.",
    "guide/auth.md": "# Authentication\n\nBasic authentication sends a user name and a "
    "password with every request. Digest authentication hashes the password first.",
    "notes/ducks.md": "# Ducks\n\nDucks are water birds with broad flat bills. Mallards are "
    "the most common duck species in the northern hemisphere.",
    "readme.txt": "A plain text note about caching responses for ten minutes.",
}
# JSONL records with metadata, ingested beside the files (append sync).
RECORDS = [
    {
        "_id": "papers/aspirin",
        "title": "Aspirin",
        "text": "Aspirin reduces fever and inhibits platelet aggregation.",
        "metadata": {"lang": "en", "year": 2019, "tags": ["drug", "nsaid"], "review": True},
    },
    {
        "_id": "papers/ibuprofen",
        "title": "Ibuprofen",
        "text": "Ibuprofen is a nonsteroidal anti-inflammatory drug used against pain.",
        "metadata": {"lang": "de", "year": 2021, "tags": ["drug"], "review": False},
    },
    {
        "_id": "x' OR '1'='1",
        "title": "Injection",
        "text": "A record whose id looks like an SQL injection, about lighthouse keepers.",
        "metadata": {"lang": "en", "year": 2020, "note": "it's quoted"},
    },
]

_built: dict[str, Path] = {}
_build_lock = threading.Lock()


def index_config(db: str, model: str = "fake-hash"):
    from freshindex.config import load_config

    overrides: dict[str, Any] = {"db": db, "table": "docs", "embedding.model": model}
    overrides |= {"chunking.max_tokens": 48, "chunking.overlap_tokens": 8}
    return load_config(overrides=overrides, environ={})


def build_index(folder: Path, model: str = "fake-hash") -> tuple[Any, list[dict]]:
    """Ingest ``DOCS`` (full sync) then ``RECORDS`` (append) into ``folder/lancedb``; returns
    (config, the two run manifest rows)."""
    import dataclasses

    from freshindex.pipelines.batch import run_ingest

    corpus = folder / "corpus"
    for rel, text in DOCS.items():
        path = corpus / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    records = folder / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    cfg = index_config(str(folder / "lancedb"), model)
    first = run_ingest(cfg, str(corpus), [])
    append = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, sync="append"))
    second = run_ingest(append, str(records), [])
    return cfg, [first, second]


def fixture_index(model: str = "fake-hash") -> Path:
    """A read-only fixture index, built once per process (removed at exit). Copy it before
    writing to it."""
    with _build_lock:
        if model not in _built:
            folder = Path(tempfile.mkdtemp(prefix=f"freshindex-query-{model}-"))
            atexit.register(shutil.rmtree, folder, True)
            build_index(folder, model)
            _built[model] = folder
        return _built[model]


def copy_index(model: str, dest: Path):
    """A writable copy of the fixture index under ``dest``; returns its config."""
    shutil.copytree(fixture_index(model) / "lancedb", dest / "lancedb")
    return index_config(str(dest / "lancedb"), model)
