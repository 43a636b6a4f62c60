"""Per-request telemetry of the HTTP API: a span for every request (retrieval, model calls
and agent steps are its children) and ``freshindex_http_requests_total`` by route and
status. Routes are the app's own paths (the console's pages count as ``ui``), so a client
sending random paths cannot grow the label set."""

from __future__ import annotations

from collections.abc import Iterable

from freshindex.observability import metrics, tracing


class RequestTelemetry:
    """ASGI middleware: wraps each HTTP request in a span and counts it."""

    def __init__(self, app, routes: Iterable[str] = ()):
        self.app = app
        self._routes = frozenset(routes)

    def route_of(self, path: str) -> str:
        if path == "/ui" or path.startswith("/ui/"):
            return "/ui"
        if path.startswith("/explain/"):
            return "/explain"
        return path if path in self._routes else "other"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope.get("path", ""))
        status = {"code": 500}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        with tracing.span(
            "freshindex.request",
            **{"http.method": scope.get("method"), "http.route": route},
        ) as span:
            try:
                await self.app(scope, receive, send_status)
            finally:
                tracing.set_attributes(span, **{"http.status_code": status["code"]})
                metrics.observe_request(route, status["code"])
