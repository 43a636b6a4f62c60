"""Version retention: which versions and tags of a chunks table upkeep keeps.

Every version of the last ``keep_all_hours`` and the last ``keep_versions`` are kept; older
history is thinned to checkpoints (the last version of each hour for
``checkpoint_hourly_days``, of each day for ``checkpoint_daily_days``), kept by
``checkpoint-v<N>`` tags because Lance's cleanup removes every untagged version older than
one time; ``run-<id>`` tags beyond the newest ``keep_run_tags`` or older than
``run_tags_max_days`` are released. Other tags (``prod``, ``rollback-*``, anything a user
tagged: the readers' contract) are never removed.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from freshindex.config import MaintenanceConfig
from freshindex.store.versions import RUN_TAG_PREFIX

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
        (name for name in tags if name.startswith(RUN_TAG_PREFIX)),
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
