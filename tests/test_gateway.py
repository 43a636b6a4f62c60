"""The model gateway against a STAND-IN chat-completions server (http.server on 127.0.0.1).

Covered: success and usage, tool calls, 500s with retries, timeouts, rate limits, auth errors,
fallback along the route, routing rules, the persisted cache, accounting sums and prices.
"""

from __future__ import annotations

import pytest

from freshindex.errors import ConfigError
from freshindex.query.cache import ResponseCache
from freshindex.query.config import load_query_config
from freshindex.query.errors import NoRoute, ProviderTimeout
from freshindex.query.gateway import ModelGateway
from freshindex.query.providers.openai_compat import OpenAICompatibleProvider
from freshindex.query.types import ChatRequest, Hit, Message, ToolSpec
from freshindex.testing import Reply, StandInChatServer

KEY_ENV = "TEST_LLM_KEY"


@pytest.fixture
def server():
    with StandInChatServer() as srv:
        yield srv


def make_gateway(server, tmp_path, *, cache=False, extra=None, environ=None):
    overrides = {
        "gateway.providers.llm.base_url": server.base_url if server else "",
        "gateway.providers.llm.model": "stand-in-model",
        "gateway.providers.llm.api_key": f"${{{KEY_ENV}}}",
        "gateway.timeout_s": 0.5,
        "gateway.max_attempts": 3,
        "gateway.backoff_s": 0.01,
        "gateway.prices": {
            "llm/stand-in-model": {"input": 1.0, "output": 2.0},
            "extractive/*": {"input": 0.0, "output": 0.0},
        },
        **(extra or {}),
    }
    qcfg = load_query_config(overrides=overrides, environ={})
    sleeps: list[float] = []
    store = ResponseCache(tmp_path / "cache.sqlite") if cache else None
    gw = ModelGateway.from_config(
        qcfg,
        environ=environ if environ is not None else {KEY_ENV: "sk-test"},
        cache=store if cache else False,
        sleep=sleeps.append,
    )
    return gw, sleeps


def hit(text: str, chunk: str = "c1", doc: str = "guide/timeouts.md") -> Hit:
    return Hit(chunk, doc, text, f"/corpus/{doc}", None, 1.0, 7)


def answer_request(question="What is the default timeout?", **kw) -> ChatRequest:
    context = (hit("The default timeout of HTTPX is five seconds."),)
    return ChatRequest(
        (Message("user", f"[1] {context[0].text}\n\nQuestion: {question}"),),
        task="answer",
        question=question,
        context=context,
        **kw,
    )


def test_success_sends_model_messages_and_key_and_accounts_usage(server, tmp_path):
    server.script(
        Reply(text="Five seconds [1].", usage={"prompt_tokens": 120, "completion_tokens": 8})
    )
    gw, _ = make_gateway(server, tmp_path)
    response = gw.complete(answer_request())
    assert response.text == "Five seconds [1]." and response.provider == "llm"
    assert (response.usage.tokens_in, response.usage.tokens_out) == (120, 8)
    assert not response.usage.estimated
    assert response.cost_usd == pytest.approx((120 * 1.0 + 8 * 2.0) / 1e6)
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == "Bearer sk-test"
    assert sent["json"]["model"] == "stand-in-model"
    assert sent["json"]["messages"][0]["role"] == "user" and "tools" not in sent["json"]


def test_missing_usage_is_estimated(server, tmp_path):
    server.script(Reply(text="Five seconds by default.", usage=None))
    gw, _ = make_gateway(server, tmp_path)
    response = gw.complete(answer_request())
    assert response.usage.estimated and response.usage.tokens_in > 10
    assert response.usage.tokens_out >= 4
    assert gw.ledger.summary()["tokens_estimated"] is True


def test_tool_calls_are_parsed_and_tools_sent(server, tmp_path):
    call = Reply.tool_call("search", {"query": "timeout", "k": 3}, "call_9")
    server.script(Reply(text=None, tool_calls=[call]))
    gw, _ = make_gateway(server, tmp_path)
    tool = ToolSpec("search", "search the index", {"type": "object", "properties": {}})
    request = ChatRequest((Message("user", "find timeouts"),), task="agent", tools=(tool,))
    response = gw.complete(request)
    assert response.tool_calls[0].name == "search"
    assert response.tool_calls[0].arguments == {"query": "timeout", "k": 3}
    assert response.tool_calls[0].id == "call_9" and response.finish_reason == "tool_calls"
    sent = server.requests[0]["json"]
    assert sent["tools"][0]["function"]["name"] == "search" and sent["tool_choice"] == "auto"


def test_server_errors_are_retried_with_backoff(server, tmp_path):
    server.script(Reply(status=500), Reply(status=502), Reply(text="ok now"))
    gw, sleeps = make_gateway(server, tmp_path)
    response = gw.complete(answer_request())
    assert response.text == "ok now" and len(server.requests) == 3
    assert len(sleeps) == 2 and sleeps[1] > 0
    summary = gw.ledger.summary()
    assert (summary["calls"], summary["ok"], summary["failed"]) == (3, 1, 2)


