"""OpenTelemetry spans, off by default.

``span(name, **attributes)`` is a context manager every floor may use; until ``configure``
installs a tracer provider it costs one no-op span. ``configure(settings)`` turns traces on
from ``observability.traces`` and sends them to ``observability.otlp_endpoint`` (OTLP over
HTTP, batched); tests pass their own exporter (the SDK's ``InMemorySpanExporter``).

    with span("freshindex.run", run_id=rid, kind="batch"):
        ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

log = logging.getLogger(__name__)

TRACER_NAME = "freshindex"
SERVICE_NAME = "freshindex"
_provider = None  # the SDK provider configure() installed (None: traces off)


def configure(settings: Any = None, *, exporter: Any = None, service: str = SERVICE_NAME):
    """Install a tracer provider: with ``exporter`` (tests), or from ``settings``
    (``ObservabilityConfig``: nothing when ``traces`` is false). Returns the provider, or
    None when traces stay off. Calling it again replaces the exporter."""
    global _provider
    if exporter is None and (settings is None or not settings.traces):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None and _provider is not None:
        return _provider  # already sending to the configured endpoint
    if _provider is None:
        _provider = TracerProvider(resource=Resource.create({"service.name": service}))
        trace.set_tracer_provider(_provider)
    if exporter is not None:
        _provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otlp_endpoint
        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("traces: OTLP/HTTP to %s", endpoint)
    return _provider


def enabled() -> bool:
    return _provider is not None


def shutdown() -> None:
    """Flush spans still queued (a batch run's process is about to end)."""
    if _provider is not None:
        _provider.force_flush()


# run id -> the context of its ``freshindex.run`` span, for the spans that Beam runs in
# another thread of this process (micro-batches, the batch commit step): their parent. A
# worker in another process finds none and starts its own trace (the run_id attribute
# still ties them together).
_RUNS: dict[str, Any] = {}
_MAX_RUNS = 64


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    """While it is open, ``span(..., run_id=run_id)`` anywhere in this process is a child of
    the span current here (call it inside the run's span)."""
    if len(_RUNS) >= _MAX_RUNS:
        _RUNS.pop(next(iter(_RUNS)))
    _RUNS[run_id] = otel_context.get_current()
    try:
        yield
    finally:
        _RUNS.pop(run_id, None)


def _attribute(value: Any) -> Any:
    return value if isinstance(value, str | bool | int | float) else str(value)


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name``: a child of the current one, or else of the run named by its
    ``run_id`` attribute (``run_context``); None-valued attributes are left out. An
    exception escaping it is recorded on the span and re-raised."""
    tracer = trace.get_tracer(TRACER_NAME)
    attrs = {k: _attribute(v) for k, v in attributes.items() if v is not None}
    parent = None
    if trace.get_current_span() is trace.INVALID_SPAN:  # no parent in this thread
        parent = _RUNS.get(attributes.get("run_id"))
    with tracer.start_as_current_span(name, context=parent, attributes=attrs) as current:
        yield current


def set_attributes(current: Any, **attributes: Any) -> None:
    """Add attributes to a span from ``span`` (once the numbers are known)."""
    for key, value in attributes.items():
        if value is not None:
            current.set_attribute(key, _attribute(value))
