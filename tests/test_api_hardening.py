"""The HTTP API against hostile clients and hostile stored data (issue 10, items 4 and 5).

The key and the limits are checked on headers, before the body is read (shown at the ASGI
level: the app's ``receive`` is never called); bodies are capped while they stream; 422s
never echo the input; a client past its rate or concurrency gets 429 with Retry-After;
responses carry no server paths or internal URLs; a stored document with 300-level-deep
metadata is returned, not a 500; ``serve`` refuses a public bind without a key.
"""

from __future__ import annotations

import asyncio
import json
import time

import lancedb
import pytest
from fastapi.testclient import TestClient

from freshindex.cli import main
from freshindex.query.api import create_app
from freshindex.query.config import load_query_config
from freshindex.query.guard import ClientLimiter, RequestGuard, check_bind, scrub
from freshindex.query.service import QueryService
from freshindex.testing import copy_index, fixture_index, index_config

KEY = "test-key-123"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_app(auth: bool = False, clock=None, environ=None, **overrides):
    cfg = overrides.pop("cfg", None) or index_config(str(fixture_index("fake-hash") / "lancedb"))
    settings = {"gateway.cache.enabled": False, "api.rate_limit_per_minute": 0}
    if auth:
        settings["api.api_key"] = "${TEST_API_KEY}"
    qcfg = load_query_config(overrides={**settings, **overrides}, environ={})
    svc = QueryService(cfg, qcfg, environ=environ or {})
    return create_app(svc, environ={"TEST_API_KEY": KEY}, clock=clock or Clock())


# ---------------------------------------------------------------- ASGI-level helpers


def call_asgi(
    app, *, path="/search", headers=(), chunks=(b"{}",), client=("10.0.0.1", 5), method="POST"
):
    """One request straight through the ASGI app; returns (status, headers, body, the number
    of times the app pulled from ``receive``)."""
    pulls = 0
    pending = list(chunks)

    async def receive():
        nonlocal pulls
        pulls += 1
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), *headers],
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, pulls


# ---------------------------------------------------------------- auth before body


def test_a_wrong_key_is_refused_before_the_body_is_read():
    app = make_app(auth=True)
    big = [b"x" * 65536] * 800  # 50 MB, never pulled
    status, headers, body, pulls = call_asgi(app, headers=[(b"x-api-key", b"wrong")], chunks=big)
    assert status == 401 and pulls == 0
    assert headers[b"www-authenticate"] == b"Bearer"
    status, _, _, pulls = call_asgi(app, chunks=big)  # no key at all
    assert status == 401 and pulls == 0
    payload = json.dumps({"query": "duck", "k": 1}).encode()
    status, _, body, _ = call_asgi(app, headers=[(b"x-api-key", KEY.encode())], chunks=[payload])
    assert status == 200 and json.loads(body)["hits"]


# ---------------------------------------------------------------- body size


def test_a_declared_large_body_is_refused_unread():
    app = make_app(**{"api.max_body_bytes": 4096})
    status, _, body, pulls = call_asgi(app, headers=[(b"content-length", b"5000000")])
    assert status == 413 and pulls == 0 and b"4096" in body


def test_a_streamed_body_is_counted_as_it_arrives():
    """No Content-Length (chunked): the limit still holds, and reading stops at it."""
    app = make_app(**{"api.max_body_bytes": 4096})
    chunks = [b'{"query": "' + b"a" * 1000] * 1000
    status, _, _, pulls = call_asgi(app, chunks=chunks)
    assert status == 413 and pulls <= 6
    client = TestClient(app)
    r = client.post("/search", content=iter([b'{"query": "', b"a" * 5000, b'"}']))
    assert r.status_code == 413


def test_the_default_body_limit_is_256_kb():
    client = TestClient(make_app())
    r = client.post(
        "/search", json={"query": "duck", "filters": ["doc_id = a"] * 10, "x": "y" * 262_144}
    )
    assert r.status_code == 413
    assert client.post("/search", json={"query": "duck"}).status_code == 200


# ---------------------------------------------------------------- validation never echoes


def test_validation_errors_never_echo_the_input():
    client = TestClient(make_app())
    secret = "SECRET-" + "z" * 50
    for payload in (
        {"query": secret, "mode": secret},
        {"query": secret * 2000},  # past the hard length cap
        {"query": "duck", secret: 1},
        {"query": "duck", "filters": [{"field": secret, "op": "=", "value": secret, "x": 1}]},
        {"query": "duck", "as_of": secret * 10},
        {"query": "duck", "k": 10**40},
        {"question": secret, "provider": secret * 10},
    ):
        r = client.post("/search", json=payload)
        assert r.status_code == 422, payload
        assert secret not in r.text and '"input"' not in r.text, r.text
        assert r.json()["detail"]


