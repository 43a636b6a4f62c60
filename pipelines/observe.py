"""What a finished run tells the metrics: its manifest row and errors, the table's shape, and
for a batch run the final set written to a textfile-collector file and/or pushed
(``observability.metrics_textfile``, ``observability.pushgateway``)."""

from __future__ import annotations

import logging
from typing import Any

from freshindex import store
from freshindex.config import Config
from freshindex.observability import metrics, tracing
from freshindex.store.shape import table_shape

log = logging.getLogger("freshindex.metrics")


def observe_table(cfg: Config) -> dict[str, Any] | None:
    """Set the table-shape gauges; returns the shape (None: no table yet)."""
    try:
        shape = table_shape(cfg.db, cfg.table)
    except Exception as exc:  # metrics never fail a run
        log.warning("table shape for metrics: %s", exc)
        return None
    metrics.observe_table_shape(
        **{k: v for k, v in shape.items() if k != "version"},
    )
    return shape


def report_run(cfg: Config, row: dict[str, Any], *, with_errors: bool = True) -> None:
    """Feed a finished run's row (and its errors rows) to the metrics, then export them as
    configured. Never raises: a metrics sink that is down does not fail a committed run."""
    try:
        errors = (
            store.read_errors(store.connect(cfg.db), run_id=row["run_id"]) if with_errors else []
        )
        metrics.observe_run(row, errors)
        observe_table(cfg)
        export(cfg)
    except Exception as exc:
        log.warning("metrics of run %s: %s", row.get("run_id"), exc)
    tracing.shutdown()


def export(cfg: Config) -> None:
    settings = cfg.observability
    if settings.metrics_textfile:
        path = metrics.write_textfile(settings.metrics_textfile)
        log.info("metrics written to %s", path)
    if settings.pushgateway:
        metrics.push(settings.pushgateway)
