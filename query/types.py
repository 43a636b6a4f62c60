"""The records that flow through the query layer: hits, model calls, agent traces.

Every stage reads and writes these types: retrieval returns ``Hit``; the model gateway takes
a ``ChatRequest`` and returns a ``ChatResponse``; the agent returns an ``AgentResult`` with
its ``TraceStep`` list. ``to_dict()`` gives the JSON form the CLI and HTTP API print.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

# The retrieval modes, defined here only: the CLI's choices, the config check, the agent's tool
# schema and the HTTP API's request models all derive from ``Mode``.
Mode = Literal["vector", "fts", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)

# The chunk columns a ``Hit`` is read from.
HIT_COLUMNS = (
    "chunk_id",
    "doc_id",
    "chunk_index",
    "text",
    "title",
    "section",
    "page_number",
    "source_uri",
    "content_type",
    "metadata",
)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


@dataclass(frozen=True)
class Hit(_Record):
    """One retrieved chunk, with the table version it was read from."""

    chunk_id: str
    doc_id: str
    text: str
    source_uri: str
    section: str | None
    score: float
    table_version: int
    title: str | None = None
    page_number: int | None = None
    content_type: str | None = None
    chunk_index: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    mode: str = "vector"
    rank: int = 0
    # The per-mode evidence behind ``score`` (a fused score in hybrid mode).
    vector_score: float | None = None
    fts_score: float | None = None

    @property
    def citation(self) -> str:
        """``doc_id#chunk_id``: how answers cite the chunk."""
        return f"{self.doc_id}#{self.chunk_id}"

    @classmethod
    def from_row(cls, row: dict, score: float, version: int, mode: str, **extra) -> Hit:
        """A hit from a chunks-table row (the ``HIT_COLUMNS``) read at ``version``."""
        return cls(
            chunk_id=row["chunk_id"],
            doc_id=row["doc_id"],
            text=row["text"],
            source_uri=row.get("source_uri") or "",
            section=row.get("section"),
            score=float(score),
            table_version=version,
            title=row.get("title"),
            page_number=row.get("page_number"),
            content_type=row.get("content_type"),
            chunk_index=row.get("chunk_index"),
            metadata=parse_metadata(row.get("metadata")),
            mode=mode,
            **extra,
        )


METADATA_MAX_DEPTH = 8  # deeper values are returned as (cut) JSON text
METADATA_MAX_CHARS = 65_536  # a larger metadata column is not parsed at all
_DEEP_VALUE_CHARS = 256


class Scanned(list):
    """A list of candidates, hits or rows; ``scan_capped`` is True when a metadata filter's
    scan stopped at ``retrieval.max_scan_rows`` before it found enough matches (there may be
    matching rows it did not read)."""

    scan_capped: bool = False

    @classmethod
    def of(cls, items, scan_capped: bool = False) -> Scanned:
        out = cls(items)
        out.scan_capped = scan_capped
        return out


SCAN_CAPPED_WARNING = (
    "a metadata filter matched too few of the rows read (retrieval.max_scan_rows); "
    "there may be more matches: narrow the search with a column filter"
)


def parse_metadata(raw: str | None) -> dict[str, Any]:
    """The ``metadata`` column as a dict that any JSON encoder can write back.

    A stored document is not trusted to be tame: nesting past ``METADATA_MAX_DEPTH`` is cut
    (the subtree becomes its JSON text, at most 256 characters), non-finite numbers become
    None, and unreadable, oversized or too-deep JSON gives ``{}``, so one odd document cannot
    make every search that returns it fail. Filters read at most 4 levels, within the cap.
    """
    if not raw or len(raw) > METADATA_MAX_CHARS:
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return {}
    return _tame(value, 0) if isinstance(value, dict) else {}


