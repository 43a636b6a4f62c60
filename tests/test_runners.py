"""The batch pipeline on distributed runners, and the idempotence that worker faults need.

- Beam's portable path, as Flink and Dataflow run Python: Beam's own job service and an
  external worker pool, each a process the test starts; the table equals the
  DirectRunner's. An SDK worker SIGKILLed mid-run fails the job (this job service does
  not retry); a re-run ends equal to a clean run.
- Dask: a ``dask scheduler`` and two ``dask worker`` processes, the database and staging
  on the S3-compatible test server, run with ``freshindex.pipelines.dask_runner``
  (Beam's DaskRunner mixes a multi-output step's outputs: see that module); the table
  equals the DirectRunner's. A worker SIGKILLed mid-run: the run completes correctly or
  fails cleanly, and a re-run ends equal to a clean run.
- Runners retry and may duplicate bundles: a duplicated staged file and a commit step run
  twice (or retried after a crash between its merges) commit the run once.

Every service a test starts is stopped (its whole process group) even when it fails.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from freshindex import store
from freshindex.pipelines.batch import run_ingest
from freshindex.transforms import write
from tests.conftest import DOCS, ROOT, write_corpus

pytestmark = pytest.mark.slow

VECTOR_TOLERANCE = 1e-6  # the same model on the same text: equal up to float noise
BIN = str(Path(sys.executable).parent)  # the venv's bin: SDK workers run ``python`` from PATH


def many_docs(n: int) -> dict[str, str]:
    return {
        f"d{i:03d}.md": f"# Document {i}\n\n" + " ".join(f"fact{i}-{j}." for j in range(120))
        for i in range(n)
    }


def chunks(db_uri: str, table: str = "docs") -> dict[str, tuple[str, str, np.ndarray]]:
    """chunk id -> (doc id, text, vector): what a reader of the table sees."""
    rows = store.open_chunks(store.connect(db_uri), table).to_arrow().to_pylist()
    return {r["chunk_id"]: (r["doc_id"], r["text"], np.asarray(r["vector"])) for r in rows}


def assert_same_table(db_uri: str, clean_uri: str) -> None:
    got, want = chunks(db_uri), chunks(clean_uri)
    assert want and sorted(got) == sorted(want)  # the same chunk ids, none twice
    for chunk_id, (doc_id, text, vector) in want.items():
        assert got[chunk_id][:2] == (doc_id, text)
        assert np.allclose(got[chunk_id][2], vector, atol=VECTOR_TOLERANCE)


def run_rows(db_uri: str, table: str = "docs") -> list[dict]:
    """The batch runs recorded for ``table`` (upkeep after a run records its own row)."""
    return [r for r in store.read_runs(store.connect(db_uri), table) if r["kind"] == "batch"]


# ----------------------------------------------------------------------- services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{proc.args} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def services(tmp_path: Path):
    """Start processes, each in its own process group (its children with it); all are
    SIGKILLed on exit, whatever happened."""
    started: list[subprocess.Popen] = []
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}

    def start(name: str, *cmd: str) -> subprocess.Popen:
        log = tmp_path / f"{name}.log"
        proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        proc.log = log
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


@pytest.fixture
def portable(tmp_path):
    """Beam's job service and an external worker pool; yields (beam args, the pool)."""
    with services(tmp_path) as start:
        job_port, pool_port = free_port(), free_port()
        pool = start(
            "pool",
            f"{BIN}/python",
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={pool_port}",
        )
        job = start(
            "jobs",
            f"{BIN}/python",
            "-m",
            "apache_beam.runners.portability.local_job_service_main",
            "--port",
            str(job_port),
        )
        wait_for_port(pool_port, pool, pool.log)
        wait_for_port(job_port, job, job.log)
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config=localhost:{pool_port}",
        ]
        yield args, pool


def ingest(cfg, source, beam_args=(), **ingest_overrides):
    if ingest_overrides:
        cfg = dataclasses.replace(cfg, ingest=dataclasses.replace(cfg.ingest, **ingest_overrides))
    return run_ingest(cfg, str(source), list(beam_args))


def clean_run(cfg, corpus, tmp_path, **ingest_overrides):
    """The DirectRunner's table of ``corpus``: the reference every runner must equal."""
    clean = dataclasses.replace(cfg, db=str(tmp_path / "clean"))
    ingest(clean, corpus, **ingest_overrides)
    return clean.db


# -------------------------------------------------------------- the portable path


