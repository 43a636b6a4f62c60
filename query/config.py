"""The query plane's settings (retrieval, context, extractive answers, model gateway, agent,
HTTP API): the model's defaults < a user file (``--query-config`` or
``$FRESHINDEX_QUERY_CONFIG``) < ``FRESHINDEX_<SECTION>__<KEY>`` variables < overrides.

Every default is written here, once; ``configs/query.yaml`` is rendered from this module
(``freshindex config defaults --query``). Loading, type checks and error messages are
``freshindex.settings``, shared with the pipelines' ``Config``. Why longer than most
modules: each setting's documentation lives beside it (it becomes the file's comments).

Example::

    qcfg = load_query_config(overrides={"retrieval.k": 10, "gateway.cache.enabled": False})
    qcfg.retrieval.mode  # "hybrid"
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from freshindex.config import CONFIGS_DIR
from freshindex.errors import ConfigError
from freshindex.query.types import MODES
from freshindex.settings import (
    Bool,
    Float,
    Int,
    Loaded,
    Str,
    expand_env,  # noqa: F401  (re-exported: earlier releases defined it here)
    file_form_validator,
    load_layers,
    render_defaults,
    secret_reference,
    secret_text,
    section,
    validate,
)

DEFAULT_QUERY_CONFIG = CONFIGS_DIR / "query.yaml"
QUERY_CONFIG_ENV = "FRESHINDEX_QUERY_CONFIG"
PROVIDER_KINDS = ("extractive", "openai-compatible")
# Older names of environment variables, kept working beside FRESHINDEX_<SECTION>__<KEY>.
ENV_ALIASES = {
    "FRESHINDEX_LLM_BASE_URL": "gateway.providers.llm.base_url",
    "FRESHINDEX_LLM_MODEL": "gateway.providers.llm.model",
}


@section("retrieval")
class RetrievalConfig:
    mode: Str = Field("hybrid", description="vector | fts | hybrid")
    k: Int = 5
    candidates: Int = Field(
        50, description="hits taken from each mode before fusion (hybrid) or reranking"
    )
    rrf_k: Int = Field(
        60, description="reciprocal rank fusion: score = sum(weight / (rrf_k + rank))"
    )
    weights: dict[Str, Float] = Field(default_factory=lambda: {"vector": 1.0, "fts": 1.0})
    vector_engine: Str = Field(
        "auto",
        description="memory: exact cosine over the pinned version's vectors held in RAM "
        "(about 1.5 KiB per chunk for 384-d vectors); lancedb: LanceDB's own vector search "
        "(uses an ANN index when the table has one, else a flat scan that is slow past ~20k "
        "rows); auto: memory up to memory_max_rows, else lancedb.",
    )
    memory_max_rows: Int = 250_000
    reranker: Str = Field("none", description="none | mmr (diversity over the fused candidates)")
    cached_versions: Int = Field(
        4, description="pinned table versions kept open (and in RAM for the memory engine)"
    )
    # Past it the result is marked scan_capped, never a full read.
    unlabeled: Str = Field(
        "public",
        description="who reads rows without access labels (written before labels "
        "existed): public (every caller) or deny (admin only); docs/SECURITY.md",
    )
    max_scan_rows: Int = Field(
        10_000,
        description="the most rows one filtered search (or an agent's listing) reads while "
        "looking for rows that pass a metadata filter; then the result is scan_capped",
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"retrieval.mode must be one of {MODES}, got {self.mode!r}")
        if self.max_scan_rows < 1:
            raise ConfigError("retrieval.max_scan_rows must be >= 1")
        if self.k < 1 or self.candidates < 1 or self.rrf_k < 0 or self.cached_versions < 1:
            raise ConfigError("retrieval.k, candidates and cached_versions must be >= 1")
        if self.vector_engine not in ("auto", "memory", "lancedb"):
            raise ConfigError("retrieval.vector_engine must be auto, memory or lancedb")
        if self.unlabeled not in ("public", "deny"):
            raise ConfigError("retrieval.unlabeled must be public or deny")
        if set(self.weights) - {"vector", "fts"} or any(w < 0 for w in self.weights.values()):
            raise ConfigError("retrieval.weights takes vector and fts, each >= 0")


@section("context")
class ContextConfig:
    max_tokens: Int = Field(
        1500, description="token budget of the retrieved passages placed in a prompt"
    )
    # another relative path is relative to the working directory, as any path a user gives
    prompts_dir: Str = Field(
        "prompts", description="prompts: the shipped templates; or a folder of your own"
    )

    def __post_init__(self) -> None:
        if self.max_tokens < 32:
            raise ConfigError("context.max_tokens must be >= 32")

    @property
    def prompts_path(self) -> Path:
        if self.prompts_dir in ("prompts", "configs/prompts"):  # the second: older configs
            return CONFIGS_DIR / "prompts"
        return Path(self.prompts_dir).resolve()


@section("extractive")
class ExtractiveConfig:
    max_sentences: Int = Field(3, description="sentences quoted in an answer")
    min_support: Float = Field(
        0.35, description='below this support the answer is "no answer in the context"'
    )
    semantic_weight: Float = Field(
        0.7,
        description="support = w * cosine(question, sentence) + (1 - w) * lexical",
    )

    def __post_init__(self) -> None:
        if self.max_sentences < 1 or not 0 <= self.semantic_weight <= 1:
            raise ConfigError("extractive.max_sentences >= 1 and semantic_weight in [0, 1]")


def _refuse_old_key_syntax(where: str, data: dict[str, Any]) -> None:
    if "api_key_env" in data:
        name = data["api_key_env"]
        raise ConfigError(
            f"{where}.api_key_env is no longer read",
            hint=f"write api_key: ${{{name if isinstance(name, str) and name else 'NAME'}}} "
            "(environment references are written ${NAME} everywhere)",
        )


@section("gateway.providers")
class ProviderConfig:
    """A model provider. In a file: ``api_key: ${NAME}`` names the environment variable
    that holds its key (``api_key_env`` here); a key itself is refused."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = (
        "kind",
        "base_url",
        "model",
        "api_key",
        "capabilities",
        "max_context_tokens",
        "headers",
    )

    name: Str
    kind: Str
    base_url: Str = ""
    model: Str = ""
    api_key_env: Str | None = None
    capabilities: tuple[Str, ...] = ()
    max_context_tokens: Int = 128_000
    headers: dict[Str, Str] = Field(default_factory=dict)

    @file_form_validator
    def _from_file(raw: dict[str, Any]) -> dict[str, Any]:
        where = f"gateway.providers.{raw.get('name')}"
        _refuse_old_key_syntax(where, raw)
        if "api_key" in raw:
            raw["api_key_env"] = secret_reference(f"{where}.api_key", raw.pop("api_key"))
        if "capabilities" not in raw:
            extractive = raw.get("kind") == "extractive"
            raw["capabilities"] = ("answer",) if extractive else ("chat", "answer")
        elif raw["capabilities"] is None:
            raw["capabilities"] = ()
        if raw.get("kind") == "extractive":
            raw.setdefault("model", "extractive-v1")
        return raw

    @classmethod
    def to_file(cls, data: dict[str, Any]) -> dict[str, Any]:
        data.pop("name")
        data = {"kind": data.pop("kind"), **data}
        data["api_key"] = secret_text(data.pop("api_key_env"))
        return {k: data[k] for k in cls.FILE_KEYS}

    def __post_init__(self) -> None:
        if self.kind not in PROVIDER_KINDS:
            raise ConfigError(
                f"provider {self.name!r}: kind must be one of {PROVIDER_KINDS}, got {self.kind!r}"
            )

    @property
    def configured(self) -> bool:
        return self.kind == "extractive" or bool(self.base_url)

    def api_key(self, environ: dict[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        return env.get(self.api_key_env) if self.api_key_env else None


@section("gateway.routes")
class RouteRule:
    providers: tuple[Str, ...]
    name: Str = ""
    task: tuple[Str, ...] = ()
    capability: Str | None = None
    min_prompt_tokens: Int | None = None
    max_prompt_tokens: Int | None = None

    @classmethod
    def to_file(cls, data: dict[str, Any]) -> dict[str, Any]:
        when = {
            k: data[k]
            for k in ("task", "capability", "min_prompt_tokens", "max_prompt_tokens")
            if data[k] not in (None, [])
        }
        return {"name": data["name"], "when": when, "providers": data["providers"]}

    def matches(self, task: str, capability: str | None, prompt_tokens: int) -> bool:
        if self.task and task not in self.task:
            return False
        if self.capability and self.capability != capability:
            return False
        if self.min_prompt_tokens is not None and prompt_tokens < self.min_prompt_tokens:
            return False
        return self.max_prompt_tokens is None or prompt_tokens <= self.max_prompt_tokens


@section("gateway.prices")
class Price:
    input: Float = 0.0  # USD per million tokens
    output: Float = 0.0


_ROUTE_WHEN = ("task", "capability", "min_prompt_tokens", "max_prompt_tokens")
_CACHE_KEYS = {
    "enabled": "cache_enabled",
    "path": "cache_path",
    "max_entries": "cache_max_entries",
    "ttl_hours": "cache_ttl_hours",
}


def _route(i: int, rule: Any) -> dict[str, Any]:
    """A route as written (``{name, when: {...}, providers}``) -> RouteRule's fields."""
    when = rule.get("when") if isinstance(rule, dict) else None
    when = {} if when is None else when
    if (
        not isinstance(rule, dict)
        or not isinstance(when, dict)
        or set(when) - set(_ROUTE_WHEN)
        or set(rule) - {"name", "when", "providers"}
        or not rule.get("providers")
    ):
        raise ConfigError(
            f"gateway.routes[{i}] is malformed",
            hint="a route is {name, when: {task, capability, min_prompt_tokens, "
            "max_prompt_tokens}, providers: [...]}",
        )
    task = when.get("task", ())
    return {
        **when,
        "providers": rule["providers"],
        "name": rule.get("name") or f"route-{i}",
        "task": (task,) if isinstance(task, str) else task,
    }


def _default_providers() -> dict[str, ProviderConfig]:
    return {
        "extractive": ProviderConfig(
            name="extractive", kind="extractive", model="extractive-v1", capabilities=("answer",)
        ),
        "llm": ProviderConfig(
            name="llm",
            kind="openai-compatible",
            model="gpt-4o-mini",
            api_key_env="FRESHINDEX_LLM_API_KEY",
            capabilities=("chat", "tools"),
        ),
    }


def _default_routes() -> tuple[RouteRule, ...]:
    return (
        RouteRule(name="tool-calling", capability="tools", providers=("llm",)),
        RouteRule(name="answer", task=("answer", "agent"), providers=("llm", "extractive")),
    )


@section("gateway")
class GatewayConfig:
    """The model gateway: every model call goes through it (routing, retries, fallbacks,
    cache, accounting). providers: "extractive" answers from the retrieved passages with no
    model; "llm" is any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama,
    llama.cpp...), skipped by every route while its base_url is empty (env
    FRESHINDEX_LLM_BASE_URL, FRESHINDEX_LLM_MODEL; its key in FRESHINDEX_LLM_API_KEY).
    routes: the first matching rule wins (on task, capability, min_prompt_tokens,
    max_prompt_tokens); its providers are tried in order (the fallback chain). cache:
    responses by request, the oldest evicted past max_entries, older than ttl_hours missed
    (null: never expire)."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = (
        "timeout_s",
        "request_deadline_s",
        "max_attempts",
        "backoff_s",
        "max_backoff_s",
        "cache",
        "accounting_log",
        "providers",
        "routes",
        "default_route",
        "prices",
    )
    FILE_DOCS: ClassVar[dict[str, str]] = {
        "prices": 'USD per million tokens, by "provider/model" or "provider/*" (calls not '
        "listed cost nothing)",
    }

    timeout_s: Float = Field(30.0, description="per call")
    # One deadline for every model call of a request (attempts, backoff and fallbacks
    # together); past it the request ends with DeadlineExceeded and no further call starts.
    request_deadline_s: Float = Field(
        60.0, description="all model calls of one request, retries and fallbacks included"
    )
    max_attempts: Int = Field(3, description="per provider, on timeouts, rate limits and 5xx")
    backoff_s: Float = Field(
        0.5, description="doubled each retry, with jitter, capped at max_backoff_s"
    )
    max_backoff_s: Float = 8.0
    cache_enabled: Bool = True
    cache_path: Str = "./data/cache/gateway.sqlite"
    cache_max_entries: Int = 10_000  # the oldest responses are evicted past this
    cache_ttl_hours: Float | None = 168.0  # a response older than this is a miss; None: never
    accounting_log: Str | None = Field(
        None, description="a JSONL file that receives one line per model call"
    )
    providers: dict[Str, ProviderConfig] = Field(default_factory=_default_providers)
    routes: tuple[RouteRule, ...] = Field(default_factory=_default_routes)
    default_route: tuple[Str, ...] = ("extractive",)
    prices: dict[Str, Price] = Field(
        default_factory=lambda: {
            "extractive/*": Price(input=0.0, output=0.0),
            "llm/gpt-4o-mini": Price(input=0.15, output=0.60),
        }
    )

    @file_form_validator
    def _from_file(raw: dict[str, Any]) -> dict[str, Any]:
        cache = raw.pop("cache", None)
        cache = {} if cache is None else cache
        if not isinstance(cache, dict) or set(cache) - set(_CACHE_KEYS):
            raise ConfigError("gateway.cache takes enabled, path, max_entries and ttl_hours")
        raw.update({_CACHE_KEYS[k]: v for k, v in cache.items()})
        providers = raw.get("providers")
        if isinstance(providers, dict):
            raw["providers"] = {
                name: {**p, "name": name} if isinstance(p, dict) else p
                for name, p in providers.items()
            }
        routes = raw.get("routes")
        if isinstance(routes, list):
            raw["routes"] = [_route(i, rule) for i, rule in enumerate(routes)]
        return raw

    @classmethod
    def to_file(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["cache"] = {k: data.pop(attr) for k, attr in _CACHE_KEYS.items()}
        return {k: data[k] for k in cls.FILE_KEYS}

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_attempts < 1 or self.backoff_s < 0:
            raise ConfigError("gateway.timeout_s > 0, max_attempts >= 1, backoff_s >= 0")
        if not self.request_deadline_s > 0:
            raise ConfigError("gateway.request_deadline_s must be > 0")
        if self.cache_max_entries < 1 or (
            self.cache_ttl_hours is not None and self.cache_ttl_hours <= 0
        ):
            raise ConfigError("gateway.cache.max_entries must be >= 1 and ttl_hours > 0 or null")
        named = [*self.default_route, *(p for r in self.routes for p in r.providers)]
        unknown = sorted(set(named) - set(self.providers))
        if unknown:
            raise ConfigError(
                f"routes name unknown providers: {unknown}",
                hint=f"defined providers: {sorted(self.providers)}",
            )

    def price(self, provider: str, model: str) -> Price:
        return self.prices.get(f"{provider}/{model}") or self.prices.get(f"{provider}/*") or Price()


@section("agent")
class AgentConfig:
    max_steps: Int = 8
    trace_dir: Str | None = Field(
        None, description="a folder: each agent run's trace is written there as JSON"
    )

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError("agent.max_steps must be >= 1")


@section("api")
class ApiConfig:
    """The HTTP API (docs/QUERY.md "Exposure"): bodies are read only after the key and the
    limits are checked, and at most max_body_bytes of them."""

    FILE_KEYS: ClassVar[tuple[str, ...]] = (
        "host",
        "port",
        "api_key",
        "max_query_chars",
        "max_k",
        "max_agent_steps",
        "max_filters",
        "max_body_bytes",
        "rate_limit_per_minute",
        "rate_limit_burst",
        "max_concurrent_per_client",
        "max_tracked_clients",
        "expose_source_uri",
        "api_key_principals",
        "keys",
    )
    FILE_DOCS: ClassVar[dict[str, str]] = {
        "api_key": "${NAME}: the environment variable holding the API key; null: no auth, "
        "which `serve` allows only on a loopback address (or with --insecure-no-auth).",
    }

    host: Str = "127.0.0.1"
    port: Int = 8080
    api_key_env: Str | None = None  # written api_key: ${NAME} in a file
    max_query_chars: Int = 2000
    max_k: Int = 50
    max_agent_steps: Int = 12
    max_filters: Int = 16
    max_body_bytes: Int = Field(
        262_144, description="larger bodies get 413 (counted as they stream in)"
    )
    rate_limit_per_minute: Float = Field(
        120.0,
        description="per API key, else per client address (429 + Retry-After); 0: off",
    )
    rate_limit_burst: Int = Field(20, description="requests a quiet client may send at once")
    max_concurrent_per_client: Int = Field(4, description="requests in flight per client; 0: off")
    max_tracked_clients: Int = Field(
        10_000, description="the least recently seen client's state is dropped past this"
    )
    expose_source_uri: Bool = Field(
        False, description="true: hits carry source_uri (server paths, bucket URLs)"
    )
    api_key_principals: list[Str] = Field(
        default_factory=lambda: ["admin"],
        description="the principals of the api_key holder (docs/SECURITY.md); admin reads "
        "every document, as the one key always did",
    )
    keys: dict[Str, list[Str]] = Field(
        default_factory=dict,
        description="API keys by their hash -> principals: 'sha256:<hex>': [alice, eng] "
        "(`freshindex access hash-key` prints the hash; the key itself is never stored)",
    )

    @file_form_validator
    def _from_file(raw: dict[str, Any]) -> dict[str, Any]:
        _refuse_old_key_syntax("api", raw)
        if "api_key" in raw:
            raw["api_key_env"] = secret_reference("api.api_key", raw.pop("api_key"))
        return raw

    @classmethod
    def to_file(cls, data: dict[str, Any]) -> dict[str, Any]:
        data["api_key"] = secret_text(data.pop("api_key_env"))
        return {k: data[k] for k in cls.FILE_KEYS}

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError("api.max_body_bytes must be >= 1024")
        if self.rate_limit_per_minute < 0 or self.max_concurrent_per_client < 0:
            raise ConfigError("api.rate_limit_per_minute and max_concurrent_per_client >= 0")
        if self.rate_limit_burst < 1 or self.max_tracked_clients < 1:
            raise ConfigError("api.rate_limit_burst and max_tracked_clients must be >= 1")
        if self.max_query_chars < 1 or self.max_k < 1 or self.max_filters < 0:
            raise ConfigError("api.max_query_chars and max_k must be >= 1, max_filters >= 0")
        from freshindex.schemas.access import labels

        for name, principals in [("api_key_principals", self.api_key_principals)] + [
            (f"keys[{digest[:15]}...]", p) for digest, p in self.keys.items()
        ]:
            try:
                labels(principals)
            except ValueError as exc:
                raise ConfigError(f"api.{name}: {exc}") from None
        for digest in self.keys:
            if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
                raise ConfigError(
                    "api.keys are written by their hash, 'sha256:' and 64 hex digits",
                    hint="`freshindex access hash-key` reads a key on stdin and prints it",
                )


@section("")
class QueryConfig:
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)
    extractive: ExtractiveConfig = Field(default_factory=ExtractiveConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)


DEFAULTS_HEADER = """freshindex query layer's settings, as shipped: retrieval, model gateway,
agent and HTTP API. Rendered from freshindex/query/config.py (`freshindex config defaults
--query > configs/query.yaml`): edit the code, not this file.

Give your own file with --query-config (or FRESHINDEX_QUERY_CONFIG); it is merged over these
defaults, then FRESHINDEX_<SECTION>__<KEY> variables (e.g. FRESHINDEX_RETRIEVAL__K=10) and
flags. Secrets are never written in a file, only the environment variable that holds them,
as ${NAME} (api_key: ${NAME}); other text settings may use ${NAME} and ${NAME:-default}."""


def query_config_from_dict(raw: dict[str, Any]):
    """A validated QueryConfig from a mapping in file form."""
    return validate(QueryConfig, raw)


def explain_query_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Loaded:
    """``load_query_config`` and, for every key, where its value came from."""
    env = os.environ if environ is None else environ
    return load_layers(
        QueryConfig,
        path=path or env.get(QUERY_CONFIG_ENV) or None,
        overrides=overrides,
        environ=env,
        env_aliases=ENV_ALIASES,
        what="query config file",
    )


def load_query_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> QueryConfig:
    """Defaults, then ``path`` (or ``$FRESHINDEX_QUERY_CONFIG``), then the environment, then
    dotted ``overrides``."""
    return explain_query_config(path, overrides, environ).value


def default_query_yaml() -> str:
    """The text of ``configs/query.yaml``."""
    return render_defaults(QueryConfig, DEFAULTS_HEADER)
