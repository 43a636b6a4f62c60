"""Chunk: Document -> ChunkedDocument, sized in the embedding model's own word-pieces.

Structure-aware: elements are packed in order within their section, and each chunk
starts with its section title, so a chunk never mixes two sections and always says
what it is about. No chunk exceeds ``max_tokens`` word-pieces (title included), so the
model never truncates one silently. Consecutive chunks of a section share
``overlap_tokens`` word-pieces.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import apache_beam as beam

from freshindex.config import ChunkingConfig, EmbeddingConfig
from freshindex.embedding import Embedder, get_embedder
from freshindex.errors import EmptyDocument
from schemas.records import (
    Chunk,
    ChunkedDocument,
    Document,
    Element,
    ErrorRecord,
    chunk_id_for,
    sha256_hex,
)

ERRORS_TAG = "errors"
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_MAX_HEADING_SHARE = 4  # a heading may use at most 1/4 of a chunk's budget


class _Piece:
    __slots__ = ("page", "text", "tokens")

    def __init__(self, text: str, tokens: int, page: int | None):
        self.text, self.tokens, self.page = text, tokens, page


def _cut_by_tokens(text: str, budget: int, embedder: Embedder) -> list[str]:
    """Split ``text`` into windows of at most ``budget`` word-pieces, at word starts."""
    spans = embedder.token_spans(text)
    out, start_tok = [], 0
    while start_tok < len(spans):
        end_tok = min(start_tok + budget, len(spans))
        if end_tok < len(spans):
            # back off to a word boundary so no word is split between two chunks
            cut = end_tok
            while cut > start_tok + 1 and spans[cut][0] == spans[cut - 1][1]:
                cut -= 1
            end_tok = cut if cut > start_tok + 1 else end_tok
        start_char = spans[start_tok][0]
        end_char = spans[end_tok - 1][1]
        piece = text[start_char:end_char].strip()
        if piece:
            out.append(piece)
        start_tok = end_tok
    return out


def _split_to_fit(text: str, budget: int, embedder: Embedder) -> list[tuple[str, int]]:
    """Pieces of ``text`` that each fit ``budget``: whole text, else sentences, else windows."""
    n = embedder.count_tokens(text)
    if n <= budget:
        return [(text, n)]
    out: list[tuple[str, int]] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        m = embedder.count_tokens(sentence)
        if m <= budget:
            out.append((sentence, m))
        else:
            out.extend(
                (w, embedder.count_tokens(w)) for w in _cut_by_tokens(sentence, budget, embedder)
            )
    return out


def _tail(text: str, tokens: int, embedder: Embedder) -> str:
    """The last ``tokens`` word-pieces of ``text``, starting at a word boundary."""
    if tokens <= 0:
        return ""
    spans = embedder.token_spans(text)
    if len(spans) <= tokens:
        return ""  # the whole chunk would repeat: no useful overlap
    i = len(spans) - tokens
    while i < len(spans) and i > 0 and spans[i][0] == spans[i - 1][1]:
        i += 1
    return text[spans[i][0] :].strip() if i < len(spans) else ""


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
            if embedder.count_tokens(head) > head_budget:
                head = _cut_by_tokens(head, head_budget, embedder)[0]
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
                overlap = _tail(body_text, cfg.overlap_tokens, embedder)
                current, used = [], 0
                if overlap:
                    n = embedder.count_tokens(overlap)
                    if n + piece.tokens <= budget:
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


class _ChunkFn(beam.DoFn):
    def __init__(self, chunking: ChunkingConfig, embedding: EmbeddingConfig):
        self._chunking, self._embedding = chunking, embedding

    def process(self, doc: Document) -> Iterator[ChunkedDocument]:
        try:
            chunks = chunk_document(doc, self._chunking, get_embedder(self._embedding))
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(
                ERRORS_TAG,
                ErrorRecord.from_exception(
                    "chunk", exc, doc_id=doc.doc_id, source_uri=doc.source_uri
                ),
            )
            return
        yield ChunkedDocument(document=doc, chunks=chunks)


class ChunkDocuments(beam.PTransform):
    """Document -> ChunkedDocument (``.chunked``), with ``.errors``."""

    def __init__(self, chunking: ChunkingConfig, embedding: EmbeddingConfig):
        super().__init__()
        self._chunking, self._embedding = chunking, embedding

    def expand(self, docs):
        return docs | "SplitIntoChunks" >> beam.ParDo(
            _ChunkFn(self._chunking, self._embedding)
        ).with_outputs(ERRORS_TAG, main="chunked")
