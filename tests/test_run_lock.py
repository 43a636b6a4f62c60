"""The run lock: one batch run per table at a time, on a local folder and on a real
S3-compatible server (moto's). A run that finds the table busy skips (exit status 75),
fails (2) or waits, and never interleaves its commits with the running one's; a holder
killed with SIGKILL blocks the next run at most ``commit.lease_ttl_s``.

The process tests pause the first run right after it took the lock (``tests/holding.py``),
so the second one meets a run in progress every time, not by luck of timing.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from freshindex import cli, store
from freshindex.config import CommitConfig
from freshindex.errors import ConfigError
from freshindex.pipelines import batch
from freshindex.pipelines.batch import EXIT_SKIPPED, run_ingest
from freshindex.pipelines.options import FreshIndexOptions
from freshindex.store.lease import S3LeaseObject
from tests.conftest import ROOT, table_rows, write_corpus

# ------------------------------------------------------------------ the lock itself


def take(*args, **kw) -> None:
    """Take the run lock and let it go at once."""
    with store.run_lock(*args, **kw):
        pass


def test_a_held_local_lock_skips_fails_or_waits(tmp_path):
    db = str(tmp_path / "db")
    with store.run_lock(db, "docs", "run-a"):
        with pytest.raises(store.RunSkipped, match="being re-indexed by run run-a") as skipped:
            take(db, "docs", "run-b", if_running="skip")
        assert skipped.value.run_id == "run-b" and "run-a" in skipped.value.holder
        with pytest.raises(store.RunInProgress) as failed:
            take(db, "docs", "run-b", if_running="fail")
        assert not isinstance(failed.value, store.RunSkipped)
        with pytest.raises(store.RunInProgress, match="gave up after waiting"):
            take(db, "docs", "run-b", if_running="wait", wait_s=0.3)
        with store.run_lock(str(tmp_path / "other"), "docs", "run-c", if_running="fail"):
            pass  # another database: its own lock
        with store.run_lock(db, "other", "run-c", if_running="fail"):
            pass  # another table: its own lock
    with store.run_lock(db, "docs", "run-b", if_running="fail"):
        pass  # released


def test_a_waiting_run_goes_ahead_once_the_holder_is_done(tmp_path):
    db = str(tmp_path / "db")
    order: list[str] = []
    held = threading.Event()

    def holder():
        with store.run_lock(db, "docs", "run-a"):
            held.set()
            time.sleep(0.5)
            order.append("a done")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    with store.run_lock(db, "docs", "run-b", if_running="wait", wait_s=30):
        order.append("b holds")
    thread.join()
    assert order == ["a done", "b holds"]


@pytest.mark.slow
def test_the_run_lease_on_s3_is_its_own_and_leaves_the_commit_lease_free(s3_bucket):
    db = f"s3://{s3_bucket}/lancedb"
    settings = CommitConfig(lease_ttl_s=1.5, lease_settle_s=0.1)
    run_lease = S3LeaseObject(db, "docs", kind="run")
    assert run_lease.key == "lancedb/_leases/run/docs.json"
    with store.run_lock(db, "docs", "run-a", commit=settings) as lease:
        assert run_lease.read()[0].holder == lease.holder and "run-a" in lease.holder
        # the holder's own commits take the commit lease beside it
        with store.commit_lock(db, "docs", settings) as commit_lease:
            assert commit_lease.token == 1
        with pytest.raises(store.RunSkipped, match="run-a"):
            take(db, "docs", "run-b", commit=settings)
        time.sleep(2.0)  # past its first TTL: renewed, so still held
        assert lease.holds()
        first_token = lease.token
    assert run_lease.read()[0].expires_at == 0  # released
    with store.run_lock(db, "docs", "run-b", if_running="fail", commit=settings) as again:
        assert again.token == first_token + 1


def test_if_running_is_a_checked_setting_and_a_flag(fake_cfg):
    assert fake_cfg.ingest.if_running == "skip"  # the default: schedules never pile up
    with pytest.raises(ConfigError, match="skip, wait or fail"):
        dataclasses.replace(fake_cfg.ingest, if_running="queue")
    with pytest.raises(ConfigError, match="if_running_wait_s"):
        dataclasses.replace(fake_cfg.ingest, if_running_wait_s=-1.0)
    opts = FreshIndexOptions(["--db", fake_cfg.db, "--if_running", "wait"])
    assert opts.view_as(FreshIndexOptions).to_config().ingest.if_running == "wait"
    args = cli.build_parser().parse_args(["ingest", "src", "--if-running", "fail"])
    assert args.if_running == "fail"


# ------------------------------------------------------------------ the entry points


def test_a_run_on_a_busy_table_reads_and_writes_nothing(fake_cfg, corpus, capsys):
    with store.run_lock(fake_cfg.db, fake_cfg.table, "run-a"):
        with pytest.raises(store.RunSkipped):
            run_ingest(fake_cfg, str(corpus), [], "run-b")
        argv = ["ingest", str(corpus), "--db", fake_cfg.db, "--table", "docs", "--run-id", "b2"]
        assert cli.main(argv) == 75
        out = capsys.readouterr().out
        assert "run b2 skipped" in out and "run run-a" in out and "exit status 75" in out
        assert cli.main([*argv, "--if-running", "fail"]) == 2
        assert "being re-indexed by run run-a" in capsys.readouterr().err
        module_argv = ["--source", str(corpus), "--db", fake_cfg.db, "--table", "docs"]
        assert batch.main(module_argv) == EXIT_SKIPPED
        assert batch.main([*module_argv, "--if_running", "fail"]) == 2
    assert "docs" not in store.table_names(store.connect(fake_cfg.db))
    assert store.read_runs(store.connect(fake_cfg.db), "docs") == []


# ------------------------------------------------------------------ two processes


def many_docs(prefix: str, n: int) -> dict[str, str]:
    return {
        f"{prefix}{i:03d}.md": f"# {prefix} {i}\n\n"
        + " ".join(f"{prefix}{i}-{j}." for j in range(60))
        for i in range(n)
    }


def write_cfg(cfg, path: Path) -> Path:
    raw = cfg.to_dict()
    raw["ingest"].update(commit_max_rows=40, docs_per_batch=2)
    raw["commit"].update(lease_ttl_s=4.0, lease_settle_s=0.1)
    path.write_text(yaml.safe_dump(raw))
    return path


def start(
    cfg_file: Path, source: Path, run_id: str, *extra: str, gate: Path | None = None, log=None
):
    """``freshindex ingest`` in a process group of its own; ``gate``: paused once it holds
    the run lock until the gate file exists (``tests/holding.py``)."""
    cmd = [sys.executable, "-m", "freshindex.cli"]
    if gate is not None:
        cmd = [sys.executable, "-m", "tests.holding", str(gate), "--"]
    cmd += ["ingest", str(source), "--config", str(cfg_file), "--run-id", run_id, *extra]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=dict(os.environ),
        stdout=log or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(condition, proc, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode} before it was expected to"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture(params=["local", "s3"])
def shared_cfg(request, fake_cfg, tmp_path):
    """The fake-embedder config on a local folder or on a bucket of moto's S3 server."""
    if request.param == "local":
        return fake_cfg
    bucket = request.getfixturevalue("s3_bucket")
    return dataclasses.replace(fake_cfg, db=f"s3://{bucket}/lancedb")


