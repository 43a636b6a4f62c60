"""The HTTP API (FastAPI) over ``QueryService``.

    POST /search   POST /ask   POST /agent   GET /versions   GET /health   (GET /openapi.json)
    GET /status   GET /diff?from=A&to=B   GET /explain/{doc_id}   GET /metrics   GET /ui (console)

Auth: when ``api.api_key`` names an environment variable, every endpoint but ``/health``
and the OpenAPI pages wants its value in ``X-API-Key`` (or ``Authorization: Bearer ...``).
The key, the per-client rate and concurrency limits and the body size are checked by
``freshindex.query.guard.RequestGuard`` before the body is read.
Errors are JSON ``{"detail": ..., "hint": ...}``: 401 no or wrong key, 404 unknown version,
tag, run or table, 413 body too large, 422 a request past a limit (query length, k, agent
steps, filters) or malformed (the input is never echoed), 429 too many requests (with
``Retry-After``), 500 an internal error, 502 a model provider failed, 503 no provider could
serve the call, 504 the request ran past ``gateway.request_deadline_s``. Messages sent to
clients carry no server paths or URLs; the details go to the server log.

    uvicorn --factory freshindex.query.api:app_from_env     # or: freshindex serve
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from freshindex.errors import ConfigError, FreshIndexError, TableError
from freshindex.query.errors import (
    DeadlineExceeded,
    FilterError,
    LimitExceeded,
    NoRoute,
    ProviderError,
    QueryError,
)
from freshindex.query.filters import MAX_FIELD_CHARS, MAX_FILTER_CHARS, MAX_OP_CHARS
from freshindex.query.guard import CALLER_SCOPE_KEY, RequestGuard, scrub
from freshindex.query.operator_api import add_operator_routes
from freshindex.query.service import QueryService
from freshindex.query.types import Mode

log = logging.getLogger(__name__)

HARD_MAX_CHARS = 100_000  # before any config: bodies past this are refused by validation
MAX_NAME_CHARS = 200  # as_of (tag or run id), provider names
MAX_LIST_ITEMS = 64  # filters per request before api.max_filters applies
# Before any config: integers a request may carry at all (the service checks the configured
# limits and says them); as_of versions are within the int64 LanceDB uses.
BigInt = Annotated[int, Field(ge=-(2**31), le=2**31)]
Version = Annotated[int, Field(ge=0, le=2**63 - 1)]
AsOf = Annotated[str, Field(max_length=MAX_NAME_CHARS)] | Version
FilterText = Annotated[str, Field(max_length=MAX_FILTER_CHARS)]
Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str = Field(max_length=MAX_FIELD_CHARS, examples=["doc_id"])
    op: str = Field("=", max_length=MAX_OP_CHARS, examples=["="])
    value: Any = Field(examples=["guide/auth.md"])


Filters = Annotated[list[FilterIn | FilterText], Field(max_length=MAX_LIST_ITEMS)]


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(max_length=HARD_MAX_CHARS, examples=["how do I set a timeout?"])
    mode: Mode | None = None
    k: BigInt | None = Field(None, description="hits to return (limit: api.max_k)")
    filters: Filters | None = Field(
        None, description="ANDed; {field, op, value} or 'field op value'"
    )
    as_of: AsOf | None = Field(None, description="version number, tag or run id")
    rrf_k: int | None = Field(None, ge=0, le=10_000)
    weights: dict[Literal["vector", "fts"], Weight] | None = None
    reranker: Literal["none", "mmr"] | None = None


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=HARD_MAX_CHARS)
    mode: Mode | None = None
    k: BigInt | None = None
    filters: Filters | None = None
    as_of: AsOf | None = None
    provider: str | None = Field(
        None, max_length=MAX_NAME_CHARS, description="pin a provider instead of routing"
    )


class AgentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(max_length=HARD_MAX_CHARS)
    as_of: AsOf | None = None
    max_steps: BigInt | None = Field(None, description="limit: api.max_agent_steps")
    planner: Literal["auto", "tools", "deterministic"] = "auto"
    mode: Mode | None = None
    k: BigInt | None = None
    filters: Filters | None = None


class HitOut(BaseModel):
    chunk_id: str
    doc_id: str
    text: str
    source_uri: str | None  # null unless api.expose_source_uri
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
    # True when a metadata filter's scan stopped at retrieval.max_scan_rows: there may be
    # matching rows that were not read.
    scan_capped: bool = False
    warnings: list[str] = []


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


# Names a validation error may quote: the request models' fields and pydantic's own loc
# labels (union members, "body"); anything else in a loc came from the client.
_KNOWN_NAMES = frozenset(
    {"body", "str", "int", "constrained-str", "constrained-int", "FilterIn", "[key]"}
    | {name for model in (SearchIn, AskIn, AgentIn, FilterIn) for name in model.model_fields}
    | {"vector", "fts"}
)


def _filters(items: list[FilterIn | str] | None, limit: int) -> list[Any] | None:
    if not items:
        return None
    if len(items) > limit:
        raise LimitExceeded(f"at most {limit} filters, got {len(items)}")
    return [i.model_dump() if isinstance(i, FilterIn) else i for i in items]


# What a client is told for errors that are the server's business: the exception (with its
# paths, URLs and provider replies) goes to the server log instead.
_GENERIC = {
    NoRoute: ("no model provider could serve this call", "try again later"),
    ProviderError: ("the model provider failed", "try again later"),
    ConfigError: ("the server is misconfigured", "the operator can find the cause in its log"),
}


def _error(status: int, exc: Exception) -> JSONResponse:
    for cls, (detail, hint) in _GENERIC.items():
        if isinstance(exc, cls):
            log.warning("%s answered %d: %s", type(exc).__name__, status, exc)
            return JSONResponse({"detail": detail, "hint": hint}, status_code=status)
    hint = getattr(exc, "hint", None)
    message = (
        super(FreshIndexError, exc).__str__() if isinstance(exc, FreshIndexError) else str(exc)
    )
    body: dict[str, Any] = {"detail": scrub(message)}
    if hint:
        body["hint"] = scrub(hint)
    return JSONResponse(body, status_code=status)


def _invalid(_request, exc: RequestValidationError) -> JSONResponse:
    """Where and what, never the value: pydantic's ``input`` and ``ctx`` are dropped (a 50 MB
    body must not come back in the 422), and a key the schema does not know is not named."""
    errors = [
        {
            "loc": [_loc_part(part) for part in e.get("loc", ())][:8],
            "msg": str(e.get("msg", ""))[:200],
            "type": str(e.get("type", ""))[:64],
        }
        for e in exc.errors()[:20]
    ]
    return JSONResponse(
        {"detail": errors, "hint": "the request schema is at /openapi.json"}, status_code=422
    )


def _loc_part(part: Any) -> str | int:
    if isinstance(part, int) or part in _KNOWN_NAMES:
        return part
    return "<unknown key>"


def _internal(_request, exc: Exception) -> JSONResponse:
    log.error("internal error", exc_info=exc)
    return JSONResponse(
        {"detail": "internal error", "hint": "the operator can find the cause in its log"},
        status_code=500,
    )


def _public_hit(hit: dict[str, Any], expose_source: bool) -> dict[str, Any]:
    return hit if expose_source else {**hit, "source_uri": None}


def _public_trace_step(step: dict[str, Any]) -> dict[str, Any]:
    """Tool results in a trace quote what the tools read (source paths): scrubbed."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value)
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(step)


