"""Typed configuration of the query layer: ``configs/query.yaml`` < a user file < overrides.

Example::

    qcfg = load_query_config(overrides={"retrieval.k": 10, "gateway.cache.enabled": False})
    qcfg.retrieval.mode  # "hybrid"
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freshindex.config import CONFIGS_DIR, _merge, _set_dotted
from freshindex.errors import ConfigError
from freshindex.query.types import MODES

DEFAULT_QUERY_CONFIG = CONFIGS_DIR / "query.yaml"
QUERY_CONFIG_ENV = "FRESHINDEX_QUERY_CONFIG"
PROVIDER_KINDS = ("extractive", "openai-compatible")


@dataclass(frozen=True)
class RetrievalConfig:
    mode: str = "hybrid"
    k: int = 5
    candidates: int = 50
    rrf_k: int = 60
    weights: dict[str, float] = field(default_factory=lambda: {"vector": 1.0, "fts": 1.0})
    vector_engine: str = "auto"
    memory_max_rows: int = 250_000
    reranker: str = "none"
    cached_versions: int = 4
    # The most rows one filtered search (or an agent's listing) reads while looking for rows
    # that pass a metadata filter; past it the result is marked scan_capped, never a full read.
    max_scan_rows: int = 10_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"retrieval.mode must be one of {MODES}, got {self.mode!r}")
        if self.max_scan_rows < 1:
            raise ConfigError("retrieval.max_scan_rows must be >= 1")
        if self.k < 1 or self.candidates < 1 or self.rrf_k < 0 or self.cached_versions < 1:
            raise ConfigError("retrieval.k, candidates and cached_versions must be >= 1")
        if self.vector_engine not in ("auto", "memory", "lancedb"):
            raise ConfigError("retrieval.vector_engine must be auto, memory or lancedb")
        if set(self.weights) - {"vector", "fts"} or any(w < 0 for w in self.weights.values()):
            raise ConfigError("retrieval.weights takes vector and fts, each >= 0")


@dataclass(frozen=True)
class ContextConfig:
    max_tokens: int = 1500
    # "prompts": the shipped templates; another relative path is relative to the working
    # directory, as any path a user gives
    prompts_dir: str = "prompts"

    def __post_init__(self) -> None:
        if self.max_tokens < 32:
            raise ConfigError("context.max_tokens must be >= 32")

    @property
    def prompts_path(self) -> Path:
        if self.prompts_dir in ("prompts", "configs/prompts"):  # the second: older configs
            return CONFIGS_DIR / "prompts"
        return Path(self.prompts_dir).resolve()


@dataclass(frozen=True)
class ExtractiveConfig:
    max_sentences: int = 3
    min_support: float = 0.35
    semantic_weight: float = 0.7

    def __post_init__(self) -> None:
        if self.max_sentences < 1 or not 0 <= self.semantic_weight <= 1:
            raise ConfigError("extractive.max_sentences >= 1 and semantic_weight in [0, 1]")


_ENV_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def expand_env(value: str, environ: dict[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}`` from the environment."""
    env = os.environ if environ is None else environ
    return _ENV_REF.sub(lambda m: env.get(m["name"]) or (m["default"] or ""), value)


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str = ""
    model: str = ""
    api_key_env: str | None = None
    capabilities: tuple[str, ...] = ()
    max_context_tokens: int = 128_000
    headers: dict[str, str] = field(default_factory=dict)

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


@dataclass(frozen=True)
class RouteRule:
    providers: tuple[str, ...]
    name: str = ""
    task: tuple[str, ...] = ()
    capability: str | None = None
    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None

    def matches(self, task: str, capability: str | None, prompt_tokens: int) -> bool:
        if self.task and task not in self.task:
            return False
        if self.capability and self.capability != capability:
            return False
        if self.min_prompt_tokens is not None and prompt_tokens < self.min_prompt_tokens:
            return False
        return self.max_prompt_tokens is None or prompt_tokens <= self.max_prompt_tokens


@dataclass(frozen=True)
class Price:
    input: float = 0.0  # USD per million tokens
    output: float = 0.0


@dataclass(frozen=True)
class GatewayConfig:
    timeout_s: float = 30.0
    # One deadline for every model call of a request (attempts, backoff and fallbacks
    # together); past it the request ends with DeadlineExceeded and no further call starts.
    request_deadline_s: float = 60.0
    max_attempts: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    cache_enabled: bool = True
    cache_path: str = "./data/cache/gateway.sqlite"
    cache_max_entries: int = 10_000  # the oldest responses are evicted past this
    cache_ttl_hours: float | None = 168.0  # a response older than this is a miss; None: never
    accounting_log: str | None = None
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    routes: tuple[RouteRule, ...] = ()
    default_route: tuple[str, ...] = ("extractive",)
    prices: dict[str, Price] = field(default_factory=dict)

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


@dataclass(frozen=True)
class AgentConfig:
    max_steps: int = 8
    trace_dir: str | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError("agent.max_steps must be >= 1")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key_env: str | None = None
    max_query_chars: int = 2000
    max_k: int = 50
    max_agent_steps: int = 12
    max_filters: int = 16
    # Hardening (docs/QUERY.md "Exposure"): bodies are read only after the key and the limits
    # are checked, and at most max_body_bytes of them.
    max_body_bytes: int = 262_144
    rate_limit_per_minute: float = 120.0  # per API key, else per client address; 0: off
    rate_limit_burst: int = 20  # requests a quiet client may send at once
    max_concurrent_per_client: int = 4  # requests in flight per client; 0: off
    max_tracked_clients: int = 10_000  # the least recently seen client's state is dropped
    expose_source_uri: bool = False  # hits' source_uri (server paths, bucket URLs) in responses

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError("api.max_body_bytes must be >= 1024")
        if self.rate_limit_per_minute < 0 or self.max_concurrent_per_client < 0:
            raise ConfigError("api.rate_limit_per_minute and max_concurrent_per_client >= 0")
        if self.rate_limit_burst < 1 or self.max_tracked_clients < 1:
            raise ConfigError("api.rate_limit_burst and max_tracked_clients must be >= 1")
        if self.max_query_chars < 1 or self.max_k < 1 or self.max_filters < 0:
            raise ConfigError("api.max_query_chars and max_k must be >= 1, max_filters >= 0")


