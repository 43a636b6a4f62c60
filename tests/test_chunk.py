import itertools

import pytest

from freshindex.config import ChunkingConfig, EmbeddingConfig
from freshindex.embedding import FakeHashEmbedder, get_embedder
from freshindex.schemas.records import Document, Element
from freshindex.transforms.chunk import chunk_document
from tests.conftest import SAMPLES
from tests.test_parse import parse_file


def doc_of(*elements, doc_id="d"):
    return Document(doc_id, "u", "h", "text/markdown", "t", None, tuple(elements))


def para(text, section=None):
    return Element(text=text, kind="NarrativeText", section=section)


def title(text):
    return Element(text=text, kind="Title", section=text)


FAKE = FakeHashEmbedder()


def test_chunks_stay_within_budget_and_start_with_their_section_title():
    words = " ".join(f"word{i}." for i in range(300))
    doc = doc_of(title("Intro"), para(words, "Intro"), title("Usage"), para("short one", "Usage"))
    chunks = chunk_document(doc, ChunkingConfig(max_tokens=40, overlap_tokens=8), FAKE)
    assert len(chunks) > 5
    assert all(c.token_count <= 40 for c in chunks)
    assert all(c.text.startswith("Intro\n") for c in chunks[:-1])
    assert chunks[-1].text == "Usage\nshort one"
    assert chunks[-1].section == "Usage"
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))


def test_consecutive_chunks_overlap():
    words = " ".join(f"w{i}" for i in range(200))
    chunks = chunk_document(
        doc_of(para(words)), ChunkingConfig(max_tokens=50, overlap_tokens=10), FAKE
    )
    for a, b in itertools.pairwise(chunks):
        tail = a.text.split()[-5:]
        assert " ".join(tail) in b.text


def test_chunk_ids_are_stable_and_distinct_for_repeated_text():
    doc = doc_of(para("same footer"), title("Next"), para("same footer"), doc_id="x")
    cfg = ChunkingConfig(max_tokens=20, overlap_tokens=0, section_titles=False)
    first = chunk_document(doc, cfg, FAKE)
    again = chunk_document(doc, cfg, FAKE)
    assert [c.chunk_id for c in first] == [c.chunk_id for c in again]
    assert len({c.chunk_id for c in first}) == len(first) == 2
    other_doc = chunk_document(doc_of(para("same footer"), doc_id="y"), cfg, FAKE)
    assert other_doc[0].chunk_id != first[0].chunk_id
    assert other_doc[0].text_hash == first[0].text_hash


def test_slides_with_only_titles_still_produce_chunks():
    chunks = chunk_document(doc_of(title("Slide one"), title("Slide two")), ChunkingConfig(), FAKE)
    assert "Slide one" in chunks[0].text and "Slide two" in chunks[0].text


@pytest.mark.slow
def test_no_real_document_exceeds_the_models_word_piece_limit():
    """Sized in MiniLM's own word-pieces: nothing is silently truncated at 256."""
    embedder = get_embedder(EmbeddingConfig())
    assert embedder.max_tokens == 254
    cfg = ChunkingConfig(max_tokens=254, overlap_tokens=32)
    for path in sorted(SAMPLES.iterdir()):
        chunks = chunk_document(parse_file(path), cfg, embedder)
        for c in chunks:
            assert embedder.count_tokens(c.text) == c.token_count <= 254, path.name
