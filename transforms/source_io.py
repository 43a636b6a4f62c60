"""What a pipeline may read, and reading it bounded: the one place that opens source files.

The stream reads a Kafka ``uri`` message only under ``stream.allowed_uri_prefixes``
(``resolve_allowed``); the batch reader never follows a symlink out of its source root
(``inside_root``). Both open local files with ``open_regular``: without blocking (a FIFO
would block forever), regular files only, never under /proc, /sys or /dev, and the file
actually opened is checked again, so a path swapped after the check cannot leave the roots.
``read_bounded`` reads at most a limit, whatever the file's size claimed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import BinaryIO

from freshindex.config import PSEUDO_FILESYSTEMS
from freshindex.errors import DocumentError, UnsupportedFormat
from freshindex.store.connection import is_local


class SourceNotAllowed(DocumentError):
    """A path or URI outside what the pipeline may read (a prefix, the source root)."""

    stage = "read"


def _local_path(uri: str) -> str:
    return uri.removeprefix("file://")


def _within(path: str, root: str) -> bool:
    """``path`` is ``root`` or below it, on path-segment boundaries ("/a/b" is not in "/a/bc")."""
    root = root.rstrip("/")
    return path == root or path.startswith(root + "/") or root == ""


def _forbidden(real: str) -> bool:
    return any(_within(real, root) for root in PSEUDO_FILESYSTEMS)


def resolve_allowed(uri: str, prefixes: Sequence[str], *, doc_id: str | None = None) -> str:
    """The real path (local) or the URI (object store) of ``uri`` if it lies under one of
    ``prefixes`` (as ``freshindex.config.normalize_uri_prefix`` returns them); raises
    SourceNotAllowed.

    Local paths are resolved (``..``, symlinks) before the check, so a link inside a prefix
    that points out of it is refused; object-store keys may not hold ``.`` or ``..``
    segments.
    """
    hint = "the stream reads only under stream.allowed_uri_prefixes; send the text inline"
    if is_local(uri):
        path = _local_path(uri)
        if not path.startswith("/"):
            raise SourceNotAllowed(
                f"uri {uri!r} is not an absolute path", doc_id=doc_id, hint="give absolute paths"
            )
        real = os.path.realpath(path)
        local = [p for p in prefixes if is_local(p)]
        if _forbidden(real) or not any(_within(real, p) for p in local):
            raise SourceNotAllowed(
                f"uri {uri!r} is outside the allowed prefixes", doc_id=doc_id, hint=hint
            )
        return real
    if any(p in (".", "..") for p in uri.partition("://")[2].split("/")):
        raise SourceNotAllowed(f"uri {uri!r} holds '.' or '..' segments", doc_id=doc_id)
    if not any(not is_local(p) and uri.startswith(p) for p in prefixes):
        raise SourceNotAllowed(
            f"uri {uri!r} is outside the allowed prefixes", doc_id=doc_id, hint=hint
        )
    return uri


def inside_root(path: str, root: str, *, doc_id: str | None = None) -> str:
    """The real path of a local ``path`` found under ``root``; raises SourceNotAllowed where a
    symlink leads out of the root (the root's own real path counts as inside)."""
    real = os.path.realpath(path)
    if not _within(real, os.path.realpath(root)):
        raise SourceNotAllowed(
            f"{path} is a symlink to {real}, outside the source root {root}",
            doc_id=doc_id,
            hint="copy the file into the source folder, or ingest its real folder as a source",
        )
    return real


def _opened_path(fd: int, fallback: str) -> str:
    """The path the kernel opened for ``fd`` (Linux /proc), else the path that was checked."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return fallback


def open_regular(path: str, *, roots: Sequence[str] = ()) -> BinaryIO:
    """Open a local file for reading: a regular file, not under a pseudo filesystem, and
    (when ``roots`` are given, as real paths) inside one of them. Never blocks on a FIFO.
    Raises UnsupportedFormat for anything that is not a regular file, SourceNotAllowed for a
    file outside the roots, OSError where it cannot be opened."""
    real = os.path.realpath(_local_path(path))
    if _forbidden(real):
        raise SourceNotAllowed(f"{path} is in a pseudo filesystem ({real}), not a document")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    fd = os.open(real, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise UnsupportedFormat(
                f"{path} is not a regular file ({kind})",
                hint="only regular files are read; remove it from the source",
            )
        opened = _opened_path(fd, real)
        local_roots = [r for r in roots if is_local(r)]
        if _forbidden(opened) or (roots and not any(_within(opened, r) for r in local_roots)):
            raise SourceNotAllowed(f"{path} changed while it was opened and now leads out")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _too_large(uri: str, size: int | None, max_bytes: int) -> UnsupportedFormat:
    what = f"{size / 2**20:.1f} MiB" if size is not None else "larger than that"
    return UnsupportedFormat(
        f"{uri} is {what}, over the limit of {max_bytes / 2**20:.1f} MiB (parsing.max_file_mb)",
        hint="raise parsing.max_file_mb if such files are expected",
    )


def read_bounded(uri: str, max_bytes: int, *, roots: Sequence[str] = ()) -> bytes:
    """The bytes of ``uri``, at most ``max_bytes``: a local file is checked by
    ``open_regular`` and its size before anything is read; every source is read to at most
    ``max_bytes + 1`` bytes, so a size that lied (a growing file) is caught too. Raises
    UnsupportedFormat over the limit.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    if is_local(uri):
        with open_regular(uri, roots=roots) as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max_bytes:
                raise _too_large(uri, size, max_bytes)
            data = handle.read(max_bytes + 1)
    else:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(uri, compression_type="uncompressed") as handle:
            data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_large(uri, None, max_bytes)
    return data
