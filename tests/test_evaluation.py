"""Evaluation metrics (checked against pytrec_eval) and the eval / promotion-gate flow."""

from __future__ import annotations

import json
import random

import pytest

from freshindex import store
from freshindex.cli import main
from freshindex.evaluation import (
    compare,
    documents_from_hits,
    gate,
    load_beir,
    mrr_at_k,
    ndcg_at_k,
    recall_at_k,
    run_eval,
    score_query,
)


def test_metrics_match_pytrec_eval_on_random_graded_runs():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(5)
    docs = [f"d{i}" for i in range(60)]
    qrels, run = {}, {}
    for q in range(40):
        judged = {d: rng.choice([1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, 8))}
        if q % 7 == 0:
            judged[rng.choice(docs)] = 0  # judged non-relevant
        ranking = rng.sample(docs, 50)
        qrels[str(q)] = judged
        run[str(q)] = {d: float(50 - i) for i, d in enumerate(ranking)}
    evaluator = pytrec_eval.RelevanceEvaluator(
        qrels, {"ndcg_cut.10", "recall.10", "recall.100", "recip_rank"}
    )
    expected = evaluator.evaluate(run)
    for qid, scores in run.items():
        ranking = sorted(scores, key=scores.get, reverse=True)
        ours = score_query(ranking, qrels[qid])
        assert ours["ndcg@10"] == pytest.approx(expected[qid]["ndcg_cut_10"], abs=1e-9)
        assert ours["recall@10"] == pytest.approx(expected[qid]["recall_10"], abs=1e-9)
        assert ours["recall@100"] == pytest.approx(expected[qid]["recall_100"], abs=1e-9)
        rr = expected[qid]["recip_rank"]
        assert ours["mrr@10"] == pytest.approx(rr if rr >= 0.1 else 0.0, abs=1e-9)


def test_metric_edge_cases():
    assert ndcg_at_k(["a", "b"], {"b": 1}, 10) == pytest.approx(1 / 1.5849625, rel=1e-6)
    assert ndcg_at_k(["x"], {"a": 0}, 10) == 0.0
    assert recall_at_k(["a", "b", "c"], {"c": 2, "z": 1}, 2) == 0.0
    assert mrr_at_k(["x"] * 10 + ["a"], {"a": 1}, 10) == 0.0


def test_chunk_hits_become_a_document_ranking():
    class H:
        def __init__(self, doc_id, chunk_index=0):
            self.doc_id, self.chunk_index = doc_id, chunk_index

    hits = [H("a", 1), H("b"), H("a"), H("c", 2)]
    assert documents_from_hits(hits) == ["a", "b", "c"]
    assert documents_from_hits(hits, first_chunk_only=True) == ["b", "a"]


DOCS = {
    "aspirin": ("Aspirin", "Aspirin lowers fever and reduces the risk of heart attack."),
    "insulin": ("Insulin", "Insulin regulates blood glucose in diabetes patients."),
    "penicillin": ("Penicillin", "Penicillin is an antibiotic that kills bacteria."),
    "statins": ("Statins", "Statins lower LDL cholesterol levels in the blood."),
    "vaccines": ("Vaccines", "Vaccines train the immune system against viruses."),
    "sleep": ("Sleep", "Sleep deprivation impairs memory consolidation."),
}
QUERIES = {
    "q1": ("which antibiotic kills bacteria", {"penicillin": 1}),
    "q2": ("glucose regulation in diabetes", {"insulin": 2, "statins": 0}),
    "q3": ("cholesterol lowering LDL", {"statins": 1}),
    "q4": ("memory consolidation and sleep", {"sleep": 1}),
}