def test_every_string_field_has_a_length_cap(tmp_path):
    schema = TestClient(make_app()).get("/openapi.json").json()["components"]["schemas"]

    def strings(node):
        if isinstance(node, dict):
            if node.get("type") == "string" and "enum" not in node and "const" not in node:
                yield node
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)

    for name in ("SearchIn", "AskIn", "AgentIn", "FilterIn"):
        found = list(strings(schema[name]))
        assert found and all("maxLength" in s for s in found), (name, found)


def test_a_regex_dos_filter_is_a_quick_422():
    client = TestClient(make_app())
    started = time.perf_counter()
    r = client.post("/search", json={"query": "duck", "filters": ["doc_id = a" + " " * 3900 + "b"]})
    assert r.status_code == 422 and "1000 characters" in r.json()["detail"]
    r = client.post(
        "/search", json={"query": "duck", "filters": ["doc_id = a" + " " * 40_000 + "b"]}
    )
    assert r.status_code == 422
    assert time.perf_counter() - started < 10  # liveness bound: it was seconds per request


@pytest.mark.parametrize(
    "flt",
    [
        "page_number >= 99999999999",
        {"field": "page_number", "op": ">=", "value": 2**40},
        {"field": "chunk_index", "op": "in", "value": [1, 2**33]},
        {"field": "metadata.n", "op": "=", "value": 2**70},
    ],
)
def test_numeric_filters_out_of_range_are_422_not_500(flt):
    r = TestClient(make_app()).post("/search", json={"query": "duck", "filters": [flt]})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]


# ---------------------------------------------------------------- rate and concurrency


def test_rate_limit_per_client_with_retry_after():
    clock = Clock()
    app = make_app(clock=clock, **{"api.rate_limit_per_minute": 6, "api.rate_limit_burst": 2})
    client = TestClient(app)
    assert [client.get("/versions").status_code for _ in range(2)] == [200, 200]
    r = client.get("/versions")
    assert r.status_code == 429 and r.headers["retry-after"] == "10"
    assert client.get("/health").status_code == 200  # probes are not limited
    status, *_ = call_asgi(app, path="/versions", method="GET", client=("10.9.9.9", 1))
    assert status != 429  # another address has its own bucket
    clock.now += 10
    assert client.get("/versions").status_code == 200


def test_rate_limit_is_per_api_key_when_keys_are_on():
    clock = Clock()
    app = make_app(
        auth=True, clock=clock, **{"api.rate_limit_per_minute": 1, "api.rate_limit_burst": 1}
    )
    key = [(b"x-api-key", KEY.encode())]
    assert (
        call_asgi(app, path="/versions", method="GET", headers=key, client=("10.0.0.1", 1))[0]
        == 200
    )
    # the same key from another address shares the key's bucket
    assert (
        call_asgi(app, path="/versions", method="GET", headers=key, client=("10.0.0.2", 1))[0]
        == 429
    )


