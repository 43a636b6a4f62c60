"""Benchmark: how wall time and peak memory of a batch ingest grow with the corpus.

Two series, each size in a fresh ``freshindex ingest`` process into an empty database,
then the same command again unchanged (the incremental re-run):

- the pipeline's own overhead: N small documents (a generated JSONL corpus of
  ~800-character records) with the deterministic fake embedder (``fake-hash``);
- the real model (all-MiniLM-L6-v2) on the first N SciFact abstracts, on 1 and 2 Beam
  workers (``--direct_num_workers``; 2 runs ``multi_processing``).

The resident memory (RSS) of every process of the run's tree is sampled every
``--interval`` seconds; the table lists the peak of each role (the launching process, in
which the in-process DirectRunner also runs the commit; Beam SDK workers; parse workers)
and of the whole tree. It prints a table, writes ``--json`` and plots ``--plot``.

    python scripts/bench_scale.py --sizes 10000 100000 1000000 --scifact 1000 5000
    python scripts/bench_scale.py --sizes 10000 --scifact         # a quick run
    python scripts/bench_scale.py --baseline ../main ...          # before/after, same run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SCIFACT = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
RECORD_CHARS = 800
TABLE = "scale"


def generate_corpus(path: Path, n: int, seed: int = 13) -> None:
    """``n`` JSONL records of about RECORD_CHARS characters each, deterministic for a seed.
    Words come from a fixed vocabulary so the text looks like prose to the chunker."""
    rng = random.Random(seed)
    vocab = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
        for _ in range(5000)
    ]
    with path.open("w") as out:
        for i in range(n):
            words, size = [], 0
            while size < RECORD_CHARS:
                word = vocab[rng.randrange(len(vocab))]
                words.append(word)
                size += len(word) + 1
            record = {"_id": f"doc-{i:07d}", "title": f"Record {i}", "text": " ".join(words)}
            out.write(json.dumps(record) + "\n")


def first_records(source: Path, path: Path, n: int) -> int:
    """The first ``n`` records of a JSONL file into ``path``; returns how many there were."""
    count = 0
    with source.open() as src, path.open("w") as out:
        for line in src:
            if count >= n:
                break
            out.write(line)
            count += 1
    return count


def role_of(proc: psutil.Process, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "launcher"
    try:
        cmdline = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "other"
    if "sdk_worker_main" in cmdline or "worker_pool_main" in cmdline:
        return "beam_worker"
    if "multiprocessing" in cmdline or "parse" in cmdline:
        return "parse_worker"
    return "other"


@dataclass
class TreeSampler:
    """Peak RSS per process (and per role) of a process tree, sampled in a thread."""

    root_pid: int
    interval: float
    peaks: dict[int, tuple[str, int]] = field(default_factory=dict)
    tree_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            role, peak = self.peaks.get(proc.pid) or (role_of(proc, self.root_pid), 0)
            self.peaks[proc.pid] = (role, max(peak, rss))
        self.tree_peak = max(self.tree_peak, total)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> None:
        self._stop.set()

    def by_role(self) -> dict[str, int]:
        roles: dict[str, int] = {}
        for role, peak in self.peaks.values():
            roles[role] = max(roles.get(role, 0), peak)
        return roles


@dataclass
class Measurement:
    series: str
    docs: int
    workers: int
    run: str  # "first" | "rerun"
    wall_s: float
    tree_peak_mb: float
    roles_mb: dict[str, float]
    chunks_written: int
    commit_s: float | None
    upkeep_s: float | None = None


def ingest(corpus: Path, db: Path, env: dict, workers: int, interval: float) -> Measurement:
    """One ``freshindex ingest`` in a fresh process (from the checkout on ``env``'s
    PYTHONPATH), its process tree's RSS sampled while it runs."""
    beam = []
    if workers > 1:
        beam = [
            "--direct_num_workers",
            str(workers),
            "--direct_running_mode",
            "multi_processing",
        ]
    cmd = [sys.executable, "-m", "freshindex.cli", "ingest", str(corpus.resolve())]
    cmd += ["--db", str(db), "--table", TABLE, "--json", "--verbose", *beam]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=env["PYTHONPATH"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = TreeSampler(proc.pid, interval)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    sampler.stop()
    thread.join()
    if proc.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"ingest failed ({proc.returncode}): {' '.join(cmd)}")
    row = json.loads(out[out.index("{") :])
    commit_s = upkeep_s = None
    for line in err.splitlines():
        if "commit step took" in line:
            commit_s = float(line.rsplit("took", 1)[1].strip().rstrip("s"))
        if "freshindex.batch: maintained" in line:
            upkeep_s = float(line.split(" in ", 1)[1].split("s ", 1)[0])
    return Measurement(
        series="",
        docs=0,
        workers=workers,
        run="",
        wall_s=round(wall, 2),
        tree_peak_mb=round(sampler.tree_peak / 2**20, 1),
        roles_mb={r: round(v / 2**20, 1) for r, v in sorted(sampler.by_role().items())},
        chunks_written=int(row["chunks_written"]),
        commit_s=commit_s,
        upkeep_s=upkeep_s,
    )


