"""Thread settings for the short numeric work of a query: torch for embedding, BLAS for scans.

A query embeds ~10 tokens and scores one matrix product: too little work for a pool of
threads, whose wake-ups and spin-waits cost more than the work on a busy machine (measured
in docs/QUERY.md). Both helpers lower the thread count for one call and restore it after,
so other users of torch and BLAS in the process keep their settings.
"""

from __future__ import annotations

import contextlib
import sys
import threading

SMALL_BATCH = 8  # up to this many queries are embedded on one torch thread


@contextlib.contextmanager
def one_torch_thread(active: bool):
    """One torch thread for a few short queries (``active``): intra-op threads gain nothing on
    ~10 tokens and their spin-waits cost a lot on a busy 2-core machine. Batches keep
    torch's own setting."""
    torch = sys.modules.get("torch") if active else None  # never import torch for this
    if torch is None or getattr(torch.__spec__, "_initializing", False):
        # another thread is importing torch (loading a model, e.g. for a table an alias
        # now names): its module is in sys.modules half-built; leave its threads alone
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _BlasThreads:
    """The process's BLAS libraries and their configured thread counts, found once.

    Module-level on purpose: BLAS thread settings belong to the process, not to a reader,
    so one lock must serialize every change to them."""

    def __init__(self):
        self._libs: list[tuple[object, int]] | None = None  # (controller, configured threads)
        self._lock = threading.Lock()

    def _found(self) -> list[tuple[object, int]]:
        if self._libs is None:
            try:  # installed with scikit-learn, which sentence-transformers depends on
                from threadpoolctl import ThreadpoolController

                libs = ThreadpoolController().select(user_api="blas").lib_controllers
                self._libs = [(lib, lib.get_num_threads()) for lib in libs]
            except ImportError:
                self._libs = []
        return self._libs

    @contextlib.contextmanager
    def single(self):
        """One BLAS thread for a scan: it is memory-bound, and waking a second OpenBLAS
        thread on a busy machine costs a scheduler tick. Scans take turns (they would only
        compete for memory bandwidth)."""
        with self._lock:
            libs = self._found()
            for lib, _ in libs:
                lib.set_num_threads(1)
            try:
                yield
            finally:
                for lib, threads in libs:
                    lib.set_num_threads(threads)


_BLAS = _BlasThreads()
single_blas_thread = _BLAS.single
