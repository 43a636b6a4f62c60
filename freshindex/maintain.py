"""Table upkeep: compaction, index refresh, version retention and the ANN vector index.

Every LanceDB commit is a version with its own manifest and fragments; a stream that
commits every second makes ~86,000 a day. ``maintain()`` keeps a table healthy:

1. **compact** small fragments into large ones (under the table's commit lock, so it never
   conflicts with a writer of this machine);
2. **refresh indexes**: rows written since an index was built (scalar, full-text, vector)
   are folded into it, so they are no longer searched by brute force;
3. **retention** (``plan_retention``): every version of the last ``keep_all_hours`` and the
   last ``keep_versions`` are kept; older history is thinned to checkpoints (the last
   version of each hour for ``checkpoint_hourly_days``, of each day for
   ``checkpoint_daily_days``), kept by ``checkpoint-v<N>`` tags because Lance's cleanup
   removes every untagged version older than one time; ``run-<id>`` tags beyond the newest
   ``keep_run_tags`` or older than ``run_tags_max_days`` are released. Other tags (``prod``,
   ``rollback-*``, anything a user tagged: the readers' contract) are never removed;
4. **ANN index**: below ``ann_min_rows`` rows vector search is exact; above it an IVF_PQ
   index is built (outside the lock: Lance commits it beside concurrent writes) and its
   search parameters are chosen so that recall@10 against exact search on the table's own
   vectors is at least ``ann_target_recall``; it is rebuilt when the table has grown by
   ``ann_rebuild_growth``.

    freshindex maintain --table docs [--db URI]
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from freshindex import store
from freshindex.config import MaintenanceConfig

log = logging.getLogger(__name__)

# (nprobes, refine_factor) tried in order until the recall target is met
SEARCH_LADDER = ((20, None), (20, 5), (40, 10), (80, 20), (160, 40), (320, 80))


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
    if not store.is_local(db_uri):
        return 0
    folder = Path(db_uri.removeprefix("file://")) / f"{table}.lance"
    total = 0
    for path in folder.rglob("*"):
        # a concurrent writer's temporary file may be renamed between listing and stat
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size if path.is_file() else 0
    return total


CHECKPOINT_TAG_PREFIX = "checkpoint-v"
_CHECKPOINT_TAG = re.compile(r"checkpoint-v(\d+)")


def checkpoint_tag(version: int) -> str:
    return f"{CHECKPOINT_TAG_PREFIX}{version}"


def is_checkpoint_tag(name: str, version: int) -> bool:
    """True for a tag upkeep made: ``checkpoint-v<N>`` pointing at version N exactly (a user's
    ``checkpoint-before-migration`` is the user's)."""
    match = _CHECKPOINT_TAG.fullmatch(name)
    return bool(match) and int(match.group(1)) == version


def age_cutoff(cfg: MaintenanceConfig, now: dt.datetime) -> dt.datetime:
    """Every version newer than this is kept: ``keep_all_hours``, and never less than
    ``min_version_age_minutes``."""
    return now - max(
        dt.timedelta(hours=cfg.keep_all_hours), dt.timedelta(minutes=cfg.min_version_age_minutes)
    )


@dataclass(frozen=True)
class RetentionPlan:
    """What upkeep does to a table's versions; ``keep`` is what survives it."""

    cutoff: dt.datetime  # untagged versions older than this, and not among the last
    # keep_versions, are removed
    create_tags: dict[str, int]  # checkpoint tags to add: name -> version
    delete_tags: tuple[str, ...]  # run-* and checkpoint-v* tags released
    keep: frozenset[int]  # the versions left after cleanup
    checkpoints: frozenset[int]  # the versions kept as hourly or daily checkpoints


def plan_retention(
    versions: dict[int, dt.datetime],
    tags: dict[str, int],
    now: dt.datetime,
    cfg: MaintenanceConfig,
) -> RetentionPlan:
    """Which versions and tags to keep, given every version's timestamp and every tag.

    Lance's cleanup removes the versions older than one time that no tag points at, so a
    policy that thins history with age is expressed by tags: the last version of each hour
    (younger than ``checkpoint_hourly_days``) and of each day (younger than
    ``checkpoint_daily_days``) gets a ``checkpoint-v<N>`` tag, a checkpoint tag on a version
    that no longer is one is released, and so are ``run-<id>`` tags beyond the newest
    ``keep_run_tags`` or older than ``run_tags_max_days`` (never the newest run's). Every
    other tag (``prod``, ``rollback-*``, a user's) is kept, and so is its version.

    Example: versions 1..5 at 09:10, 09:50, 10:20, 10:40 and now (11:00) with
    ``keep_versions=1, keep_all_hours=0.25``: the cutoff is 10:45; the checkpoints are 2
    (last of 09:00-10:00) and 4 (last of 10:00-11:00), tagged; 1 and 3 are removed.
    """
    cutoff = age_cutoff(cfg, now)
    recent = {v for v, stamp in versions.items() if stamp >= cutoff}
    recent |= set(sorted(versions)[-cfg.keep_versions :])  # the latest among them
    hourly: dict[dt.datetime, int] = {}
    daily: dict[dt.date, int] = {}
    for version, stamp in versions.items():
        age = now - stamp
        if age < dt.timedelta(days=cfg.checkpoint_hourly_days):
            hour = stamp.replace(minute=0, second=0, microsecond=0)
            hourly[hour] = max(hourly.get(hour, version), version)
        if age < dt.timedelta(days=cfg.checkpoint_daily_days):
            daily[stamp.date()] = max(daily.get(stamp.date(), version), version)
    checkpoints = set(hourly.values()) | set(daily.values())

    run_tags = sorted(
        (name for name in tags if name.startswith(store.RUN_TAG_PREFIX)),
        key=lambda name: (tags[name], name),
        reverse=True,
    )
    max_run_age = dt.timedelta(days=cfg.run_tags_max_days)
    released = [
        name
        for rank, name in enumerate(run_tags)
        if rank > 0  # the newest run's version stays readable as_of its run id
        and (rank >= cfg.keep_run_tags or now - versions.get(tags[name], now) >= max_run_age)
    ]
    released += [
        name
        for name, version in tags.items()
        if is_checkpoint_tag(name, version) and version not in checkpoints
    ]
    tagged = {version for name, version in tags.items() if name not in released}
    # a recent checkpoint is kept as recent; it is tagged once it falls out of that range
    create = {
        checkpoint_tag(v): v for v in sorted(checkpoints - recent) if checkpoint_tag(v) not in tags
    }
    keep = recent | ((tagged | set(create.values())) & set(versions))
    return RetentionPlan(
        cutoff=cutoff,
        create_tags=create,
        delete_tags=tuple(sorted(released)),
        keep=frozenset(keep),
        checkpoints=frozenset(checkpoints),
    )


@dataclass(frozen=True)
class RetentionOutcome:
    plan: RetentionPlan
    versions_listed: int  # versions before the cleanup
    versions_removed: int
    bytes_removed: int


def apply_retention(
    table, cfg: MaintenanceConfig, now: dt.datetime | None = None
) -> RetentionOutcome:
    """Tag checkpoints, release old run and checkpoint tags, remove the other old versions.

    ``now`` (tests, the benchmark) replaces the clock for the policy's ages; Lance measures
    ``older_than`` against the real clock, so the cutoff is converted with it.
    """
    wall = dt.datetime.now()  # Lance's version timestamps are naive local times
    now = now or wall
    versions = {v["version"]: v["timestamp"] for v in table.list_versions()}
    tags = {name: int(info["version"]) for name, info in table.tags.list().items()}
    plan = plan_retention(versions, tags, now, cfg)
    for name, version in plan.create_tags.items():
        table.tags.create(name, version)  # before any release: a checkpoint is never bare
    for name in plan.delete_tags:
        table.tags.delete(name)
    if not set(versions) - plan.keep:
        # Lance's cleanup reads every manifest, a cost that grows with the versions held:
        # skipped when the plan removes nothing (a burst of commits inside the window)
        return RetentionOutcome(plan, len(versions), 0, 0)
    # Lance removes a version only when it is both older than ``older_than`` and not among
    # the last ``retain_versions``: the plan's two kept ranges exactly
    stats = table.to_lance().cleanup_old_versions(
        older_than=max(wall - plan.cutoff, dt.timedelta(0)),
        retain_versions=cfg.keep_versions,
        error_if_tagged_old_versions=False,
    )
    return RetentionOutcome(plan, len(versions), stats.old_versions, stats.bytes_removed)


def vector_index(table):
    return next((ix for ix in table.list_indices() if list(ix.columns) == ["vector"]), None)


def _search_ids(table, vector, k: int, *, exact: bool, nprobes=None, refine=None) -> list[str]:
    q = table.search(vector, vector_column_name="vector").distance_type("cosine").limit(k)
    if exact:
        q = q.bypass_vector_index()
    else:
        if nprobes:
            q = q.nprobes(nprobes)
        if refine:
            q = q.refine_factor(refine)
    return [r["chunk_id"] for r in q.select(["chunk_id", "_distance"]).to_list()]


def sample_vectors(table, n: int, seed: int = 0) -> np.ndarray:
    """``n`` stored vectors picked at random: queries drawn from the table's own data."""
    rows = table.count_rows()
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(rows, size=min(n, rows), replace=False))
    ds = table.to_lance()
    vectors = ds.take(picks.tolist(), columns=["vector"]).column("vector")
    return np.stack(vectors.to_numpy(zero_copy_only=False))