def measure(series, corpus, docs, env, workers, interval, workdir) -> list[Measurement]:
    db = workdir / f"db-{series}-{docs}-{workers}"
    shutil.rmtree(db, ignore_errors=True)
    results = []
    for run in ("first", "rerun"):
        m = ingest(corpus, db, env, workers, interval)
        m.series, m.docs, m.run = series, docs, run
        results.append(m)
        print(format_row(m), flush=True)
    shutil.rmtree(db, ignore_errors=True)
    return results


HEADER = (
    "| series | docs | workers | run | wall s | tree peak MB | launcher MB | "
    "largest beam worker MB | chunks written | commit s | upkeep s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def format_row(m: Measurement) -> str:
    worker = m.roles_mb.get("beam_worker")
    return (
        f"| {m.series} | {m.docs:,} | {m.workers} | {m.run} | {m.wall_s:.1f} | "
        f"{m.tree_peak_mb:,.0f} | {m.roles_mb.get('launcher', 0):,.0f} | "
        f"{'-' if worker is None else f'{worker:,.0f}'} | {m.chunks_written:,} | "
        f"{'-' if m.commit_s is None else f'{m.commit_s:.1f}'} | "
        f"{'-' if m.upkeep_s is None else f'{m.upkeep_s:.1f}'} |"
    )


def plot(results: list[Measurement], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 6.2))
    series = sorted({(m.series, m.workers, m.run) for m in results})
    for name, workers, run in series:
        points = sorted(
            (m for m in results if (m.series, m.workers, m.run) == (name, workers, run)),
            key=lambda m: m.docs,
        )
        label = f"{name}, {workers} worker{'s' if workers > 1 else ''}, {run}"
        style = "-o" if run == "first" else "--s"
        docs = [m.docs for m in points]
        ax_t.plot(docs, [m.wall_s for m in points], style, label=label)
        ax_m.plot(docs, [max(m.roles_mb.values()) for m in points], style, label=label)
    for ax, ylabel in ((ax_t, "wall time (s)"), (ax_m, "peak RSS of the largest process (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("documents")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8)
    fig.suptitle("freshindex batch ingest: growth with the corpus (scripts/bench_scale.py)")
    fig.tight_layout(rect=(0, 0.22, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--scifact", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--scifact-corpus",
        type=Path,
        default=Path(os.environ.get("FRESHINDEX_SCIFACT_CORPUS", DEFAULT_SCIFACT)),
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. the main branch) measured on --baseline-sizes in the "
        "same run, as series 'fake-hash (baseline)'",
    )
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--interval", type=float, default=0.25, help="RSS sampling period")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG plot here")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="earlier --json results to print and plot with this run's",
    )
    args = parser.parse_args()

    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench-scale-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "UNSTRUCTURED_DISABLE_NOTICE": "1",
        "PYTHONPATH": str(ROOT),
    }
    print(f"# {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(HEADER, flush=True)
    results: list[Measurement] = []
    for earlier in args.merge:
        results += [Measurement(**m) for m in json.loads(earlier.read_text())]
    for m in results:
        print(format_row(m))
    fake_env = {**base_env, "FRESHINDEX_EMBEDDING__MODEL": "fake-hash"}
    baseline_env = None
    if args.baseline is not None:
        baseline_env = {**fake_env, "PYTHONPATH": str(args.baseline.resolve())}
    for n in sorted(set(args.sizes) | set(args.baseline_sizes if baseline_env else ())):
        corpus = workdir / f"small-{n}.jsonl"
        if not corpus.exists():
            generate_corpus(corpus, n)
        if baseline_env is not None and n in args.baseline_sizes:
            results += measure(
                "fake-hash (baseline)", corpus, n, baseline_env, 1, args.interval, workdir
            )
        if n in args.sizes:
            results += measure("fake-hash", corpus, n, fake_env, 1, args.interval, workdir)
        corpus.unlink()
    if args.scifact and not args.scifact_corpus.exists():
        print(f"skip the SciFact series: {args.scifact_corpus} not found (--scifact-corpus)")
    elif args.scifact:
        for n in args.scifact:
            corpus = workdir / f"scifact-{n}.jsonl"
            got = first_records(args.scifact_corpus, corpus, n)
            for workers in args.workers:
                results += measure("MiniLM", corpus, got, base_env, workers, args.interval, workdir)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=2))
    if args.plot and results:
        plot(results, args.plot)
        print(f"plot: {args.plot}")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
