"""The provider contract: one call in, one response out, errors typed for retry and fallback.

A provider raises ``ProviderTimeout``, ``RateLimited`` or ``ProviderUnavailable`` (retryable:
the gateway retries with backoff, then falls back to the next provider of the route) or a
plain ``ProviderError`` (not retried). It never caches or accounts: the gateway does both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from freshindex.query.config import ExtractiveConfig, ProviderConfig
from freshindex.query.types import ChatRequest, ChatResponse


class Provider(Protocol):
    name: str
    model: str
    capabilities: frozenset[str]  # answer, chat, tools
    max_context_tokens: int

    def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse: ...


def build_provider(
    cfg: ProviderConfig,
    *,
    extractive: ExtractiveConfig | None = None,
    embedder: Any | Callable[[], Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Provider:
    """A provider for its config entry. ``embedder`` (or a function returning one) is what the
    extractive provider scores sentences with: the table's own model."""
    if cfg.kind == "extractive":
        from freshindex.query.providers.extractive import ExtractiveProvider

        return ExtractiveProvider(cfg, extractive or ExtractiveConfig(), embedder=embedder)
    from freshindex.query.providers.openai_compat import OpenAICompatibleProvider

    return OpenAICompatibleProvider(cfg, environ=environ)
