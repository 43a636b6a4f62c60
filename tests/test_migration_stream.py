"""A blue-green migration of a stream-fed index while the stream runs and queries are served.

Real broker (Tansu), real LanceDB, stream processes as an operator runs them (one per
physical table, each in its own consumer group), queries in a loop on a thread of the
test. Two migrations: to another chunking (the FAKE embedder ``fake-hash``, 24-token
chunks without overlap) and to a second model (the real all-MiniLM-L6-v2: another width,
tokenizer and window), with cutover, rollback and cutover again. Asserted: no query fails,
none returns nothing or chunks of another table than the one it pinned, the old table
serves until the cutover, and every document updated or deleted on the topic during the
migration is right in the new table.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
import uuid

import pytest

from freshindex import migration, store
from freshindex.kafka_broker import create_topic, kafka_for_tests
from freshindex.query.readers import IndexReader
from freshindex.query.retrieval import retrieve
from freshindex.schemas.messages import encode_message
from freshindex.schemas.predicates import in_list
from tests.test_stream_pipeline import publish, stream_process, write_cfg_file

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module")
def kafka():
    with kafka_for_tests() as bootstrap:
        yield bootstrap


class History:
    """Every message published, so the expected final state is known."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap, self.topic = bootstrap, topic
        self.latest: dict[str, str | None] = {}
        self.n = 0

    def send(self, count: int, docs: int = 12) -> None:
        messages = []
        for _ in range(count):
            i, self.n = self.n, self.n + 1
            doc = f"doc-{i % docs}"
            if i % 7 == 6:
                messages.append(encode_message(doc, delete=True))
                self.latest[doc] = None
            else:
                text = f"Version {i} of {doc}. It mentions topic {i % 5} and ducks {i}."
                messages.append(encode_message(doc, text=text, title=doc))
                self.latest[doc] = f"Version {i} of {doc}."
        publish(self.bootstrap, self.topic, messages)

    def expected(self) -> dict[str, str]:
        return {doc: marker for doc, marker in self.latest.items() if marker is not None}


class QueryLoop(threading.Thread):
    """Queries the index name in a loop; records every failure and what each query read."""

    def __init__(self, db, name: str):
        super().__init__(daemon=True)
        self.reader = IndexReader(db, name)
        self.stop_event = threading.Event()
        self.problems: list[str] = []
        self.served: list[str] = []  # the physical table of each query, in order

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                pinned = self.reader.pinned()
                hits = retrieve(pinned, "ducks topic", mode="vector", k=5)
                if not hits:
                    self.problems.append(f"empty result from {pinned.name}@{pinned.version}")
                ids = [h.chunk_id for h in hits]
                found = pinned.table.search().where(in_list("chunk_id", ids).expr())
                n = len(found.select(["chunk_id"]).limit(None).to_arrow())
                if n != len(set(ids)):
                    self.problems.append(f"chunks not in {pinned.name}@{pinned.version}")
                self.served.append(pinned.name)
            except Exception as exc:  # every failure is a finding
                self.problems.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)
        self.reader.close()


def docs_of(db, table: str) -> dict[str, str]:
    """doc_id -> text of its first chunk."""
    rows = store.open_chunks(db, table).search().select(["doc_id", "chunk_index", "text"])
    first = {}
    for row in rows.limit(None).to_arrow().to_pylist():
        if row["chunk_index"] == 0:
            first[row["doc_id"]] = row["text"]
    return first


def assert_right(db, table: str, history: History) -> None:
    expected = history.expected()
    got = docs_of(db, table)
    assert set(got) == set(expected), (table, set(got) ^ set(expected))
    wrong = {d: got[d] for d, marker in expected.items() if marker not in got[d]}
    assert not wrong, (table, wrong)


def offsets_reach_end(db, table: str, history: History) -> bool:
    recorded = migration._stream_offsets(db, table)
    return sum(recorded.values()) >= history.n


