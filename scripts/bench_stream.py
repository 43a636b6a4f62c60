"""Benchmark: the streaming pipeline's freshness and sustained throughput on this machine.

A Tansu broker (or $KAFKA_BOOTSTRAP_SERVERS) and the stream
(``python -m freshindex.pipelines.stream``
with the real bundled all-MiniLM-L6-v2 and default settings) run as separate processes.
This script produces ~1 KB documents (SciFact abstracts; each a new document, so every
message is parsed, chunked and embedded) at a fixed rate, and reads back what the stream
recorded with each commit (``stream_batches``).

1. **Steady**: ``--rate`` (20) docs/s for ``--seconds`` in ``--windows`` windows, each
   drained before the next, then one window at ``--light-rate``. Freshness = commit time
   - Kafka record timestamp, per message; p50/p99 per window, and their medians over the
   windows at ``--rate``.
2. **Ramp**: ``--step-seconds`` at ``--ramp-start`` docs/s, doubling while sustained
   (halving while not), then bisecting to within 25%. The consumer group's lag is sampled
   every second; a rate is sustained unless the mean lag over the step's last third
   exceeds the mean over its first third by more than 1.5 s of input (the lag is a
   sawtooth that drops at each commit, so single samples do not say much).
3. **Context**: the encoder's ceiling (plain ``encode`` of the same kind of chunks, in
   this process before the stream starts) and the stream's own chunks/s over its batches
   of >= 20 messages, so a shortfall can be told apart from a slow machine.

    python scripts/bench_stream.py [--corpus ../shared/data/scifact/corpus.jsonl]
        [--windows 3 --seconds 20] [--out .bench/stream.json] [--markdown FILE]

4. **Scale-out** (``--scale-out``, instead of 1-3): the sustained docs/s at the freshness
   goal (p99 <= ``--goal-p99`` s, 5) of 1 stream process and of 2 processes in one consumer
   group (``--membership group``), with the table on local disk and on an S3-compatible
   server (moto, started here), ``--repeats`` times each, interleaved, so the ratios compare
   runs made under the same load. A rate step passes when the freshness p99 of the messages
   produced in it, once drained, meets the goal; rates double while they pass, then bisect.

    python scripts/bench_stream.py --scale-out [--repeats 2] [--step-seconds 15]
        [--storages local,s3] [--processes 1,2] [--split-cores] [--out FILE.json]
        [--markdown FILE.md]

   ``--split-cores`` gives each of several processes its share of the cores
   (``OMP_NUM_THREADS``): torch otherwise starts as many threads as there are cores in each.

Why one script of ~450 lines: the broker, the producer at a fixed rate, the stream process
and the report must be started, timed and stopped together to measure freshness.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_CORPUS = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"


def documents(corpus: Path, n: int, size: int = 1000):
    """~``size``-character texts: SciFact abstracts cut at a word, else synthetic text."""
    out = []
    if corpus.is_file():
        with corpus.open() as handle:
            for line in handle:
                rec = json.loads(line)
                text = rec["text"]
                if len(text) < size:
                    continue
                out.append((rec.get("title") or "", text[:size].rsplit(" ", 1)[0] + "."))
                if len(out) >= n:
                    break
    while len(out) < n:  # no corpus here: deterministic filler of the same size
        i = len(out)
        words = " ".join(f"term{(i * 7 + j) % 997}" for j in range(size // 8))
        out.append((f"Synthetic {i}", words[:size]))
    return out


class Producer:
    """Sends documents at a fixed rate from a thread, each a new document id."""

    def __init__(self, bootstrap: str, topic: str, docs):
        from kafka import KafkaProducer

        from freshindex.schemas.messages import encode_message

        self._encode = encode_message
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
        self._topic, self._docs, self._next = topic, docs, 0
        self.sent = 0

    def run(self, rate: float, seconds: float) -> int:
        start, n = time.monotonic(), int(rate * seconds)
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            title, text = self._docs[self._next % len(self._docs)]
            key, value = self._encode(f"bench-{self._next}", text=text, title=title)
            self._producer.send(self._topic, key=key, value=value)
            self._next += 1
        self._producer.flush()
        self.sent += n
        return n

    def close(self) -> None:
        self._producer.close()


def next_rate(lo: float | None, hi: float | None, max_rate: float) -> float | None:
    """Double while sustained, halve while not, then bisect to within 25%."""
    if hi is None:
        return lo * 2 if lo * 2 <= max_rate else None
    if lo is None:
        return hi / 2 if hi / 2 >= 0.5 else None
    return (lo + hi) / 2 if hi - lo > max(1.0, 0.25 * lo) else None


def encode_ceiling(cfg, docs, n: int = 48) -> tuple[float, float]:
    """(chunks/s of plain ``encode`` on the chunk texts of ``n`` documents, chunks per
    document); measured here, before the stream starts, so nothing else of ours runs."""
    from freshindex.embedding import get_embedder
    from freshindex.schemas.records import Document
    from freshindex.transforms.chunking import chunk_document
    from freshindex.transforms.parsing import elements_from_record

    embedder = get_embedder(cfg.embedding)
    texts = []
    for i, (title, text) in enumerate(docs[:n]):
        doc = Document(str(i), "", "", "text/plain", title, None, elements_from_record(title, text))
        texts.extend(c.text for c in chunk_document(doc, cfg.chunking, embedder))
    # the first pass warms up (bfloat16 kernels are compiled per input shape); best of two
    rates = []
    for _ in range(3):
        started = time.monotonic()
        embedder.encode(texts)
        rates.append(len(texts) / (time.monotonic() - started))
    return max(rates[1:]), len(texts) / n


class LagSampler:
    """Samples the group's lag every second from a thread, with its own Kafka client."""

    def __init__(self, spec, tps):
        import threading

        from freshindex.transforms.kafka_io import KafkaOffsets

        self._offsets, self._tps = KafkaOffsets(spec), tps
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), lag(self._offsets, self._tps)))
            self._stop.wait(1.0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join()
        self._offsets.close()

    def growth(self, start: float, end: float) -> float:
        """Mean lag over the last third of [start, end] minus the mean over the first third:
        averages, because the lag is a sawtooth (it drops at each commit)."""
        third = (end - start) / 3
        first = [v for t, v in self.samples if start <= t <= start + third]
        last = [v for t, v in self.samples if end - third <= t <= end]
        if not first or not last:
            return 0.0
        return float(np.mean(last) - np.mean(first))


def lag(offsets, tps) -> int:
    committed = offsets.committed(tps)
    ends = offsets.log_end(tps)
    return sum(ends[tp] - (committed[tp] or 0) for tp in tps)


def batches_between(db_uri: str, table: str, start: dt.datetime, end: dt.datetime):
    from freshindex import store

    rows = store.read_stream_batches(store.connect(db_uri), table_name=table)
    return [r for r in rows if start <= r["committed_at"] <= end]


def wait_until(predicate, timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the stream exited ({proc.returncode}) before {what}")
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores (shared, noisy), load {load:.1f} at start"


class Streams:
    """``n`` stream processes on one table and topic; with n > 1 they share its partitions
    as one consumer group (``--membership group``)."""

    def __init__(self, n: int, cfg_file: Path, bootstrap: str, topic: str, work: Path, env):
        self.procs, self.logs = [], []
        for i in range(n):
            log_file = (work / f"stream-{i}.log").open("w")
            command = [sys.executable, "-m", "freshindex.pipelines.stream", "--streaming"]
            command += ["--config", str(cfg_file), "--topics", topic]
            command += ["--kafka_bootstrap_servers", bootstrap, "--run_id", f"member{i}"]
            # a group of its own per case: a broker may hold a used group's join for long
            command += ["--group_id", f"bench-{topic}"]
            if n > 1:
                command += ["--membership", "group"]
            self.procs.append(
                subprocess.Popen(
                    command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
                )
            )
            self.logs.append(log_file)

    def check(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"a stream process exited ({proc.returncode})")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log_file in self.logs:
            log_file.close()


def table_offsets(db_uri: str, table: str, group: str) -> dict:
    from freshindex import store

    return store.read_stream_offsets(store.connect(db_uri), table, group)


def scale_out_case(args, docs, bootstrap, storage: str, n: int, env, work: Path) -> dict:
    """The sustained docs/s at the freshness goal of ``n`` processes on ``storage``."""
    from kafka import TopicPartition

    from freshindex.config import load_config
    from freshindex.kafka_broker import create_topic
    from freshindex.transforms.kafka_io import KafkaOffsets, KafkaSpec

    case = f"{storage}-{n}-{int(time.time() * 1000) % 10**8}"
    work = work / case
    work.mkdir(parents=True)
    if storage == "s3":
        import boto3

        bucket = f"bench-{case}".lower()
        boto3.client("s3").create_bucket(Bucket=bucket)
        db = f"s3://{bucket}/lancedb"
    else:
        db = str(work / "lancedb")
    cfg = load_config(overrides={"db": db, "table": "bench", "embedding.dtype": args.dtype})
    cfg_file = work / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    topic = f"scale-{case}"
    create_topic(bootstrap, topic, partitions=args.partitions)
    group = f"bench-{topic}"
    tps = [TopicPartition(topic, p) for p in range(args.partitions)]
    ends = KafkaOffsets(KafkaSpec(bootstrap, (topic,), "bench-probe"))
    producer = Producer(bootstrap, topic, docs)

    def drained() -> bool:
        time.sleep(0.8)  # each look reads the table's stream_batches: not too often (on S3)
        logged = ends.log_end(tps)
        recorded = table_offsets(db, cfg.table, group)
        return all(recorded.get((tp.topic, tp.partition), 0) >= end for tp, end in logged.items())

    if n > 1 and args.split_cores:  # each member gets its share of the cores
        env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // n))}
    streams = Streams(n, cfg_file, bootstrap, topic, work, env)
    steps = []
    try:
        # warm-up: every process loads the model, joins and commits once
        producer.run(4, 4)
        wait_until(drained, 600, "the warm-up to drain", None)
        started = {
            b["run_id"]
            for b in batches_between(
                db, cfg.table, dt.datetime.min.replace(tzinfo=dt.UTC), dt.datetime.now(dt.UTC)
            )
        }
        if len(started) < n:
            producer.run(4, 4)
            wait_until(drained, 600, "every process to commit", None)
        rate, lo, hi = args.ramp_start, None, None
        while rate and len(steps) < args.max_steps:
            streams.check()
            t0 = dt.datetime.now(dt.UTC)
            producer.run(rate, args.step_seconds)
            wait_until(drained, 900, "the step to drain", None)
            rows = batches_between(db, cfg.table, t0, dt.datetime.now(dt.UTC))
            fresh = [f for r in rows for f in r["freshness_ms"]]
            p99 = float(np.percentile(fresh, 99)) / 1000 if fresh else float("inf")
            step = {
                "rate": round(rate, 2),
                "messages": len(fresh),
                "p50_s": round(float(np.percentile(fresh, 50)) / 1000, 2) if fresh else None,
                "p99_s": round(p99, 2),
                "members": len({r["run_id"] for r in rows}),
                "passes": p99 <= args.goal_p99,
            }
            steps.append(step)
            print(f"  {storage} x{n}: {json.dumps(step)}", flush=True)
            if step["passes"]:
                lo = rate
            else:
                hi = rate
            rate = next_rate(lo, hi, args.max_rate)
            time.sleep(1)
    finally:
        ends.close()
        producer.close()
        streams.stop()
    best = max((s for s in steps if s["passes"]), key=lambda s: s["rate"], default=None)
    return {
        "storage": storage,
        "processes": n,
        "sustained_docs_per_s": best["rate"] if best else 0.0,
        "p50_s": best["p50_s"] if best else None,
        "p99_s": best["p99_s"] if best else None,
        "steps": steps,
    }


def start_s3() -> tuple[subprocess.Popen, dict]:
    """moto's S3 server on loopback; the environment that points clients at it."""
    sys.path.insert(0, str(ROOT))
    from tests.objectstore import s3_environment, start_moto

    server, endpoint = start_moto()
    env = s3_environment(endpoint)
    os.environ.update(env)
    return server, {**os.environ, **env}


def scale_out(args, docs, started: float, host: str) -> dict:
    from freshindex.kafka_broker import kafka_for_tests

    storages = [s for s in args.storages.split(",") if s]
    counts = [int(n) for n in args.processes.split(",") if n]
    work = ROOT / ".bench" / f"stream-scale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    work.mkdir(parents=True, exist_ok=True)
    server, env = (None, dict(os.environ))
    if "s3" in storages:
        server, env = start_s3()
    cases = []
    try:
        with kafka_for_tests() as bootstrap:
            for repeat in range(args.repeats):
                for storage in storages:
                    for n in counts:
                        print(f"repeat {repeat + 1}: {storage}, {n} process(es)", flush=True)
                        case = scale_out_case(args, docs, bootstrap, storage, n, env, work)
                        case["repeat"] = repeat + 1
                        cases.append(case)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    summary = []
    for storage in storages:
        for n in counts:
            mine = [c for c in cases if c["storage"] == storage and c["processes"] == n]
            rates = [c["sustained_docs_per_s"] for c in mine]
            ratios = []
            for c in mine:  # against the 1-process run of the same repeat
                one = [
                    o
                    for o in cases
                    if o["storage"] == storage
                    and o["processes"] == counts[0]
                    and o["repeat"] == c["repeat"]
                ]
                if one and one[0]["sustained_docs_per_s"]:
                    ratios.append(c["sustained_docs_per_s"] / one[0]["sustained_docs_per_s"])
            row = {
                "storage": storage,
                "processes": n,
                "sustained_docs_per_s": rates,
                "median": statistics.median(rates) if rates else None,
                "ratio_median": round(statistics.median(ratios), 2) if ratios else None,
            }
            summary.append(row)
    return {
        "machine": host,
        "settings": vars(args) | {"corpus": str(args.corpus)},
        "cases": cases,
        "summary": summary,
        "seconds": round(time.time() - started, 1),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python scripts/bench_stream.py " + " ".join(sys.argv[1:]),
    }


def scale_out_report(r: dict) -> str:
    lines = [
        f"Run {r['date']} on {r['machine']}; {r['seconds']:.0f} s in all.",
        f"`{r['command']}`",
        "",
        f"| storage | processes | sustained docs/s at p99 <= {r['settings']['goal_p99']:g} s "
        "(per repeat) | median | vs 1 process (same repeat, median) |",
        "|---|---|---|---|---|",
    ]
    for row in r["summary"]:
        lines.append(
            f"| {row['storage']} | {row['processes']} | "
            f"{', '.join(f'{x:g}' for x in row['sustained_docs_per_s'])} | "
            f"**{row['median']:g}** | {row['ratio_median']}x |"
        )
    lines += ["", "| case | rate | messages | p50 | p99 | passes |", "|---|---|---|---|---|---|"]
    for c in r["cases"]:
        for s in c["steps"]:
            lines.append(
                f"| {c['storage']} x{c['processes']} (#{c['repeat']}) | {s['rate']:g} | "
                f"{s['messages']} | {s['p50_s']} s | {s['p99_s']} s | "
                f"{'yes' if s['passes'] else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    from freshindex.config import EMBEDDING_DTYPES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rate", type=float, default=20.0, help="steady docs/s")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="per steady window")
    parser.add_argument("--light-rate", type=float, default=5.0, help="one more window at this")
    parser.add_argument("--step-seconds", type=float, default=20.0, help="per ramp step")
    parser.add_argument("--ramp-start", type=float, default=5.0)
    parser.add_argument("--max-rate", type=float, default=320.0)
    parser.add_argument("--batch-interval", type=float, default=0.5)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2 windows of 15 s, 10 s steps")
    parser.add_argument(
        "--dtype",
        choices=EMBEDDING_DTYPES,
        help="embedding.dtype (default: the config's, auto)",
    )
    parser.add_argument("--scale-out", action="store_true", help="1 vs 2 processes (4.)")
    parser.add_argument("--storages", default="local,s3", help="scale-out: local,s3")
    parser.add_argument("--processes", default="1,2", help="scale-out: process counts")
    parser.add_argument("--repeats", type=int, default=2, help="scale-out: runs of each")
    parser.add_argument("--goal-p99", type=float, default=5.0, help="scale-out: seconds")
    parser.add_argument("--max-steps", type=int, default=6, help="scale-out: per case")
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="scale-out: OMP_NUM_THREADS = cores / processes for each of several processes",
    )
    parser.add_argument("--out", type=Path, default=None, help="write results JSON here")
    parser.add_argument("--markdown", type=Path, default=None, help="write a report here")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.seconds, args.step_seconds = 2, 15.0, 10.0

    from kafka import TopicPartition

    from freshindex.config import load_config
    from freshindex.kafka_broker import create_topic, kafka_for_tests
    from freshindex.transforms.kafka_io import KafkaOffsets, KafkaSpec

    started = time.time()
    host = machine()
    if args.scale_out:
        if args.partitions < 4:
            args.partitions = 4  # two members get two partitions each
        results = scale_out(args, documents(args.corpus, 5000), started, host)
        print(json.dumps(results["summary"], indent=2))
        write_results(args, results, scale_out_report)
        return 0
    work = ROOT / ".bench" / f"stream-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        overrides={
            "db": str(work / "lancedb"),
            "table": "bench",
            "embedding.dtype": args.dtype,
        }
    )
    cfg_file = work / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    total = int(args.rate * args.seconds * args.windows + 2 * args.max_rate * args.step_seconds)
    docs = documents(args.corpus, min(total + 50, 5000))
    from freshindex.embedding import resolve_dtype

    dtype = resolve_dtype(cfg.embedding.dtype, cfg.embedding.device)
    settings = vars(args) | {"corpus": str(args.corpus), "dtype": cfg.embedding.dtype}
    results: dict = {"machine": host, "settings": settings, "dtype_resolved": dtype}
    ceiling, chunks_per_doc = encode_ceiling(cfg, docs)
    results["encode_ceiling"] = {
        "chunks_per_s": round(ceiling, 1),
        "chunks_per_doc": round(chunks_per_doc, 2),
        "docs_per_s": round(ceiling / chunks_per_doc, 1),
    }
    print(f"encode ceiling: {json.dumps(results['encode_ceiling'])}", flush=True)

    with kafka_for_tests() as bootstrap:
        topic = f"bench-{int(started)}"
        create_topic(bootstrap, topic, partitions=args.partitions)
        log_file = (work / "stream.log").open("w")
        launch = ["-m", "freshindex.pipelines.stream"]
        command = [
            sys.executable,
            *launch,
            "--streaming",
            "--config",
            str(cfg_file),
            "--topics",
            topic,
            "--kafka_bootstrap_servers",
            bootstrap,
            "--batch_interval_s",
            str(args.batch_interval),
        ]
        stream = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        producer = Producer(bootstrap, topic, docs)
        spec = KafkaSpec(bootstrap, (topic,), f"freshindex-{cfg.table}")
        offsets = KafkaOffsets(spec)
        tps = [TopicPartition(topic, p) for p in range(args.partitions)]
        try:
            # warm-up: the stream loads the model and builds the indexes on its first batch
            producer.run(args.rate, 2)
            wait_until(lambda: lag(offsets, tps) == 0, 300, "the warm-up batch", stream)
            time.sleep(2)

            windows = []
            rates = [args.rate] * args.windows + ([args.light_rate] if args.light_rate else [])
            for w, rate in enumerate(rates):
                t0 = dt.datetime.now(dt.UTC)
                producer.run(rate, args.seconds)
                wait_until(lambda: lag(offsets, tps) == 0, 900, "the window to drain", stream)
                t1 = dt.datetime.now(dt.UTC)
                rows = batches_between(cfg.db, cfg.table, t0, t1)
                fresh = [f for r in rows for f in r["freshness_ms"]]
                sizes = [r["messages"] for r in rows if r["messages"]]
                windows.append(
                    {
                        "rate": rate,
                        "messages": len(fresh),
                        "batches": len(sizes),
                        "batch_size_median": statistics.median(sizes) if sizes else 0,
                        "freshness_p50_s": float(np.percentile(fresh, 50)) / 1000,
                        "freshness_p99_s": float(np.percentile(fresh, 99)) / 1000,
                        "freshness_max_s": max(fresh) / 1000,
                        "batch_seconds_median": statistics.median(
                            r["duration_ms"] / 1000 for r in rows if r["messages"]
                        ),
                    }
                )
                print(f"steady window {w + 1}: {json.dumps(windows[-1])}", flush=True)
                time.sleep(1)
            at_rate = [x for x in windows if x["rate"] == args.rate]
            light = [x for x in windows if x["rate"] != args.rate]
            results["steady"] = {
                "rate": args.rate,
                "windows": windows,
                "freshness_p50_s": statistics.median(x["freshness_p50_s"] for x in at_rate),
                "freshness_p99_s": statistics.median(x["freshness_p99_s"] for x in at_rate),
                "light": light[0] if light else None,
            }

            steps, rate, lo, hi = [], args.ramp_start, None, None
            while rate and len(steps) < 6:
                before = sum((offsets.committed(tps)[tp] or 0) for tp in tps)
                t0 = time.monotonic()
                with LagSampler(spec, tps) as sampler:
                    producer.run(rate, args.step_seconds)
                produce_s = time.monotonic() - t0
                growth = sampler.growth(t0, t0 + produce_s)
                done = sum((offsets.committed(tps)[tp] or 0) for tp in tps) - before
                step = {
                    "rate": round(rate, 2),
                    "produced_per_s": round(args.step_seconds * rate / produce_s, 1),
                    "committed_per_s": round(done / (time.monotonic() - t0), 1),
                    "lag_at_end": sampler.samples[-1][1] if sampler.samples else None,
                    "lag_growth": round(growth, 1),
                    "sustained": growth <= 1.5 * rate,
                }
                steps.append(step)
                print(f"ramp: {json.dumps(step)}", flush=True)
                wait_until(lambda: lag(offsets, tps) == 0, 900, "the step to drain", stream)
                if step["sustained"]:
                    lo = rate
                else:
                    hi = rate
                rate = next_rate(lo, hi, args.max_rate)
            sustained = lo
            overloaded = [s for s in steps if not s["sustained"]]
            results["ramp"] = {
                "steps": steps,
                "max_sustained_docs_per_s": sustained,
                "capacity_docs_per_s": overloaded[0]["committed_per_s"] if overloaded else None,
            }
        finally:
            offsets.close()
            producer.close()
            stream.send_signal(signal.SIGTERM)
            try:
                stream.wait(timeout=120)
            except subprocess.TimeoutExpired:
                stream.kill()
            log_file.close()
    from freshindex import store

    rows = store.read_stream_batches(store.connect(cfg.db), table_name=cfg.table)
    busy = [r for r in rows if r["messages"] >= 20]
    if busy:
        seconds = sum(r["duration_ms"] for r in busy) / 1000
        results["stream_busy"] = {
            "batches": len(busy),
            "chunks_per_s": round(sum(r["chunks_embedded"] for r in busy) / seconds, 1),
            "docs_per_s": round(sum(r["messages"] for r in busy) / seconds, 1),
        }
    summary = (work / "stream.log").read_text().split("stream run ")[-1].splitlines()[:3]
    results["stream_summary"] = "stream run " + "\n".join(summary)
    results["seconds"] = round(time.time() - started, 1)
    results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["command"] = "python scripts/bench_stream.py " + " ".join(sys.argv[1:])
    print(json.dumps(results, indent=2, default=str))
    write_results(args, results, report)
    return 0


