"""Accounting of model calls: one ``CallRecord`` per attempt, summed per request and per process.

A request (one ``freshindex ask``, one HTTP call) gets its own ``Ledger``, made with
``gateway.ledger.child()``: it keeps that request's records and forwards each one to its
parent, the process's ledger. The parent keeps running totals and only the most recent
``max_records`` records, never a list of its children, so a server's ledger stays the same
size however many requests it serves. Each record can be appended to a JSONL file
(``gateway.accounting_log``).
"""

from __future__ import annotations

import collections
import json
import threading
from pathlib import Path
from typing import Any

from freshindex.observability import metrics
from freshindex.query.types import CallRecord

MAX_RECORDS = 1000  # records a ledger keeps for inspection; totals count every one
LATENCY_WINDOW = 1000  # recent uncached latencies the p50 is taken over


class _Totals:
    """Running sums over every record added; constant size."""

    def __init__(self):
        self.calls = self.ok = self.failed = self.cached = 0
        self.tokens_in = self.tokens_out = 0
        self.tokens_estimated = False
        self.cost_usd = 0.0
        self.latency_ms_total = 0.0
        self.latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    def add(self, r: CallRecord) -> None:
        self.calls += 1
        self.ok += r.ok
        self.failed += not r.ok
        self.cached += r.cached
        self.tokens_in += r.tokens_in
        self.tokens_out += r.tokens_out
        self.tokens_estimated = self.tokens_estimated or r.tokens_estimated
        self.cost_usd += r.cost_usd
        if not r.cached:
            self.latency_ms_total += r.latency_ms
            self.latencies.append(r.latency_ms)

    def as_dict(self) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        return {
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "cached": self.cached,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_estimated": self.tokens_estimated,
            "cost_usd": round(self.cost_usd, 8),
            "latency_ms_total": round(self.latency_ms_total, 3),
            "latency_ms_p50": round(latencies[len(latencies) // 2], 3) if latencies else 0.0,
        }


class Ledger:
    """Totals (overall and per provider/model) of every record, plus the last ``max_records``
    records themselves (``records``, oldest first)."""

    def __init__(
        self,
        parent: Ledger | None = None,
        log_path: str | Path | None = None,
        *,
        max_records: int = MAX_RECORDS,
    ):
        self.parent = parent
        self.records: collections.deque[CallRecord] = collections.deque(maxlen=max_records)
        self._totals = _Totals()
        self._by_provider: dict[str, _Totals] = {}
        self._log_path = Path(log_path) if log_path else None
        self._lock = threading.Lock()

    def child(self) -> Ledger:
        """A request's own ledger: it forwards its records here; nothing here refers to it."""
        return Ledger(parent=self)

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            self.records.append(rec)
            self._totals.add(rec)
            self._by_provider.setdefault(f"{rec.provider}/{rec.model}", _Totals()).add(rec)
            if self._log_path is not None:
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                with self._log_path.open("a") as fh:
                    fh.write(json.dumps(rec.to_dict()) + "\n")
        if self.parent is not None:
            self.parent.record(rec)
        else:  # the process's ledger: every attempt reaches it once
            metrics.observe_model_call(rec)

    def summary(self) -> dict[str, Any]:
        """Totals and a per-provider breakdown of every attempt recorded here."""
        with self._lock:
            total = self._totals.as_dict()
            total["by_provider"] = {k: v.as_dict() for k, v in sorted(self._by_provider.items())}
        return total


def format_summary(summary: dict[str, Any]) -> str:
    """One line for the CLI's stderr."""
    est = " (estimated)" if summary["tokens_estimated"] else ""
    return (
        f"model calls: {summary['calls']} ({summary['ok']} ok, {summary['failed']} failed, "
        f"{summary['cached']} cached); tokens {summary['tokens_in']} in / "
        f"{summary['tokens_out']} out{est}; cost ${summary['cost_usd']:.6f}; "
        f"model latency {summary['latency_ms_total']:.0f} ms"
    )