def test_persistent_errors_fall_back_to_the_next_provider(server, tmp_path):
    server.default = Reply(status=500)
    gw, _ = make_gateway(server, tmp_path)
    response = gw.complete(answer_request())
    assert response.provider == "extractive" and response.answered
    assert "five seconds" in response.text and response.citations[0].chunk_id == "c1"
    assert len(server.requests) == 3  # max_attempts on the first provider
    by = gw.ledger.summary()["by_provider"]
    assert by["llm/stand-in-model"]["failed"] == 3 and by["extractive/extractive-v1"]["ok"] == 1


def test_timeouts_are_retried_then_fall_back(server, tmp_path):
    server.default = Reply(text="too late", delay=1.0)
    gw, _ = make_gateway(server, tmp_path, extra={"gateway.max_attempts": 2})
    response = gw.complete(answer_request())
    assert response.provider == "extractive"
    failures = [r for r in gw.ledger.records if not r.ok]
    assert [r.error.split(":")[0] for r in failures] == ["ProviderTimeout", "ProviderTimeout"]
    assert all(400 <= r.latency_ms < 1000 for r in failures)  # the 0.5 s per-call timeout


def test_rate_limits_wait_for_retry_after(server, tmp_path):
    server.script(Reply(status=429, headers={"Retry-After": "3"}), Reply(text="fine"))
    gw, sleeps = make_gateway(server, tmp_path, extra={"gateway.max_backoff_s": 5})
    assert gw.complete(answer_request()).text == "fine"
    assert sleeps == [3.0]


def test_auth_errors_are_not_retried(server, tmp_path):
    server.default = Reply(status=401)
    gw, sleeps = make_gateway(server, tmp_path, environ={})
    response = gw.complete(answer_request())
    assert response.provider == "extractive" and len(server.requests) == 1 and sleeps == []
    assert "Authorization" not in server.requests[0]["headers"]


def test_no_route_when_every_provider_fails(server, tmp_path):
    server.default = Reply(status=503)
    extra = {"gateway.routes": [{"name": "only-llm", "providers": ["llm"]}]}
    gw, _ = make_gateway(server, tmp_path, extra=extra)
    with pytest.raises(NoRoute) as err:
        gw.complete(answer_request())
    assert "llm: " in err.value.attempts[0]


def test_provider_timeout_is_typed():
    with StandInChatServer(Reply(delay=0.5)) as srv:
        qcfg = load_query_config(
            overrides={"gateway.providers.llm.base_url": srv.base_url}, environ={}
        )
        provider = OpenAICompatibleProvider(qcfg.gateway.providers["llm"], environ={})
        with pytest.raises(ProviderTimeout):
            provider.complete(answer_request(), timeout=0.1)


# ---------------------------------------------------------------- routing


def test_routes_by_capability_task_and_prompt_size(server, tmp_path):
    gw, _ = make_gateway(server, tmp_path)
    tools = (ToolSpec("t", "d", {"type": "object"}),)
    assert gw.route(ChatRequest((Message("user", "x"),), task="agent", tools=tools)).providers == (
        "llm",
    )
    assert gw.route(answer_request()).providers == ("llm", "extractive")
    assert gw.route(ChatRequest((Message("user", "x"),), task="summarize")).name == "default"
    extra = {
        "gateway.routes": [
            {"name": "long", "when": {"min_prompt_tokens": 50}, "providers": ["extractive"]},
            {"name": "short", "when": {"max_prompt_tokens": 49}, "providers": ["llm"]},
        ]
    }
    gw, _ = make_gateway(server, tmp_path, extra=extra)
    assert gw.route(ChatRequest((Message("user", "short"),))).name == "short"
    assert gw.route(ChatRequest((Message("user", "word " * 80),))).name == "long"


def test_unconfigured_and_incapable_providers_are_skipped(tmp_path):
    gw, _ = make_gateway(None, tmp_path)  # llm has no base_url
    route = gw.route(answer_request())
    assert route.providers == ("extractive",) and "llm: not configured" in route.skipped
    tools = (ToolSpec("t", "d", {"type": "object"}),)
    with pytest.raises(NoRoute):
        gw.complete(ChatRequest((Message("user", "x"),), task="agent", tools=tools))
    extra = {"gateway.routes": [{"when": {"task": "answer"}, "providers": ["extractive"]}]}
    gw, _ = make_gateway(None, tmp_path, extra=extra)
    route = gw.route(ChatRequest((Message("user", "x"),), task="answer", tools=tools))
    assert route.providers == () and "extractive: no tools capability" in route.skipped


def test_a_small_context_window_skips_the_provider(server, tmp_path):
    extra = {"gateway.providers.llm.max_context_tokens": 10}
    gw, _ = make_gateway(server, tmp_path, extra=extra)
    assert gw.complete(answer_request()).provider == "extractive" and not server.requests


# ---------------------------------------------------------------- cache and accounting