def measure_recall(table, queries: np.ndarray, k: int = 10, nprobes=None, refine=None) -> float:
    """Mean recall@k of the ANN search against exact search for ``queries``."""
    hits = 0
    for q in queries:
        exact = set(_search_ids(table, q, k, exact=True))
        approx = set(_search_ids(table, q, k, exact=False, nprobes=nprobes, refine=refine))
        hits += len(exact & approx)
    return hits / (k * len(queries))


def last_ann_state(db, table_name: str) -> dict[str, Any]:
    for run in reversed(store.read_runs(db, table_name)):
        if run["kind"] == "maintain" and run.get("settings"):
            ann = json.loads(run["settings"]).get("ann") or {}
            if ann.get("rows_at_build"):
                return ann
    return {}


def ann_search_params(db, table_name: str) -> dict[str, Any]:
    """nprobes/refine_factor chosen by the last maintenance for the table's ANN index ({})."""
    state = last_ann_state(db, table_name)
    return {k: state[k] for k in ("nprobes", "refine_factor") if state.get(k)}


def ensure_ann_index(db, table, cfg: MaintenanceConfig) -> dict[str, Any]:
    rows = table.count_rows()
    existing = vector_index(table)
    if rows < cfg.ann_min_rows:
        return {"action": "exact search", "rows": rows}
    state = last_ann_state(db, table.name)
    grown = rows >= state.get("rows_at_build", rows) * cfg.ann_rebuild_growth
    action = "kept"
    if existing is None or grown or not state:
        dim = table.schema.field("vector").type.list_size
        # sqrt(rows) lists, but k-means needs ~256 training vectors per list
        partitions = max(1, min(int(math.sqrt(rows)), rows // 256))
        sub_vectors = dim // 8 if dim % 8 == 0 else dim // 4
        started = time.monotonic()
        table.create_index(
            metric="cosine",
            vector_column_name="vector",
            num_partitions=partitions,
            num_sub_vectors=sub_vectors,
            index_type="IVF_PQ",
            replace=True,
        )
        log.info(
            "built IVF_PQ(%d partitions) on %d rows in %.1fs",
            partitions,
            rows,
            time.monotonic() - started,
        )
        action = "rebuilt" if existing is not None else "built"
        state = {"rows_at_build": rows, "num_partitions": partitions, "index_type": "IVF_PQ"}
    queries = sample_vectors(table, cfg.ann_sample_queries)
    recall, nprobes, refine = 0.0, None, None
    for nprobes, refine in SEARCH_LADDER:
        recall = measure_recall(table, queries, 10, nprobes, refine)
        if recall >= cfg.ann_target_recall:
            break
    return {
        **state,
        "action": action,
        "rows": rows,
        "recall": recall,
        "nprobes": nprobes,
        "refine_factor": refine,
    }


def maintain(
    db_uri: str,
    table_name: str,
    cfg: MaintenanceConfig,
    *,
    ann: bool = True,
    record: bool = True,
    now: dt.datetime | None = None,
) -> MaintenanceReport:
    """Run every upkeep step on one table and record it in ``runs`` (kind ``maintain``)."""
    started = time.monotonic()
    started_at = store.utcnow()
    db = store.connect(db_uri)
    report = MaintenanceReport(table=table_name, bytes_before=disk_bytes(db_uri, table_name))
    with store.commit_lock(db_uri, table_name):
        table = store.open_chunks(db, table_name)
        report.fragments_before = table.stats()["fragment_stats"]["num_fragments"]
        opened_at = table.version
        if table.stats()["fragment_stats"]["num_small_fragments"] > 1:
            metrics = table.to_lance().optimize.compact_files()
            report.compaction = {
                "fragments_removed": metrics.fragments_removed,
                "fragments_added": metrics.fragments_added,
            }
            table.checkout_latest()  # each step starts from the previous step's version
        if any(ix.num_unindexed_rows for ix in table.list_indices()):
            table.to_lance().optimize.optimize_indices()
            table.checkout_latest()
            report.indexes_refreshed = len(table.list_indices())
        retained = apply_retention(table, cfg, now)
        # versions are numbered consecutively: counting them from the one listing that
        # retention needs spares two more reads of every manifest
        report.versions_before = retained.versions_listed - (table.version - opened_at)
        report.versions_removed = retained.versions_removed
        report.bytes_reclaimed = retained.bytes_removed
        report.checkpoints_tagged = len(retained.plan.create_tags)
        report.tags_released = list(retained.plan.delete_tags)
        retention_version = table.version
    report.staging_removed, report.staging_bytes_freed = store.remove_stale_staging(
        db_uri, table_name, cfg.staging_max_age_hours * 3600
    )
    table = store.open_chunks(db, table_name)
    if ann:
        report.ann = ensure_ann_index(db, table, cfg)
        table = store.open_chunks(db, table_name)
    report.versions_after = (
        retained.versions_listed - retained.versions_removed + table.version - retention_version
    )
    report.fragments_after = table.stats()["fragment_stats"]["num_fragments"]
    report.table_version = table.version
    report.bytes_after = disk_bytes(db_uri, table_name)
    report.seconds = time.monotonic() - started
    if record:
        from freshindex.pipelines.batch import new_run_id

        store.append_run(
            db,
            {
                "run_id": new_run_id(),
                "kind": "maintain",
                "table_name": table_name,
                "source": "maintenance",
                "settings": {
                    "policy": asdict(cfg),
                    "ann": report.ann,
                    "report": {k: v for k, v in asdict(report).items() if k != "ann"},
                },
                "status": "succeeded",
                "started_at": started_at,
                "finished_at": store.utcnow(),
                "table_version": report.table_version,
            },
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


def cmd_maintain(args, _extra) -> int:
    from freshindex.cli import config_from_args

    cfg = config_from_args(args)
    report = maintain(cfg.db, cfg.table, cfg.maintenance, ann=not args.no_ann)
    if args.json:
        print(json.dumps(asdict(report), indent=2, default=str))
    else:
        print(report.summary())
    return 0


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args

    p = subparsers.add_parser(
        "maintain", help="compact, refresh indexes, apply version retention, tune the ANN index"
    )
    add_common_args(p)
    p.add_argument("--no-ann", action="store_true", help="skip the vector index step")
    p.set_defaults(func=cmd_maintain)