def _tame(value: Any, depth: int) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if not isinstance(value, dict | list):
        return value
    if depth >= METADATA_MAX_DEPTH:
        try:
            text = json.dumps(value, allow_nan=True)
        except (ValueError, RecursionError):
            text = "..."
        return text if len(text) <= _DEEP_VALUE_CHARS else text[: _DEEP_VALUE_CHARS - 3] + "..."
    if isinstance(value, dict):
        return {str(k): _tame(v, depth + 1) for k, v in value.items()}
    return [_tame(v, depth + 1) for v in value]


# ---------------------------------------------------------------- model plane


@dataclass(frozen=True)
class Message(_Record):
    role: str  # system | user | assistant | tool
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class ToolCall(_Record):
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolSpec(_Record):
    """A tool offered to a model: JSON-schema parameters, as chat-completions expects."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class Citation(_Record):
    marker: int  # the [n] in the answer text
    doc_id: str
    chunk_id: str
    source_uri: str | None = None
    quote: str | None = None
    score: float | None = None


@dataclass(frozen=True)
class ChatRequest(_Record):
    """One model call. ``question`` and ``context`` travel beside the rendered ``messages`` so a
    provider that works on passages (extractive) does not have to parse the prompt back."""

    messages: tuple[Message, ...]
    task: str = "answer"  # answer | agent | tool_step ...
    question: str | None = None
    context: tuple[Hit, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    temperature: float = 0.0
    max_tokens: int = 512
    # Filled by the gateway from the route; a request may pin them.
    provider: str | None = None
    model: str | None = None
    # who the answer is for: ``Access.key`` of the caller (freshindex.query.access), part
    # of the cache key, so a cached answer is served only to callers with the same labels
    audience: str = ""

    def cache_material(self) -> dict[str, Any]:
        """What identifies the response besides provider and model."""
        return {
            "audience": self.audience,
            "task": self.task,
            "messages": [m.to_dict() for m in self.messages],
            "question": self.question,
            "context": [[h.chunk_id, h.text] for h in self.context],
            "tools": [t.to_dict() for t in self.tools],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


@dataclass(frozen=True)
class Usage(_Record):
    tokens_in: int
    tokens_out: int
    estimated: bool = False


@dataclass(frozen=True)
class ChatResponse(_Record):
    text: str
    provider: str
    model: str
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    citations: tuple[Citation, ...] = ()
    # False when the provider says the context holds no answer.
    answered: bool = True
    finish_reason: str = "stop"
    latency_ms: float = 0.0
    cached: bool = False
    cost_usd: float = 0.0
    # The extractive provider's best sentence support (None for generative providers).
    support: float | None = None


@dataclass(frozen=True)
class CallRecord(_Record):
    """Accounting for one attempt at a model call (successful, failed or served from cache)."""

    provider: str
    model: str
    task: str
    latency_ms: float
    tokens_in: int
    tokens_out: int
    tokens_estimated: bool
    cost_usd: float
    cached: bool
    ok: bool
    error: str | None = None
    attempt: int = 1
    at: float = 0.0


@dataclass(frozen=True)
class Answer(_Record):
    question: str
    text: str
    answered: bool
    citations: tuple[Citation, ...]
    hits: tuple[Hit, ...]
    provider: str
    model: str
    table_version: int | None
    cached: bool = False
    usage: Usage | None = None
    accounting: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- agent plane


@dataclass(frozen=True)
class TraceStep(_Record):
    step: int
    kind: str  # tool | model | plan | final
    tool: str | None
    arguments: dict[str, Any]
    result_size: int
    latency_ms: float
    model_call: dict[str, Any] | None = None
    summary: str = ""
    error: str | None = None


@dataclass(frozen=True)
class AgentResult(_Record):
    question: str
    answer: str
    answered: bool
    citations: tuple[Citation, ...]
    trace: tuple[TraceStep, ...]
    steps: int
    stopped: str  # final | step_limit | error
    planner: str  # tools | deterministic
    table_version: int | None
    accounting: dict[str, Any] = field(default_factory=dict)
    trace_path: str | None = None
