"""A worker subprocess that runs one function per call under a deadline and a memory ceiling.

Parsers (lxml, pdfminer, python-docx) run in C extensions and pure Python that no thread can
interrupt, so a pathological document could hold a pipeline worker for ever or exhaust its
memory. ``IsolatedWorker`` runs such a function in a child process that the caller can kill:

- a fresh interpreter, never a fork: forking a process that has loaded lance/arrow (their
  thread pools and locks) is unsafe; it dies with its parent (Linux: PR_SET_PDEATHSIG);
- warmed once (imports) and reused for every call, so a call costs a pipe round trip, not a
  process start; after a kill or a crash the next call starts a fresh one;
- the deadline counts the call only, never the start-up;
- memory: the parent watches the child's resident memory while it waits, and kills it when
  one call grows it by more than the ceiling; a child whose idle heap has grown past the
  ceiling since it started is replaced before the next call; the child's address space is
  also capped (RLIMIT_AS) well above that, as a backstop for an allocation too fast to be
  watched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

_CHILD_CODE = "from freshindex.transforms.parse_worker import _child_main; _child_main"
# How often the parent checks the child's memory while a call runs (seconds).
_WATCH_INTERVAL_S = 0.05
# The address-space backstop: the warm child's size plus this many ceilings plus a margin
# for thread stacks and allocator arenas that are reserved but never touched.
_RLIMIT_CEILINGS = 2
_RLIMIT_MARGIN_MB = 512


class WorkerError(Exception):
    """The worker could not finish a call; ``reason`` is a short machine-readable word."""

    reason = "failed"


class WorkerTimeout(WorkerError):
    reason = "timeout"


class WorkerMemoryExceeded(WorkerError):
    reason = "memory"


class WorkerCrashed(WorkerError):
    reason = "crashed"


class RemoteError(WorkerError):
    """The function raised in the worker; its type name, message and hint travel back as text
    (exceptions of third-party parsers do not all survive pickling)."""

    reason = "raised"

    def __init__(self, type_name: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.type_name, self.message, self.hint = type_name, message, hint


def _rss_bytes(pid: int) -> int | None:
    """Resident memory of ``pid`` (Linux /proc; None where it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _vm_bytes(key: str) -> int | None:
    """A size line (VmSize, VmPeak) of this process's /proc status, in bytes."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _describe(exc: BaseException) -> tuple[str, str, str | None]:
    hint = getattr(exc, "hint", None)
    message = exc.args[0] if hint is not None and exc.args else str(exc)
    return type(exc).__name__, str(message).strip() or repr(exc), hint


def _cap_address_space(max_memory_mb: float) -> int | None:
    try:
        import resource
    except ImportError:  # not POSIX: the parent's watch is the only ceiling
        return None
    size = _vm_bytes("VmSize")
    if size is None:
        return None
    limit = size + int((_RLIMIT_CEILINGS * max_memory_mb + _RLIMIT_MARGIN_MB) * 1024 * 1024)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        return None
    return limit


def _serve(conn) -> None:
    """The child's loop: learn what to run, warm up, say ready, then answer calls until the
    parent goes away."""
    try:
        path, fn, warm_up, max_memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    sys.path[:] = path
    try:
        if warm_up is not None:
            warm_up()
    except BaseException as exc:
        conn.send(("failed", _describe(exc)))
        return
    limit = _cap_address_space(max_memory_mb)
    conn.send(("ready", _rss_bytes(os.getpid())))
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died: nothing left to do
            return
        try:
            result = fn(*args)
        except BaseException as exc:
            peak = _vm_bytes("VmPeak")
            # A parser may turn a failed allocation into its own error (lxml: "Memory
            # allocation failed"): near the cap, it is the memory ceiling that was hit.
            if isinstance(exc, MemoryError) or (limit and peak and peak >= 0.9 * limit):
                conn.send(("memory", _describe(exc)))
                return  # the heap may be left fragmented: the next call gets a fresh worker
            conn.send(("error", _describe(exc)))
            continue
        try:
            conn.send(("ok", result))
        except Exception as exc:  # a result that cannot be pickled
            conn.send(("error", _describe(exc)))


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel kill this process when its parent dies, so a parse stuck in C
    code is not orphaned by a killed pipeline worker."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return  # elsewhere the closed pipe still ends the loop after the current call
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _child_main(fd: int, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    _serve(Connection(fd))


class IsolatedWorker:
    """Runs ``fn(*args)`` in a long-lived spawn subprocess, one call at a time.

    ``fn`` and ``warm_up`` must be module-level functions (they are pickled by name).
    Thread-safe: concurrent callers queue on a lock.

    Example::

        worker = IsolatedWorker(parse_elements, warm_up=import_parsers,
                                timeout_s=120, max_memory_mb=2048)
        worker.start()            # optional: warm up in the background now
        elements = worker.call(data, "text/html")
        worker.close()
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        warm_up: Callable[[], None] | None = None,
        timeout_s: float,
        max_memory_mb: float,
        startup_timeout_s: float = 300.0,
    ):
        self._fn, self._warm_up = fn, warm_up
        self.timeout_s, self.max_memory_mb = timeout_s, max_memory_mb
        self._startup_timeout_s = startup_timeout_s
        self._lock = threading.RLock()
        self._proc = None
        self._conn = None
        self._baseline: int | None = None
        self._ready = False
        self.starts = 0  # how many processes this worker has started (tests, diagnostics)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the process if none is running; returns without waiting for its warm-up.

        A fresh interpreter (``python -c``), not ``multiprocessing``'s spawn: that one
        re-imports the caller's ``__main__``, which runs an unguarded script a second time.
        """
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            self._discard()
            parent_sock, child_sock = socket.socketpair()
            fd = child_sock.fileno()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", f"{_CHILD_CODE}({fd}, {os.getpid()})"],
                    pass_fds=(fd,),
                    stdin=subprocess.DEVNULL,
                    close_fds=True,
                )
            finally:
                child_sock.close()
            conn = Connection(parent_sock.detach())
            conn.send((list(sys.path), self._fn, self._warm_up, self.max_memory_mb))
            self._proc, self._conn, self._ready = proc, conn, False
            self.starts += 1

    def _wait_ready(self) -> None:
        if self._ready:
            return
        if not self._conn.poll(self._startup_timeout_s):
            self._discard()
            raise WorkerCrashed(f"the worker did not start within {self._startup_timeout_s:.0f}s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            code = self._proc.poll() if self._proc is not None else None
            self._discard()
            raise WorkerCrashed(f"the worker died while starting (exit code {code})") from None
        if kind == "failed":
            self._discard()
            raise RemoteError(*payload)
        self._baseline, self._ready = payload, True

    def call(self, *args: Any) -> Any:
        """``fn(*args)`` in the worker; raises WorkerTimeout, WorkerMemoryExceeded,
        WorkerCrashed, or RemoteError when ``fn`` raised."""
        with self._lock:
            self.start()
            self._wait_ready()
            before = _rss_bytes(self._proc.pid)
            if before is not None and self._baseline and before - self._baseline > self._limit:
                # earlier calls left the heap this large (freed memory is rarely returned):
                # start afresh, so this call is measured alone and the backstop still fits
                self._discard()
                self.start()
                self._wait_ready()
                before = _rss_bytes(self._proc.pid)
            try:
                self._conn.send(args)
            except (OSError, ValueError) as exc:
                self._discard()
                raise WorkerCrashed(f"the worker is gone ({exc})") from None
            kind, payload = self._wait_answer(before)
            if kind == "ok":
                return payload
            if kind == "memory":
                self._discard()
                raise WorkerMemoryExceeded(
                    f"the parse needed more than {self.max_memory_mb:g} MB "
                    f"({payload[0]}: {payload[1]})"
                )
            raise RemoteError(*payload)

    @property
    def _limit(self) -> int:
        return int(self.max_memory_mb * 1024 * 1024)

    def _wait_answer(self, rss_before: int | None) -> tuple[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        limit = self._limit
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._discard()
                raise WorkerTimeout(f"the parse took longer than {self.timeout_s:g}s")
            if self._conn.poll(min(_WATCH_INTERVAL_S, remaining)):
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    break
            rss = _rss_bytes(self._proc.pid)
            grown = rss - rss_before if rss is not None and rss_before else None
            if grown is not None and grown > limit:
                self._discard()
                raise WorkerMemoryExceeded(
                    f"the parse grew the parser process by {grown / 2**20:.0f} "
                    f"MB, over the ceiling of {self.max_memory_mb:g} MB"
                )
            if self._proc.poll() is not None:
                break
        try:
            code = self._proc.wait(1)
        except subprocess.TimeoutExpired:
            code = None
        self._discard()
        signal_note = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise WorkerCrashed(
            f"the parser process died ({signal_note}); the system may be short of memory"
        )

    def _discard(self) -> None:
        """Kill and forget the current process (if any); the next call starts another."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        self._ready, self._baseline = False, None
        if conn is not None:
            conn.close()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def close(self) -> None:
        with self._lock:
            self._discard()

    def __enter__(self) -> IsolatedWorker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
