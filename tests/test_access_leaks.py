"""The leak suite: two principals with disjoint documents and a shared public set.

For every entry point (Python API in each mode and engine, the CLI, HTTP, the agent with
tools, ask with citations, a warm response cache, as-of reads of a version from before an
ACL change) alice never receives any text, id, title or citation of bob's documents, and
gets k hits when k visible ones exist although bob's documents are most of the table and
match the query as well as hers. FAKE embedder (``fake-hash``); answers come from the
extractive provider or the STAND-IN chat server (``freshindex.testing``), never a model.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from freshindex import store
from freshindex.cli import main
from freshindex.config import EmbeddingConfig
from freshindex.embedding import get_embedder
from freshindex.query.access import Access
from freshindex.query.api import create_app
from freshindex.query.cache import cache_key
from freshindex.query.config import load_query_config
from freshindex.query.errors import FilterError, QueryError
from freshindex.query.filters import parse_filters
from freshindex.query.service import QueryService
from freshindex.query.types import ChatRequest, Message
from freshindex.schemas.records import Chunk, Document, EmbeddedDocument, sha256_hex
from freshindex.testing import Reply, StandInChatServer, index_config
from freshindex.transforms.rows import rows_for
from freshindex.transforms.write import commit_changes

N_BOB, N_ALICE, N_PUBLIC = 200, 6, 3
SHARED = "shared/plan"
KEY_ALICE, KEY_BOB = "alice-key-0001", "bob-key-0002"
# alice sees her documents, the public ones and the shared one (until it is revoked from bob)
ALICE_VISIBLE = N_ALICE + N_PUBLIC + 1
BOB_MARKERS = ("BOBONLY", "bob/", "Bob memo")


def _doc(doc_id: str, title: str, text: str, acl: tuple[str, ...]) -> tuple[Document, str]:
    doc = Document(
        doc_id=doc_id,
        source_uri=f"jsonl:test#{doc_id}",
        content_hash=sha256_hex(text),
        content_type="text/plain",
        title=title,
        modified_at=None,
        elements=(),
        acl=acl,
    )
    return doc, text


def corpus() -> list[tuple[Document, str]]:
    """(document, its one chunk's text): bob's documents are most of the table and say what
    alice's say, so a search that ranked before filtering would give alice bob's."""
    words = "quarterly budget report planning"
    docs = [
        _doc(f"bob/b{i}", f"Bob memo {i}", f"{words} for bob {i}. BOBONLY secret {i}", ("bob",))
        for i in range(N_BOB)
    ]
    docs += [
        _doc(f"alice/a{i}", f"Alice note {i}", f"{words} by alice {i}. ALICEONLY", ("alice",))
        for i in range(N_ALICE)
    ]
    docs += [
        _doc(f"public/p{i}", f"Handbook {i}", f"{words} handbook {i}. PUBLICTEXT", ("public",))
        for i in range(N_PUBLIC)
    ]
    docs.append(_doc(SHARED, "Shared plan", f"{words} shared plan. SHAREDTEXT", ("alice", "bob")))
    return docs


def write(db_uri: str, docs: list[tuple[Document, str]]) -> int:
    """One commit of ``docs`` (one chunk each) with FAKE (fake-hash) vectors; returns the
    table version after it."""
    embedder = get_embedder(EmbeddingConfig(model="fake-hash"))
    vectors = np.asarray(embedder.encode([text for _, text in docs]), np.float32)
    embedded = []
    for (doc, text), vector in zip(docs, vectors, strict=True):
        chunk = Chunk(sha256_hex(doc.doc_id + text)[:32], doc.doc_id, 0, text, sha256_hex(text), 12)
        embedded.append(EmbeddedDocument(doc, (chunk,), vector[None, :], 1, 0))
    data = rows_for(
        embedded, fingerprint="fp", model="fake-hash", run_id="r", dim=embedder.dim, namespace="t"
    )
    db = store.connect(db_uri)
    table = store.open_or_create_chunks(
        db, "docs", dim=embedder.dim, model="fake-hash", settings={}
    )
    commit_changes(table, data, replace_docs=[d.doc_id for d, _ in docs])
    store.refresh_fts_index(table)
    return table.version


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> dict:
    """The table: v_before (shared with alice and bob), then v_after (revoked from bob)."""
    folder = tmp_path_factory.mktemp("access")
    db_uri = str(folder / "lancedb")
    before = write(db_uri, corpus())
    table = store.open_chunks(store.connect(db_uri), "docs")
    shared_hash = next(d.content_hash for d, _ in corpus() if d.doc_id == SHARED)
    assert store.relabel(table, {SHARED: (shared_hash, ("alice",))}) == 1
    return {"db": db_uri, "before": before, "after": table.version, "folder": folder}


def service(index, **overrides) -> QueryService:
    settings = {"gateway.cache.enabled": False, "agent.trace_dir": None}
    qcfg = load_query_config(overrides={**settings, **overrides}, environ={})
    return QueryService(index_config(index["db"]), qcfg, environ={})


def leaks(payload) -> list[str]:
    """Bob's markers found anywhere in ``payload`` (its JSON text)."""
    text = json.dumps(payload, default=str) if not isinstance(payload, str) else payload
    return [m for m in BOB_MARKERS if m in text]


ALICE = Access.of(["alice"])
BOB = Access.of(["bob"])
QUERY = "quarterly budget report planning"


# ---------------------------------------------------------------- Python API


@pytest.mark.parametrize("engine", ["memory", "lancedb"])
@pytest.mark.parametrize("mode", ["vector", "fts", "hybrid"])
def test_search_gives_k_visible_hits_and_nothing_of_the_other(index, mode, engine):
    svc = service(index, **{"retrieval.vector_engine": engine})
    k = ALICE_VISIBLE - 2
    result = svc.search(QUERY, mode=mode, k=k, caller=ALICE)
    assert len(result.hits) == k  # bob's 200 equally good matches took no place
    assert not leaks(result.to_dict())
    assert {h.doc_id.split("/")[0] for h in result.hits} <= {"alice", "public", "shared"}
    everything = svc.search(QUERY, mode=mode, k=50, caller=ALICE)
    assert len(everything.hits) == ALICE_VISIBLE  # all she may read, and no more
    bob = svc.search(QUERY, mode=mode, k=k, caller=BOB).hits
    assert len(bob) == k and not any("ALICEONLY" in h.text for h in bob)
    assert SHARED not in {h.doc_id for h in svc.search(QUERY, mode=mode, k=50, caller=BOB).hits}


def test_an_anonymous_caller_reads_public_documents_only_and_admin_everything(index):
    svc = service(index)
    hits = svc.search(QUERY, mode="hybrid", k=20).hits  # no caller: anonymous
    assert {h.doc_id.split("/")[0] for h in hits} == {"public"} and len(hits) == N_PUBLIC
    admin = svc.search(QUERY, mode="fts", k=50, caller=Access.admin()).hits
    assert len(admin) == 50 and leaks([h.to_dict() for h in admin])


def test_metadata_and_column_filters_cannot_widen_or_name_the_labels(index):
    svc = service(index)
    for filters in (["doc_id prefix bob/"], [{"field": "doc_id", "op": "in", "value": ["bob/b1"]}]):
        for mode in ("vector", "fts", "hybrid"):
            result = svc.search(QUERY, mode=mode, k=5, filters=filters, caller=ALICE)
            assert result.hits == ()
    with pytest.raises(FilterError):
        parse_filters(["acl = bob"])
    with pytest.raises(FilterError):
        parse_filters([("acl", "any_of", ["bob"])])
    hits = svc.search(QUERY, k=3, filters=["doc_id prefix alice/"], caller=ALICE).hits
    assert len(hits) == 3 and all(h.doc_id.startswith("alice/") for h in hits)


def test_principals_are_checked_names(index):
    svc = service(index)
    for bad in ("bob' OR '1'='1", "a b", "x" * 200, "bob]"):
        with pytest.raises(QueryError):
            svc.access(bad)
    assert svc.access("alice, eng").principals == ("alice", "eng", "public")


# ---------------------------------------------------------------- as-of reads


def test_as_of_a_version_from_before_a_revoke_does_not_show_it(index):
    svc = service(index)
    old_rows = store.open_as_of(store.connect(index["db"]), "docs", index["before"])
    labels = old_rows.search().where(f"doc_id = '{SHARED}'").select(["acl"]).to_arrow()
    assert labels["acl"].to_pylist() == [["alice", "bob"]]  # bob's label at that version
    only_shared = ["doc_id = " + SHARED]
    for mode in ("vector", "fts", "hybrid"):
        before = {"mode": mode, "k": 5, "as_of": index["before"]}
        old = svc.search("shared plan SHAREDTEXT", filters=only_shared, caller=BOB, **before)
        assert old.table_version == index["before"] and old.hits == ()
        assert len(svc.search(QUERY, caller=BOB, **before).hits) == 5  # the rest stays readable
        mine = svc.search("shared plan SHAREDTEXT", filters=only_shared, caller=ALICE, **before)
        assert [h.doc_id for h in mine.hits] == [SHARED]
        assert not leaks(svc.search(QUERY, caller=ALICE, **{**before, "k": 50}).to_dict())


# ---------------------------------------------------------------- ask, cache, agent


def test_ask_cites_only_visible_chunks(index):
    svc = service(index)
    answer = svc.ask("What does the quarterly budget report planning say?", caller=ALICE)
    assert answer.hits and answer.citations
    assert not leaks(answer.to_dict())


def test_a_warm_cache_never_serves_another_callers_answer(index, tmp_path):
    svc = service(
        index, **{"gateway.cache.enabled": True, "gateway.cache.path": str(tmp_path / "c")}
    )
    question = "What does the quarterly budget report planning say?"
    # vector mode: the in-RAM engine ranks ties the same way every time, so the same caller's
    # second question has the same context (full-text ties may come back in another order)
    for_bob = svc.ask(question, mode="vector", caller=BOB)
    assert not for_bob.cached and leaks(for_bob.to_dict())  # bob's context, cached now
    assert svc.ask(question, mode="vector", caller=BOB).cached
    for_alice = svc.ask(question, mode="vector", caller=ALICE)
    assert not for_alice.cached and not leaks(for_alice.to_dict())
    assert svc.ask(question, mode="vector", caller=ALICE).cached  # her own, served warm
    # the same prompt and context for two audiences: two keys
    request = ChatRequest((Message("user", "q"),), question="q")
    keys = {
        cache_key("p", "m", request.__class__(**{**request.__dict__, "audience": a.key}))
        for a in (ALICE, BOB, Access.of(["alice"]))
    }
    assert len(keys) == 2


def test_agent_tools_read_through_the_callers_view(index):
    bob_only = ["doc_id prefix bob/"]
    bob_chunk = service(index).search(QUERY, mode="fts", k=1, filters=bob_only, caller=BOB).hits[0]
    calls = [
        Reply.tool_call("search", {"query": "budget BOBONLY secret bob", "k": 5}, "c1"),
        Reply.tool_call("get_document", {"doc_id": bob_chunk.doc_id}, "c2"),
        Reply.tool_call("list_sources", {}, "c3"),
        Reply.tool_call("filter_metadata", {"filters": ["doc_id prefix bob/"]}, "c4"),
    ]
    with StandInChatServer() as srv:
        svc = service(index, **{"gateway.providers.llm.base_url": srv.base_url})
        mine = ["doc_id prefix alice/"]
        alice_chunk = svc.search(QUERY, mode="fts", k=1, filters=mine, caller=ALICE).hits[0]
        final = Reply(
            text=f"See [{alice_chunk.doc_id}#{alice_chunk.chunk_id}] and "
            f"[{bob_chunk.doc_id}#{bob_chunk.chunk_id}]."
        )
        srv.script(Reply(text=None, tool_calls=calls), final)
        result = svc.agent(QUERY, caller=ALICE, planner="tools", mode="fts", k=5)
        assert result.planner == "tools" and result.stopped == "final"
        tool_replies = [m for m in srv.requests[1]["json"]["messages"] if m["role"] == "tool"]
        assert len(tool_replies) == 4
        # get_document echoes the id the model asked for, and answers as for an unknown id:
        # the caller cannot even learn that the document exists
        document = json.loads(tool_replies[1]["content"])
        assert document == {"doc_id": bob_chunk.doc_id, "found": False, "chunks": []}
        assert not leaks([tool_replies[0], *tool_replies[2:]])
        assert "BOBONLY" not in json.dumps(tool_replies) and "Bob memo" not in json.dumps(
            tool_replies
        )
        assert len(json.loads(tool_replies[0]["content"])) == 5  # her visible hits came back
        assert [c.chunk_id for c in result.citations] == [alice_chunk.chunk_id]
        # what the tools returned (their arguments are the model's own words)
        summaries = [s.summary for s in result.trace if s.kind == "tool"]
        assert "BOBONLY" not in json.dumps(summaries) and "Bob memo" not in json.dumps(summaries)
        assert not leaks([c.to_dict() for c in result.citations])


def test_agent_deterministic_planner_keeps_mode_filters_and_view(index):
    svc = service(index)
    result = svc.agent(QUERY, caller=ALICE, planner="deterministic", mode="fts", k=4)
    assert result.citations and not leaks(result.to_dict())
    search = next(s for s in result.trace if s.tool == "search")
    assert search.arguments["mode"] == "fts" and search.result_size == 4


# ---------------------------------------------------------------- HTTP and CLI


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    keys = {
        "sha256:" + hashlib.sha256(KEY_ALICE.encode()).hexdigest(): ["alice"],
        "sha256:" + hashlib.sha256(KEY_BOB.encode()).hexdigest(): ["bob"],
    }
    settings = {"gateway.cache.enabled": False, "api.keys": keys, "api.rate_limit_per_minute": 0}
    qcfg = load_query_config(overrides=settings, environ={})
    svc = QueryService(index_config(index["db"]), qcfg, environ={})
    return TestClient(create_app(svc, environ={}))


def test_http_keys_name_the_caller(client):
    alice = {"X-API-Key": KEY_ALICE}
    assert client.post("/search", json={"query": QUERY}).status_code == 401
    assert (
        client.post("/search", json={"query": QUERY}, headers={"X-API-Key": "nope"}).status_code
        == 401
    )
    for mode in ("vector", "fts", "hybrid"):
        r = client.post("/search", json={"query": QUERY, "mode": mode, "k": 8}, headers=alice)
        assert r.status_code == 200 and len(r.json()["hits"]) == 8 and not leaks(r.json())
    r = client.post("/ask", json={"question": QUERY}, headers=alice)
    assert r.status_code == 200 and r.json()["citations"] and not leaks(r.json())
    r = client.post("/agent", json={"question": QUERY, "mode": "fts"}, headers=alice)
    assert r.status_code == 200 and not leaks(r.json())
    bob = client.post("/search", json={"query": QUERY, "k": 8}, headers={"X-API-Key": KEY_BOB})
    assert leaks(bob.json()) and "ALICEONLY" not in json.dumps(bob.json())


def test_cli_as(index, capsys, tmp_path):
    qfile = tmp_path / "q.yaml"
    qfile.write_text(yaml.safe_dump({"gateway": {"cache": {"enabled": False}}}))
    base = ["--db", index["db"], "--table", "docs", "--query-config", str(qfile), "--json"]
    assert main(["search", QUERY, "-k", "8", "--as", "alice", *base]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["hits"]) == 8 and not leaks(out)
    assert main(["ask", QUERY, "--as", "alice", *base]) == 0
    assert not leaks(capsys.readouterr().out)
    assert main(["search", QUERY, "-k", "8", *base]) == 0  # no --as: public only
    assert {h["doc_id"].split("/")[0] for h in json.loads(capsys.readouterr().out)["hits"]} == {
        "public"
    }


def test_operator_views_name_only_what_the_caller_may_read(index, client):
    """/diff, /explain and the console's diff, explain, errors and search pages: alice's key
    never names bob's documents (an explain of one is a 404, as a missing document), while
    bob's key sees his; counts cover only the caller's documents."""
    alice, bob = {"X-API-Key": KEY_ALICE}, {"X-API-Key": KEY_BOB}
    span = {"from": 1, "to": index["after"]}
    r = client.get("/diff", params=span, headers=alice)
    assert r.status_code == 200 and not leaks(r.json())
    assert r.json()["counts"]["added"] == ALICE_VISIBLE
    assert {a["doc_id"] for a in r.json()["added"]} >= {"alice/a0", SHARED}
    r = client.get("/diff", params=span, headers=bob)
    assert r.status_code == 200 and leaks(r.json())
    assert SHARED not in json.dumps(r.json())  # revoked from bob: no version shows it him
    assert client.get("/explain/bob/b1", headers=alice).status_code == 404
    assert client.get("/explain/alice/a1", headers=alice).json()["present"]
    assert client.get("/explain/bob/b1", headers=bob).json()["present"]
    pages = [
        ("/ui/diff", {"from_ref": 1, "to_ref": index["after"]}),
        ("/ui/explain", {"doc_id": "bob/b1"}),
        ("/ui/errors", {}),
        ("/ui/search", {"query": QUERY, "k": 8}),
        ("/ui", {}),
    ]
    for path, params in pages:
        page = client.get(path, params=params, headers=alice)
        if path == "/ui/explain":  # a 404 that repeats only the id alice asked for
            assert page.status_code == 404
            assert not leaks(page.text.replace("bob/b1", "")), path
            continue
        assert page.status_code == 200, (path, page.status_code)
        assert not leaks(page.text), path
    assert "alice/a0" in client.get(pages[0][0], params=pages[0][1], headers=alice).text
    assert "bob/b1" in client.get(pages[0][0], params=pages[0][1], headers=bob).text