@pytest.fixture
def beir(tmp_path):
    folder = tmp_path / "tiny-beir"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, (title, text) in DOCS.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, (text, _) in QUERIES.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
        f.write(json.dumps({"_id": "unjudged", "text": "not in qrels"}) + "\n")
    with (folder / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, (_, judged) in QUERIES.items():
            for doc_id, score in judged.items():
                f.write(f"{qid}\t{doc_id}\t{score}\n")
    return folder


def test_load_beir_keeps_judged_queries(beir):
    ds = load_beir(beir, "test")
    assert set(ds.queries) == set(QUERIES)
    assert ds.qrels["q2"] == {"insulin": 2, "statins": 0}


def test_eval_ingests_incrementally_and_scores_every_mode(fake_cfg, beir):
    first = run_eval(fake_cfg, beir, log=lambda *_: None)
    assert set(first["modes"]) == {"vector", "fts", "hybrid"}
    fts = first["modes"]["fts"]
    assert fts["mean"]["recall@10"] == 1.0  # every query shares words with its document
    assert set(fts["per_query"]) == set(QUERIES)
    assert first["table_version"] == store.open_chunks(store.connect(fake_cfg.db), "docs").version
    again = run_eval(fake_cfg, beir, log=lambda *_: None)
    assert again["modes"]["fts"]["mean"] == fts["mean"]
    runs = [r for r in store.read_runs(store.connect(fake_cfg.db), "docs") if r["kind"] == "batch"]
    assert runs[-1]["chunks_embedded"] == 0  # the second eval re-embedded nothing
    diff = compare(again, first)
    assert all(d == 0 for d in diff["fts"]["delta"].values())


def test_fusion_is_tuned_on_one_split_by_re_fusing_cached_candidates(fake_cfg, beir):
    from freshindex.evaluation import tune_fusion

    run_eval(fake_cfg, beir, modes=["fts"], log=lambda *_: None)
    grid = {"rrf_k": (1, 60), "vector_weight": (0.0, 1.0)}
    tuned = tune_fusion(fake_cfg, beir, split="test", grid=grid, log=lambda *_: None)
    assert len(tuned["grid"]) == 4
    best = tuned["best"]
    assert best["ndcg@10"] == max(g["ndcg@10"] for g in tuned["grid"])
    assert tuned["options"] == {
        "rrf_k": best["rrf_k"],
        "weights": {"vector": best["vector_weight"], "fts": 1.0},
    }
    fts_only = next(g for g in tuned["grid"] if g["vector_weight"] == 0.0 and g["rrf_k"] == 60)
    assert fts_only["recall@10"] == 1.0  # weight 0 for vectors: the FTS ranking alone


def test_gate_promotes_only_without_regressions(fake_cfg, beir, tmp_path, capsys):
    import yaml

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(fake_cfg.to_dict()))
    args = ["eval", str(beir), "--config", str(cfg_path), "--modes", "fts", "--gate"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0  # first: becomes prod
    table = store.open_chunks(store.connect(fake_cfg.db), "docs")
    prod = table.tags.list()["prod"]["version"]
    # a worse corpus: the relevant document of q1 disappears
    corpus = beir / "corpus.jsonl"
    lines = [ln for ln in corpus.read_text().splitlines() if '"penicillin"' not in ln]
    corpus.write_text("\n".join(lines) + "\n")
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 1
    assert "not promoted" in capsys.readouterr().err
    table = store.open_chunks(store.connect(fake_cfg.db), "docs")
    assert table.tags.list()["prod"]["version"] == prod  # prod did not move
    new = json.loads((tmp_path / "b.json").read_text())
    old = json.loads((tmp_path / "a.json").read_text())
    ok, drops = gate(new, old, 0.005)
    assert not ok and ("fts", "recall@10", pytest.approx(-0.25)) in drops


# Duplicate-question style: every query is itself a corpus document, judged against another.
SELF_DOCS = {
    "d1": "How do I reverse a list in Python quickly",
    "d2": "Reversing a Python list: use slicing with a negative step",
    "d3": "How do I sort a dictionary by value in Python",
    "d4": "Sorting a Python dict by its values with sorted and a key",
}
SELF_QRELS = {"d1": "d2", "d3": "d4"}


@pytest.fixture
def self_retrieval_beir(tmp_path):
    folder = tmp_path / "dupes"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for doc_id, text in SELF_DOCS.items():
            f.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid in SELF_QRELS:
            f.write(json.dumps({"_id": qid, "text": SELF_DOCS[qid]}) + "\n")
    with (folder / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, doc_id in SELF_QRELS.items():
            f.write(f"{qid}\t{doc_id}\t1\n")
    return folder


def test_query_that_is_a_corpus_document_does_not_find_itself(
    fake_cfg, self_retrieval_beir, tmp_path
):
    """One ingest; then BEIR's protocol, the flag that turns it off, and the query embedder."""
    from dataclasses import replace

    import yaml

    from freshindex.evaluation import table_retriever

    quiet = dict(modes=["fts"], log=lambda *_: None)
    beir_protocol = run_eval(fake_cfg, self_retrieval_beir, **quiet)
    kept = run_eval(
        fake_cfg, self_retrieval_beir, ingest=False, ignore_identical_ids=False, **quiet
    )
    # each query's own text ranks itself first; BEIR leaves it out, so its duplicate is first
    assert beir_protocol["modes"]["fts"]["mean"]["mrr@10"] == 1.0
    assert kept["modes"]["fts"]["mean"]["mrr@10"] <= 0.5
    assert beir_protocol["settings"]["ignore_identical_ids"] is True
    assert kept["settings"]["ignore_identical_ids"] is False

    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(fake_cfg.to_dict()))
    args = ["eval", str(self_retrieval_beir), "--config", str(cfg_path), "--modes", "fts"]
    args += ["--no-ingest", "--keep-identical-ids", "--out", str(tmp_path / "kept.json")]
    assert main(args) == 0
    from_cli = json.loads((tmp_path / "kept.json").read_text())
    assert from_cli["modes"]["fts"]["mean"] == kept["modes"]["fts"]["mean"]

    # queries are embedded with the run's embedding settings, dtype included (a float32
    # table queried in bfloat16 is the MTEB reproduction's drift in docs/BENCHMARKS.md)
    embedding = replace(fake_cfg.embedding, dtype="float32")
    retrieve = table_retriever(fake_cfg.db, "docs", None, chunk_k=5, embedding=embedding)
    assert retrieve.pinned._embedding.dtype == "float32"  # type: ignore[attr-defined]


def test_identical_id_left_out_of_the_document_ranking():
    class H:
        def __init__(self, doc_id, chunk_index=0):
            self.doc_id, self.chunk_index = doc_id, chunk_index

    hits = [H("q"), H("a"), H("q", 1), H("b")]
    assert documents_from_hits(hits, ignore_id="q") == ["a", "b"]
    assert documents_from_hits(hits) == ["q", "a", "b"]


def test_the_mteb_check_reads_the_figure_the_benchmarks_document_gives():
    """scripts/check_mteb.py compares a recomputation with this figure: it must be there
    and be the one the retrieval table quotes."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("check_mteb", root / "scripts/check_mteb.py")
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    figure = check.documented_figure()
    table_row = next(
        line
        for line in (root / "docs" / "BENCHMARKS.md").read_text().splitlines()
        if line.startswith("| vector, MTEB protocol (first chunk")
    )
    assert f"**{figure:.4f}**" in table_row
