"""Table upkeep, the engine: compaction, index refresh, version retention, the ANN index.

Every LanceDB commit is a version with its own manifest and fragments; a stream that
commits every second makes ~86,000 a day. ``maintain()`` keeps a table healthy:

1. **compact** small fragments into large ones (under the table's commit lock, so it never
   conflicts with a writer of this machine);
2. **refresh indexes**: rows written since an index was built (scalar, full-text, vector)
   are folded into it, so they are no longer searched by brute force;
3. **retention** (``freshindex.store.retention``): recent versions kept, older history
   thinned to tagged checkpoints, old run tags released, user tags never touched;
4. **ANN index** (``freshindex.store.ann``): below ``ann_min_rows`` rows vector search is
   exact; above it an IVF_PQ index is built (outside the lock: Lance commits it beside
   concurrent writes) and its search parameters are chosen so that recall@10 against exact
   search on the table's own vectors is at least ``ann_target_recall``; it is rebuilt when
   the table has grown by ``ann_rebuild_growth``. Its state goes to ``ann_state``.

Pure of any command line: the batch pipeline calls it after its commit, the stream on its
schedule (``UpkeepSchedule``), ``freshindex maintain`` (freshindex.maintain) on demand.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from freshindex.config import CommitConfig, MaintenanceConfig
from freshindex.observability import metrics as obs_metrics
from freshindex.schemas.bookkeeping import AnnStateRecord, RunRecord, new_run_id
from freshindex.store.ann import (
    SEARCH_LADDER,
    ann_search_params,
    ensure_ann_index,
    last_ann_state,
    measure_recall,
    sample_vectors,
    vector_index,
)
from freshindex.store.bookkeeping import append_run, record_ann_state
from freshindex.store.chunks import open_chunks
from freshindex.store.connection import connect, is_local, utcnow
from freshindex.store.indexes import fts_unindexed_rows
from freshindex.store.lock import check_held, commit_lock, token_of
from freshindex.store.retention import (
    CHECKPOINT_TAG_PREFIX,
    RetentionOutcome,
    RetentionPlan,
    age_cutoff,
    apply_retention,
    checkpoint_tag,
    is_checkpoint_tag,
    plan_retention,
)
from freshindex.store.staging import remove_stale_staging

__all__ = [
    "CHECKPOINT_TAG_PREFIX",
    "SEARCH_LADDER",
    "MaintenanceReport",
    "RetentionOutcome",
    "RetentionPlan",
    "UpkeepSchedule",
    "age_cutoff",
    "ann_search_params",
    "apply_retention",
    "checkpoint_tag",
    "disk_bytes",
    "ensure_ann_index",
    "is_checkpoint_tag",
    "last_ann_state",
    "maintain",
    "measure_recall",
    "plan_retention",
    "sample_vectors",
    "vector_index",
]


@dataclass
class MaintenanceReport:
    table: str
    seconds: float = 0.0
    table_version: int = 0
    fragments_before: int = 0
    fragments_after: int = 0
    versions_before: int = 0
    versions_after: int = 0
    versions_removed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    bytes_reclaimed: int = 0
    compaction: dict[str, int] = field(default_factory=dict)
    indexes_refreshed: int = 0
    ann: dict[str, Any] = field(default_factory=dict)
    staging_removed: int = 0  # stale staging folders of batch runs that died
    staging_bytes_freed: int = 0
    checkpoints_tagged: int = 0  # checkpoint-v<N> tags added by retention
    # run-* and checkpoint-v* tags released: a released run's ``runs`` row stays, its
    # version is then thinned like any other
    tags_released: list[str] = field(default_factory=list)

    def summary(self) -> str:
        ann = self.ann.get("action", "none")
        if self.ann.get("recall") is not None:
            ann += f" (recall@10 {self.ann['recall']:.3f}, nprobes {self.ann['nprobes']}"
            ann += f", refine {self.ann['refine_factor']})"
        return (
            f"maintained {self.table} in {self.seconds:.1f}s -> version {self.table_version}\n"
            f"  fragments {self.fragments_before} -> {self.fragments_after}; versions "
            f"{self.versions_before} -> {self.versions_after} ({self.versions_removed} removed;"
            f" {self.checkpoints_tagged} checkpoints tagged, {len(self.tags_released)} tags "
            "released)"
            f"\n  bytes {self.bytes_before:,} -> {self.bytes_after:,} "
            f"({self.bytes_reclaimed:,} reclaimed); indexes refreshed: {self.indexes_refreshed};"
            f" vector index: {ann}"
            + (
                f"\n  stale staging folders removed: {self.staging_removed} "
                f"({self.staging_bytes_freed:,} bytes)"
                if self.staging_removed
                else ""
            )
        )


def disk_bytes(db_uri: str, table: str) -> int:
    if not is_local(db_uri):
        return 0
    folder = Path(db_uri.removeprefix("file://")) / f"{table}.lance"
    total = 0
    for path in folder.rglob("*"):
        # a concurrent writer's temporary file may be renamed between listing and stat
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


def maintain(
    db_uri: str,
    table_name: str,
    cfg: MaintenanceConfig,
    *,
    ann: bool = True,
    record: bool = True,
    now: dt.datetime | None = None,
    commit: CommitConfig | None = None,
) -> MaintenanceReport:
    """Run every upkeep step on one table and record it in ``runs`` (kind ``maintain``).

    Every step that commits a version holds the commit lock (``commit``: its settings), so
    upkeep takes turns with the batch runs and streams that write the table."""
    started = time.monotonic()
    started_at = utcnow()
    db = connect(db_uri)
    report = MaintenanceReport(table=table_name, bytes_before=disk_bytes(db_uri, table_name))
    tokens: list[int] = []
    with commit_lock(db_uri, table_name, commit) as lease:
        table = open_chunks(db, table_name)
        report.fragments_before = table.stats()["fragment_stats"]["num_fragments"]
        opened_at = table.version
        if table.stats()["fragment_stats"]["num_small_fragments"] > 1:
            check_held(lease)
            metrics = table.to_lance().optimize.compact_files()
            report.compaction = {
                "fragments_removed": metrics.fragments_removed,
                "fragments_added": metrics.fragments_added,
            }
            table.checkout_latest()  # each step starts from the previous step's version
        if any(ix.num_unindexed_rows for ix in table.list_indices()):
            check_held(lease)
            table.to_lance().optimize.optimize_indices()
            table.checkout_latest()
            report.indexes_refreshed = len(table.list_indices())
        check_held(lease)
        retained = apply_retention(table, cfg, now)
        # versions are numbered consecutively: counting them from the one listing that
        # retention needs spares two more reads of every manifest
        report.versions_before = retained.versions_listed - (table.version - opened_at)
        report.versions_removed = retained.versions_removed
        report.bytes_reclaimed = retained.bytes_removed
        report.checkpoints_tagged = len(retained.plan.create_tags)
        report.tags_released = list(retained.plan.delete_tags)
        retention_version = table.version
        tokens += [t for t in (token_of(lease),) if t is not None]
    report.staging_removed, report.staging_bytes_freed = remove_stale_staging(
        db_uri, table_name, cfg.staging_max_age_hours * 3600
    )
    table = open_chunks(db, table_name)
    if ann:
        # An index build is a commit too. Locally it runs outside the lock (it can take
        # minutes; Lance commits it atomically beside concurrent writes). On object storage
        # it holds the lock like any commit: there the lock is what keeps commits apart on
        # servers whose conditional PUT is not atomic. A separate hold: writers commit
        # between the steps above and this build.
        hold = (
            contextlib.nullcontext()
            if is_local(db_uri)
            else commit_lock(db_uri, table_name, commit)
        )
        with hold as lease:
            check_held(lease)
            report.ann = ensure_ann_index(db, open_chunks(db, table_name), cfg)
            tokens += [t for t in (token_of(lease),) if t is not None]
        table = open_chunks(db, table_name)
    report.versions_after = (
        retained.versions_listed - retained.versions_removed + table.version - retention_version
    )
    report.fragments_after = table.stats()["fragment_stats"]["num_fragments"]
    report.table_version = table.version
    report.bytes_after = disk_bytes(db_uri, table_name)
    report.seconds = time.monotonic() - started
    obs_metrics.observe_upkeep(
        report.seconds,
        versions=report.versions_after,
        fragments=report.fragments_after,
        rows=table.count_rows(),
        unindexed_rows=fts_unindexed_rows(table),
        disk_bytes=report.bytes_after if is_local(db_uri) else None,
    )
    if record:
        run_id = new_run_id()
        if report.ann.get("rows_at_build"):
            record_ann_state(db, AnnStateRecord.of(table_name, run_id, report.ann, utcnow()))
        append_run(
            db,
            RunRecord(
                run_id=run_id,
                kind="maintain",
                table_name=table_name,
                source="maintenance",
                settings={
                    "policy": asdict(cfg),
                    "ann": report.ann,
                    "report": {k: v for k, v in asdict(report).items() if k != "ann"},
                },
                status="succeeded",
                started_at=started_at,
                finished_at=utcnow(),
                table_version=report.table_version,
                lease_token=max(tokens, default=None),
            ),
        )
    return report


class UpkeepSchedule:
    """When a long-running writer (the stream) should run maintenance: every K commits or T
    minutes, whichever comes first."""

    def __init__(self, cfg: MaintenanceConfig, clock=time.monotonic):
        self._cfg, self._clock = cfg, clock
        self._commits, self._last = 0, clock()

    def committed(self) -> bool:
        """Count one commit; True when upkeep is due (the counter then restarts)."""
        self._commits += 1
        due = self._commits >= self._cfg.every_commits or (
            self._clock() - self._last >= self._cfg.every_minutes * 60
        )
        if due:
            self._commits, self._last = 0, self._clock()
        return due
