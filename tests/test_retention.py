"""Version retention: the pure plan (which versions and tags to keep) over simulated months of
commits, and the shipped defaults bounding a real LanceDB table after many small runs."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest

from freshindex import store
from freshindex.config import MaintenanceConfig, load_config
from freshindex.errors import TableError
from freshindex.store.upkeep import checkpoint_tag, maintain, plan_retention
from freshindex.transforms.write import commit_changes
from tests.test_maintain import doc_rows, new_table

T0 = dt.datetime(2026, 3, 1, 0, 0)
SHIPPED = MaintenanceConfig()


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def test_the_shipped_defaults_are_the_dataclass_defaults():
    assert load_config(environ={}).maintenance == SHIPPED
    assert SHIPPED.keep_all_hours <= 24  # "every version" is a short window, not days


def test_worked_example_of_the_docs():
    """docs/MAINTENANCE.md, "A worked example": the same versions, tags and policy."""
    cfg = MaintenanceConfig(
        keep_versions=2,
        keep_all_hours=1,
        min_version_age_minutes=10,
        checkpoint_hourly_days=1,
        checkpoint_daily_days=3,
        keep_run_tags=2,
        run_tags_max_days=30,
    )
    now = dt.datetime(2026, 3, 10, 12, 30)
    versions = {
        1: dt.datetime(2026, 3, 7, 9, 0),
        2: dt.datetime(2026, 3, 7, 10, 0),
        3: dt.datetime(2026, 3, 8, 23, 0),
        4: dt.datetime(2026, 3, 9, 15, 10),
        5: dt.datetime(2026, 3, 9, 15, 40),
        6: dt.datetime(2026, 3, 10, 9, 5),
        7: dt.datetime(2026, 3, 10, 9, 20),
        8: dt.datetime(2026, 3, 10, 10, 45),
        9: dt.datetime(2026, 3, 10, 11, 50),
        10: dt.datetime(2026, 3, 10, 12, 10),
        11: dt.datetime(2026, 3, 10, 12, 25),
    }
    tags = {"prod": 1, "run-a": 3, "run-b": 7, "run-c": 10, "checkpoint-v6": 6}
    plan = plan_retention(versions, tags, now, cfg)
    assert plan.cutoff == dt.datetime(2026, 3, 10, 11, 30)
    assert plan.checkpoints == {3, 5, 7, 8, 9, 11}
    assert plan.create_tags == {f"checkpoint-v{v}": v for v in (3, 5, 7, 8)}
    assert plan.delete_tags == ("checkpoint-v6", "run-a")
    assert plan.keep == {1, 3, 5, 7, 8, 9, 10, 11}


def simulate(cfg: MaintenanceConfig, days: float, commit_every_min: float, upkeep_every_min: float):
    """A stream committing every ``commit_every_min`` minutes for ``days``, upkeep applying
    the plan every ``upkeep_every_min`` minutes, a run tag on every 50th commit, a user's tag
    on the 3rd commit and ``prod`` moved daily. Returns (versions, tags, every commit, now)."""
    versions: dict[int, dt.datetime] = {}
    tags: dict[str, int] = {}
    commits: dict[int, dt.datetime] = {}
    version, minute, next_upkeep = 0, 0.0, upkeep_every_min
    while minute <= days * 24 * 60:
        version += 1
        now = T0 + dt.timedelta(minutes=minute)
        versions[version] = commits[version] = now
        if version == 3:
            tags["before-migration"] = version
        if version % 50 == 0:
            tags[f"run-{version:08d}"] = version
        if minute % (24 * 60) == 0:
            tags["prod"] = version
        if minute >= next_upkeep:
            plan = plan_retention(versions, tags, now, cfg)
            tags.update(plan.create_tags)
            for name in plan.delete_tags:
                del tags[name]
            versions = {v: versions[v] for v in plan.keep}
            assert set(tags.values()) <= set(versions)  # a tag never points at a gone version
            next_upkeep += upkeep_every_min
        minute += commit_every_min
    return versions, tags, commits, now


def last_of(commits: dict[int, dt.datetime], key) -> dict:
    out: dict = {}
    for version, stamp in commits.items():
        out[key(stamp)] = max(out.get(key(stamp), version), version)
    return out


@pytest.mark.slow
def test_a_stream_over_four_months_holds_a_bounded_history_with_hourly_and_daily_checkpoints():
    """One commit every 5 minutes for 120 days (34,560 commits) with the shipped policy."""
    cfg = SHIPPED
    versions, tags, commits, now = simulate(cfg, days=120, commit_every_min=5, upkeep_every_min=30)
    assert len(commits) > 34_000
    per_window = cfg.keep_all_hours * 60 / 5 + 30 / 5  # the window, plus one upkeep interval
    bound = per_window + cfg.keep_versions + 7 * 24 + 90 + cfg.keep_run_tags + 3
    assert len(versions) <= bound
    # every version of the keep-everything window and the last keep_versions are there
    recent = {v for v, s in commits.items() if now - s <= dt.timedelta(hours=cfg.keep_all_hours)}
    assert recent <= set(versions)
    assert sorted(commits)[-cfg.keep_versions :] == sorted(versions)[-cfg.keep_versions :]
    # the last version of every hour of the last 7 days and of every day of the last 90
    hours = last_of(commits, lambda s: s.replace(minute=0, second=0))
    days = last_of(commits, lambda s: s.date())
    hourly = {v for h, v in hours.items() if now - h < dt.timedelta(days=7) - dt.timedelta(hours=1)}
    daily = {v for d, v in days.items() if now.date() - d < dt.timedelta(days=89)}
    assert hourly <= set(versions)
    assert daily <= set(versions)
    # older history is gone, except what a user tagged
    old = {v for v in versions if now - commits[v] > dt.timedelta(days=91)}
    assert old == {3}
    assert tags["before-migration"] == 3 and tags["prod"] in versions
    # run tags: at most the newest keep_run_tags, none older than run_tags_max_days
    runs = sorted(name for name in tags if name.startswith("run-"))
    assert 1 <= len(runs) <= cfg.keep_run_tags
    assert runs[-1] == f"run-{max(v for v in commits if v % 50 == 0):08d}"
    assert all(now - commits[tags[r]] < dt.timedelta(days=cfg.run_tags_max_days) for r in runs)


def test_the_newest_run_tag_and_every_user_tag_survive_any_age():
    """A table written once a year: its only run keeps its version; user tags, ``prod`` and
    ``rollback-*`` are never released, whatever their name looks like."""
    versions = {1: at(0), 2: at(1), 3: at(2), 4: at(3), 5: at(24 * 365)}
    tags = {
        "run-old": 2,
        "run-newest": 4,
        "prod": 1,
        "rollback-20260301T000000Z-abcdef": 1,
        "checkpoint-before-migration": 3,
        "checkpoint-v9": 3,  # not upkeep's: v9 would point at version 9
    }
    plan = plan_retention(
        versions, tags, at(24 * 400), dataclasses.replace(SHIPPED, keep_versions=1)
    )
    assert plan.delete_tags == ("run-old",)
    assert plan.keep == {1, 3, 4, 5}
    assert plan.create_tags == {}  # nothing younger than 90 days but the latest


def test_run_tags_beyond_the_count_are_released_newest_first_kept():
    versions = {v: at(v) for v in range(1, 31)}
    tags = {f"run-{v:02d}": v for v in range(1, 31)}
    cfg = dataclasses.replace(SHIPPED, keep_run_tags=5)
    plan = plan_retention(versions, tags, at(31), cfg)
    assert plan.delete_tags == tuple(f"run-{v:02d}" for v in range(1, 26))


def test_a_checkpoint_is_tagged_once_it_falls_behind_the_cutoff_and_released_with_age():
    cfg = dataclasses.replace(
        SHIPPED,
        keep_versions=1,
        keep_all_hours=0,
        min_version_age_minutes=0,
        checkpoint_hourly_days=1,
        checkpoint_daily_days=2,
    )
    first = plan_retention({1: at(0.5), 2: at(1.5)}, {}, at(2), cfg)
    assert first.checkpoints == {1, 2}  # the last of hours 0 and 1
    assert first.create_tags == {"checkpoint-v1": 1}  # 2 is the latest: kept untagged
    assert first.keep == {1, 2}
    tags = dict(first.create_tags)
    second = plan_retention({1: at(0.5), 2: at(1.5)}, tags, at(30), cfg)
    assert second.checkpoints == {2}  # past a day only the last of the day stays
    assert second.delete_tags == ("checkpoint-v1",) and second.create_tags == {}
    assert second.keep == {2}
    third = plan_retention({2: at(1.5), 3: at(31)}, {}, at(60), cfg)
    assert third.checkpoints == {3} and third.keep == {3}  # past two days: gone


# ---------------------------------------------------------------- a real LanceDB table


def batch_runs(db_uri: str, runs: int, commits_per_run: int) -> list[str]:
    """Small batch runs as ``freshindex ingest`` leaves them: a few commits each, the last
    one tagged ``run-<id>``, a ``runs`` row."""
    table = new_table(db_uri)
    db = store.connect(db_uri)
    rng = np.random.default_rng(0)
    run_ids = []
    for r in range(runs):
        run_id = f"20260301T{r:06d}Z-test{r:02d}"
        for c in range(commits_per_run):
            doc = f"doc{(r * commits_per_run + c) % 40}"
            commit_changes(table, doc_rows(doc, f"run {r} commit {c}", rng), replace_docs=[doc])
        store.tag_version(table, store.RUN_TAG_PREFIX + run_id, table.version)
        store.append_run(
            db,
            {
                "run_id": run_id,
                "kind": "batch",
                "table_name": "docs",
                "status": "succeeded",
                "started_at": store.utcnow(),
                "finished_at": store.utcnow(),
                "table_version": table.version,
                "tag": store.RUN_TAG_PREFIX + run_id,
            },
        )
        run_ids.append(run_id)
        if r == 2:
            store.tag_version(table, "prod", table.version)
            store.tag_version(table, "my-snapshot", table.version - 1)
    return run_ids


def rows_as_of(db_uri: str, ref) -> list[str]:
    table = store.open_as_of(store.connect(db_uri), "docs", ref)
    return sorted(table.to_arrow().column("text").to_pylist())


def test_shipped_defaults_bound_the_versions_of_30_small_batch_runs(tmp_path):
    db_uri = str(tmp_path / "db")
    run_ids = batch_runs(db_uri, runs=30, commits_per_run=4)
    table = store.open_chunks(store.connect(db_uri), "docs")
    assert len(table.list_versions()) >= 120
    prod_rows, snapshot_rows = rows_as_of(db_uri, "prod"), rows_as_of(db_uri, "my-snapshot")
    latest_rows = rows_as_of(db_uri, run_ids[-1])
    cfg = load_config(environ={}).maintenance  # the shipped defaults, from configs/default.yaml

    # right after the runs no version is old enough to go; run tags beyond the newest
    # keep_run_tags are released at once
    soon = maintain(db_uri, "docs", cfg, ann=False)
    assert soon.versions_removed == 0
    assert soon.tags_released == [f"run-{r}" for r in run_ids[: 30 - cfg.keep_run_tags]]

    # two days later: the last keep_versions, the newest keep_run_tags runs, user tags
    two_days = dt.datetime.now() + dt.timedelta(days=2)
    report = maintain(db_uri, "docs", cfg, ann=False, now=two_days)
    assert report.versions_removed >= 120 - cfg.keep_versions - cfg.keep_run_tags - 4
    assert report.versions_after <= cfg.keep_versions + cfg.keep_run_tags + 4
    tags = store.open_chunks(store.connect(db_uri), "docs").tags.list()
    assert {"prod", "my-snapshot"} <= set(tags)
    assert rows_as_of(db_uri, "prod") == prod_rows
    assert rows_as_of(db_uri, "my-snapshot") == snapshot_rows
    assert rows_as_of(db_uri, run_ids[-1]) == latest_rows
    assert rows_as_of(db_uri, run_ids[-cfg.keep_run_tags]) != []
    with pytest.raises(TableError):  # a released run: as_of its id is refused ...
        rows_as_of(db_uri, run_ids[0])
    recorded = {r["run_id"] for r in store.read_runs(store.connect(db_uri), "docs")}
    assert set(run_ids) <= recorded  # ... but its runs row stays

    # forty days later: only the newest run's tag is left of the runs
    forty_days = dt.datetime.now() + dt.timedelta(days=40)
    later = maintain(db_uri, "docs", cfg, ann=False, now=forty_days)
    table = store.open_chunks(store.connect(db_uri), "docs")
    run_tags = [t for t in table.tags.list() if t.startswith(store.RUN_TAG_PREFIX)]
    assert run_tags == [f"run-{run_ids[-1]}"]
    assert later.versions_after <= cfg.keep_versions + 4
    assert rows_as_of(db_uri, "prod") == prod_rows
    assert rows_as_of(db_uri, run_ids[-1]) == latest_rows
    checkpoints = [t for t in table.tags.list() if t.startswith("checkpoint-v")]
    assert checkpoints == [checkpoint_tag(int(t[len("checkpoint-v") :])) for t in checkpoints]