def test_concurrency_limit_per_client():
    """Deterministic: the inner app holds its requests until released."""
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await receive()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limits = load_query_config(
        overrides={"api.max_concurrent_per_client": 2, "api.rate_limit_per_minute": 0},
        environ={},
    ).api
    guard = RequestGuard(slow_app, limits=limits, api_key=None)

    async def one(address):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/search", "headers": [], "client": (address, 1)}
        await guard(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario():
        first = [asyncio.create_task(one("10.0.0.1")) for _ in range(2)]
        await asyncio.sleep(0)
        third = await one("10.0.0.1")  # answered at once, while two are in flight
        other = asyncio.create_task(one("10.0.0.2"))
        await asyncio.sleep(0)
        release.set()
        done = [await t for t in first]
        after = await one("10.0.0.1")  # the slots are free again
        return third, done, await other, after

    third, done, other, after = asyncio.run(scenario())
    assert third[0] == 429 and third[1][b"retry-after"] == b"1"
    assert [d[0] for d in done] == [200, 200] and other[0] == 200 and after[0] == 200
    assert guard.limiter.clients["addr:10.0.0.1"].in_flight == 0


def test_per_client_state_is_bounded():
    clock = Clock()
    limiter = ClientLimiter(per_minute=60, burst=1, max_concurrent=1, max_clients=100, clock=clock)
    assert limiter.acquire("busy") is None  # in flight: kept while idle ones are dropped
    for i in range(10_000):
        assert limiter.acquire(f"addr:{i}") is None
        limiter.release(f"addr:{i}")
    assert len(limiter.clients) == 100 and "busy" in limiter.clients
    assert limiter.acquire("busy") is not None


def test_rate_limits_are_on_by_default():
    api = load_query_config(environ={}).api
    assert api.rate_limit_per_minute > 0 and api.max_concurrent_per_client > 0
    assert api.max_body_bytes == 262_144 and not api.expose_source_uri


# ---------------------------------------------------------------- nothing internal leaks


def test_responses_carry_no_server_paths_or_internal_urls(tmp_path):
    client = TestClient(make_app())
    body = client.post("/search", json={"query": "duck", "k": 3}).json()
    assert body["hits"] and all(h["source_uri"] is None for h in body["hits"])
    assert str(fixture_index("fake-hash")) not in json.dumps(body)
    ask = client.post("/ask", json={"question": "How does digest auth treat the password?"})
    assert ask.status_code == 200 and str(fixture_index("fake-hash")) not in ask.text
    agent = TestClient(make_app(**{"agent.trace_dir": str(tmp_path / "traces")}))
    r = agent.post("/agent", json={"question": "Which duck is most common?"})
    assert r.status_code == 200 and r.json()["trace_path"] is None
    assert str(tmp_path) not in r.text and str(fixture_index("fake-hash")) not in r.text
    exposed = TestClient(make_app(**{"api.expose_source_uri": True}))
    hits = exposed.post("/search", json={"query": "duck", "k": 1}).json()["hits"]
    assert hits[0]["source_uri"].startswith(str(fixture_index("fake-hash")))


def test_provider_failures_do_not_leak_the_provider_url():
    app = make_app(
        environ={"FRESHINDEX_LLM_BASE_URL": "http://10.11.12.13:9/v1"},
        **{"gateway.max_attempts": 1, "gateway.timeout_s": 2},
    )
    r = TestClient(app).post("/ask", json={"question": "duck?", "provider": "llm"})
    assert r.status_code in (502, 503), r.text
    assert "10.11.12.13" not in r.text and "://" not in r.text


def test_scrub():
    text = "cannot reach http://10.0.0.5:8000/v1 (see /srv/data/x.log, C:\\data\\x, ~/.ssh/id)"
    assert scrub(text) == "cannot reach <url> (see <path>, <path>, <path>)"
    assert scrub("doc_id prefix guide/ and text/markdown, 1..10") == (
        "doc_id prefix guide/ and text/markdown, 1..10"
    )


# ---------------------------------------------------------------- hostile stored data


def test_a_document_with_300_level_metadata_is_returned_not_a_500(tmp_path):
    cfg = copy_index("fake-hash", tmp_path)
    deep: dict = {"leaf": 1}
    for _ in range(300):
        deep = {"d": deep}
    table = lancedb.connect(cfg.db).open_table("docs")
    table.update(where="doc_id = 'notes/ducks.md'", values={"metadata": json.dumps(deep)})
    nan = '{"score": NaN, "lang": "en"}'
    table.update(where="doc_id = 'guide/auth.md'", values={"metadata": nan})
    client = TestClient(make_app(cfg=cfg))
    for query in ("duck", "digest password"):
        r = client.post("/search", json={"query": query, "k": 8, "mode": "hybrid"})
        assert r.status_code == 200, r.text
    hits = {h["doc_id"]: h for h in r.json()["hits"]}
    meta = hits["notes/ducks.md"]["metadata"]
    depth = 0
    while isinstance(meta, dict):
        meta, depth = meta["d"], depth + 1
    assert depth == 8 and isinstance(meta, str)  # the rest, as cut JSON text
    assert hits["guide/auth.md"]["metadata"] == {"score": None, "lang": "en"}
    r = client.post("/ask", json={"question": "Which duck is most common?"})
    assert r.status_code == 200


# ---------------------------------------------------------------- serve


def test_check_bind():
    check_bind("127.0.0.1", api_key_env=None, insecure_no_auth=False)
    check_bind("::1", api_key_env=None, insecure_no_auth=False)
    check_bind("localhost", api_key_env=None, insecure_no_auth=False)
    check_bind("0.0.0.0", api_key_env="KEY", insecure_no_auth=False)
    check_bind("0.0.0.0", api_key_env=None, insecure_no_auth=True)
    for host in ("0.0.0.0", "::", "10.1.2.3", "example.org"):
        with pytest.raises(Exception, match="--insecure-no-auth"):
            check_bind(host, api_key_env=None, insecure_no_auth=False)


def test_serve_refuses_a_public_bind_without_a_key(monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    db = str(fixture_index("fake-hash") / "lancedb")
    base = ["serve", "--db", db, "--table", "docs", "--no-warm-up"]
    assert main([*base, "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "without an API key" in err and "--insecure-no-auth" in err and not calls
    assert main([*base, "--host", "0.0.0.0", "--insecure-no-auth"]) == 0
    assert main([*base, "--host", "127.0.0.1"]) == 0
    assert [c["host"] for c in calls] == ["0.0.0.0", "127.0.0.1"]
