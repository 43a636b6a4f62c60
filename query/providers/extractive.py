"""The embedded default provider: answers by quoting the context, with citations.

No generative model: the retrieved passages are split into sentences, and each sentence gets a
support score for the question,

    support = w * cosine(question, sentence) + (1 - w) * lexical coverage

where the cosine uses the table's embedding model and the lexical coverage is the IDF-weighted
share of the question's content words (stemmed, stop words dropped) found in the sentence,
with IDF over the context's sentences (BM25's formula). The best sentences (up to
``max_sentences``, each within 80% of the best, duplicates from overlapping chunks dropped)
are quoted in passage order, each followed by the ``[n]`` of its context passage. When even the best
sentence scores below ``min_support`` the answer says the context has no answer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from freshindex.query.config import ExtractiveConfig, ProviderConfig
from freshindex.query.context import estimate_messages, estimate_tokens
from freshindex.query.types import ChatRequest, ChatResponse, Citation, Hit, Usage

NO_ANSWER = "No answer in the context: none of the retrieved passages supports an answer."

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*[-*#•]|\s*\d+\.)")
_TOKEN = re.compile(r"[a-z0-9]+")
_STOP_WORDS_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves tell explain describe please give list show
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


def stem(word: str) -> str:
    """A light suffix stripper: enough to match timeout/timeouts, set/setting, use/used."""
    for suffix in ("ations", "ation", "ings", "ing", "edly", "ies", "ied", "es", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word


def content_terms(text: str) -> list[str]:
    return [stem(t) for t in _TOKEN.findall(text.lower()) if t not in STOP_WORDS]


def _lines_to_blocks(text: str) -> str:
    """Keep a line break where a line is a heading or ends a sentence; join wrapped lines."""
    lines = [line.strip() for line in text.splitlines()]
    out = []
    for i, line in enumerate(lines):
        if i == len(lines) - 1:
            out.append(line)
            break
        following = lines[i + 1]
        starts_block = not following or following[0].isupper() or following[0] in "-*#•0123456789"
        ends = line.endswith((".", "!", "?", ":")) or (len(line.split()) <= 8 and starts_block)
        out.append(line + ("\n\n" if ends or not line else " "))
    return "".join(out)


def split_sentences(text: str) -> list[str]:
    """Sentences and list items of a passage; headings and fragments under 3 words dropped."""
    out = []
    for part in _SENTENCE_END.split(_lines_to_blocks(text)):
        sentence = " ".join(part.split()).strip()
        if sentence.startswith("#"):
            continue
        if len(sentence.split()) >= 3:
            out.append(sentence)
    return out


@dataclass(frozen=True)
class _Candidate:
    passage: int  # 0-based index into the context
    position: int  # sentence index within its passage
    text: str
    support: float


class ExtractiveProvider:
    """Quotes and cites the context's best-supported sentences; never invents text."""

    def __init__(self, cfg: ProviderConfig, settings: ExtractiveConfig, *, embedder=None):
        self.name = cfg.name
        self.model = cfg.model or "extractive-v1"
        self.capabilities = frozenset(cfg.capabilities or ("answer",))
        self.max_context_tokens = cfg.max_context_tokens
        self.settings = settings
        self._embedder = embedder
        # cached answers depend on the thresholds too
        self.cache_salt = json.dumps(dataclasses.asdict(settings), sort_keys=True)

    def _embed(self, texts: list[str]) -> np.ndarray | None:
        embedder = self._embedder() if callable(self._embedder) else self._embedder
        if embedder is None or not texts:
            return None
        vectors = np.asarray(embedder.encode(texts), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms == 0, 1.0, norms)

    def score(self, question: str, context: Sequence[Hit]) -> list[_Candidate]:
        """Every sentence of the context with its support for ``question``, best first."""
        sentences: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        for p, hit in enumerate(context):
            for i, sentence in enumerate(split_sentences(hit.text)):
                key = sentence.lower()
                if key not in seen:  # overlapping chunks repeat sentences
                    seen.add(key)
                    sentences.append((p, i, sentence))
        if not sentences:
            return []
        terms = [set(content_terms(s)) for _, _, s in sentences]
        q_terms = set(content_terms(question))
        n = len(sentences)
        idf = {
            t: math.log(1 + (n - df + 0.5) / (df + 0.5))
            for t in q_terms
            for df in [sum(t in ts for ts in terms)]
        }
        # a question term found nowhere still counts in the denominator: missing evidence
        total_idf = sum(idf.values()) or 1.0
        lexical = np.array([sum(idf[t] for t in q_terms & ts) / total_idf for ts in terms])
        w = self.settings.semantic_weight
        vectors = self._embed([question] + [s for _, _, s in sentences]) if w > 0 else None
        if vectors is None:
            support = lexical
        else:
            cosine = np.clip(vectors[1:] @ vectors[0], 0.0, 1.0)
            support = w * cosine + (1 - w) * lexical
        ranked = [_Candidate(p, i, s, float(support[k])) for k, (p, i, s) in enumerate(sentences)]
        ranked.sort(key=lambda c: (-c.support, c.passage, c.position))
        return ranked

    def complete(self, request: ChatRequest, *, timeout: float) -> ChatResponse:
        question = request.question or next(
            (m.content or "" for m in reversed(request.messages) if m.role == "user"), ""
        )
        context = list(request.context)
        ranked = self.score(question, context)
        usage_in = estimate_messages(request.messages) or estimate_tokens(question)
        best = ranked[0].support if ranked else 0.0
        if not ranked or best < self.settings.min_support:
            return ChatResponse(
                text=NO_ANSWER,
                provider=self.name,
                model=self.model,
                usage=Usage(usage_in, estimate_tokens(NO_ANSWER), estimated=True),
                answered=False,
                finish_reason="no_answer",
                support=best,
            )
        floor = max(self.settings.min_support, 0.8 * best)
        chosen = [c for c in ranked if c.support >= floor][: self.settings.max_sentences]
        chosen.sort(key=lambda c: (c.passage, c.position))
        citations: list[Citation] = []
        parts = []
        for c in chosen:
            hit = context[c.passage]
            marker = c.passage + 1  # the passage's number in the context, as an LLM cites
            citations.append(
                Citation(marker, hit.doc_id, hit.chunk_id, hit.source_uri, c.text, c.support)
            )
            sentence = c.text if c.text[-1] in ".!?:" else c.text + "."
            parts.append(f"{sentence} [{marker}]")
        text = " ".join(parts)
        return ChatResponse(
            text=text,
            provider=self.name,
            model=self.model,
            usage=Usage(usage_in, estimate_tokens(text), estimated=True),
            citations=tuple(citations),
            answered=True,
            support=best,
        )
