"""Shared fixtures: a real LanceDB in a temporary folder per test, small corpora on disk.

Unit and pipeline-logic tests use the FAKE embedder (``fake-hash``, named as such);
tests about embeddings load the real bundled all-MiniLM-L6-v2 and are marked ``slow``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from freshindex.config import load_config
from freshindex.runtime import prepare_offline
from freshindex.testing import DOCS  # the small corpus the query layer's test kit indexes too
from tests.objectstore import s3_bucket, s3_endpoint  # noqa: F401 (fixtures for all tests)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "corpus"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

prepare_offline()


def write_corpus(folder: Path, docs: dict[str, str] = DOCS) -> Path:
    for rel, text in docs.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def db_uri(tmp_path) -> str:
    return str(tmp_path / "lancedb")


@pytest.fixture
def fake_cfg(db_uri):
    """Config with the FAKE embedder and small chunks; a real LanceDB on a temp folder."""
    return load_config(
        overrides={
            "db": db_uri,
            "table": "docs",
            "embedding.model": "fake-hash",
            "chunking.max_tokens": 48,
            "chunking.overlap_tokens": 8,
        },
        environ={},
    )


@pytest.fixture
def real_cfg(db_uri):
    return load_config(overrides={"db": db_uri, "table": "docs"}, environ={})


@pytest.fixture
def sample_corpus(tmp_path) -> Path:
    """A writable copy of the committed demo corpus (md, html, pdf, docx, pptx)."""
    dest = tmp_path / "samples"
    shutil.copytree(SAMPLES, dest)
    for p in dest.iterdir():
        p.chmod(0o644)
    return dest


def table_rows(db_uri: str, table: str = "docs", version=None) -> list[dict]:
    from freshindex import store

    tbl = store.open_as_of(store.connect(db_uri), table, version)
    cols = ["chunk_id", "doc_id", "chunk_index", "text", "text_hash", "content_hash", "run_id"]
    return tbl.search().select(cols).limit(None).to_arrow().to_pylist()
