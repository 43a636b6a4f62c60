"""Answers: context packing, prompt templates, the extractive provider, ``QueryService.ask``.

Logic runs on the fixture index with the FAKE embedder; the quality checks that need the
real model (an answer is found, an unrelated question gets "no answer") are marked slow.
"""

from __future__ import annotations

import pytest

from freshindex.query.config import load_query_config
from freshindex.query.context import (
    NO_ANSWER_REPLY,
    assemble_context,
    citations_from_text,
    estimate_tokens,
    is_refusal,
    render,
)
from freshindex.query.providers.extractive import NO_ANSWER, split_sentences
from freshindex.query.service import QueryService
from freshindex.query.types import Hit
from freshindex.testing import Reply, StandInChatServer, fixture_index, index_config


def service(model: str = "fake-hash", **overrides) -> QueryService:
    cfg = index_config(str(fixture_index(model) / "lancedb"), model)
    qcfg = load_query_config(overrides={"gateway.cache.enabled": False, **overrides}, environ={})
    return QueryService(cfg, qcfg, environ={})


def hit(i: int, text: str) -> Hit:
    return Hit(f"c{i}", f"doc{i}", text, f"/d/{i}", None, 1.0 / i, 3)


def test_context_is_numbered_in_rank_order_within_the_budget():
    hits = [hit(i, f"passage {i} " + "word " * 60) for i in range(1, 6)]
    text, used = assemble_context(hits, max_tokens=150)
    assert text.startswith("[1] doc1") and "[2] doc2" in text
    assert 1 <= len(used) < 5 and [h.chunk_id for h in used] == [
        f"c{i + 1}" for i in range(len(used))
    ]
    assert estimate_tokens(text) <= 150
    big, _ = assemble_context(hits, max_tokens=10_000)
    assert big.count("\n[") == 4


def test_a_passage_crossing_the_budget_is_cut_not_dropped():
    text, used = assemble_context([hit(1, "alpha " * 300)], max_tokens=100)
    assert len(used) == 1 and text.endswith("…") and estimate_tokens(text) <= 100


def test_templates_render_and_citations_map_back():
    qcfg = load_query_config(environ={})
    messages = render(qcfg.context.prompts_path, "answer", question="Q?", context="[1] x")
    assert [m.role for m in messages] == ["system", "user"]
    assert "Question: Q?" in messages[1].content and "[1] x" in messages[1].content
    passages = (hit(1, "a"), hit(2, "b"))
    cites = citations_from_text("A [2], and B [1][2] and [9].", passages)
    assert [(c.marker, c.chunk_id) for c in cites] == [(1, "c1"), (2, "c2")]


def test_sentences_split_on_punctuation_lines_and_headings():
    text = (
        "Timeouts\nHTTPX times out after five\nseconds by default. Pass None to disable it.\n"
        "- a list item here"
    )
    assert split_sentences(text) == [
        "HTTPX times out after five seconds by default.",
        "Pass None to disable it.",
        "- a list item here",
    ]


def test_ask_quotes_and_cites_the_supporting_sentence():
    svc = service()
    answer = svc.ask("How does digest authentication treat the password?")
    assert answer.answered and answer.provider == "extractive"
    assert "Digest authentication hashes the password first." in answer.text
    cite = answer.citations[0]
    assert cite.doc_id == "guide/auth.md" and cite.quote in answer.text
    assert f"[{cite.marker}]" in answer.text
    assert answer.hits[cite.marker - 1].chunk_id == cite.chunk_id
    assert answer.table_version == svc.reader.pinned().version
    assert answer.accounting["calls"] == 1 and answer.usage.estimated


def test_ask_says_when_the_context_has_no_answer():
    answer = service().ask("Which river flows through Vienna?")
    assert not answer.answered and answer.text == NO_ANSWER and answer.citations == ()


def test_ask_honours_filters_and_as_of():
    svc = service()
    answer = svc.ask("What reduces fever?", filters=["doc_id = papers/ibuprofen"])
    assert all(h.doc_id == "papers/ibuprofen" for h in answer.hits)
    first = svc.reader.resolve(None)
    assert svc.ask("digest password", as_of=first).table_version == first


def test_ask_through_an_llm_cites_context_numbers():
    with StandInChatServer(Reply(text="It hashes the password first [1].")) as srv:
        svc = service(**{"gateway.providers.llm.base_url": srv.base_url})
        answer = svc.ask("How does digest authentication work?", k=2)
        assert answer.provider == "llm" and answer.answered
        assert answer.citations[0].chunk_id == answer.hits[0].chunk_id
        prompt = srv.requests[0]["json"]["messages"]
        assert prompt[0]["role"] == "system" and "[1] guide/auth.md" in prompt[1]["content"]
        srv.default = Reply(text="The context does not contain an answer.")
        assert not svc.ask("What is the airspeed of a swallow?").answered


def test_only_the_whole_no_answer_reply_is_a_refusal():
    """Structural, not wording-matched: the template asks for ``$no_answer`` as the whole
    reply; an answer that quotes the sentence (or starts with it and goes on) is an answer."""
    prompt = render(load_query_config(environ={}).context.prompts_path, "answer", question="q")
    assert NO_ANSWER_REPLY in prompt[0].content and "$no_answer" not in prompt[0].content
    assert is_refusal(NO_ANSWER_REPLY) and is_refusal(f'  "{NO_ANSWER_REPLY}"\n')
    quoting = (
        f'The guide prints "{NO_ANSWER_REPLY}" when a lookup finds nothing, and digest '
        "authentication hashes the password first [1]."
    )
    continuing = f"{NO_ANSWER_REPLY} Digest authentication hashes the password first [1]."
    for text in (quoting, continuing, "", "no answer"):
        assert not is_refusal(text), text
    with StandInChatServer(Reply(text=quoting)) as srv:
        svc = service(**{"gateway.providers.llm.base_url": srv.base_url})
        answer = svc.ask("How does digest authentication work?", k=2)
        assert answer.provider == "llm" and answer.answered and answer.text == quoting
        assert answer.citations and answer.citations[0].chunk_id == answer.hits[0].chunk_id
        srv.default = Reply(text=f'"{NO_ANSWER_REPLY}"')
        refused = svc.ask("What is the airspeed of a swallow?")
        assert not refused.answered and refused.provider == "llm"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What is the default timeout?", "five seconds"),
        ("How long are responses cached?", "ten minutes"),
        ("Which duck species is the most common?", "Mallards"),
    ],
)
def test_real_model_answers_from_the_context(question, expected):
    answer = service("all-MiniLM-L6-v2").ask(question)
    assert answer.answered and expected in answer.text


@pytest.mark.slow
@pytest.mark.parametrize(
    "question",
    ["What is the capital of France?", "Who won the football world cup in 2014?"],
)
def test_real_model_refuses_questions_the_context_cannot_answer(question):
    answer = service("all-MiniLM-L6-v2").ask(question)
    assert not answer.answered and answer.citations == ()
