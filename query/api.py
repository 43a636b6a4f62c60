"""The HTTP API (FastAPI) over ``QueryService``.

    POST /search   POST /ask   POST /agent   GET /versions   GET /health   (GET /openapi.json)

Auth: when ``api.api_key_env`` names an environment variable, every endpoint but ``/health``
and the OpenAPI pages wants its value in ``X-API-Key`` (or ``Authorization: Bearer ...``).
Errors are JSON ``{"detail": ..., "hint": ...}``: 401 no or wrong key, 404 unknown version,
tag, run or table, 422 a request past a limit (query length, k, agent steps, filters) or
malformed, 502 a model provider failed, 503 no provider could serve the call.

    uvicorn --factory query.api:app_from_env     # or: freshindex serve
"""

from __future__ import annotations

import hmac
import os
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from freshindex.errors import ConfigError, FreshIndexError, TableError
from query.errors import FilterError, LimitExceeded, NoRoute, ProviderError, QueryError
from query.service import QueryService

HARD_MAX_CHARS = 100_000  # before any config: bodies past this are refused by validation

Mode = Literal["vector", "fts", "hybrid"]


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field(max_length=200, examples=["doc_id"])
    op: str = Field("=", max_length=16, examples=["="])
    value: Any = Field(examples=["guide/auth.md"])


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(max_length=HARD_MAX_CHARS, examples=["how do I set a timeout?"])
    mode: Mode | None = None
    k: int | None = Field(None, description="hits to return (limit: api.max_k)")
    filters: list[FilterIn | str] | None = Field(
        None, description="ANDed; {field, op, value} or 'field op value'"
    )
    as_of: str | int | None = Field(None, description="version number, tag or run id")
    rrf_k: int | None = Field(None, ge=0, le=10_000)
    weights: dict[Literal["vector", "fts"], float] | None = None
    reranker: Literal["none", "mmr"] | None = None


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=HARD_MAX_CHARS)
    mode: Mode | None = None
    k: int | None = None
    filters: list[FilterIn | str] | None = None
    as_of: str | int | None = None
    provider: str | None = Field(None, description="pin a provider instead of routing")


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=HARD_MAX_CHARS)
    as_of: str | int | None = None
    max_steps: int | None = Field(None, description="limit: api.max_agent_steps")
    planner: Literal["auto", "tools", "deterministic"] = "auto"
    mode: Mode | None = None
    k: int | None = None
    filters: list[FilterIn | str] | None = None


class HitOut(BaseModel):
    chunk_id: str
    doc_id: str
    text: str
    source_uri: str
    section: str | None
    score: float
    table_version: int
    title: str | None = None
    page_number: int | None = None
    content_type: str | None = None
    chunk_index: int | None = None
    metadata: dict[str, Any] = {}
    mode: str
    rank: int
    vector_score: float | None = None
    fts_score: float | None = None


class SearchOut(BaseModel):
    query: str
    mode: str
    k: int
    table: str
    table_version: int
    took_ms: float
    hits: list[HitOut]


class CitationOut(BaseModel):
    marker: int
    doc_id: str
    chunk_id: str
    source_uri: str | None = None
    quote: str | None = None
    score: float | None = None


class AskOut(BaseModel):
    question: str
    text: str
    answered: bool
    citations: list[CitationOut]
    hits: list[HitOut]
    provider: str
    model: str
    table_version: int | None
    cached: bool
    usage: dict[str, Any] | None
    accounting: dict[str, Any]


class TraceStepOut(BaseModel):
    step: int
    kind: str
    tool: str | None
    arguments: dict[str, Any]
    result_size: int
    latency_ms: float
    model_call: dict[str, Any] | None = None
    summary: str = ""
    error: str | None = None


class AgentOut(BaseModel):
    question: str
    answer: str
    answered: bool
    citations: list[CitationOut]
    trace: list[TraceStepOut]
    steps: int
    stopped: str
    planner: str
    table_version: int | None
    accounting: dict[str, Any]
    trace_path: str | None = None


def _filters(items: list[FilterIn | str] | None, limit: int) -> list[Any] | None:
    if not items:
        return None
    if len(items) > limit:
        raise LimitExceeded(f"at most {limit} filters, got {len(items)}")
    return [i.model_dump() if isinstance(i, FilterIn) else i for i in items]


def _error(status: int, exc: Exception) -> JSONResponse:
    hint = getattr(exc, "hint", None)
    message = (
        super(FreshIndexError, exc).__str__() if isinstance(exc, FreshIndexError) else str(exc)
    )
    body: dict[str, Any] = {"detail": message}
    if hint:
        body["hint"] = hint
    return JSONResponse(body, status_code=status)


def create_app(service: QueryService, *, environ: dict[str, str] | None = None) -> FastAPI:
    """The app for ``service``; reads the API key (if any) once, here."""
    env = os.environ if environ is None else environ
    limits = service.qcfg.api
    api_key = None
    if limits.api_key_env:
        api_key = env.get(limits.api_key_env)
        if not api_key:
            raise ConfigError(
                f"api.api_key_env names ${limits.api_key_env}, which is not set",
                hint="export it, or set api.api_key_env: null to serve without auth",
            )

    app = FastAPI(
        title="freshindex query API",
        version="1",
        description="Search, answers and agent runs over a versioned LanceDB chunks table.",
    )

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise _Unauthorized()

    @app.exception_handler(_Unauthorized)
    def _unauthorized(_request, _exc):
        return JSONResponse(
            {"detail": "missing or wrong API key", "hint": "send it in the X-API-Key header"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    for cls, status in (
        (LimitExceeded, 422),
        (FilterError, 422),
        (QueryError, 422),
        (ConfigError, 422),
        (TableError, 404),
        (NoRoute, 503),
        (ProviderError, 502),
    ):
        app.add_exception_handler(cls, lambda _r, exc, status=status: _error(status, exc))

    auth = [Depends(require_key)]

    @app.post("/search", response_model=SearchOut, dependencies=auth)
    def search(body: SearchIn) -> dict:
        result = service.search(
            body.query,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
            as_of=body.as_of,
            rrf_k=body.rrf_k,
            weights=body.weights,
            reranker=body.reranker,
        )
        return result.to_dict()

    @app.post("/ask", response_model=AskOut, dependencies=auth)
    def ask(body: AskIn) -> dict:
        answer = service.ask(
            body.question,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
            as_of=body.as_of,
            provider=body.provider,
        )
        return answer.to_dict()

    @app.post("/agent", response_model=AgentOut, dependencies=auth)
    def agent(body: AgentIn) -> dict:
        result = service.agent(
            body.question,
            as_of=body.as_of,
            max_steps=body.max_steps,
            planner=body.planner,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
        )
        return result.to_dict()

    @app.get("/versions", dependencies=auth)
    def versions() -> list[dict[str, Any]]:
        return service.versions()

    @app.get("/health")
    def health() -> JSONResponse:
        state = service.health()
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    return app


class _Unauthorized(Exception):
    pass


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory query.api:app_from_env``: config from the environment."""
    from freshindex.config import load_config
    from query.config import load_query_config

    return create_app(QueryService(load_config(), load_query_config()))
