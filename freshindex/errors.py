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
    """One document failed a stage: recorded in the errors table, never raised out of a run."""

    stage = "document"

    def __init__(self, message: str, *, doc_id: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.doc_id = doc_id


class UnsupportedFormat(DocumentError):
    stage = "parse"


class EmptyDocument(DocumentError):
    """The document has no extractable text (empty file, scanned PDF without a text layer)."""

    stage = "parse"


class CorruptDocument(DocumentError):
    stage = "parse"


class TableError(FreshIndexError):
    """A LanceDB table is missing, has the wrong schema, or a version/tag does not exist."""

    def __init__(self, message: str, *, table: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.table = table


class SchemaMismatch(TableError):
    """The table was written with other settings (vector width, model) than the pipeline uses."""


class TooManyFailures(FreshIndexError):
    """More documents failed than ``ingest.max_failure_fraction`` allows (the run committed)."""