def test_portable_runner_table_equals_the_direct_runners(fake_cfg, corpus, tmp_path, portable):
    beam_args, _ = portable
    clean = clean_run(fake_cfg, corpus, tmp_path)
    row = ingest(fake_cfg, corpus, beam_args)
    assert row["status"] == "succeeded" and row["docs_added"] == len(DOCS)
    assert_same_table(fake_cfg.db, clean)
    again = ingest(fake_cfg, corpus, beam_args)  # the ledger is read on the workers too
    assert again["docs_skipped"] == len(DOCS) and again["chunks_embedded"] == 0


def test_sdk_worker_killed_mid_run_fails_the_job_and_a_rerun_equals_a_clean_run(
    fake_cfg, tmp_path, portable
):
    beam_args, pool = portable
    corpus = write_corpus(tmp_path / "big", many_docs(60))
    clean = clean_run(fake_cfg, corpus, tmp_path, docs_per_batch=4)
    staging = Path(fake_cfg.db) / "_staging" / "docs"
    with concurrent.futures.ThreadPoolExecutor(1) as pool_of_one:
        run = pool_of_one.submit(ingest, fake_cfg, corpus, beam_args, docs_per_batch=4)
        deadline = time.monotonic() + 240
        while not any(staging.glob("*/*.parquet")):  # a worker is staging: mid-bundle
            assert not run.done(), run.result()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = children(pool.pid)
        assert workers, "the worker pool started no SDK worker process"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 (the job service reports the lost worker)
            run.result(timeout=240)
    assert not store.table_names(store.connect(fake_cfg.db)) or not chunks(fake_cfg.db)
    row = ingest(fake_cfg, corpus, beam_args, docs_per_batch=4)  # a new SDK worker
    assert row["status"] == "succeeded" and row["docs_added"] == 60
    assert_same_table(fake_cfg.db, clean)
    assert [r["run_id"] for r in run_rows(fake_cfg.db)] == [row["run_id"]]


# --------------------------------------------------------------------------- Dask


DASK_RUNNER = "freshindex.pipelines.dask_runner.DaskRunner"


@pytest.fixture
def dask_cluster(tmp_path, s3_bucket):
    """A scheduler and two single-threaded workers, each its own process (no nanny, so a
    killed worker stays dead); their environment reaches the S3 test server. Yields
    (scheduler address, {worker name: process})."""
    with services(tmp_path) as start:
        port = free_port()
        scheduler = start(
            "scheduler",
            f"{BIN}/dask",
            "scheduler",
            "--host=127.0.0.1",
            f"--port={port}",
            "--no-dashboard",
        )
        wait_for_port(port, scheduler, scheduler.log)
        address = f"tcp://127.0.0.1:{port}"
        workers = {
            name: start(
                name,
                f"{BIN}/dask",
                "worker",
                address,
                "--nthreads=1",
                "--no-nanny",
                "--no-dashboard",
                f"--name={name}",
            )
            for name in ("w1", "w2")
        }
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            yield address, workers, client


def dask_args(address: str) -> list[str]:
    return [f"--runner={DASK_RUNNER}", f"--dask_client_address={address}"]


@pytest.fixture
def s3_corpus(fake_cfg, s3_bucket):
    """(config with the database on the bucket, the corpus's S3 URI, its size)."""
    import boto3

    docs = {**DOCS, **many_docs(12)}
    s3 = boto3.client("s3")
    for rel, text in docs.items():
        s3.put_object(Bucket=s3_bucket, Key=f"docs/{rel}", Body=text.encode())
    cfg = dataclasses.replace(fake_cfg, db=f"s3://{s3_bucket}/lancedb")
    return cfg, f"s3://{s3_bucket}/docs/", len(docs)


def test_dask_cluster_on_object_storage_equals_the_direct_runner(s3_corpus, tmp_path, dask_cluster):
    cfg, source, n = s3_corpus
    address, _, _ = dask_cluster
    direct = dataclasses.replace(cfg, db=f"{cfg.db}-direct")
    ingest(direct, source)
    row = ingest(cfg, source, dask_args(address))
    assert row["status"] == "succeeded" and row["docs_added"] == n
    assert_same_table(cfg.db, direct.db)
    assert [r["run_id"] for r in run_rows(cfg.db)] == [row["run_id"]]  # committed once


