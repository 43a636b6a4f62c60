"""Errors of the query layer; all are ``FreshIndexError``s with a hint on what to do."""

from __future__ import annotations

from freshindex.errors import ConfigError, FreshIndexError


class QueryError(FreshIndexError):
    """A query cannot be run as given (bad mode, k out of range...)."""


class FilterError(QueryError, ValueError):
    """A metadata filter names an unknown field or operator, or a value of the wrong type."""


class LimitExceeded(QueryError, ValueError):
    """A request passes a configured limit (query length, k, agent steps)."""


class DeadlineExceeded(QueryError):
    """A request ran past ``gateway.request_deadline_s``; no further model call was started."""


class ProviderError(FreshIndexError):
    """A model provider failed. ``retryable`` errors are retried and then fall back."""

    retryable = False

    def __init__(self, message: str, *, provider: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.provider = provider


class ProviderUnavailable(ProviderError):
    """A server error (5xx) or a refused connection."""

    retryable = True


class ProviderTimeout(ProviderError):
    retryable = True


class RateLimited(ProviderError):
    retryable = True

    def __init__(self, message: str, *, provider: str | None = None, retry_after: float = 0.0):
        super().__init__(message, provider=provider, hint="lower the request rate or add a route")
        self.retry_after = retry_after


class NoRoute(ProviderError):
    """Every provider of the route failed or none offers the capability the call needs."""

    def __init__(self, message: str, *, attempts: list[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.attempts = attempts


__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "FilterError",
    "LimitExceeded",
    "NoRoute",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "QueryError",
    "RateLimited",
]