def wait_for(predicate, what: str, procs=(), timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"a stream exited before {what}:\n{proc.stdout.read()}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)


def test_migrations_of_a_stream_fed_index_under_load(fake_cfg, kafka, tmp_path):
    topic = f"docs-{uuid.uuid4().hex[:8]}"
    create_topic(kafka, topic, partitions=3)
    history = History(kafka, topic)
    db = store.connect(fake_cfg.db)
    history.send(30)
    procs = []
    live_file = write_cfg_file(fake_cfg, tmp_path / "live.yaml")

    def run_stream_of(cfg, name):
        proc = stream_process(
            write_cfg_file(cfg, tmp_path / f"{name}.yaml"),
            kafka,
            topic,
            "--batch_interval_s",
            "0.3",
        )
        procs.append(proc)
        return proc

    live = stream_process(live_file, kafka, topic, "--batch_interval_s", "0.3")
    procs.append(live)
    loop = None
    try:
        wait_for(lambda: offsets_reach_end(db, "docs", history), "the live table", procs)
        loop = QueryLoop(db, "docs")
        loop.start()

        # ---- migration 1: another chunking, same (fake) model
        chunked = dataclasses.replace(
            fake_cfg,
            chunking=dataclasses.replace(fake_cfg.chunking, max_tokens=24, overlap_tokens=0),
        )
        state = migration.start(
            chunked, "docs", topics=[topic], bootstrap_servers=kafka, log=lambda *_: None
        )
        shadow = state["new_table"]
        run_stream_of(dataclasses.replace(chunked, table=shadow), "shadow1")
        history.send(25)  # updates and deletes while the migration runs
        wait_for(lambda: offsets_reach_end(db, "docs", history), "live to catch up", procs)
        assert set(loop.served) == {"docs"}  # the old table serves until the cutover
        migration.cutover(fake_cfg, "docs", force=True, timeout_s=300, log=lambda *_: None)
        served_at_cutover = len(loop.served)
        history.send(10)
        wait_for(lambda: offsets_reach_end(db, shadow, history), "the shadow", procs)
        wait_for(lambda: len(loop.served) > served_at_cutover + 3, "queries on the new table")
        assert loop.served[-1] == shadow
        assert_right(db, shadow, history)

        migration.rollback(fake_cfg, "docs", timeout_s=300, log=lambda *_: None)
        history.send(10)
        wait_for(lambda: offsets_reach_end(db, "docs", history), "the old table", procs)
        assert_right(db, "docs", history)
        migration.cutover(fake_cfg, "docs", force=True, timeout_s=300, log=lambda *_: None)
        wait_for(lambda: offsets_reach_end(db, shadow, history), "the shadow again", procs)
        assert_right(db, shadow, history)
        stop(live)  # the old table's stream ends with the migration
        procs.remove(live)
        migration.finish(fake_cfg, "docs")
        assert "docs" not in store.table_names(db)

        # ---- migration 2: a second model (another width, tokenizer and window)
        real = dataclasses.replace(
            chunked,
            embedding=dataclasses.replace(chunked.embedding, model="all-MiniLM-L6-v2"),
            chunking=dataclasses.replace(chunked.chunking, max_tokens=128, overlap_tokens=16),
        )
        state = migration.start(
            real, "docs", topics=[topic], bootstrap_servers=kafka, log=lambda *_: None
        )
        second = state["new_table"]
        assert state["old_table"] == shadow
        run_stream_of(dataclasses.replace(real, table=second), "shadow2")
        history.send(15)
        wait_for(lambda: offsets_reach_end(db, shadow, history), "the live table", procs)
        migration.cutover(chunked, "docs", force=True, timeout_s=300, log=lambda *_: None)
        wait_for(lambda: offsets_reach_end(db, second, history), "the second shadow", procs)
        count = len(loop.served)
        wait_for(lambda: len(loop.served) > count + 3, "queries on the second model")
        assert loop.served[-1] == second
        assert_right(db, second, history)
        width = store.open_chunks(db, second).schema.field("vector").type.list_size
        assert width == 384

        # the operator restarts the index's stream by its name, with the new settings: it
        # writes the table the name serves, in that table's consumer group
        stop(procs.pop())
        history.send(10)
        run_stream_of(real, "docs-again")
        wait_for(lambda: offsets_reach_end(db, second, history), "the restarted stream", procs)
        assert_right(db, second, history)
        groups = {r["group_id"] for r in store.read_stream_batches(db, table_name=second)}
        assert groups == {f"freshindex-{second}"}
    finally:
        if loop is not None:
            loop.stop()
        for proc in procs:
            stop(proc)
    assert not loop.problems, loop.problems[:5]
    # every switch moved readers in one step: the tables served, in order, never interleave
    switches = [b for a, b in zip(loop.served, loop.served[1:]) if a != b]
    assert switches == [shadow, "docs", shadow, second], switches
