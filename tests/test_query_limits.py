"""Bounded work per request (issue 10, item 9): a metadata filter that matches nothing reads
at most ``retrieval.max_scan_rows`` rows and says so; one deadline covers every model call
of a request, after which no provider or fallback call starts.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from freshindex.query.api import create_app
from freshindex.query.config import RetrievalConfig, load_query_config
from freshindex.query.errors import DeadlineExceeded, ProviderTimeout
from freshindex.query.gateway import ModelGateway
from freshindex.query.pinning import scan_filtered
from freshindex.query.retrieval import IndexReader, retrieve
from freshindex.query.service import QueryService
from freshindex.query.types import ChatRequest, ChatResponse, Message, Usage
from freshindex.testing import fixture_index, index_config

NOTHING = ["metadata.lang = no-such-language"]


@pytest.fixture(scope="module")
def db() -> str:
    return str(fixture_index("fake-hash") / "lancedb")


# ---------------------------------------------------------------- scan cap


def test_a_filter_that_matches_nothing_stops_at_the_scan_cap():
    """A table of a million rows, none passing: the fetch never exceeds the cap."""
    fetches: list[int] = []

    def run(fetch, _expr):
        fetches.append(fetch)
        return [({"metadata": '{"lang": "en"}'}, 1.0)] * min(fetch, 1_000_000)

    from freshindex.query.filters import parse_filters

    result = scan_filtered(run, 5, parse_filters(NOTHING), 1000)
    assert result == [] and result.scan_capped
    assert max(fetches) == 1000 and fetches == sorted(fetches)
    found = scan_filtered(run, 5, parse_filters(["metadata.lang = en"]), 1000)
    assert len(found) == 5 and not found.scan_capped


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_capped_search_is_flagged_on_the_lancedb_engine(db, mode):
    capped = IndexReader.open(
        db, "docs", config=RetrievalConfig(vector_engine="lancedb", max_scan_rows=4)
    )
    assert capped.pinned().num_rows > 4
    hits = retrieve(capped, "duck", mode=mode, k=1, filters=NOTHING)
    assert hits == [] and hits.scan_capped
    roomy = IndexReader.open(db, "docs", config=RetrievalConfig(vector_engine="lancedb"))
    hits = retrieve(roomy, "duck", mode=mode, k=1, filters=NOTHING)
    assert hits == [] and not hits.scan_capped


def test_agent_listings_read_at_most_the_cap(db):
    from freshindex.query.agent import Toolbox

    reader = IndexReader.open(db, "docs", config=RetrievalConfig(max_scan_rows=3))
    rows = reader.pinned().rows_where(())
    assert len(rows) == 3 and rows.scan_capped
    sources = Toolbox(reader.pinned()).run("list_sources", {})
    assert "max_scan_rows" in sources[-1]["warning"]


def test_the_api_and_service_say_the_scan_was_capped(db):
    cfg = index_config(db)
    overrides = {"retrieval.vector_engine": "lancedb", "retrieval.max_scan_rows": 4}
    qcfg = load_query_config(overrides={**overrides, "gateway.cache.enabled": False}, environ={})
    svc = QueryService(cfg, qcfg, environ={})
    result = svc.search("duck", mode="vector", k=2, filters=NOTHING)
    assert result.scan_capped and result.to_dict()["warnings"]
    body = TestClient(create_app(svc, environ={})).post(
        "/search", json={"query": "duck", "mode": "vector", "filters": NOTHING}
    )
    assert body.status_code == 200
    assert body.json()["scan_capped"] is True and "max_scan_rows" in body.json()["warnings"][0]


# ---------------------------------------------------------------- overall deadline


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class SlowProvider:
    """Times out after the whole timeout it is given (on the fake clock)."""

    capabilities = ("answer", "chat")
    max_context_tokens = 100_000
    model = "slow"

    def __init__(self, name: str, clock: Clock, answer: bool = False):
        self.name = name
        self.clock = clock
        self.timeouts: list[float] = []
        self.answer = answer

    def complete(self, request, *, timeout: float) -> ChatResponse:
        self.timeouts.append(timeout)
        if self.answer:
            return ChatResponse("ok", self.name, self.model, Usage(1, 1))
        self.clock.now += timeout
        raise ProviderTimeout(f"{self.name} timed out", provider=self.name)


def gateway(clock: Clock, deadline: float, **overrides):
    settings = {
        "gateway.timeout_s": 30,
        "gateway.max_attempts": 3,
        "gateway.backoff_s": 1,
        "gateway.request_deadline_s": deadline,
        "gateway.default_route": ["first", "second"],
        "gateway.providers": {
            "first": {"kind": "extractive"},
            "second": {"kind": "extractive"},
        },
        "gateway.routes": [],
    }
    qcfg = load_query_config(overrides={**settings, **overrides}, environ={})
    providers = {
        "first": SlowProvider("first", clock),
        "second": SlowProvider("second", clock, answer=True),
    }
    gw = ModelGateway(qcfg.gateway, providers, sleep=clock.sleep, clock=clock)
    return gw, providers


def request() -> ChatRequest:
    return ChatRequest((Message("user", "q"),), task="answer", question="q")


def test_the_request_deadline_ends_retries_and_fallbacks():
    clock = Clock()
    gw, providers = gateway(clock, deadline=45)
    with pytest.raises(DeadlineExceeded, match="45"):
        gw.complete(request(), deadline=gw.deadline())
    first = providers["first"].timeouts
    assert first[0] == 30 and 0 < first[1] < 15  # the second attempt gets what is left
    assert providers["second"].timeouts == []  # no fallback starts past the deadline
    assert clock.now <= 45 + 1e-9


def test_a_deadline_far_enough_lets_the_fallback_answer():
    clock = Clock()
    gw, providers = gateway(clock, deadline=1000)
    response = gw.complete(request(), deadline=gw.deadline())
    assert response.provider == "second" and len(providers["first"].timeouts) == 3


def test_the_service_gives_every_request_one_deadline(db):
    """ask(): retrieval and each model call share ``gateway.request_deadline_s``."""
    clock = Clock()
    gw, providers = gateway(clock, deadline=20)
    cfg = index_config(db)
    qcfg = load_query_config(
        overrides={"gateway.cache.enabled": False, "gateway.request_deadline_s": 20},
        environ={},
    )
    svc = QueryService(cfg, qcfg, gateway=gw, environ={})
    with pytest.raises(DeadlineExceeded):
        svc.ask("How does digest authentication treat the password?")
    assert providers["first"].timeouts == [20] and providers["second"].timeouts == []
    r = TestClient(create_app(svc, environ={})).post("/ask", json={"question": "duck?"})
    assert r.status_code == 504 and "deadline" in r.json()["detail"]
    calls = len(providers["first"].timeouts)
    with pytest.raises(DeadlineExceeded):  # the agent's model calls share one deadline too
        svc.agent(
            "Which duck is most common? And how does digest auth work?", planner="deterministic"
        )
    assert len(providers["first"].timeouts) == calls + 1 and providers["second"].timeouts == []