def create_app(
    service: QueryService,
    *,
    environ: dict[str, str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The app for ``service``; reads the API key (if any) once, here. ``clock`` drives the
    rate limiter (tests pass their own)."""
    env = os.environ if environ is None else environ
    limits = service.qcfg.api
    api_key = None
    if limits.api_key_env:
        api_key = env.get(limits.api_key_env)
        if not api_key:
            raise ConfigError(
                f"api.api_key names ${limits.api_key_env}, which is not set",
                hint="export it, or set api.api_key: null to serve without auth",
            )

    app = FastAPI(
        title="freshindex query API",
        version="1",
        description="Search, answers and agent runs over a versioned LanceDB chunks table.",
    )
    app.add_middleware(RequestGuard, limits=limits, api_key=api_key, clock=clock)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _internal)
    for cls, status in (
        (LimitExceeded, 422),
        (FilterError, 422),
        (DeadlineExceeded, 504),
        (QueryError, 422),
        (ConfigError, 500),
        (TableError, 404),
        (NoRoute, 503),
        (ProviderError, 502),
    ):
        app.add_exception_handler(cls, lambda _r, exc, status=status: _error(status, exc))

    expose = limits.expose_source_uri

    def caller(request: Request):
        """The caller the guard authenticated (anonymous on a server without keys)."""
        return service.access(request.scope.get(CALLER_SCOPE_KEY))

    def run_search(body: SearchIn, request: Request) -> dict:
        """The search of ``POST /search``, shared with the console's playground."""
        result = service.search(
            body.query,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
            as_of=body.as_of,
            rrf_k=body.rrf_k,
            weights=body.weights,
            reranker=body.reranker,
            caller=caller(request),
        )
        out = result.to_dict()
        return {**out, "hits": [_public_hit(h, expose) for h in out["hits"]]}

    @app.post("/search", response_model=SearchOut)
    def search(body: SearchIn, request: Request) -> dict:
        return run_search(body, request)

    @app.post("/ask", response_model=AskOut)
    def ask(body: AskIn, request: Request) -> dict:
        answer = service.ask(
            body.question,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
            as_of=body.as_of,
            provider=body.provider,
            caller=caller(request),
        )
        out = answer.to_dict()
        return {
            **out,
            "hits": [_public_hit(h, expose) for h in out["hits"]],
            "citations": [_public_hit(c, expose) for c in out["citations"]],
        }

    @app.post("/agent", response_model=AgentOut)
    def agent(body: AgentIn, request: Request) -> dict:
        result = service.agent(
            body.question,
            as_of=body.as_of,
            max_steps=body.max_steps,
            planner=body.planner,
            mode=body.mode,
            k=body.k,
            filters=_filters(body.filters, limits.max_filters),
            caller=caller(request),
        )
        out = result.to_dict()
        return {
            **out,
            "citations": [_public_hit(c, expose) for c in out["citations"]],
            "trace": [_public_trace_step(s) for s in out["trace"]],
            "trace_path": None,  # a server path: the operator finds it in agent.trace_dir
        }

    @app.get("/versions")
    def versions() -> list[dict[str, Any]]:
        return service.versions()

    @app.get("/health")
    def health() -> JSONResponse:
        state = service.health()
        if state["status"] != "ok":
            log.warning("health: %s", state.get("error"))
            state = {**state, "error": scrub(state.get("error"))}
        return JSONResponse(state, status_code=200 if state["status"] == "ok" else 503)

    add_operator_routes(app, service, run_search, SearchIn, caller)
    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory freshindex.query.api:app_from_env``: config from the environment."""
    from freshindex.config import load_config
    from freshindex.query.config import load_query_config

    return create_app(QueryService(load_config(), load_query_config()))
