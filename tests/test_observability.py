"""Metrics, traces, lineage and health from real runs on real tables: the query test kit's
fixture index (built by the batch pipeline with the FAKE embedder), the HTTP API served by
FastAPI's test client, and, in the slow tests, a batch ingest and a stream micro-batch
against the real Tansu broker. Metrics are read from prometheus-client's registry or
scraped from ``/metrics`` (counters are compared before and after: the registry is the
process's); spans come from the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import dataclasses
import json
import socket
import urllib.request
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from freshindex import store
from freshindex.cli import main as cli_main
from freshindex.errors import TableError
from freshindex.observability import metrics, tracing
from freshindex.query.api import create_app
from freshindex.query.config import load_query_config
from freshindex.query.lineage import diff_versions, explain_document
from freshindex.query.service import QueryService
from freshindex.query.status import status_report
from freshindex.testing import RECORDS, copy_index, fixture_index, index_config


@pytest.fixture(scope="module")
def spans():
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    yield exporter
    exporter.shutdown()  # later tests in this process keep no spans


@pytest.fixture(scope="module")
def fixture_cfg():
    return index_config(str(fixture_index("fake-hash") / "lancedb"))


@pytest.fixture(scope="module")
def client(fixture_cfg):
    qcfg = load_query_config(overrides={"gateway.cache.enabled": True}, environ={})
    cache = Path(fixture_index("fake-hash")) / f"cache-{uuid.uuid4().hex[:6]}.sqlite"
    qcfg = dataclasses.replace(
        qcfg, gateway=dataclasses.replace(qcfg.gateway, cache_path=str(cache))
    )
    return TestClient(create_app(QueryService(fixture_cfg, qcfg), environ={}))


def ancestors(span, finished) -> list[str]:
    """The names of ``span``'s ancestors among ``finished``, nearest first."""
    by_id = {s.context.span_id: s for s in finished}
    names = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of a /metrics text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# ------------------------------------------------------------------ names


def test_metric_names_follow_prometheus_conventions():
    for metric in metrics.METRICS:
        name = metric._name
        assert name.startswith("freshindex_")
        if metric._type == "counter":  # the registry adds _total
            assert f"{name}_total" in metrics.METRIC_NAMES
        if metric._type == "histogram":
            unit = name.rsplit("_", 1)[-1]
            assert unit in ("seconds", "messages"), name
        for label in metric._labelnames:
            assert label not in ("doc_id", "query", "run_id", "chunk_id"), (name, label)


def test_label_values_outside_a_bounded_set_collapse():
    before = sample("freshindex_errors_total", stage="other", error_class="other")
    metrics.observe_error("parse stage; DROP", "Weird Class/../x")
    assert sample("freshindex_errors_total", stage="other", error_class="other") == before + 1


# ------------------------------------------------------------------ lineage and status


def test_diff_between_the_two_fixture_runs_lists_the_records_the_second_added(fixture_cfg):
    db = store.connect(fixture_cfg.db)
    runs = [r for r in store.read_runs(db, "docs") if r["kind"] == "batch"]
    first, second = runs[0]["run_id"], runs[1]["run_id"]
    diff = diff_versions(db, "docs", first, second)
    assert {d["doc_id"] for d in diff["added"]} == {r["_id"] for r in RECORDS}
    assert diff["counts"] == {"added": 3, "updated": 0, "deleted": 0, "unchanged": 4}
    assert diff["to"]["chunks"] - diff["from"]["chunks"] == sum(d["chunks"] for d in diff["added"])
    back = diff_versions(db, "docs", second, first)  # and the other way: deleted
    assert {d["doc_id"] for d in back["deleted"]} == {r["_id"] for r in RECORDS}


def test_diff_of_an_unknown_ref_is_a_clear_error(fixture_cfg):
    with pytest.raises(TableError, match="no version, tag or run 'nope'") as info:
        diff_versions(store.connect(fixture_cfg.db), "docs", "nope", "1")
    assert "freshindex versions" in info.value.hint


