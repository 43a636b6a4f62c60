"""The HTTP API through FastAPI's TestClient: endpoints, status codes, limits and auth."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from freshindex.errors import ConfigError
from freshindex.query.api import create_app
from freshindex.query.config import load_query_config
from freshindex.query.service import QueryService
from freshindex.testing import fixture_index, index_config

KEY = "test-key-123"


def make_client(auth: bool = False, **overrides) -> TestClient:
    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    settings = {"gateway.cache.enabled": False, "api.max_k": 10, "api.max_agent_steps": 4}
    settings |= {"api.max_query_chars": 200, "api.max_filters": 3}
    settings["api.rate_limit_per_minute"] = 0  # limits: tests/test_api_hardening.py
    if auth:
        settings["api.api_key"] = "${TEST_API_KEY}"
    qcfg = load_query_config(overrides={**settings, **overrides}, environ={})
    svc = QueryService(cfg, qcfg, environ={})
    return TestClient(create_app(svc, environ={"TEST_API_KEY": KEY}))


@pytest.fixture(scope="module")
def client() -> TestClient:
    return make_client()


def test_health_and_versions(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["rows"] == 8 and body["fts_unindexed_rows"] == 0
    versions = client.get("/versions").json()
    assert versions[-1]["version"] == body["table_version"]
    assert any(v["run"] for v in versions)


def test_search_returns_hits_with_version(client):
    r = client.post("/search", json={"query": "digest password", "mode": "hybrid", "k": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["hits"][0]["doc_id"] == "guide/auth.md" and len(body["hits"]) == 2
    assert body["table_version"] == body["hits"][0]["table_version"]
    assert {"text", "source_uri", "score", "chunk_id", "rank"} <= set(body["hits"][0])


def test_search_filters_as_structured_values_and_text(client):
    injection = {"field": "doc_id", "op": "=", "value": "x' OR '1'='1"}
    r = client.post("/search", json={"query": "lighthouse", "mode": "fts", "filters": [injection]})
    assert r.status_code == 200
    assert [h["doc_id"] for h in r.json()["hits"]] == ["x' OR '1'='1"]
    r = client.post("/search", json={"query": "duck", "filters": ["doc_id prefix notes/"]})
    assert {h["doc_id"] for h in r.json()["hits"]} == {"notes/ducks.md"}


def test_ask_and_agent(client):
    r = client.post("/ask", json={"question": "How does digest authentication treat the password?"})
    assert r.status_code == 200 and r.json()["answered"]
    assert r.json()["citations"][0]["doc_id"] == "guide/auth.md"
    r = client.post("/agent", json={"question": "What is 2*21? Which duck is most common?"})
    assert r.status_code == 200
    body = r.json()
    assert "2*21 = 42" in body["answer"] and body["trace"] and body["planner"] == "deterministic"


@pytest.mark.parametrize(
    ("path", "payload", "status", "detail"),
    [
        ("/search", {"query": "x" * 201}, 422, "limit is 200"),
        ("/search", {"query": "   "}, 422, "empty"),
        ("/search", {"query": "duck", "k": 11}, 422, "1..10"),
        ("/search", {"query": "duck", "k": 0}, 422, "1..10"),
        ("/search", {"query": "duck", "mode": "semantic"}, 422, None),
        ("/search", {"query": "duck", "filters": ["text = x"]}, 422, "unknown filter field"),
        ("/search", {"query": "duck", "filters": ["doc_id = a"] * 4}, 422, "at most 3"),
        ("/search", {"query": "duck", "as_of": "no-such-run"}, 404, "no version"),
        ("/search", {"query": "duck", "sql": "1=1"}, 422, None),
        ("/ask", {"question": "duck", "provider": "nope"}, 422, "unknown provider"),
        ("/agent", {"question": "duck", "max_steps": 5}, 422, "1..4"),
        ("/agent", {"question": "duck", "planner": "magic"}, 422, None),
    ],
)
def test_clear_4xx_errors(client, path, payload, status, detail):
    r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    if detail:
        assert detail in r.json()["detail"]


def test_unknown_table_is_404():
    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    svc = QueryService(
        dataclasses.replace(cfg, table="missing"),
        load_query_config(overrides={"gateway.cache.enabled": False}, environ={}),
        environ={},
    )
    client = TestClient(create_app(svc, environ={}))
    assert client.post("/search", json={"query": "duck"}).status_code == 404
    assert client.get("/health").status_code == 503


def test_api_key_auth():
    client = make_client(auth=True)
    assert client.post("/search", json={"query": "duck"}).status_code == 401
    bad = client.post("/search", json={"query": "duck"}, headers={"X-API-Key": "wrong"})
    assert bad.status_code == 401 and bad.headers["www-authenticate"] == "Bearer"
    ok = client.post("/search", json={"query": "duck"}, headers={"X-API-Key": KEY})
    assert ok.status_code == 200
    bearer = client.get("/versions", headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    assert client.get("/versions").status_code == 401
    assert client.get("/health").status_code == 200  # probes need no key
    assert client.get("/openapi.json").status_code == 200


def test_auth_configured_without_a_key_refuses_to_start():
    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    qcfg = load_query_config(overrides={"api.api_key": "${UNSET_VAR}"}, environ={})
    with pytest.raises(ConfigError, match="UNSET_VAR"):
        create_app(QueryService(cfg, qcfg, environ={}), environ={})


def test_openapi_schema_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/search", "/ask", "/agent", "/versions", "/health"} <= set(schema["paths"])
    search = schema["components"]["schemas"]["SearchIn"]
    assert {"query", "mode", "k", "filters", "as_of"} <= set(search["properties"])


def test_serving_many_requests_keeps_the_process_ledger_bounded():
    """Each request has its own ledger; the process's keeps totals and a bounded window of
    records, never the requests' ledgers, so N requests do not grow it with N."""
    import gc

    from freshindex.query.accounting import Ledger

    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    qcfg = load_query_config(
        overrides={"gateway.cache.enabled": False, "api.rate_limit_per_minute": 0}, environ={}
    )
    svc = QueryService(cfg, qcfg, environ={})
    root = svc.gateway.ledger = Ledger(max_records=20)
    client = TestClient(create_app(svc, environ={}))
    requests = 60
    for i in range(requests):
        r = client.post("/ask", json={"question": f"digest password {i}?", "k": 2})
        assert r.status_code == 200 and r.json()["accounting"]["calls"] == 1  # its own
    total = root.summary()
    assert total["calls"] == requests and total["ok"] == requests
    assert len(root.records) == 20  # the most recent; the old ledger kept all 60
    assert set(total["by_provider"]) == {"extractive/extractive-v1"}
    gc.collect()
    alive = [o for o in gc.get_referrers(root) if isinstance(o, Ledger)]
    assert alive == []  # no request's ledger outlived its request


def test_one_definition_of_the_retrieval_modes():
    """The API's request models, the CLI's choices, the agent's tool schema and the config
    check all derive from ``freshindex.query.types.MODES``."""
    import argparse
    import typing

    from freshindex.commands import query as query_commands
    from freshindex.query.agent import TOOLS
    from freshindex.query.api import SearchIn
    from freshindex.query.types import MODES, Mode

    assert MODES == ("vector", "fts", "hybrid") == typing.get_args(Mode)
    mode_field = SearchIn.model_fields["mode"].annotation
    assert set(typing.get_args(typing.get_args(mode_field)[0])) == set(MODES)
    parser = argparse.ArgumentParser()
    query_commands.register_cli(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["search", "q", "--mode", "semantic"])
    assert parser.parse_args(["search", "q", "--mode", "fts"]).mode == "fts"
    search = next(t for t in TOOLS if t.name == "search")
    assert search.parameters["properties"]["mode"]["enum"] == list(MODES)
