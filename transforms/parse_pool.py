"""The parse worker pool: warm parse workers lent per caller, and the worker's failures
mapped to DocumentErrors that say what to do.

A parse runs in a reusable subprocess (``freshindex.transforms.parse_worker``) under a
deadline and a memory ceiling, so one hostile document cannot hang or kill the pipeline.
"""

from __future__ import annotations

import contextlib
import posixpath
import threading
from collections.abc import Iterator

from freshindex.config import ParsingConfig
from freshindex.errors import (
    CorruptDocument,
    EmptyDocument,
    ParseMemoryExceeded,
    ParserCrashed,
    ParseTimeout,
    UnsupportedFormat,
)
from freshindex.schemas.records import SourceRef
from freshindex.transforms.parse_worker import (
    IsolatedWorker,
    RemoteError,
    WorkerCrashed,
    WorkerMemoryExceeded,
    WorkerTimeout,
)
from freshindex.transforms.partition import partition_elements, warm_up_parsers


def new_parse_worker(cfg: ParsingConfig) -> IsolatedWorker:
    """A worker process for ``partition_elements`` under ``cfg``'s deadline and ceiling."""
    return IsolatedWorker(
        partition_elements,
        warm_up=warm_up_parsers,
        timeout_s=cfg.timeout_s,
        max_memory_mb=cfg.max_memory_mb,
    )


class _WorkerPool:
    """Warm parse workers of this process, each lent to one caller at a time, so runs and
    stream batches in a long-lived process do not pay the parser's start-up again. Holds at
    most as many workers as callers ever ran at once; workers with other limits are closed."""

    def __init__(self) -> None:
        self._idle: list[IsolatedWorker] = []
        self._lock = threading.Lock()

    def acquire(self, cfg: ParsingConfig) -> IsolatedWorker:
        limits = (cfg.timeout_s, cfg.max_memory_mb)
        with self._lock:
            stale = [w for w in self._idle if (w.timeout_s, w.max_memory_mb) != limits]
            self._idle = [w for w in self._idle if w not in stale]
            worker = self._idle.pop() if self._idle else None
        for w in stale:
            w.close()
        return worker or new_parse_worker(cfg)

    def release(self, worker: IsolatedWorker) -> None:
        with self._lock:
            self._idle.append(worker)


POOL = _WorkerPool()


@contextlib.contextmanager
def lend_parse_worker(cfg: ParsingConfig) -> Iterator[IsolatedWorker]:
    """A warm worker of this process's pool for ``cfg``'s limits, returned afterwards."""
    worker = POOL.acquire(cfg)
    try:
        yield worker
    finally:
        POOL.release(worker)


# DocumentErrors the worker raises, rebuilt by name on this side of the pipe.
_WORKER_ERRORS = {cls.__name__: cls for cls in (CorruptDocument, EmptyDocument, UnsupportedFormat)}


def parse_in_worker(ref: SourceRef, data: bytes, cfg: ParsingConfig, worker: IsolatedWorker):
    filename = posixpath.basename(ref.source_uri)
    try:
        return worker.call(data, ref.content_type, filename, cfg)
    except WorkerTimeout as exc:
        raise ParseTimeout(
            f"{ref.content_type} parse stopped: {exc}",
            doc_id=ref.doc_id,
            hint=f"raise parsing.timeout_s (now {cfg.timeout_s:g}) if such documents are "
            "expected; a timed-out document is retried on the next run",
        ) from None
    except WorkerMemoryExceeded as exc:
        raise ParseMemoryExceeded(
            f"{ref.content_type} parse stopped: {exc}",
            doc_id=ref.doc_id,
            hint=f"raise parsing.max_memory_mb (now {cfg.max_memory_mb:g}) if such documents "
            "are expected",
        ) from None
    except WorkerCrashed as exc:
        raise ParserCrashed(
            f"{ref.content_type} parse failed: {exc}",
            doc_id=ref.doc_id,
            hint="retried on the next run; if it keeps failing, lower parsing.max_memory_mb "
            "or give the machine more memory",
        ) from None
    except RemoteError as exc:
        cls = _WORKER_ERRORS.get(exc.type_name)
        if cls is not None:
            raise cls(exc.message, doc_id=ref.doc_id, hint=exc.hint) from None
        raise CorruptDocument(
            f"{ref.content_type} parser failed: {exc.type_name}: {exc.message}",
            doc_id=ref.doc_id,
        ) from None
