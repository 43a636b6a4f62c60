"""The gateway's response cache: keyed by (provider, model, prompt, parameters), on disk.

A SQLite file (standard library, safe for several processes), one row per response. The key
is a SHA-256 of the canonical JSON of provider, model and ``ChatRequest.cache_material()``
(messages, question, context chunk ids and texts, tools, temperature, max_tokens), so any
change to the prompt or its parameters is a miss. Hits and misses are counted per instance.
It is bounded: a response older than ``ttl_s`` is a miss (and removed), and past
``max_entries`` the oldest responses are evicted when a new one is stored.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from freshindex.query.types import ChatRequest, ChatResponse, Citation, ToolCall, Usage


def cache_key(provider: str, model: str, request: ChatRequest, salt: str = "") -> str:
    """``salt``: the provider's own settings that change its answers (extractive thresholds)."""
    material = {"provider": provider, "model": model, "salt": salt, **request.cache_material()}
    blob = json.dumps(material, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def response_from_dict(raw: dict[str, Any]) -> ChatResponse:
    return ChatResponse(
        **{
            **raw,
            "usage": Usage(**raw["usage"]),
            "tool_calls": tuple(ToolCall(**c) for c in raw.get("tool_calls") or ()),
            "citations": tuple(Citation(**c) for c in raw.get("citations") or ()),
        }
    )


class ResponseCache:
    """``get``/``put`` ChatResponses; ``path=None`` keeps them in memory only."""

    def __init__(
        self, path: str | Path | None, *, max_entries: int = 10_000, ttl_s: float | None = None
    ):
        self.path = str(path) if path else ":memory:"
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self.evicted = 0
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        if path:  # readers do not block the writer of another process
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, provider TEXT, "
            "model TEXT, response TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_age ON responses (created_at)")
        self._db.commit()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> ChatResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT response, created_at FROM responses WHERE key = ?", (key,)
            ).fetchone()
            if row and self.ttl_s is not None and row[1] < time.time() - self.ttl_s:
                self._db.execute("DELETE FROM responses WHERE key = ?", (key,))
                self._db.commit()
                self.evicted += 1
                row = None
            try:
                response = response_from_dict(json.loads(row[0])) if row else None
            except (TypeError, KeyError, ValueError):  # written by another version: a miss
                response = None
            if response is None:
                self.misses += 1
            else:
                self.hits += 1
        return response

    def put(self, key: str, response: ChatResponse) -> None:
        blob = json.dumps(response.to_dict(), ensure_ascii=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (key, response.provider, response.model, blob, time.time()),
            )
            self.evicted += self._evict()
            self._db.commit()

    def _evict(self) -> int:
        """Drop expired responses, then the oldest past ``max_entries``; returns how many."""
        removed = 0
        if self.ttl_s is not None:
            removed += self._db.execute(
                "DELETE FROM responses WHERE created_at < ?", (time.time() - self.ttl_s,)
            ).rowcount
        over = self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0] - self.max_entries
        if over > 0:
            removed += self._db.execute(
                "DELETE FROM responses WHERE key IN "
                "(SELECT key FROM responses ORDER BY created_at, key LIMIT ?)",
                (over,),
            ).rowcount
        return removed

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "evicted": self.evicted,
            "entries": len(self),
            "path": self.path,
        }

    def close(self) -> None:
        with self._lock:
            self._db.close()