def content(rows):
    return sorted((r["doc_id"], r["chunk_id"], r["text"]) for r in rows)


@pytest.mark.slow
def test_a_second_run_skips_with_status_75_and_the_table_is_one_clean_run(
    shared_cfg, fake_cfg, tmp_path
):
    corpus = write_corpus(tmp_path / "corpus", many_docs("a", 12))
    clean = dataclasses.replace(fake_cfg, db=str(tmp_path / "clean"))
    run_ingest(clean, str(corpus), [])
    cfg_file = write_cfg(shared_cfg, tmp_path / "cfg.yaml")
    gate = tmp_path / "gate"
    first = start(cfg_file, corpus, "run-a", gate=gate)
    wait_for(Path(f"{gate}.held").exists, first)
    second = start(cfg_file, corpus, "run-b", "--if-running", "skip")
    out, _ = second.communicate(timeout=180)
    assert second.returncode == EXIT_SKIPPED, out
    assert "run run-b skipped" in out and "run run-a on" in out, out
    gate.touch()
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert batch_runs(shared_cfg) == ["run-a"]
    assert content(table_rows(shared_cfg.db)) == content(table_rows(clean.db))


def batch_runs(cfg) -> list[str]:
    """The batch runs recorded in the runs table (upkeep after a run records its own)."""
    runs = store.read_runs(store.connect(cfg.db), cfg.table)
    return [r["run_id"] for r in runs if r["kind"] == "batch"]


