"""One exception family. Each carries the context a user needs and a hint on what to do."""

from __future__ import annotations


class FreshIndexError(Exception):
    """Base of every error freshindex raises on purpose.

    ``hint`` says what to do about it; it is printed under the message by the CLI.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class ConfigError(FreshIndexError, ValueError):
    """A setting is missing or out of range; raised where the setting is given."""


class SourceError(FreshIndexError):
    """The source (folder, glob, JSONL file) cannot be read at all."""


class DocumentError(FreshIndexError):
    """One document failed a stage: recorded in the errors table, never raised out of a run.

    ``permanent``: the same bytes under the same settings would fail again (corrupt, empty,
    too large), so a batch run remembers the failure and skips the document until either
    changes. A transient failure (I/O error, timeout, a crashed parser) is retried every run.
    """

    stage = "document"
    permanent = False

    def __init__(self, message: str, *, doc_id: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.doc_id = doc_id


class UnsupportedFormat(DocumentError):
    stage = "parse"
    permanent = True


class ArchiveTooLarge(UnsupportedFormat):
    """A zip-based document (DOCX, PPTX) would inflate past ``parsing.max_inflated_mb``, has
    too many members, or compresses suspiciously well: refused before it is parsed."""


class EmptyDocument(DocumentError):
    """The document has no extractable text (empty file, scanned PDF without a text layer)."""

    stage = "parse"
    permanent = True


class CorruptDocument(DocumentError):
    """The parser cannot read the document (damaged file, wrong extension)."""

    stage = "parse"
    permanent = True


class ParseTimeout(DocumentError):
    """The parse ran past ``parsing.timeout_s`` and was stopped; retried on the next run
    (a slow machine or a busy one can be the cause)."""

    stage = "parse"


class ParseMemoryExceeded(DocumentError):
    """The parse needed more memory than ``parsing.max_memory_mb`` and was stopped."""

    stage = "parse"
    permanent = True


class ParserCrashed(DocumentError):
    """The parser process died (a crash in a C extension, or the system's OOM killer)."""

    stage = "parse"


class SourceChanged(DocumentError):
    """The document's bytes changed between listing (when it was hashed and planned) and
    parsing; retried on the next run, which plans what is there then."""

    stage = "read"


class TableError(FreshIndexError):
    """A LanceDB table is missing, has the wrong schema, or a version/tag does not exist."""

    def __init__(self, message: str, *, table: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.table = table


class SchemaMismatch(TableError):
    """The table was written with other settings (vector width, model) than the pipeline uses."""


class TooManyFailures(FreshIndexError):
    """More documents failed than ``ingest.max_failure_fraction`` allows (the run committed)."""


class RunnerContractBroken(FreshIndexError, TypeError):
    """A step received elements of another type than its input carries: the runner mixed
    PCollections (Beam's DaskRunner mixes the outputs of a multi-output step)."""
