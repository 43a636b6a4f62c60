"""The model gateway (model plane): every model call of the query layer goes through here.

For one ``ChatRequest`` it

1. **routes**: the first rule of ``gateway.routes`` that matches the call's task, required
   capability (``tools`` when tools are offered) and prompt size gives the fallback chain;
   providers that are unconfigured, lack the capability or whose context window is too small
   for the prompt are skipped;
2. **caches**: a response stored for (provider, model, prompt, parameters) is returned as is;
3. **retries** each provider on timeouts, rate limits and 5xx, with exponential backoff and
   jitter (``Retry-After`` respected), each attempt under ``gateway.timeout_s``;
4. **falls back** to the next provider of the chain when one keeps failing;
   all of it within one deadline per request (``gateway.request_deadline_s``, or the
   ``deadline`` the caller passes): each attempt's timeout is cut to what is left, and past
   it ``DeadlineExceeded`` is raised and no further attempt or fallback starts;
5. **accounts** every attempt: latency, tokens in/out (estimated where the provider reports
   none), cost from ``gateway.prices``.

Example::

    gw = ModelGateway.from_config(qcfg, embedder=lambda: pinned.embedder)
    response = gw.complete(ChatRequest(messages, task="answer", question=q, context=hits))
    gw.ledger.summary()["cost_usd"]
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from freshindex.observability import metrics, tracing
from freshindex.query.accounting import Ledger
from freshindex.query.cache import ResponseCache, cache_key
from freshindex.query.config import GatewayConfig, QueryConfig
from freshindex.query.context import estimate_messages
from freshindex.query.errors import DeadlineExceeded, NoRoute, ProviderError, RateLimited
from freshindex.query.providers.base import Provider, build_provider
from freshindex.query.types import CallRecord, ChatRequest, ChatResponse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    name: str
    providers: tuple[str, ...]
    skipped: tuple[str, ...]  # "name: why"


class ModelGateway:
    def __init__(
        self,
        config: GatewayConfig,
        providers: dict[str, Provider],
        *,
        cache: ResponseCache | None = None,
        ledger: Ledger | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.providers = providers
        self.cache = cache
        self.ledger = ledger or Ledger(log_path=config.accounting_log)
        self._sleep = sleep
        self._clock = clock

    def deadline(self) -> float:
        """The deadline of a request that starts now (on this gateway's clock); pass it to
        every ``complete`` call of the request."""
        return self._clock() + self.config.request_deadline_s

    def _left(self, deadline: float) -> float:
        """Seconds left before ``deadline``; raises ``DeadlineExceeded`` when none are."""
        left = deadline - self._clock()
        if left <= 0:
            raise DeadlineExceeded(
                "the request ran past its deadline of "
                f"{self.config.request_deadline_s:g} s (gateway.request_deadline_s)",
                hint="retry later, or ask the operator to raise gateway.request_deadline_s",
            )
        return left

    @classmethod
    def from_config(
        cls,
        qcfg: QueryConfig,
        *,
        embedder=None,
        environ: dict[str, str] | None = None,
        cache: ResponseCache | bool | None = True,
        sleep: Callable[[float], None] = time.sleep,
    ) -> ModelGateway:
        """Build every configured provider; ``cache=False`` disables the on-disk cache."""
        gcfg = qcfg.gateway
        providers = {
            name: build_provider(pc, extractive=qcfg.extractive, embedder=embedder, environ=environ)
            for name, pc in gcfg.providers.items()
            if pc.configured
        }
        if cache is True:
            cache = None
            if gcfg.cache_enabled:
                cache = ResponseCache(
                    gcfg.cache_path,
                    max_entries=gcfg.cache_max_entries,
                    ttl_s=None if gcfg.cache_ttl_hours is None else gcfg.cache_ttl_hours * 3600,
                )
        elif cache is False:
            cache = None
        return cls(gcfg, providers, cache=cache, sleep=sleep)

    # ---- routing

    def route(self, request: ChatRequest) -> Route:
        capability = "tools" if request.tools else None
        tokens = estimate_messages(request.messages)
        if request.provider:
            name, chain = "pinned", (request.provider,)
        else:
            rule = next(
                (r for r in self.config.routes if r.matches(request.task, capability, tokens)),
                None,
            )
            name, chain = (
                (rule.name, rule.providers) if rule else ("default", self.config.default_route)
            )
        usable, skipped = [], []
        for provider_name in chain:
            provider = self.providers.get(provider_name)
            if provider is None:
                skipped.append(f"{provider_name}: not configured")
            elif capability and capability not in provider.capabilities:
                skipped.append(f"{provider_name}: no {capability} capability")
            elif tokens > provider.max_context_tokens:
                skipped.append(f"{provider_name}: prompt of ~{tokens} tokens is too long")
            else:
                usable.append(provider_name)
        return Route(name, tuple(usable), tuple(skipped))

    # ---- calls

    def complete(
        self,
        request: ChatRequest,
        *,
        ledger: Ledger | None = None,
        deadline: float | None = None,
    ) -> ChatResponse:
        """The response of the first provider of the route that answers; raises ``NoRoute``,
        or ``DeadlineExceeded`` once ``deadline`` (default: ``request_deadline_s`` from now)
        has passed."""
        with tracing.span("freshindex.model_call", task=request.task) as span:
            response = self._complete(request, ledger or self.ledger, deadline)
            tracing.set_attributes(
                span, provider=response.provider, model=response.model, cached=response.cached
            )
            return response

    def _complete(
        self, request: ChatRequest, ledger: Ledger, deadline: float | None
    ) -> ChatResponse:
        deadline = self.deadline() if deadline is None else deadline
        route = self.route(request)
        failures = list(route.skipped)
        for provider_name in route.providers:
            self._left(deadline)  # no fallback starts past the deadline
            provider = self.providers[provider_name]
            model = request.model or provider.model
            salt = getattr(provider, "cache_salt", "")
            key = cache_key(provider_name, model, request, salt)
            if self.cache is not None:
                cached = self.cache.get(key)
                metrics.observe_cache(cached is not None)
                if cached is not None:
                    ledger.record(self._record(request, cached, 0.0, cached=True))
                    return replace(cached, cached=True, latency_ms=0.0, cost_usd=0.0)
            try:
                response = self._call_with_retries(provider, request, model, ledger, deadline)
            except ProviderError as exc:
                failures.append(f"{provider_name}: {exc}")
                log.warning("provider %s failed, falling back: %s", provider_name, exc)
                continue
            if self.cache is not None:
                self.cache.put(key, response)
            return response
        raise NoRoute(
            f"no provider could serve this {request.task} call (route {route.name!r})",
            attempts=failures,
            hint="; ".join(failures) or "configure a provider for this route",
        )

    def _call_with_retries(
        self,
        provider: Provider,
        request: ChatRequest,
        model: str,
        ledger: Ledger,
        deadline: float,
    ) -> ChatResponse:
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            timeout = min(self.config.timeout_s, self._left(deadline))
            started = time.perf_counter()
            try:
                response = provider.complete(request, timeout=timeout)
            except ProviderError as exc:
                elapsed = (time.perf_counter() - started) * 1000
                ledger.record(
                    CallRecord(
                        provider=provider.name,
                        model=model,
                        task=request.task,
                        latency_ms=elapsed,
                        tokens_in=0,
                        tokens_out=0,
                        tokens_estimated=False,
                        cost_usd=0.0,
                        cached=False,
                        ok=False,
                        error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                        attempt=attempt,
                        at=time.time(),
                    )
                )
                if not exc.retryable or attempt == attempts:
                    raise
                delay = self._backoff(attempt, exc)
                if self._clock() + delay >= deadline:
                    raise  # no time for another attempt: the caller falls back or stops
                self._sleep(delay)
                continue
            elapsed = (time.perf_counter() - started) * 1000
            price = self.config.price(provider.name, model)
            cost = (
                response.usage.tokens_in * price.input + response.usage.tokens_out * price.output
            ) / 1e6
            response = replace(response, model=model, latency_ms=elapsed, cost_usd=cost)
            ledger.record(self._record(request, response, elapsed, attempt=attempt))
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _backoff(self, attempt: int, exc: ProviderError) -> float:
        delay = self.config.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
        if isinstance(exc, RateLimited):
            delay = max(delay, exc.retry_after)
        return min(delay, self.config.max_backoff_s)

    @staticmethod
    def _record(
        request: ChatRequest,
        response: ChatResponse,
        latency: float,
        *,
        cached: bool = False,
        attempt: int = 1,
    ) -> CallRecord:
        return CallRecord(
            provider=response.provider,
            model=response.model,
            task=request.task,
            latency_ms=latency,
            tokens_in=0 if cached else response.usage.tokens_in,
            tokens_out=0 if cached else response.usage.tokens_out,
            tokens_estimated=response.usage.estimated,
            cost_usd=0.0 if cached else response.cost_usd,
            cached=cached,
            ok=True,
            attempt=attempt,
            at=time.time(),
        )

    def stats(self) -> dict:
        return {
            "accounting": self.ledger.summary(),
            "cache": self.cache.stats() if self.cache is not None else None,
            "providers": sorted(self.providers),
        }
