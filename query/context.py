"""Prompts: templates from ``configs/prompts/``, context packed into a token budget, citations.

A template file has ``[system]`` and ``[user]`` sections; ``$question`` and ``$context`` are
substituted with ``string.Template`` (no code runs, unknown ``$names`` stay as written).
The context is the retrieved passages, numbered ``[1]``, ``[2]``... in rank order; the answer
cites those numbers, and ``citations_from_text`` maps them back to doc and chunk ids.

Refusals are structural: a template asks for ``$no_answer`` (``NO_ANSWER_REPLY``, filled in
by ``render``) as the whole reply when the context holds no answer, and ``is_refusal``
accepts exactly that reply, so an answer that quotes or mentions the sentence is an answer.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections.abc import Sequence
from pathlib import Path

from freshindex.errors import ConfigError
from freshindex.query.types import Citation, Hit, Message

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_MARKER = re.compile(r"\[(\d{1,3})\]")
_SECTION = re.compile(r"^\[(system|user)\]\s*$", re.MULTILINE)

# The whole reply a model gives when the passages hold no answer (templates say ``$no_answer``).
NO_ANSWER_REPLY = "The context does not contain an answer."
_QUOTES = "\"'“”‘’`"


def is_refusal(text: str | None) -> bool:
    """True when ``text`` is the no-answer reply and nothing else (surrounding whitespace and
    quotes aside); a reply that quotes it inside an answer is not a refusal."""
    return (text or "").strip().strip(_QUOTES).strip() == NO_ANSWER_REPLY


def estimate_tokens(text: str | None) -> int:
    """Tokens of ``text`` for a typical BPE tokenizer, estimated: words and punctuation, or
    four characters a token, whichever is more. Used where a provider reports no usage."""
    if not text:
        return 0
    return max(len(_WORD.findall(text)), math.ceil(len(text) / 4))


def estimate_messages(messages: Sequence[Message]) -> int:
    total = 0
    for m in messages:
        total += 4 + estimate_tokens(m.content)  # role and separators
        for call in m.tool_calls:
            total += estimate_tokens(call.name) + estimate_tokens(str(call.arguments))
    return total


@functools.lru_cache(maxsize=32)
def _load(path: str) -> tuple[str, str]:
    file = Path(path)
    if not file.exists():
        raise ConfigError(
            f"prompt template {file} does not exist",
            hint="context.prompts_dir names the folder of *.txt templates",
        )
    text = file.read_text()
    parts = _SECTION.split(text)
    sections = {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
    if "user" not in sections:
        raise ConfigError(f"prompt template {file} has no [user] section")
    return sections.get("system", ""), sections["user"]


def render(prompts_dir: Path, name: str, **values: str) -> tuple[Message, ...]:
    """The messages of template ``name`` with ``values`` (and ``no_answer``) substituted."""
    values = {"no_answer": NO_ANSWER_REPLY, **values}
    system, user = _load(str(prompts_dir / f"{name}.txt"))
    messages = []
    if system:
        messages.append(Message("system", string.Template(system).safe_substitute(values)))
    messages.append(Message("user", string.Template(user).safe_substitute(values)))
    return tuple(messages)


def system_prompt(prompts_dir: Path, name: str, **values: str) -> str:
    system, _ = _load(str(prompts_dir / f"{name}.txt"))
    return string.Template(system).safe_substitute(values)


def _label(hit: Hit) -> str:
    where = hit.section or hit.title or ""
    return f"{hit.doc_id}" + (f" — {where}" if where and where != hit.doc_id else "")


def assemble_context(hits: Sequence[Hit], max_tokens: int) -> tuple[str, tuple[Hit, ...]]:
    """Numbered passages in rank order within ``max_tokens``; returns (text, passages used).

    The passage that crosses the budget is cut at a word boundary when at least 32 tokens
    of room are left; later passages are dropped.
    """
    blocks: list[str] = []
    used: list[Hit] = []
    left = max_tokens
    for hit in hits:
        header = f"[{len(used) + 1}] {_label(hit)}"
        body = hit.text.strip()
        cost = estimate_tokens(header) + estimate_tokens(body) + 2
        if cost > left:
            room = left - estimate_tokens(header) - 2
            if room < 32:
                break
            words = body.split()
            while words and estimate_tokens(" ".join(words)) > room:
                words = words[: max(1, int(len(words) * 0.9))] if len(words) > 1 else []
            if not words:
                break
            body = " ".join(words) + " …"
            cost = estimate_tokens(header) + estimate_tokens(body) + 2
        blocks.append(f"{header}\n{body}")
        used.append(hit)
        left -= cost
    return "\n\n".join(blocks), tuple(used)


def citations_from_text(text: str, passages: Sequence[Hit]) -> tuple[Citation, ...]:
    """The ``[n]`` markers of an answer, as citations of the numbered passages."""
    seen: dict[int, Citation] = {}
    for match in _MARKER.finditer(text or ""):
        n = int(match.group(1))
        if 1 <= n <= len(passages) and n not in seen:
            hit = passages[n - 1]
            seen[n] = Citation(n, hit.doc_id, hit.chunk_id, hit.source_uri, None, hit.score)
    return tuple(seen[n] for n in sorted(seen))
