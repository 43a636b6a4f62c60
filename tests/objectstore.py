"""A real S3-compatible server for the tests: moto's server (PyPI ``moto[server]``) on
loopback, started once per test session; each test gets its own bucket.

Clients are configured the way users configure them, through the environment:
``AWS_ENDPOINT_URL`` (boto3, pyarrow, Beam's S3 filesystem), ``AWS_ENDPOINT`` and
``AWS_ALLOW_HTTP`` (Lance), and credentials in ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (docs/DEPLOY.md).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(timeout_s: float = 60) -> tuple[subprocess.Popen, str]:
    """(process, endpoint) of moto's S3 server on a free loopback port, once it answers
    (also used by the benchmarks in scripts/)."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            return server, endpoint
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto's S3 server did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3_endpoint():
    try:
        server, endpoint = start_moto()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
    }


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A new, empty bucket on the test server, with this process's AWS_* set for it."""
    import boto3

    for name, value in s3_environment(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    bucket = f"fi-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket
