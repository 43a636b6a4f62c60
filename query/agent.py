"""The agent plane: a multi-step loop over tools, on one pinned table version, fully traced.

Tools (``freshindex.query.tools``): ``search`` (vector, fts or hybrid), ``get_document``,
``list_sources``, ``filter_metadata`` and ``calculate`` (arithmetic, parsed with ``ast``).

* With a provider that supports tool calls (the gateway's ``tools`` route), the model picks
  the tools: each step is one model turn plus the tool calls it asked for.
* Otherwise (the extractive default) a deterministic planner runs: split the question into
  its parts, compute the arithmetic ones, retrieve for the others and answer each through the
  gateway, then combine the answers with their citations renumbered.

Every step lands in the trace (step, kind, tool, arguments, result size, latency, model
call); ``agent.trace_dir`` stores each run's trace as a JSON file.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from freshindex.observability import tracing
from freshindex.query.access import audience_of
from freshindex.query.accounting import Ledger
from freshindex.query.config import QueryConfig
from freshindex.query.context import assemble_context, render, system_prompt
from freshindex.query.errors import FreshIndexError, NoRoute, QueryError
from freshindex.query.gateway import ModelGateway
from freshindex.query.pinning import PinnedTable
from freshindex.query.tools import TOOLS, Toolbox, calculate, result_size
from freshindex.query.types import (
    AgentResult,
    ChatRequest,
    ChatResponse,
    Citation,
    Hit,
    Message,
    TraceStep,
)

TOOL_RESULT_CHARS = 6000  # what one tool result may put into the model's context


def _model_call(response: ChatResponse) -> dict[str, Any]:
    return {
        "provider": response.provider,
        "model": response.model,
        "tokens_in": response.usage.tokens_in,
        "tokens_out": response.usage.tokens_out,
        "cached": response.cached,
        "latency_ms": round(response.latency_ms, 3),
        "tool_calls": [c.name for c in response.tool_calls],
    }


# ---------------------------------------------------------------- planning


_PART_SPLIT = re.compile(
    r"(?<=\?)\s+|;\s+|,?\s+(?:and|also|then)\s+(?=(?:what|how|why|when|where|who|which|is|are|"
    r"does|do|can|should|list|compute|calculate)\b)",
    re.IGNORECASE,
)
_LEAD = re.compile(r"^(?:and|also|then|plus)\s+", re.IGNORECASE)
_ARITHMETIC = re.compile(r"[-+(]?\d[\d.,]*(?:\s*(?:[-+*/×÷^%]|\*\*)\s*[-+(]?\d[\d.,]*\)?)+")


def split_question(question: str) -> list[str]:
    """The parts of a multi-part question (one part when it has no separable clauses)."""
    parts = [_LEAD.sub("", p.strip(" ,;")) for p in _PART_SPLIT.split(question.strip())]
    return [p for p in parts if len(p.split()) >= 2 or _ARITHMETIC.search(p)] or [question]


def arithmetic_in(part: str) -> str | None:
    match = _ARITHMETIC.search(part)
    return match.group(0).replace(",", "") if match else None


def _renumber(text: str, passages: tuple[Hit, ...], order: list[Hit]) -> str:
    """Rewrite a sub-answer's ``[n]`` markers into the combined answer's numbering."""

    def sub(match: re.Match) -> str:
        n = int(match.group(1))
        if not 1 <= n <= len(passages):
            return match.group(0)
        hit = passages[n - 1]
        ids = [h.chunk_id for h in order]
        if hit.chunk_id not in ids:
            order.append(hit)
            ids.append(hit.chunk_id)
        return f"[{ids.index(hit.chunk_id) + 1}]"

    return re.sub(r"\[(\d{1,3})\]", sub, text)


class Agent:
    def __init__(self, qcfg: QueryConfig, gateway: ModelGateway):
        self.qcfg = qcfg
        self.gateway = gateway
        self._deadline: float | None = None  # set per run

    def run(
        self,
        question: str,
        pinned: PinnedTable,
        *,
        max_steps: int | None = None,
        planner: str = "auto",
        mode: str | None = None,
        k: int | None = None,
        filters=None,
        ledger: Ledger | None = None,
        store_trace: bool = True,
        deadline: float | None = None,
    ) -> AgentResult:
        """Answer ``question``; ``planner``: auto (tools when a tool-calling model is routed),
        tools, or deterministic. Every model call of the run shares ``deadline`` (default:
        ``gateway.request_deadline_s`` from now)."""
        with tracing.span("freshindex.agent", planner=planner, table_version=pinned.version):
            return self._run(
                question,
                pinned,
                max_steps,
                planner,
                mode,
                k,
                filters,
                ledger,
                store_trace,
                deadline,
            )

    def _run(
        self, question, pinned, max_steps, planner, mode, k, filters, ledger, store_trace, deadline
    ) -> AgentResult:
        self._deadline = self.gateway.deadline() if deadline is None else deadline
        max_steps = max_steps or self.qcfg.agent.max_steps
        ledger = ledger or self.gateway.ledger.child()
        box = Toolbox(
            pinned, default_k=k or self.qcfg.retrieval.k, default_mode=mode, base_filters=filters
        )
        result: AgentResult | None = None
        trace: list[TraceStep] = []
        if planner not in ("auto", "tools", "deterministic"):
            raise QueryError(f"planner must be auto, tools or deterministic, got {planner!r}")
        probe = ChatRequest((Message("user", question),), task="agent", tools=TOOLS)
        if planner == "tools" or (planner == "auto" and self.gateway.route(probe).providers):
            try:
                result = self._tool_loop(question, pinned, box, max_steps, ledger, trace)
            except NoRoute as exc:
                if planner == "tools":
                    raise
                trace.append(
                    TraceStep(
                        len(trace) + 1,
                        "plan",
                        None,
                        {},
                        0,
                        0.0,
                        summary="tool-calling model unavailable, using the deterministic planner",
                        error=str(exc).splitlines()[0],
                    )
                )
        if result is None:
            result = self._deterministic(
                question, pinned, box, max_steps, ledger, trace, mode=mode, filters=filters
            )
        result = replace(result, accounting=ledger.summary())
        if store_trace and self.qcfg.agent.trace_dir:
            result = replace(result, trace_path=self._store(result))
        return result

    def _model_step(
        self,
        request: ChatRequest,
        ledger: Ledger,
        trace: list[TraceStep],
        step: int,
        arguments: dict[str, Any],
        size_of: Callable[[ChatResponse], int],
    ) -> ChatResponse:
        """One model call of the run, recorded in ``trace`` as a ``model`` step."""
        started = time.perf_counter()
        with tracing.span("freshindex.agent.step", step=step):
            response = self.gateway.complete(request, ledger=ledger, deadline=self._deadline)
        trace.append(
            TraceStep(
                step,
                "model",
                None,
                arguments,
                size_of(response) or 1,
                (time.perf_counter() - started) * 1000,
                model_call=_model_call(response),
                summary=(response.text or "")[:200],
            )
        )
        return response

    # ---- tool-calling loop

    def _tool_loop(self, question, pinned, box, max_steps, ledger, trace) -> AgentResult:
        system = system_prompt(
            self.qcfg.context.prompts_path,
            "agent",
            table=pinned.name,
            version=str(pinned.version),
            max_steps=str(max_steps),
        )
        messages: list[Message] = [Message("system", system), Message("user", question)]
        for step in range(1, max_steps + 1):
            request = ChatRequest(
                tuple(messages),
                task="agent",
                tools=TOOLS,
                question=question,
                audience=audience_of(pinned),
            )
            response = self._model_step(
                request, ledger, trace, step, {}, lambda r: len(r.tool_calls)
            )
            if not response.tool_calls:
                answer = response.text.strip()
                return self._final(question, answer, box, trace, step, "final", "tools", pinned)
            messages.append(Message("assistant", response.text or None, response.tool_calls))
            for call in response.tool_calls:
                started = time.perf_counter()
                error = None
                try:
                    result = box.run(call.name, call.arguments)
                except (FreshIndexError, TypeError, ValueError) as exc:
                    result, error = {"error": str(exc)}, str(exc).splitlines()[0]
                payload = json.dumps(result, default=str)[:TOOL_RESULT_CHARS]
                trace.append(
                    TraceStep(
                        step,
                        "tool",
                        call.name,
                        call.arguments,
                        result_size(result),
                        (time.perf_counter() - started) * 1000,
                        summary=payload[:200],
                        error=error,
                    )
                )
                messages.append(Message("tool", payload, tool_call_id=call.id, name=call.name))
        answer = f"Stopped after {max_steps} steps without a final answer."
        return self._final(question, answer, box, trace, max_steps, "step_limit", "tools", pinned)

    def _final(self, question, answer, box, trace, steps, stopped, planner, pinned) -> AgentResult:
        citations = []
        cited = dict.fromkeys(re.findall(r"\[([^\[\]#\s]+)#([0-9a-f]{6,64})\]", answer))
        # only chunks the run's tools returned (read through the caller's view): a citation
        # the model made up, or of a chunk the caller may not read, is dropped
        seen = [box.hits_seen[c] for d, c in cited if c in box.hits_seen]
        for i, hit in enumerate((h for h in seen if (h.doc_id, h.chunk_id) in cited), 1):
            citations.append(Citation(i, hit.doc_id, hit.chunk_id, hit.source_uri, None, None))
        return AgentResult(
            question=question,
            answer=answer,
            answered=stopped == "final" and bool(answer),
            citations=tuple(citations),
            trace=tuple(trace),
            steps=steps,
            stopped=stopped,
            planner=planner,
            table_version=pinned.version,
        )

    # ---- deterministic planner

    def _deterministic(
        self, question, pinned, box, max_steps, ledger, trace, *, mode, filters
    ) -> AgentResult:
        parts = split_question(question)
        trace.append(
            TraceStep(
                len(trace) + 1,
                "plan",
                None,
                {"parts": parts},
                len(parts),
                0.0,
                summary=f"{len(parts)} part(s)",
            )
        )
        step = 1
        answers: list[tuple[str, str, bool]] = []
        order: list[Hit] = []
        stopped = "final"
        for part in parts:
            if step > max_steps:
                stopped = "step_limit"
                break
            expression = arithmetic_in(part)
            if expression:
                started = time.perf_counter()
                try:
                    value = box.tool_calculate(expression)
                    answers.append((part, f"{expression} = {value['result']}", True))
                    error = None
                except QueryError as exc:
                    value, error = {"error": str(exc)}, str(exc)
                    answers.append((part, f"cannot compute {expression}", False))
                trace.append(
                    TraceStep(
                        step,
                        "tool",
                        "calculate",
                        {"expression": expression},
                        1,
                        (time.perf_counter() - started) * 1000,
                        summary=json.dumps(value, default=str)[:200],
                        error=error,
                    )
                )
                step += 1
                continue
            args = {"query": part, "mode": mode or self.qcfg.retrieval.mode, "k": box.default_k}
            if filters:
                args["filters"] = filters
            started = time.perf_counter()
            hits_view = box.tool_search(**args)
            hits = tuple(box.hits_seen[h["chunk_id"]] for h in hits_view)
            trace.append(
                TraceStep(
                    step,
                    "tool",
                    "search",
                    args,
                    len(hits),
                    (time.perf_counter() - started) * 1000,
                    summary=", ".join(h.citation for h in hits[:5]),
                )
            )
            context, used = assemble_context(hits, self.qcfg.context.max_tokens)
            messages = render(
                self.qcfg.context.prompts_path, "answer", question=part, context=context
            )
            request = ChatRequest(
                messages,
                task="answer",
                question=part,
                context=used,
                audience=audience_of(pinned),
            )
            arguments = {"question": part, "passages": len(used)}
            response = self._model_step(
                request, ledger, trace, step, arguments, lambda r: len(r.citations)
            )
            answered = response.answered
            text = _renumber(response.text, used, order) if answered else response.text
            answers.append((part, text, answered))
            step += 1
        if len(answers) == 1:
            combined = answers[0][1]
        else:
            combined = "\n".join(f"{i}. {p} — {a}" for i, (p, a, _) in enumerate(answers, 1))
        if stopped == "step_limit":
            left = len(parts) - len(answers)
            combined += f"\n(stopped after {max_steps} steps; {left} part(s) unanswered)"
        citations = tuple(
            Citation(i, h.doc_id, h.chunk_id, h.source_uri, None, h.score)
            for i, h in enumerate(order, start=1)
        )
        return AgentResult(
            question=question,
            answer=combined,
            answered=any(a for _, _, a in answers),
            citations=citations,
            trace=tuple(trace),
            steps=min(step - 1, max_steps),
            stopped=stopped,
            planner="deterministic",
            table_version=pinned.version,
        )

    def _store(self, result: AgentResult) -> str:
        folder = Path(self.qcfg.agent.trace_dir)
        folder.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(result.question.encode()).hexdigest()[:8]
        path = folder / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{digest}.json"
        path.write_text(json.dumps(result.to_dict(), indent=2, default=str))
        return str(path)


__all__ = ["TOOLS", "Agent", "Toolbox", "calculate", "split_question"]
