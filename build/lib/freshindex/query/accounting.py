"""Accounting of model calls: one ``CallRecord`` per attempt, summed per session or command.

A ``Ledger`` may have a parent: a request's ledger (one ``freshindex ask``, one HTTP call)
also records into the process's ledger, so both a per-request and a running summary exist.
Each record can be appended to a JSONL file (``gateway.accounting_log``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from freshindex.query.types import CallRecord


class Ledger:
    def __init__(self, parent: Ledger | None = None, log_path: str | Path | None = None):
        self.parent = parent
        self.records: list[CallRecord] = []
        self._log_path = Path(log_path) if log_path else None
        self._lock = threading.Lock()

    def child(self) -> Ledger:
        return Ledger(parent=self)

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            self.records.append(rec)
            if self._log_path is not None:
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                with self._log_path.open("a") as fh:
                    fh.write(json.dumps(rec.to_dict()) + "\n")
        if self.parent is not None:
            self.parent.record(rec)

    def summary(self) -> dict[str, Any]:
        """Totals and a per-provider breakdown of every attempt recorded here."""
        with self._lock:
            records = list(self.records)
        total = _totals(records)
        by_provider: dict[str, list[CallRecord]] = {}
        for r in records:
            by_provider.setdefault(f"{r.provider}/{r.model}", []).append(r)
        total["by_provider"] = {k: _totals(v) for k, v in sorted(by_provider.items())}
        return total


def _totals(records: list[CallRecord]) -> dict[str, Any]:
    latencies = sorted(r.latency_ms for r in records if not r.cached)
    return {
        "calls": len(records),
        "ok": sum(r.ok for r in records),
        "failed": sum(not r.ok for r in records),
        "cached": sum(r.cached for r in records),
        "tokens_in": sum(r.tokens_in for r in records),
        "tokens_out": sum(r.tokens_out for r in records),
        "tokens_estimated": any(r.tokens_estimated for r in records),
        "cost_usd": round(sum(r.cost_usd for r in records), 8),
        "latency_ms_total": round(sum(latencies), 3),
        "latency_ms_p50": round(latencies[len(latencies) // 2], 3) if latencies else 0.0,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """One line for the CLI's stderr."""
    est = " (estimated)" if summary["tokens_estimated"] else ""
    return (
        f"model calls: {summary['calls']} ({summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['cached']} cached); tokens {summary['tokens_in']} in / "
        f"{summary['tokens_out']} out{est}; cost ${summary['cost_usd']:.6f}; "
        f"model latency {summary['latency_ms_total']:.0f} ms"
    )