def test_explain_follows_a_document_through_its_update_and_delete(tmp_path):
    cfg = copy_index("fake-hash", tmp_path)
    db = store.connect(cfg.db)
    table = store.open_chunks(db, "docs")
    before = table.version
    table.update(where="doc_id = 'notes/ducks.md'", values={"content_hash": "edited"})
    table.delete("doc_id = 'notes/ducks.md'")
    doc = explain_document(db, "docs", "notes/ducks.md")
    assert not doc["present"] and doc["chunks"] == 0
    changes = [(h["change"], h["content_hash"]) for h in doc["history"]]
    assert changes[0][0] == "added" and changes[-2:] == [("updated", "edited"), ("deleted", None)]
    assert doc["history"][-1]["version"] == before + 2
    (run,) = [r for r in doc["runs"] if r["run_id"] == doc["history"][0]["run_id"]]
    assert run["kind"] == "batch"
    alive = explain_document(db, "docs", "guide/auth.md")
    assert alive["present"] and alive["chunks"] >= 1 and alive["embedded_at"] is not None
    assert alive["source_uri"].endswith("guide/auth.md") and len(alive["content_hash"]) == 64


def test_status_reports_the_table_and_fails_past_a_threshold(fixture_cfg, capsys):
    report = status_report(fixture_cfg)
    assert report["ok"], report["problems"]
    assert (
        report["shape"]["rows"]
        == store.open_chunks(store.connect(fixture_cfg.db), "docs").count_rows()
    )
    assert [r["kind"] for r in report["runs"] if r["kind"] == "batch"] == ["batch", "batch"]
    args = ["status", "--db", fixture_cfg.db, "--table", "docs", "--json"]
    assert cli_main([*args, "--max-freshness-s", "86400"]) == 0
    capsys.readouterr()
    assert cli_main([*args, "--max-freshness-s", "0.0001"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["problems"][0].startswith("freshness")


def test_status_of_a_missing_table_is_unhealthy_not_a_crash(tmp_path):
    report = status_report(index_config(str(tmp_path / "empty")))
    assert not report["ok"] and "cannot be read" in report["problems"][0]


def test_diff_and_explain_commands_print_json(fixture_cfg, capsys):
    db = ["--db", fixture_cfg.db, "--table", "docs", "--json"]
    assert cli_main(["diff", "--from", "1", "--to", "latest-does-not-exist", *db]) == 2
    capsys.readouterr()
    versions = [
        v["version"]
        for v in store.open_chunks(store.connect(fixture_cfg.db), "docs").list_versions()
    ]
    assert cli_main(["diff", "--from", str(versions[0]), "--to", str(versions[-1]), *db]) == 0
    diff = json.loads(capsys.readouterr().out)
    assert diff["counts"]["added"] == diff["to"]["documents"] and diff["from"]["documents"] == 0
    assert cli_main(["explain", "papers/aspirin", *db]) == 0
    assert json.loads(capsys.readouterr().out)["present"]


# ------------------------------------------------------------------ the API


def test_a_search_is_counted_by_mode_and_traced_with_its_retrieval(client, spans):
    spans.clear()
    before = sample("freshindex_query_duration_seconds_count", mode="fts")
    r = client.post("/search", json={"query": "pool timeout", "mode": "fts", "k": 2})
    assert r.status_code == 200 and r.json()["hits"]
    values = scraped(client.get("/metrics").text)
    assert values[("freshindex_query_duration_seconds_count", (("mode", "fts"),))] == before + 1
    assert values[("freshindex_http_requests_total", (("route", "search"), ("status", "200")))] >= 1
    finished = spans.get_finished_spans()
    routes = {s.attributes["http.route"]: s for s in finished if s.name == "freshindex.request"}
    request = routes["/search"]
    assert request.attributes["http.status_code"] == 200
    (retrieval,) = [s for s in finished if s.name == "freshindex.retrieval"]
    assert retrieval.attributes["mode"] == "fts" and retrieval.attributes["hits"] == 2
    assert "POST /search" in ancestors(retrieval, finished)  # the request's span


def test_model_calls_are_counted_by_provider_with_cache_hits(client, spans):
    spans.clear()
    question = {"question": f"What does digest authentication hash? {uuid.uuid4().hex[:6]}"}
    calls = sample("freshindex_model_calls_total", provider="extractive", outcome="ok")
    hits = sample("freshindex_model_cache_requests_total", result="hit")
    misses = sample("freshindex_model_cache_requests_total", result="miss")
    assert client.post("/ask", json=question).status_code == 200
    assert client.post("/ask", json=question).json()["cached"]
    assert sample("freshindex_model_calls_total", provider="extractive", outcome="ok") == calls + 1
    assert sample("freshindex_model_calls_total", provider="extractive", outcome="cached") >= 1
    assert sample("freshindex_model_cache_requests_total", result="miss") == misses + 1
    assert sample("freshindex_model_cache_requests_total", result="hit") == hits + 1
    names = [s.name for s in spans.get_finished_spans()]
    assert names.count("freshindex.model_call") == 2 and names.count("freshindex.request") == 2


def test_agent_steps_are_child_spans_of_the_request(client, spans):
    spans.clear()
    r = client.post("/agent", json={"question": "default timeout and digest auth?"})
    assert r.status_code == 200
    finished = spans.get_finished_spans()
    (agent,) = [s for s in finished if s.name == "freshindex.agent"]
    assert "POST /agent" in ancestors(agent, finished)
    steps = [s for s in finished if "freshindex.agent" in ancestors(s, finished)]
    assert {"freshindex.retrieval"} <= {s.name for s in steps}


def test_api_diff_explain_and_status(client, fixture_cfg):
    db = store.connect(fixture_cfg.db)
    runs = [r for r in store.read_runs(db, "docs") if r["kind"] == "batch"]
    r = client.get("/diff", params={"from": runs[0]["run_id"], "to": runs[1]["run_id"]})
    assert r.status_code == 200 and r.json()["counts"]["added"] == len(RECORDS)
    assert client.get("/diff", params={"from": "nope", "to": "1"}).status_code == 404
    doc = client.get("/explain/guide/auth.md").json()
    assert doc["present"] and doc["source_uri"] is None and doc["namespace"] is None
    status = client.get("/status")
    assert status.status_code == 200 and status.json()["ok"] and "db" not in status.json()


def test_the_console_hides_server_paths_as_the_api_does(client):
    page = client.get("/ui/explain", params={"doc_id": "guide/auth.md"}).text
    root = str(fixture_index("fake-hash"))
    assert "guide/auth.md" in page and root not in page and "files:" not in page


def test_metrics_and_console_want_the_api_key(fixture_cfg):
    qcfg = load_query_config(overrides={"api.api_key": "${OBS_KEY}"}, environ={})
    app = create_app(QueryService(fixture_cfg, qcfg), environ={"OBS_KEY": "s3cret"})
    client = TestClient(app)
    for path in ("/metrics", "/ui", "/ui/search?query=duck", "/status"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path


# ------------------------------------------------------------------ real runs (slow)


@pytest.mark.slow
def test_a_batch_run_writes_its_metrics_file_and_traces_run_and_commit(tmp_path, corpus, spans):
    from freshindex.config import load_config
    from freshindex.pipelines.batch import run_ingest

    textfile = tmp_path / "node_exporter" / "freshindex.prom"
    cfg = load_config(
        overrides={
            "db": str(tmp_path / "db"),
            "embedding.model": "fake-hash",
            "observability.metrics_textfile": str(textfile),
        },
        environ={},
    )
    added = sample("freshindex_documents_total", outcome="added")
    runs = sample("freshindex_runs_total", kind="batch", status="succeeded")
    spans.clear()
    (corpus / "empty.md").write_text("")  # a parse error: counted by stage and class
    row = run_ingest(cfg, str(corpus), [])
    values = scraped(textfile.read_text())
    assert (
        values[("freshindex_documents_total", (("outcome", "added"),))] == added + row["docs_added"]
    )
    assert (
        values[("freshindex_runs_total", (("kind", "batch"), ("status", "succeeded")))] == runs + 1
    )
    assert values[("freshindex_table_rows", ())] == row["chunks_written"]
    errors = [k for k in values if k[0] == "freshindex_errors_total" and ("stage", "parse") in k[1]]
    assert errors and all(values[k] >= 1 for k in errors)
    assert values[("freshindex_upkeep_duration_seconds_count", ())] >= 1
    committed = values[("freshindex_last_commit_timestamp_seconds", ())]
    assert committed >= row["finished_at"].timestamp() - 1
    names = {s.name: s for s in spans.get_finished_spans()}
    run = names["freshindex.run"]
    assert run.attributes["run_id"] == row["run_id"]
    assert run.attributes["table_version"] == row["table_version"]
    assert names["freshindex.commit"].attributes["run_id"] == row["run_id"]
    # the commit step runs in a Beam thread: the run's span is still its parent
    assert names["freshindex.commit"].parent.span_id == run.context.span_id


def decode_error_count() -> float:
    return sum(
        s.value
        for family in REGISTRY.collect()
        if family.name == "freshindex_errors"
        for s in family.samples
        if s.name == "freshindex_errors_total" and s.labels["stage"] == "decode"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.kafka
def test_a_stream_micro_batch_is_measured_and_served_on_the_metrics_port(fake_cfg, spans):
    from freshindex.kafka_broker import create_topic, kafka_for_tests
    from freshindex.pipelines.stream import run_stream, stream_config
    from freshindex.schemas.messages import encode_message
    from tests.test_stream_pipeline import publish

    port = _free_port()
    metrics.serve_port(port, addr="127.0.0.1")
    with kafka_for_tests() as bootstrap:
        topic = f"obs-{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, partitions=2)
        messages = [encode_message(f"n-{i}", text=f"note {i} about ducks") for i in range(6)]
        messages.append((b"broken", b"{not json"))
        publish(bootstrap, topic, messages)
        fresh = sample("freshindex_freshness_seconds_count")
        batches = sample("freshindex_micro_batch_messages_count")
        decode_errors = decode_error_count()
        spans.clear()
        stream = stream_config(
            fake_cfg, topics=topic, bootstrap_servers=bootstrap, stop_at_end=True
        )
        row = run_stream(fake_cfg, stream)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        values = scraped(response.read().decode())
    assert row["docs_seen"] == 7
    assert values[("freshindex_freshness_seconds_count", ())] == fresh + 7
    assert values[("freshindex_micro_batch_messages_count", ())] > batches
    lag = {
        labels: v
        for (name, labels), v in values.items()
        if name == "freshindex_consumer_lag_messages" and ("topic", topic) in labels
    }  # the registry is the process's: other tests' topics may be in it
    assert lag == {(("partition", p), ("topic", topic)): 0 for p in ("0", "1")}, lag
    assert values[("freshindex_commit_duration_seconds_count", (("kind", "stream"),))] >= 1
    assert decode_error_count() == decode_errors + 1
    finished = spans.get_finished_spans()
    (run,) = [s for s in finished if s.name == "freshindex.run"]
    batches = [s for s in finished if s.name == "freshindex.micro_batch"]
    assert batches and all(b.parent.span_id == run.context.span_id for b in batches)
    assert sum(b.attributes["messages"] for b in batches) == 7
    commits = [s for s in finished if s.name == "freshindex.commit"]
    assert commits and all("freshindex.micro_batch" in ancestors(c, finished) for c in commits)
