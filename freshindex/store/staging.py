"""Where batch runs stage their rows before the single commit step, and the cleanup of
folders left by runs that died before it."""

from __future__ import annotations

import os
import time

from freshindex.store.connection import filesystem


def staging_root(db_uri: str, table: str) -> str:
    """Where batch runs of ``table`` stage their rows, one folder per run."""
    return os.path.join(db_uri, "_staging", table)


def staging_dir(db_uri: str, table: str, run_id: str) -> str:
    """Where workers stage a run's chunk rows before the single commit step merges them."""
    return os.path.join(staging_root(db_uri, table), run_id)


def remove_stale_staging(db_uri: str, table: str, max_age_s: float, now: float | None = None):
    """Remove the staging folders of ``table`` whose newest file is older than ``max_age_s``:
    left by batch runs that died before their commit step (a finished run removes its own).
    Returns (folders removed, bytes freed). Age, not liveness, decides, because the workers
    that stage files may run on other machines; a live run keeps writing or committing."""
    import pyarrow.fs as pafs

    fs, base = filesystem(staging_root(db_uri, table))
    try:
        runs = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    except OSError:
        return 0, 0
    cutoff = (time.time() if now is None else now) - max_age_s
    removed = freed = 0
    for run in runs:
        if run.type != pafs.FileType.Directory:
            continue
        files = fs.get_file_info(pafs.FileSelector(run.path, recursive=True))
        stamps = [f.mtime.timestamp() for f in [run, *files] if f.mtime is not None]
        if stamps and max(stamps) < cutoff:
            freed += sum(f.size or 0 for f in files if f.type == pafs.FileType.File)
            fs.delete_dir(run.path)
            removed += 1
    return removed, freed