def write_results(args, results: dict, render) -> None:
    """``--out`` (JSON) and ``--markdown`` (``render(results)``), where asked for."""
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
    if args.markdown:
        args.markdown.write_text(render(results))


def report(r: dict) -> str:
    steady, ramp, busy = r["steady"], r["ramp"], r.get("stream_busy") or {}
    lines = [
        "| window | docs/s | messages | batches | median batch | p50 | p99 | max | batch time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, w in enumerate(steady["windows"], 1):
        lines.append(
            f"| {i} | {w['rate']:g} | {w['messages']} | {w['batches']} | "
            f"{w['batch_size_median']:g} | "
            f"{w['freshness_p50_s']:.2f} s | {w['freshness_p99_s']:.2f} s | "
            f"{w['freshness_max_s']:.2f} s | {w['batch_seconds_median']:.2f} s |"
        )
    steps = ["| rate (docs/s) | produced/s | committed/s | lag at end | lag growth/s | sustained |"]
    steps.append("|---|---|---|---|---|---|")
    for s in ramp["steps"]:
        steps.append(
            f"| {s['rate']:g} | {s['produced_per_s']} | {s['committed_per_s']} | "
            f"{s['lag_at_end']} | {s['lag_growth']} | {'yes' if s['sustained'] else 'no'} |"
        )
    dtype = f" Encoder: `embedding.dtype: {r['settings']['dtype']}` = {r['dtype_resolved']}."
    return "\n".join(
        [
            f"Run {r['date']} on {r['machine']}; {r['seconds']:.0f} s in all.{dtype}",
            f"`{r['command']}`",
            "",
            f"**Steady {steady['rate']:g} docs/s** (~1 KB each): freshness p50 "
            f"**{steady['freshness_p50_s']:.2f} s**, p99 **{steady['freshness_p99_s']:.2f} s** "
            "(medians over windows).",
            "",
            *lines,
            "",
            f"**Ramp**: max sustained **{ramp['max_sustained_docs_per_s']} docs/s**; "
            f"committed while overloaded: {ramp['capacity_docs_per_s']} docs/s.",
            "",
            f"Encoder ceiling measured in the same run (plain `encode` of the same kind of "
            f"chunks): {r['encode_ceiling']['chunks_per_s']} chunks/s = "
            f"{r['encode_ceiling']['docs_per_s']} docs/s at "
            f"{r['encode_ceiling']['chunks_per_doc']} chunks/doc. The stream's batches of "
            f">= 20 messages ran at {busy.get('chunks_per_s')} chunks/s "
            f"({busy.get('docs_per_s')} docs/s) of batch time.",
            "",
            *steps,
            "",
            "```",
            r["stream_summary"],
            "```",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
