"""The ``observability`` section of the pipelines' settings (metrics files, traces, the
thresholds of ``freshindex status``)."""

from __future__ import annotations

from pydantic import Field

from freshindex.errors import ConfigError
from freshindex.settings import Bool, Float, Int, Str, section


@section("observability")
class ObservabilityConfig:
    """Metrics, traces and health thresholds (docs/OPERATIONS.md)."""

    metrics_textfile: Str | None = Field(
        None,
        description="a batch run writes its metrics here at its end (node_exporter's textfile "
        "collector, e.g. /var/lib/node_exporter/freshindex.prom)",
    )
    pushgateway: Str | None = Field(
        None, description="a batch run pushes its metrics to this Pushgateway (host:port)"
    )
    traces: Bool = Field(False, description="send OpenTelemetry traces")
    otlp_endpoint: Str = Field(
        "http://localhost:4318/v1/traces", description="OTLP/HTTP traces endpoint"
    )
    max_freshness_s: Float = Field(
        3600.0,
        description="freshindex status fails when the newest commit is older than this",
    )
    max_lag: Int = Field(
        10_000, description="freshindex status fails when the stream lags more messages"
    )
    max_errors_24h: Int = Field(
        100, description="freshindex status fails past this many errors in the last 24 h"
    )
    max_unindexed_rows: Int = Field(
        100_000, description="freshindex status fails when more rows are not in the FTS index"
    )

    def __post_init__(self) -> None:
        if self.max_freshness_s <= 0 or self.max_lag < 0 or self.max_errors_24h < 0:
            raise ConfigError(
                "observability.max_freshness_s must be > 0 and max_lag, max_errors_24h >= 0"
            )
