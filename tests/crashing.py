"""Run a pipeline that kills itself at one point of its commit protocol, for the crash tests.

    python -m tests.crashing stream POINT N -- <the args of python -m freshindex.pipelines.stream>
    python -m tests.crashing batch after_commit N -- <the args of python -m freshindex.cli>

The fault is injected here, by wrapping the real function at that point, so production
code holds no switch for it. Stream points (micro-batch N; SIGKILL, as the kernel or an
operator would):

- ``before_chunk_commit``: before the batch's one commit of the chunks table;
- ``after_chunk_commit``: right after it;
- ``after_batch_record``: after the batch's offsets are recorded in the table (the Kafka
  offset commit comes next).

Batch point ``after_commit``: the process exits with status 137, as a SIGKILL would leave
it (no cleanup, no manifest), right after commit N of the run's commit step.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys

log = logging.getLogger("tests.crashing")

STREAM_POINTS = ("before_chunk_commit", "after_chunk_commit", "after_batch_record")
BATCH_POINTS = ("after_commit",)


def _sigkill(point: str, n: int) -> None:
    log.warning("fault injection: SIGKILL at %s of batch %d", point, n)
    os.kill(os.getpid(), signal.SIGKILL)


def crash_stream_at(point: str, n: int) -> None:
    """Make ``BatchIndexer`` SIGKILL this process at ``point`` of micro-batch ``n``."""
    from freshindex.pipelines.stream.microbatch import BatchIndexer

    if point not in STREAM_POINTS:
        raise SystemExit(f"unknown stream point {point!r}; one of {STREAM_POINTS}")
    method = "record_batch" if point == "after_batch_record" else "commit_chunks"
    real = getattr(BatchIndexer, method)

    @functools.wraps(real)
    def wrapped(self, stats, *args, **kw):
        if point == "before_chunk_commit" and stats.batch_seq == n:
            _sigkill(point, n)
        result = real(self, stats, *args, **kw)
        if point != "before_chunk_commit" and stats.batch_seq == n:
            _sigkill(point, n)
        return result

    setattr(BatchIndexer, method, wrapped)


def crash_batch_at(point: str, n: int) -> None:
    """Make a batch run's commit step exit (137) right after its commit ``n``."""
    from freshindex.transforms import write

    if point not in BATCH_POINTS:
        raise SystemExit(f"unknown batch point {point!r}; one of {BATCH_POINTS}")
    real = write.commit_changes
    commits = 0

    @functools.wraps(real)
    def wrapped(*args, **kw):
        nonlocal commits
        version = real(*args, **kw)
        commits += 1
        if commits == n:
            log.warning("fault injection: exit 137 after commit %d", n)
            os._exit(137)
        return version

    write.commit_changes = wrapped


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[3] != "--" or argv[0] not in ("stream", "batch"):
        raise SystemExit(__doc__)
    kind, point, n, args = argv[0], argv[1], int(argv[2]), argv[4:]
    if kind == "stream":
        crash_stream_at(point, n)
        from freshindex.pipelines.stream.run import main as real_main
    else:
        crash_batch_at(point, n)
        from freshindex.cli import main as real_main
    return real_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