def rows_by_run(cfg, version: int) -> dict[str, int]:
    table = store.open_chunks(store.connect(cfg.db), cfg.table)
    table.checkout(version)
    counts: dict[str, int] = {}
    for run_id in table.to_arrow().column("run_id").to_pylist():
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


@pytest.mark.slow
def test_a_waiting_run_commits_only_after_the_running_ones_last_commit(shared_cfg, tmp_path):
    first_corpus = write_corpus(tmp_path / "first", many_docs("a", 12))
    second_corpus = write_corpus(tmp_path / "second", many_docs("b", 6))  # its own namespace
    cfg_file = write_cfg(shared_cfg, tmp_path / "cfg.yaml")
    gate = tmp_path / "gate"
    first = start(cfg_file, first_corpus, "run-a", gate=gate)
    wait_for(Path(f"{gate}.held").exists, first)
    log_path = tmp_path / "second.log"
    with open(log_path, "w") as log:
        second = start(cfg_file, second_corpus, "run-b", "--if-running", "wait", log=log)
        wait_for(lambda: "waiting for run run-a" in log_path.read_text(), second)
        gate.touch()
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out
        assert second.wait(timeout=300) == 0, log_path.read_text()

    db = store.connect(shared_cfg.db)
    runs = {r["run_id"]: r for r in store.read_runs(db, "docs")}
    assert runs["run-b"]["started_at"] >= runs["run-a"]["finished_at"]
    table = store.open_chunks(db, "docs")
    history = [(v["version"], v["timestamp"]) for v in table.list_versions()]
    counts = {version: rows_by_run(shared_cfg, version) for version, _ in history}
    a_final = counts[history[-1][0]]["run-a"]
    b_versions = [v for v, _ in history if counts[v].get("run-b")]
    a_changes = [
        v
        for (v, _), (prev, _) in zip(history[1:], history, strict=False)
        if counts[v].get("run-a", 0) != counts[prev].get("run-a", 0)
    ]
    assert len(a_changes) > 1  # the first run committed in several slices
    # every version with the second run's rows already has all of the first run's rows:
    # none of the second run's commits came between two of the first run's
    assert b_versions and all(counts[v]["run-a"] == a_final for v in b_versions)
    assert max(a_changes) < min(b_versions)
    b_started = runs["run-b"]["started_at"].timestamp()
    last_a_commit = dict(history)[max(a_changes)]
    assert last_a_commit.timestamp() <= b_started


# ------------------------------------------------------------------ a holder that dies


@pytest.mark.slow
def test_a_killed_holder_blocks_the_next_run_at_most_the_lease_ttl(shared_cfg, fake_cfg, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", many_docs("a", 6))
    cfg_file = write_cfg(shared_cfg, tmp_path / "cfg.yaml")
    cfg = dataclasses.replace(
        shared_cfg,
        commit=dataclasses.replace(shared_cfg.commit, lease_ttl_s=4.0, lease_settle_s=0.1),
    )
    gate = tmp_path / "gate"
    holder = start(cfg_file, corpus, "run-a", gate=gate)
    wait_for(Path(f"{gate}.held").exists, holder)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    killed_at = time.time()
    assert holder.returncode == -signal.SIGKILL
    if store.is_local(cfg.db):
        # the kernel released the file lock with its holder: the next run goes ahead now
        with store.run_lock(cfg.db, "docs", "probe", if_running="fail", commit=cfg.commit):
            pass
    else:
        abandoned, _ = S3LeaseObject(cfg.db, "docs", kind="run").read()
        assert abandoned.expires_at > killed_at  # never released: it has to expire
        with pytest.raises(store.RunSkipped, match="run run-a"):
            take(cfg.db, "docs", "probe", commit=cfg.commit)
    waited_from = time.time()
    with store.run_lock(cfg.db, "docs", "probe", if_running="wait", wait_s=60, commit=cfg.commit):
        got_it = time.time()
    assert got_it - killed_at <= cfg.commit.lease_ttl_s + 2.0  # poll interval and settle
    if not store.is_local(cfg.db):
        assert got_it >= abandoned.expires_at >= waited_from
    out, _ = start(cfg_file, corpus, "run-c", "--if-running", "fail").communicate(timeout=300)
    assert batch_runs(cfg) == ["run-c"], out
