"""The operators' routes of the HTTP API: ``/metrics`` (Prometheus), ``/status``,
``/diff``, ``/explain/{doc_id}``, the console at ``/ui``, and a span and a request count
per request (docs/OPERATIONS.md). Added by ``query.api.create_app`` after its own routes,
so they sit behind the same middleware: the API key, rate and body limits apply."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse

from freshindex.observability import metrics, tracing
from freshindex.query.console import console_router
from freshindex.query.guard import scrub
from freshindex.query.lineage import diff_versions, explain_document
from freshindex.query.status import status_report
from freshindex.query.telemetry import RequestTelemetry

MAX_REF_CHARS = 200  # a version, tag or run id (as the API's as_of)


def add_operator_routes(app: FastAPI, service, run_search, search_model, caller) -> None:
    """``/metrics``, ``/status``, ``/diff``, ``/explain/{doc_id}``, the console at ``/ui``
    and a span and a request count per request (docs/OPERATIONS.md). Behind the same
    middleware as every other route: the API key applies, and ``caller`` (request -> the
    caller's ``Access``) limits the documents a diff, an explain or the console names to
    those the caller may read (docs/SECURITY.md)."""
    tracing.configure(service.cfg.observability)

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)

    @app.get("/status")
    def status() -> JSONResponse:
        report = status_report(service.cfg)
        report["problems"] = [scrub(p) for p in report["problems"]]
        report.pop("db", None)  # a server path
        return JSONResponse(jsonable(report), status_code=200 if report["ok"] else 503)

    @app.get("/diff")
    def diff(
        request: Request,
        from_ref: Annotated[str, Query(alias="from", max_length=MAX_REF_CHARS)],
        to_ref: Annotated[str, Query(alias="to", max_length=MAX_REF_CHARS)],
    ) -> dict[str, Any]:
        return diff_versions(
            service.reader.db, service.cfg.table, from_ref, to_ref, access=caller(request)
        )

    @app.get("/explain/{doc_id:path}")
    def explain(doc_id: str, request: Request) -> dict[str, Any]:
        doc = explain_document(service.reader.db, service.cfg.table, doc_id, access=caller(request))
        if not service.qcfg.api.expose_source_uri:
            doc["source_uri"] = doc["namespace"] = None  # a namespace names its source root
            doc["errors"] = [{**e, "source_uri": None} for e in doc["errors"]]
        doc["errors"] = [{**e, "message": scrub(e["message"] or "")} for e in doc["errors"]]
        return doc

    app.include_router(console_router(service, run_search, search_model, caller))
    routes = [getattr(r, "path", "") for r in app.routes]
    app.add_middleware(RequestTelemetry, routes=[r for r in routes if r])


def jsonable(value: Any) -> Any:
    """Datetimes as ISO text, recursively (a JSONResponse of a report)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value.isoformat() if hasattr(value, "isoformat") else value
