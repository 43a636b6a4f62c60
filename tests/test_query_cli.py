"""``freshindex search | ask | agent`` in-process, on the fixture index (FAKE embedder)."""

from __future__ import annotations

import json

import pytest
import yaml

from freshindex import store
from freshindex.cli import main
from freshindex.testing import fixture_index


@pytest.fixture(scope="module")
def base_args(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("cli")
    qcfg = folder / "query.yaml"
    qcfg.write_text(yaml.safe_dump({"gateway": {"cache": {"path": str(folder / "c.sqlite")}}}))
    db = str(fixture_index("fake-hash") / "lancedb")
    return ["--db", db, "--table", "docs", "--query-config", str(qcfg)]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_json(capsys, base_args):
    code, out, _ = run(capsys, "search", "digest password", *base_args, "--json", "-k", "2")
    body = json.loads(out)
    assert code == 0 and body["hits"][0]["doc_id"] == "guide/auth.md" and len(body["hits"]) == 2
    assert body["mode"] == "hybrid" and body["table_version"] >= 1


def test_search_text_with_mode_filter_and_as_of(capsys, base_args):
    db = store.connect(base_args[1])
    first = next(r for r in store.read_runs(db, "docs") if r["kind"] == "batch")
    code, out, _ = run(
        capsys, "search", "duck", *base_args, "--mode", "fts", "--as-of", first["run_id"]
    )
    assert code == 0 and f"fts search on docs version {first['table_version']}" in out
    assert "notes/ducks.md" in out and "papers/" not in out  # the records came in run 2
    code, out, _ = run(
        capsys, "search", "duck", *base_args, "--filter", "doc_id prefix papers/", "--json"
    )
    assert {h["doc_id"] for h in json.loads(out)["hits"]} <= {"papers/aspirin", "papers/ibuprofen"}


def test_ask_prints_answer_sources_and_accounting(capsys, base_args):
    question = "How does digest authentication treat the password?"
    code, out, err = run(capsys, "ask", question, *base_args)
    assert code == 0 and "hashes the password first" in out and "sources:" in out
    assert "model calls: 1 (1 ok, 0 failed, 0 cached)" in err
    code, out, err = run(capsys, "ask", question, *base_args, "--json")
    assert json.loads(out)["cached"] is True and "1 cached" in err  # the cache file persists


def test_agent_prints_the_trace(capsys, base_args):
    code, out, _ = run(capsys, "agent", "What is 6*7? Which duck is common?", *base_args)
    assert code == 0 and "6*7 = 42" in out and "trace (deterministic planner" in out
    assert "calculate" in out and "search" in out


def test_errors_exit_2_with_a_hint(capsys, base_args):
    code, _, err = run(capsys, "search", "duck", *base_args, "--filter", "text = x")
    assert code == 2 and "unknown filter field" in err and "hint:" in err
    code, _, err = run(capsys, "search", "duck", *base_args, "--as-of", "no-such-run")
    assert code == 2 and "no version, tag or run" in err
