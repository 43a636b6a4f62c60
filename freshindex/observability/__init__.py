"""Metrics (Prometheus) and traces (OpenTelemetry) for every process freshindex runs.

On the bottom floor, so the pipelines, the storage floor's upkeep and the query plane can all
feed them: ``metrics`` holds every metric and one ``observe_*`` function per producer (they
take plain numbers and rows, nothing from a higher floor); ``tracing`` hands out spans that
are no-ops until ``tracing.configure`` turns traces on (``observability.traces``).
"""