def test_dask_worker_killed_mid_run_then_rerun_equals_a_clean_run(
    s3_corpus, tmp_path, dask_cluster, s3_bucket
):
    import boto3

    cfg, source, n = s3_corpus
    address, workers, client = dask_cluster
    direct = dataclasses.replace(cfg, db=f"{cfg.db}-direct")
    ingest(direct, source)
    s3 = boto3.client("s3")
    killed = None
    with concurrent.futures.ThreadPoolExecutor(1) as pool_of_one:
        run = pool_of_one.submit(ingest, cfg, source, dask_args(address), docs_per_batch=2)
        deadline = time.monotonic() + 240
        while killed is None:  # the first worker seen running a task of the run
            assert time.monotonic() < deadline and not run.done()
            busy = [a for a, keys in client.processing().items() if keys]
            if busy:
                name = client.scheduler_info()["workers"][busy[0]]["name"]
                killed = workers[name]
                os.kill(killed.pid, signal.SIGKILL)
            time.sleep(0.05)
        try:
            first = run.result(timeout=300)
        except Exception:  # failed: cleanly, if the re-run below ends equal to a clean run
            first = None
    print("killed", killed.args[-1], "; the run", "failed" if first is None else "completed")
    if first is not None:  # completed on the other worker: correctly, once
        assert first["status"] == "succeeded" and first["docs_added"] == n
        assert_same_table(cfg.db, direct.db)
        prefix = f"lancedb/_staging/docs/{first['run_id']}"
        listing = s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)
        assert listing.get("KeyCount", 0) == 0  # its staging removed
    rerun = ingest(cfg, source, dask_args(address))
    assert rerun["status"] == "succeeded"
    assert_same_table(cfg.db, direct.db)
    runs = run_rows(cfg.db)
    assert len({r["run_id"] for r in runs}) == len(runs)  # no run recorded twice
    assert killed.poll() is not None  # the worker did die


# ------------------------------------------------------- duplicated and retried work


def test_a_staged_file_is_named_by_its_rows(fake_cfg, tmp_path, monkeypatch):
    """A retried bundle rewrites its file; it never adds a second copy beside it."""
    staged_paths: list[str] = []
    real = write.stage_rows

    def stage_twice(table, staging_uri):
        first, second = real(table, staging_uri), real(table, staging_uri)
        staged_paths.extend([first, second])
        assert len(list(Path(staging_uri).glob("*.parquet"))) == len(set(staged_paths))
        return second

    monkeypatch.setattr(write, "stage_rows", stage_twice)
    ingest(fake_cfg, write_corpus(tmp_path / "ten", many_docs(10)), docs_per_batch=1)
    assert staged_paths[0::2] == staged_paths[1::2]  # each retry named its file alike
    assert len(set(staged_paths)) > 1  # different rows, different names


def test_a_commit_step_run_twice_on_the_same_staged_input_commits_once(
    fake_cfg, corpus, tmp_path, monkeypatch
):
    clean = clean_run(fake_cfg, corpus, tmp_path)
    real = write.commit_run
    rows = []

    def twice(spec, staged, *rest):
        staged = list(staged)
        rows.append(real(spec, staged + staged[:1], *rest))  # a duplicated stage bundle too
        rows.append(real(spec, staged, *rest))
        return rows[-1]

    monkeypatch.setattr(write, "commit_run", twice)
    row = ingest(fake_cfg, corpus)
    assert_same_table(fake_cfg.db, clean)
    assert rows[0]["table_version"] == rows[1]["table_version"] == row["table_version"]
    assert len(run_rows(fake_cfg.db)) == 1
    versions = store.open_chunks(store.connect(fake_cfg.db), "docs").list_versions()
    clean_versions = store.open_chunks(store.connect(clean), "docs").list_versions()
    assert len(versions) == len(clean_versions)  # the second step committed nothing


def test_a_commit_step_retried_after_a_crash_between_its_merges_ends_equal(
    fake_cfg, corpus, tmp_path, monkeypatch
):
    bad = write_corpus(corpus, {"bad/empty.md": ""})  # an errors row, recorded once
    clean = clean_run(fake_cfg, bad, tmp_path, max_failure_fraction=0.9)
    real_commit, real_changes = write.commit_run, write.commit_changes
    merges = 0

    def crash_after_first_merge(*args, **kw):
        nonlocal merges
        version = real_changes(*args, **kw)
        merges += 1
        if merges == 1:
            raise ConnectionError("the worker died after the first merge")
        return version

    def retried(*args):
        monkeypatch.setattr(write, "commit_changes", crash_after_first_merge)
        with pytest.raises(ConnectionError):
            real_commit(*args)
        monkeypatch.setattr(write, "commit_changes", real_changes)
        return real_commit(*args)  # the runner's retry of the same bundle

    monkeypatch.setattr(write, "commit_run", retried)
    row = ingest(fake_cfg, bad, commit_max_rows=4, docs_per_batch=1, max_failure_fraction=0.9)
    assert merges == 1 and row["docs_added"] == len(DOCS)
    assert_same_table(fake_cfg.db, clean)
    assert len(run_rows(fake_cfg.db)) == 1
    errors = store.read_errors(store.connect(fake_cfg.db), run_id=row["run_id"])
    assert [e["doc_id"] for e in errors] == ["bad/empty.md"]
