"""The web console at ``/ui``: read-only pages served by ``freshindex serve`` beside the API.

Server-rendered with Jinja2 from templates and one stylesheet shipped in the package
(nothing is fetched from the internet; charts are inline SVG). Every page goes through the
API's middleware, so the same API key, rate and body limits apply; the search playground
calls the API's own search function (``search`` given by ``create_app``), so whatever the
API enforces on a search applies to it unchanged.

    /ui             health (status), freshness and lag charts, runs timeline
    /ui/versions    versions and tags, each with a link to its diff
    /ui/diff        documents added, updated, deleted between two versions
    /ui/errors      the errors table, newest first, filtered by run, stage or class
    /ui/explain     one document's history
    /ui/search      the search playground (mode, filters, as-of; per-hit scores, citations)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from freshindex import store
from freshindex.errors import FreshIndexError, TableError
from freshindex.query.access import readable_docs
from freshindex.query.errors import QueryError
from freshindex.query.guard import scrub
from freshindex.query.lineage import diff_versions, explain_document
from freshindex.query.status import status_report
from freshindex.query.versions import version_rows

HERE = Path(__file__).resolve().parent
MAX_ERRORS_SHOWN = 200
MAX_CHART_POINTS = 200

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return "" if value is None else str(value)


_env.filters["when"] = _when


def line_chart(points: list[tuple[float, float]], *, width=560, height=140, unit="") -> str:
    """An inline SVG polyline of (x, y) points, scaled to the box, with the max labelled."""
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    top = max(ys) or 1.0
    pad = 24

    def sx(x: float) -> float:
        return pad + (x - x0) / ((x1 - x0) or 1.0) * (width - 2 * pad)

    def sy(y: float) -> float:
        return height - pad - y / top * (height - 2 * pad)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img"><line x1="{pad}" y1="{height - pad}" x2="{width - pad}" '
        f'y2="{height - pad}" class="axis"/><polyline points="{path}" class="line"/>'
        f'<text x="{pad}" y="14" class="label">max {top:.2f}{unit}</text></svg>'
    )


def _render(name: str, request: Request, **context: Any) -> HTMLResponse:
    template = _env.get_template(name)
    return HTMLResponse(template.render(request=request, page=name.split(".")[0], **context))


def _first_problem(exc: ValidationError) -> str:
    """Where and what of the first problem, never the value (as the API's 422)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if isinstance(p, str))
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


def _error_page(request: Request, exc: Exception, status: int) -> HTMLResponse:
    message = (
        super(FreshIndexError, exc).__str__() if isinstance(exc, FreshIndexError) else str(exc)
    )
    hint = getattr(exc, "hint", None)
    response = _render(
        "error.html", request, message=scrub(message), hint=scrub(hint) if hint else None
    )
    response.status_code = status
    return response


def console_router(
    service, search: Callable[[Any, Request], dict[str, Any]], search_model, caller
) -> APIRouter:
    """The console's routes over ``service`` (a ``QueryService``). ``search``: the API's
    search function (a ``SearchIn`` and the request -> the /search response),
    ``search_model``: ``SearchIn``; ``caller``: request -> the caller's ``Access``, which
    limits the documents every page names (diff, explain, errors, search) to those the
    caller may read."""
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def db():
        return service.reader.db

    def table_name() -> str:
        """The table the served index name reads now (an alias's target)."""
        return store.resolve_alias(db(), service.cfg.table).table

    @router.get("/static/console.css")
    def stylesheet() -> Response:
        return Response((HERE / "static" / "console.css").read_text(), media_type="text/css")

    @router.get("", response_class=HTMLResponse)
    @router.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        report = status_report(service.cfg)
        batches = store.read_stream_batches(
            db(),
            table_name=table_name(),
            columns=["lag", "freshness_ms", "duration_ms"],
        )[-MAX_CHART_POINTS:]
        freshness = [
            (b["committed_at"].timestamp(), max(b["freshness_ms"]) / 1000)
            for b in batches
            if b["freshness_ms"]
        ]
        lag = [(b["committed_at"].timestamp(), float(b["lag"] or 0)) for b in batches]
        runs = list(reversed(store.read_runs(db(), table_name())))[:50]
        longest = max(
            (
                (r["finished_at"] - r["started_at"]).total_seconds()
                for r in runs
                if r["finished_at"] and r["started_at"]
            ),
            default=1.0,
        )
        for r in runs:
            seconds = (
                (r["finished_at"] - r["started_at"]).total_seconds()
                if r["finished_at"] and r["started_at"]
                else 0.0
            )
            r["seconds"] = seconds
            r["bar"] = max(2, int(seconds / (longest or 1.0) * 200))
        return _render(
            "overview.html",
            request,
            report=report,
            runs=runs,
            freshness_chart=line_chart(freshness, unit=" s"),
            lag_chart=line_chart(lag),
        )

    @router.get("/versions", response_class=HTMLResponse)
    def versions(request: Request) -> HTMLResponse:
        rows = list(reversed(version_rows(db(), service.cfg.table)))
        return _render("versions.html", request, versions=rows)

    @router.get("/diff", response_class=HTMLResponse)
    def diff(request: Request, from_ref: str = "", to_ref: str = "") -> HTMLResponse:
        result = None
        if from_ref and to_ref:
            try:
                result = diff_versions(
                    db(), service.cfg.table, from_ref, to_ref, access=caller(request)
                )
            except FreshIndexError as exc:
                return _error_page(request, exc, 404)
        return _render("diff.html", request, diff=result, from_ref=from_ref, to_ref=to_ref)

    @router.get("/errors", response_class=HTMLResponse)
    def errors(request: Request, run: str = "", stage: str = "", error_class: str = ""):
        rows = store.read_errors(db(), table_name=table_name(), run_id=run or None)
        access = caller(request)
        readable = None
        if not access.is_admin:  # errors of documents the caller may read, and none other
            readable, _ = readable_docs(store.open_chunks(db(), table_name()), access)
        rows = [
            r
            for r in rows
            if (readable is None or r["doc_id"] in readable)
            and (not stage or r["stage"] == stage)
            and (not error_class or r["error_class"] == error_class)
        ]
        rows.sort(key=lambda r: r["occurred_at"], reverse=True)
        for r in rows:
            r["message"] = scrub(r["message"] or "")
            r["where"] = r["doc_id"] or ""
        return _render(
            "errors.html",
            request,
            errors=rows[:MAX_ERRORS_SHOWN],
            total=len(rows),
            run=run,
            stage=stage,
            error_class=error_class,
        )

    @router.get("/explain", response_class=HTMLResponse)
    def explain(request: Request, doc_id: str = "") -> HTMLResponse:
        try:
            doc = (
                explain_document(db(), service.cfg.table, doc_id, access=caller(request))
                if doc_id
                else None
            )
        except TableError as exc:
            return _error_page(request, exc, 404)
        if doc is not None:
            doc["errors"] = [{**e, "message": scrub(e["message"] or "")} for e in doc["errors"]]
            if not service.qcfg.api.expose_source_uri:  # as the API: no server paths
                doc["source_uri"] = doc["namespace"] = None
        return _render("explain.html", request, doc=doc, doc_id=doc_id)

    @router.get("/search", response_class=HTMLResponse)
    def search_page(
        request: Request,
        query: str = "",
        mode: str = "",
        k: int = 5,
        as_of: str = "",
        filter: Annotated[list[str] | None, Query()] = None,
    ) -> HTMLResponse:
        filters = [f for f in (filter or []) if f.strip()]
        result = None
        if query.strip():
            try:
                body = search_model(
                    query=query,
                    mode=mode or None,
                    k=k,
                    filters=filters or None,
                    as_of=(int(as_of) if as_of.isdigit() else as_of) or None,
                )
                result = search(body, request)
            except ValidationError as exc:
                return _error_page(request, QueryError(_first_problem(exc)), 422)
            except TableError as exc:
                return _error_page(request, exc, 404)
            except FreshIndexError as exc:
                return _error_page(request, exc, 422)
        return _render(
            "search.html",
            request,
            result=result,
            query=query,
            mode=mode,
            k=k,
            as_of=as_of,
            filters=filters,
            modes=("hybrid", "vector", "fts"),
        )

    return router
