"""Chunking one document: Document -> chunks sized in the embedding model's own word-pieces.

Structure-aware: elements are packed in order within their section, and each chunk
starts with its section title, so a chunk never mixes two sections and always says
what it is about. No chunk exceeds ``max_tokens`` word-pieces (title included), so the
model never truncates one silently. Consecutive chunks of a section share
``overlap_tokens`` word-pieces.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator

from freshindex.config import ChunkingConfig
from freshindex.embedding import Embedder
from freshindex.errors import EmptyDocument
from freshindex.schemas.records import (
    Chunk,
    Document,
    Element,
    chunk_id_for,
    sha256_hex,
)

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_MAX_HEADING_SHARE = 4  # a heading may use at most 1/4 of a chunk's budget


class _Piece:
    __slots__ = ("page", "text", "tokens")

    def __init__(self, text: str, tokens: int, page: int | None):
        self.text, self.tokens, self.page = text, tokens, page


def _windows(text: str, spans: list[tuple[int, int]], lo: int, hi: int, budget: int):
    """Pieces of ``text`` covering tokens [lo, hi) in windows of at most ``budget`` tokens,
    cut at word starts so no word is split between two pieces."""
    out = []
    start = lo
    while start < hi:
        end = min(start + budget, hi)
        if end < hi:
            cut = end
            while cut > start + 1 and spans[cut][0] == spans[cut - 1][1]:
                cut -= 1  # inside a word: back off to its first piece
            end = cut if cut > start + 1 else end
        piece = text[spans[start][0] : spans[end - 1][1]].strip()
        if piece:
            out.append((piece, end - start))
        start = end
    return out


def _split_to_fit(text: str, budget: int, embedder: Embedder) -> list[tuple[str, int]]:
    """(piece, word-pieces) covering ``text``, each within ``budget``: the whole text if it
    fits, else its sentences, else word-aligned windows. Tokenizes ``text`` once: BERT-style
    tokenizers split on whitespace and punctuation first, so a sentence's count is the
    number of the text's tokens inside it."""
    spans = embedder.token_spans(text)
    if len(spans) <= budget:
        return [(text, len(spans))]
    starts = [a for a, _ in spans]
    out: list[tuple[str, int]] = []
    pos = 0
    bounds = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)] + [(len(text), len(text))]
    for sep_start, sep_end in bounds:
        lo, hi = bisect.bisect_left(starts, pos), bisect.bisect_left(starts, sep_start)
        pos = sep_end
        if hi <= lo:
            continue
        if hi - lo <= budget:
            out.append((text[spans[lo][0] : spans[hi - 1][1]], hi - lo))
        else:
            out.extend(_windows(text, spans, lo, hi, budget))
    return out


def _tail(text: str, tokens: int, embedder: Embedder) -> tuple[str, int]:
    """The last ``tokens`` word-pieces of ``text`` (starting at a word), and their count."""
    if tokens <= 0:
        return "", 0
    spans = embedder.token_spans(text)
    if len(spans) <= tokens:
        return "", 0  # the whole chunk would repeat: no useful overlap
    i = len(spans) - tokens
    while 0 < i < len(spans) and spans[i][0] == spans[i - 1][1]:
        i += 1
    if i >= len(spans):
        return "", 0
    return text[spans[i][0] :].strip(), len(spans) - i


def _sections(doc: Document) -> Iterator[tuple[str | None, list]]:
    """(heading, body elements) in document order; headings without a body are joined."""
    pending: list[str] = []
    heading: str | None = None
    body: list = []
    for el in doc.elements:
        if el.kind == "Title":
            if body:
                yield heading, body
                body, pending = [], []
            pending.append(el.text)
            heading = " / ".join(pending[-3:])
            continue
        body.append(el)
    if body:
        yield heading, body
    elif pending:  # a document of headings only (slides): the headings are the text
        yield None, [Element(text=h, kind="Title") for h in pending]


def chunk_document(doc: Document, cfg: ChunkingConfig, embedder: Embedder) -> tuple[Chunk, ...]:
    """Split one document into chunks that fit the model; raises EmptyDocument if none."""
    limit = min(cfg.max_tokens, embedder.max_tokens)
    texts: list[tuple[str, str | None, int | None]] = []  # (text, section, page)
    for heading, body in _sections(doc):
        head = ""
        if cfg.section_titles and heading:
            head_budget = limit // _MAX_HEADING_SHARE
            head = _split_to_fit(heading, head_budget, embedder)[0][0]
        head_tokens = embedder.count_tokens(head) + 2 if head else 0  # +2: joins can merge
        budget = limit - head_tokens
        pieces: list[_Piece] = []
        # long elements are cut a little short, so the next chunk has room for the overlap
        piece_budget = budget - cfg.overlap_tokens
        for el in body:
            for text, n in _split_to_fit(el.text, piece_budget, embedder):
                pieces.append(_Piece(text, n, el.page_number))
        section_texts: list[tuple[str, int | None]] = []
        current: list[_Piece] = []
        used = 0
        for piece in pieces:
            if current and used + piece.tokens > budget:
                body_text = "\n".join(p.text for p in current)
                section_texts.append((body_text, current[0].page))
                overlap, n = _tail(body_text, cfg.overlap_tokens, embedder)
                current, used = [], 0
                if overlap and n + piece.tokens <= budget:
                    current, used = [_Piece(overlap, n, piece.page)], n
            current.append(piece)
            used += piece.tokens
        if current:
            section_texts.append(("\n".join(p.text for p in current), current[0].page))
        # the heading goes on last, so an overlap never repeats it
        texts.extend((f"{head}\n{t}" if head else t, heading, pg) for t, pg in section_texts)
    chunks: list[Chunk] = []
    seen: dict[str, int] = {}
    for index, (text, section, page) in enumerate(texts):
        n_tokens = embedder.count_tokens(text)
        if n_tokens > embedder.max_tokens:  # cannot happen by construction; guard anyway
            raise AssertionError(f"chunk of {n_tokens} tokens exceeds the model's limit")
        occurrence = seen.get(text, 0)
        seen[text] = occurrence + 1
        chunks.append(
            Chunk(
                chunk_id=chunk_id_for(doc.doc_id, text, occurrence),
                doc_id=doc.doc_id,
                chunk_index=index,
                text=text,
                text_hash=sha256_hex(text),
                token_count=n_tokens,
                section=section,
                page_number=page,
            )
        )
    if not chunks:
        raise EmptyDocument("the document produced no chunks", doc_id=doc.doc_id)
    return tuple(chunks)