@dataclass(frozen=True)
class QueryConfig:
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    extractive: ExtractiveConfig = field(default_factory=ExtractiveConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    api: ApiConfig = field(default_factory=ApiConfig)


def _section(cls, raw: dict[str, Any] | None, name: str):
    raw = raw or {}
    fields = {f.name for f in dataclasses.fields(cls)}
    bad = set(raw) - fields
    if bad:
        raise ConfigError(
            f"unknown keys in {name}: {sorted(bad)}", hint=f"known keys: {sorted(fields)}"
        )
    return cls(**raw)


def _provider(name: str, raw: dict[str, Any], environ: dict[str, str] | None) -> ProviderConfig:
    raw = dict(raw or {})
    if "api_key" in raw:
        raise ConfigError(
            f"provider {name!r}: an API key is never written in a config file",
            hint="set api_key_env to the name of the environment variable that holds it",
        )
    for key in ("base_url", "model"):
        if isinstance(raw.get(key), str):
            raw[key] = expand_env(raw[key], environ)
    if "capabilities" in raw:
        raw["capabilities"] = tuple(raw["capabilities"] or ())
    elif raw.get("kind") == "extractive":
        raw["capabilities"] = ("answer",)
    else:
        raw["capabilities"] = ("chat", "answer")
    if raw.get("kind") == "extractive":
        raw.setdefault("model", "extractive-v1")
    return _section(ProviderConfig, {"name": name, **raw}, f"gateway.providers.{name}")


def _gateway(raw: dict[str, Any], environ: dict[str, str] | None) -> GatewayConfig:
    raw = dict(raw or {})
    cache = raw.pop("cache", None) or {}
    if set(cache) - {"enabled", "path", "max_entries", "ttl_hours"}:
        raise ConfigError("gateway.cache takes enabled, path, max_entries and ttl_hours")
    providers = {n: _provider(n, p, environ) for n, p in (raw.pop("providers", None) or {}).items()}
    routes = []
    for i, rule in enumerate(raw.pop("routes", None) or []):
        when = dict(rule.get("when") or {})
        bad = set(when) - {"task", "capability", "min_prompt_tokens", "max_prompt_tokens"}
        if bad or set(rule) - {"name", "when", "providers"} or not rule.get("providers"):
            raise ConfigError(
                f"gateway.routes[{i}] is malformed",
                hint="a route is {name, when: {task, capability, min_prompt_tokens, "
                "max_prompt_tokens}, providers: [...]}",
            )
        task = when.pop("task", ())
        routes.append(
            RouteRule(
                providers=tuple(rule["providers"]),
                name=rule.get("name") or f"route-{i}",
                task=(task,) if isinstance(task, str) else tuple(task),
                **when,
            )
        )
    prices = {
        key: _section(Price, value, f"gateway.prices.{key}")
        for key, value in (raw.pop("prices", None) or {}).items()
    }
    kwargs = dict(raw)
    if "default_route" in kwargs:
        kwargs["default_route"] = tuple(kwargs["default_route"])
    if "enabled" in cache:
        kwargs["cache_enabled"] = bool(cache["enabled"])
    if "path" in cache:
        kwargs["cache_path"] = cache["path"]
    if "max_entries" in cache:
        kwargs["cache_max_entries"] = int(cache["max_entries"])
    if "ttl_hours" in cache:
        ttl = cache["ttl_hours"]
        kwargs["cache_ttl_hours"] = None if ttl is None else float(ttl)
    return _section(
        GatewayConfig,
        {**kwargs, "providers": providers, "routes": tuple(routes), "prices": prices},
        "gateway",
    )


def query_config_from_dict(raw: dict[str, Any], environ: dict[str, str] | None = None):
    known = {"retrieval", "context", "extractive", "gateway", "agent", "api"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown query config keys: {sorted(unknown)}", hint=f"known: {known}")
    return QueryConfig(
        retrieval=_section(RetrievalConfig, raw.get("retrieval"), "retrieval"),
        context=_section(ContextConfig, raw.get("context"), "context"),
        extractive=_section(ExtractiveConfig, raw.get("extractive"), "extractive"),
        gateway=_gateway(raw.get("gateway") or {}, environ),
        agent=_section(AgentConfig, raw.get("agent"), "agent"),
        api=_section(ApiConfig, raw.get("api"), "api"),
    )


def load_query_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> QueryConfig:
    """Defaults, then ``path`` (or ``$FRESHINDEX_QUERY_CONFIG``), then dotted ``overrides``."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_QUERY_CONFIG.read_text()) or {}
    path = path or env.get(QUERY_CONFIG_ENV) or None
    if path is not None:
        user = Path(path)
        if not user.exists():
            raise ConfigError(f"query config file {user} does not exist")
        raw = _merge(raw, yaml.safe_load(user.read_text()) or {})
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return query_config_from_dict(raw, env)