def test_cache_hits_are_persisted_and_keyed_by_parameters(server, tmp_path):
    gw, _ = make_gateway(server, tmp_path, cache=True)
    first = gw.complete(answer_request())
    second = gw.complete(answer_request())
    assert not first.cached and second.cached and second.text == first.text
    assert len(server.requests) == 1
    assert (gw.cache.hits, gw.cache.misses) == (1, 1)
    gw.complete(answer_request(temperature=0.7))  # another parameter: a miss
    assert len(server.requests) == 2
    again, _ = make_gateway(server, tmp_path, cache=True)  # a new process, same file
    assert again.complete(answer_request()).cached and len(server.requests) == 2
    summary = gw.ledger.summary()
    assert summary["cached"] == 1 and summary["calls"] == 3


def test_accounting_sums_calls_tokens_and_cost(server, tmp_path):
    server.default = Reply(text="x", usage={"prompt_tokens": 100, "completion_tokens": 10})
    gw, _ = make_gateway(server, tmp_path)
    request_ledger = gw.ledger.child()
    for q in ("a?", "b?", "c?"):
        gw.complete(answer_request(q), ledger=request_ledger)
    gw.complete(answer_request("d?"))
    mine, total = request_ledger.summary(), gw.ledger.summary()
    assert (mine["calls"], mine["tokens_in"], mine["tokens_out"]) == (3, 300, 30)
    assert mine["cost_usd"] == pytest.approx(3 * (100 * 1.0 + 10 * 2.0) / 1e6)
    assert total["calls"] == 4 and total["tokens_in"] == 400
    assert total["cost_usd"] == pytest.approx(4 * 120e-6)
    assert sum(r.cost_usd for r in gw.ledger.records) == pytest.approx(total["cost_usd"])
    assert total["latency_ms_total"] > 0


def test_accounting_log_gets_one_line_per_call(server, tmp_path):
    log = tmp_path / "calls.jsonl"
    gw, _ = make_gateway(server, tmp_path, extra={"gateway.accounting_log": str(log)})
    gw.complete(answer_request())
    gw.complete(answer_request("again?"))
    assert len(log.read_text().splitlines()) == 2


# ---------------------------------------------------------------- configuration


def test_keys_are_never_read_from_the_config_file():
    with pytest.raises(ConfigError, match="never written"):
        load_query_config(overrides={"gateway.providers.llm.api_key": "sk-secret"}, environ={})


def test_provider_settings_come_from_the_environment():
    env = {"FRESHINDEX_LLM_BASE_URL": "http://127.0.0.1:9/v1", "FRESHINDEX_LLM_MODEL": "m7"}
    llm = load_query_config(environ=env).gateway.providers["llm"]
    assert (llm.base_url, llm.model, llm.configured) == ("http://127.0.0.1:9/v1", "m7", True)
    assert load_query_config(environ={}).gateway.providers["llm"].configured is False
    with pytest.raises(ConfigError, match="unknown providers"):
        load_query_config(overrides={"gateway.default_route": ["nope"]}, environ={})


def test_cache_treats_foreign_entries_as_misses_and_keys_on_extractive_settings(tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    cache._db.execute("INSERT INTO responses VALUES ('k', 'p', 'm', '{\"old\": 1}', 0)")
    cache._db.commit()
    assert cache.get("k") is None and cache.misses == 1
    gw, _ = make_gateway(None, tmp_path, cache=True)
    assert not gw.complete(answer_request()).cached
    assert gw.complete(answer_request()).cached
    stricter, _ = make_gateway(None, tmp_path, cache=True, extra={"extractive.min_support": 0.9})
    assert not stricter.complete(answer_request()).cached  # other thresholds: other answers


def test_cache_is_bounded_by_entries_and_age(tmp_path, monkeypatch):
    gw, _ = make_gateway(None, tmp_path, cache=False)
    response = gw.complete(answer_request())
    clock = [1000.0]
    monkeypatch.setattr("freshindex.query.cache.time.time", lambda: clock[0])
    cache = ResponseCache(tmp_path / "bounded.sqlite", max_entries=3, ttl_s=60)
    for i in range(5):
        clock[0] += 1
        cache.put(f"k{i}", response)
    assert len(cache) == 3 and cache.evicted == 2
    assert cache.get("k0") is None and cache.get("k1") is None  # the oldest went first
    assert cache.get("k4").text == response.text
    clock[0] += 59  # k2 is now 61 s old, k4 59 s
    assert cache.get("k2") is None and cache.get("k4") is not None
    assert cache.stats()["evicted"] == 3 and len(cache) == 2
    with pytest.raises(ConfigError, match="max_entries"):
        load_query_config(overrides={"gateway.cache.max_entries": 0}, environ={})
    never = tmp_path / "never.yaml"
    never.write_text("gateway:\n  cache:\n    ttl_hours: null\n")
    qcfg = load_query_config(never, environ={})
    assert qcfg.gateway.cache_ttl_hours is None and qcfg.gateway.cache_max_entries == 10_000
