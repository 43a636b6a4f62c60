"""The agent plane: the deterministic planner (extractive default), the tool-calling loop
against a STAND-IN chat-completions server, step limits, traces and the tools themselves."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from freshindex.query.agent import TOOLS, Toolbox, calculate, split_question
from freshindex.query.config import load_query_config
from freshindex.query.errors import QueryError
from freshindex.query.service import QueryService
from freshindex.testing import Reply, StandInChatServer, fixture_index, index_config


def service(tmp_path, **overrides) -> QueryService:
    cfg = index_config(str(fixture_index("fake-hash") / "lancedb"))
    settings = {"gateway.cache.enabled": False, "agent.trace_dir": str(tmp_path / "traces")}
    qcfg = load_query_config(overrides={**settings, **overrides}, environ={})
    return QueryService(cfg, qcfg, environ={})


def test_questions_split_into_parts():
    assert split_question("What is the default timeout?") == ["What is the default timeout?"]
    assert split_question(
        "What is the default timeout and how does digest authentication work? Also what is 3*4?"
    ) == [
        "What is the default timeout",
        "how does digest authentication work?",
        "what is 3*4?",
    ]


@pytest.mark.parametrize(
    ("expression", "value"),
    [("12*7", 84), ("2**10 / 4", 256), ("(1 + 2) * -3", -9), ("sqrt(16) + max(1, 5)", 9)],
)
def test_calculate(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "bad", ["__import__('os').system('id')", "x + 1", "9**9**9", "1/0", "open('f')", "a.b"]
)
def test_calculate_refuses_anything_but_arithmetic(bad):
    with pytest.raises(QueryError):
        calculate(bad)


@pytest.mark.parametrize(
    "huge",
    [
        "*".join(["999999**64"] * 18),  # each power allowed before; the product is 7000 digits
        "999999**16*999999**16*999999**16",
        "round(1, -999999999)",  # ran without end: Python builds 10**999999999
        "round(2.5, 10**6)",
        "1e200 * 1e200",
        "10**101",
        "2**65",
        "exp(1000)",
        "(-8) ** 0.5",
        "9" * 150,
    ],
)
def test_calculate_caps_operands_results_and_exponents(huge):
    started = time.perf_counter()
    with pytest.raises(QueryError, match=r"larger than|limited to|finite|real number|digits|range"):
        calculate(huge)
    assert time.perf_counter() - started < 5  # liveness bound only


def test_calculate_result_always_fits_a_tool_reply():
    value = calculate("999999**16 * 999999**0.5")
    assert abs(value) <= 1e100 and json.dumps({"result": value})
    assert calculate("round(2.123456, 2)") == 2.12 and calculate("2**64") == 2**64


@pytest.mark.slow
def test_deterministic_planner_answers_each_part_and_combines(tmp_path):
    svc = service(tmp_path)
    started = time.perf_counter()
    result = svc.agent(
        "How does digest authentication treat the password? Which duck species is most "
        "common? And what is 12*7?"
    )
    wall_ms = (time.perf_counter() - started) * 1000
    assert result.planner == "deterministic" and result.stopped == "final" and result.answered
    assert "hashes the password first" in result.answer and "Mallards" in result.answer
    assert "12*7 = 84" in result.answer
    assert {c.doc_id for c in result.citations} >= {"guide/auth.md", "notes/ducks.md"}
    for c in result.citations:
        assert f"[{c.marker}]" in result.answer
    kinds = [(s.kind, s.tool) for s in result.trace]
    assert kinds[0] == ("plan", None)
    assert kinds.count(("tool", "search")) == 2 and ("tool", "calculate") in kinds
    model_steps = [s for s in result.trace if s.kind == "model"]
    assert all(s.model_call["provider"] == "extractive" for s in model_steps)
    # each step's latency is its own share of the run: together no more than the whole
    assert all(s.result_size >= 1 for s in result.trace)
    assert 0 < sum(s.latency_ms for s in result.trace) <= wall_ms
    assert result.accounting["calls"] == 2 and result.table_version == svc.reader.resolve(None)
    stored = json.loads(Path(result.trace_path).read_text())
    assert stored["trace"][1]["tool"] == "search" and stored["answer"] == result.answer


def test_deterministic_planner_respects_the_step_limit(tmp_path):
    result = service(tmp_path).agent("What is 1+1? What is 2+2? What is 3+3?", max_steps=2)
    assert result.stopped == "step_limit" and result.steps == 2
    assert "1+1 = 2" in result.answer and "3+3" not in result.answer.split("stopped")[0]


def test_tool_loop_lets_the_model_choose_tools(tmp_path):
    first = Reply(
        text=None,
        tool_calls=[
            Reply.tool_call("search", {"query": "digest password", "mode": "fts", "k": 2}, "c1"),
            Reply.tool_call("calculate", {"expression": "6*7"}, "c2"),
        ],
    )
    with StandInChatServer() as srv:
        svc = service(tmp_path, **{"gateway.providers.llm.base_url": srv.base_url})
        chunk = svc.search("digest password", mode="fts", k=1).hits[0].chunk_id
        final = Reply(text=f"Digest hashes the password [guide/auth.md#{chunk}]; 6*7 is 42.")
        srv.script(first, final)
        result = svc.agent("How does digest auth work, and what is 6*7?")
        assert result.planner == "tools" and result.stopped == "final" and result.steps == 2
        assert result.citations[0].chunk_id == chunk
        assert [(s.step, s.kind, s.tool) for s in result.trace] == [
            (1, "model", None),
            (1, "tool", "search"),
            (1, "tool", "calculate"),
            (2, "model", None),
        ]
        assert result.trace[1].arguments == {"query": "digest password", "mode": "fts", "k": 2}
        assert result.trace[1].result_size == 1  # one chunk holds both words
        second = srv.requests[1]["json"]
        assert [t["function"]["name"] for t in second["tools"]] == [t.name for t in TOOLS]
        roles = [m["role"] for m in second["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "tool"]
        tool_reply = json.loads(second["messages"][4]["content"])
        assert second["messages"][4]["tool_call_id"] == "c2" and tool_reply["result"] == 42
        assert "version" in second["messages"][0]["content"]
        assert result.accounting["calls"] == 2 and result.accounting["tokens_in"] == 20


def test_tool_errors_go_back_to_the_model_and_the_step_limit_holds(tmp_path):
    loop = Reply(text=None, tool_calls=[Reply.tool_call("search", {"filters": "nonsense"})])
    with StandInChatServer(loop) as srv:
        svc = service(tmp_path, **{"gateway.providers.llm.base_url": srv.base_url})
        result = svc.agent("keep searching", max_steps=3)
        assert result.stopped == "step_limit" and result.steps == 3 and not result.answered
        errors = [s.error for s in result.trace if s.kind == "tool"]
        assert len(errors) == 3 and all(errors)
        assert "error" in json.loads(srv.requests[1]["json"]["messages"][-1]["content"])


def test_without_a_tool_model_the_agent_falls_back_to_the_planner(tmp_path):
    with StandInChatServer(Reply(status=500)) as srv:
        svc = service(
            tmp_path, **{"gateway.providers.llm.base_url": srv.base_url, "gateway.max_attempts": 1}
        )
        result = svc.agent("How does digest authentication treat the password?")
        assert result.planner == "deterministic" and result.answered
        assert result.trace[0].kind == "plan" and "unavailable" in result.trace[0].summary


def test_toolbox_documents_sources_and_metadata(tmp_path):
    pinned = service(tmp_path).reader.pinned()
    box = Toolbox(pinned)
    doc = box.run("get_document", {"doc_id": "guide/timeouts.md"})
    assert doc["found"] and len(doc["chunks"]) == 2
    sources = {s["doc_id"]: s for s in box.run("list_sources", {})}
    assert sources["guide/timeouts.md"]["chunks"] == 2 and len(sources) == 7
    rows = box.run("filter_metadata", {"filters": [{"field": "metadata.lang", "value": "de"}]})
    assert [r["doc_id"] for r in rows] == ["papers/ibuprofen"]
    with pytest.raises(QueryError):
        box.run("drop_table", {})
