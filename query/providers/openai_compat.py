"""Chat completions over HTTP, as OpenAI, vLLM, Ollama, llama.cpp's server and others speak it.

``POST {base_url}/chat/completions`` with ``model``, ``messages``, ``temperature``,
``max_tokens`` and, for tool calling, ``tools`` (function specs). The API key is read from the
environment variable the config names and sent as a bearer token.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from freshindex.query.config import ProviderConfig
from freshindex.query.context import estimate_messages, estimate_tokens, is_refusal
from freshindex.query.errors import (
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
)
from freshindex.query.types import ChatRequest, ChatResponse, Message, ToolCall, Usage


def message_payload(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    if m.name and m.role == "tool":
        out["name"] = m.name
    return out


def request_payload(request: ChatRequest, model: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [message_payload(m) for m in request.messages],
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.tools:
        payload["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                },
            }
            for t in request.tools
        ]
        payload["tool_choice"] = "auto"
    return payload


def _tool_calls(raw: list[dict] | None) -> tuple[ToolCall, ...]:
    calls = []
    for i, item in enumerate(raw or []):
        fn = item.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                args = {"_unparsed": args}
        calls.append(
            ToolCall(
                id=item.get("id") or f"call_{i}", name=fn.get("name", ""), arguments=args or {}
            )
        )
    return tuple(calls)


class OpenAICompatibleProvider:
    def __init__(self, cfg: ProviderConfig, *, environ: dict[str, str] | None = None):
        self.name = cfg.name
        self.model = cfg.model
        self.capabilities = frozenset(cfg.capabilities)
        self.max_context_tokens = cfg.max_context_tokens
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", **cfg.headers}
        key = cfg.api_key(environ)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._key_env = cfg.api_key_env
        # cached responses carry ``answered``, decided by ``is_refusal`` since this salt
        self.cache_salt = "refusal:whole-reply"
        self._client = None
        self._lock = threading.Lock()

    def _http(self):
        import httpx

        with self._lock:
            if self._client is None:
                self._client = httpx.Client(headers=self._headers)
            return self._client

    def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        import httpx

        model = request.model or self.model
        payload = request_payload(request, model)
        started = time.perf_counter()
        try:
            reply = self._http().post(self._url, json=payload, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(
                f"{self.name}: no answer from {self._url} within {timeout:g}s", provider=self.name
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderUnavailable(
                f"{self.name}: cannot reach {self._url}: {exc}", provider=self.name
            ) from exc
        latency = (time.perf_counter() - started) * 1000
        if reply.status_code == 429:
            raise RateLimited(
                f"{self.name}: rate limited (429)",
                provider=self.name,
                retry_after=_retry_after(reply.headers.get("retry-after")),
            )
        if reply.status_code >= 500:
            raise ProviderUnavailable(
                f"{self.name}: server error {reply.status_code}: {reply.text[:200]}",
                provider=self.name,
            )
        if reply.status_code in (401, 403):
            raise ProviderError(
                f"{self.name}: {reply.status_code} unauthorized",
                provider=self.name,
                hint=f"set the API key in ${self._key_env}" if self._key_env else None,
            )
        if reply.status_code >= 400:
            raise ProviderError(
                f"{self.name}: request refused ({reply.status_code}): {reply.text[:300]}",
                provider=self.name,
            )
        try:
            body = reply.json()
            choice = body["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ProviderUnavailable(
                f"{self.name}: the reply is not a chat completion: {reply.text[:200]}",
                provider=self.name,
            ) from exc
        text = message.get("content") or ""
        calls = _tool_calls(message.get("tool_calls"))
        usage = body.get("usage") or {}
        if usage.get("prompt_tokens") is not None and usage.get("completion_tokens") is not None:
            tokens = Usage(int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        else:
            out = estimate_tokens(text) + sum(
                estimate_tokens(json.dumps(c.arguments)) for c in calls
            )
            tokens = Usage(estimate_messages(request.messages), out, estimated=True)
        return ChatResponse(
            text=text,
            provider=self.name,
            model=model,
            usage=tokens,
            tool_calls=calls,
            # the prompt asks for the no-answer reply as the whole text: nothing else refuses
            answered=bool(calls) or not is_refusal(text),
            finish_reason=choice.get("finish_reason") or ("tool_calls" if calls else "stop"),
            latency_ms=latency,
        )


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:
        return 0.0
