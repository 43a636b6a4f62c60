"""The Python API of the query layer; the CLI and the HTTP API are thin shells around it.

Example::

    svc = QueryService.from_config(load_config(), load_query_config())
    result = svc.search("pool timeout", mode="hybrid", k=3, filters=["doc_id prefix guide/"])
    answer = svc.ask("What is the default timeout?", as_of="run-20250101T000000Z-abc123")
    run = svc.agent("What is the default timeout and how does digest auth work?")
    svc.versions(), svc.health()
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

from freshindex import store
from freshindex.config import Config
from freshindex.query.access import Access, hidden_since
from freshindex.query.accounting import Ledger
from freshindex.query.agent import Agent
from freshindex.query.config import QueryConfig
from freshindex.query.context import assemble_context, citations_from_text, render
from freshindex.query.errors import LimitExceeded, QueryError
from freshindex.query.filters import parse_filters
from freshindex.query.gateway import ModelGateway
from freshindex.query.retrieval import IndexReader, PinnedTable, retrieve
from freshindex.query.types import MODES, SCAN_CAPPED_WARNING, AgentResult, Answer, ChatRequest, Hit
from freshindex.query.versions import version_rows


@dataclass(frozen=True)
class SearchResult:
    query: str
    mode: str
    k: int
    table: str
    table_version: int
    took_ms: float
    hits: tuple[Hit, ...]
    scan_capped: bool = False

    @property
    def warnings(self) -> tuple[str, ...]:
        return (SCAN_CAPPED_WARNING,) if self.scan_capped else ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "mode": self.mode,
            "k": self.k,
            "table": self.table,
            "table_version": self.table_version,
            "took_ms": round(self.took_ms, 3),
            "hits": [h.to_dict() for h in self.hits],
            "scan_capped": self.scan_capped,
            "warnings": list(self.warnings),
        }


class QueryService:
    """Search, ask and agent calls over one chunks table, sharing one reader and gateway."""

    def __init__(
        self,
        cfg: Config,
        qcfg: QueryConfig,
        *,
        gateway: ModelGateway | None = None,
        reader: IndexReader | None = None,
        environ: dict[str, str] | None = None,
    ):
        self.cfg = cfg
        self.qcfg = qcfg
        self._reader = reader
        self._gateway = gateway
        self._environ = environ
        self._lock = threading.Lock()
        # (old version, newest version, Access.key) -> documents an as-of read hides
        self._hidden: collections.OrderedDict[tuple, tuple[str, ...]] = collections.OrderedDict()

    @classmethod
    def from_config(cls, cfg: Config, qcfg: QueryConfig, **kwargs) -> QueryService:
        return cls(cfg, qcfg, **kwargs)

    # ---- shared resources, built on first use

    @property
    def reader(self) -> IndexReader:
        with self._lock:
            if self._reader is None:
                self._reader = IndexReader.open(
                    self.cfg.db,
                    self.cfg.table,
                    config=self.qcfg.retrieval,
                    embedding=self.cfg.embedding,
                )
            return self._reader

    @property
    def gateway(self) -> ModelGateway:
        with self._lock:
            if self._gateway is None:
                self._gateway = ModelGateway.from_config(
                    self.qcfg, embedder=self._embedder, environ=self._environ
                )
            return self._gateway

    def _embedder(self):
        """The extractive provider scores sentences with the table's own model."""
        return self.reader.pinned().embedder

    # ---- who is asking

    def access(self, principals=None) -> Access:
        """The caller with ``principals`` (None: anonymous, reads public documents only)."""
        return Access.of(principals, unlabeled=self.qcfg.retrieval.unlabeled)

    def view(self, as_of: str | int | None = None, caller: Access | None = None) -> PinnedTable:
        """The version ``as_of`` as ``caller`` may read it (default: anonymous). An as-of
        read of an older version also hides the documents whose labels no longer admit the
        caller: a revoked principal reads neither the new nor an old version of them
        (docs/SECURITY.md)."""
        access = caller if caller is not None else self.access()
        if access.unlabeled != self.qcfg.retrieval.unlabeled:
            access = dataclasses.replace(access, unlabeled=self.qcfg.retrieval.unlabeled)
        pinned = self.reader.pinned(as_of)
        hidden: tuple[str, ...] = ()
        if as_of not in (None, "") and not access.is_admin:
            newest = self.reader.pinned()
            if newest.version != pinned.version:
                hidden = self._hidden_docs(pinned, newest, access)
        return pinned.restricted(access, hidden)

    def _hidden_docs(self, old: PinnedTable, new: PinnedTable, access: Access):
        key = (old.version, new.version, access.key)
        with self._lock:
            found = self._hidden.get(key)
        if found is None:
            found = hidden_since(old, new, access)
            with self._lock:
                self._hidden[key] = found
                while len(self._hidden) > 64:
                    self._hidden.popitem(last=False)
        return found

    # ---- checks shared by every interface

    def check(self, *, query: str, k: int | None = None, mode: str | None = None) -> None:
        limits = self.qcfg.api
        if not query or not query.strip():
            raise LimitExceeded("the query is empty")
        if len(query) > limits.max_query_chars:
            raise LimitExceeded(
                f"the query has {len(query)} characters, the limit is {limits.max_query_chars}"
            )
        if k is not None and not 1 <= k <= limits.max_k:
            raise LimitExceeded(f"k must be within 1..{limits.max_k}, got {k}")
        if mode is not None and mode not in MODES:
            raise QueryError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")

    # ---- the calls

    def search(
        self,
        query: str,
        *,
        mode: str | None = None,
        k: int | None = None,
        filters: Any = None,
        as_of: str | int | None = None,
        rrf_k: int | None = None,
        weights: dict[str, float] | None = None,
        reranker: str | None = None,
        caller: Access | None = None,
    ) -> SearchResult:
        """``caller``: who is asking (``access``); default anonymous (public documents)."""
        self.check(query=query, k=k, mode=mode)
        started = time.perf_counter()
        pinned = self.view(as_of, caller)
        mode = mode or self.qcfg.retrieval.mode
        k = k or self.qcfg.retrieval.k
        hits = retrieve(
            pinned,
            query,
            mode=mode,
            k=k,
            filters=parse_filters(filters),
            rrf_k=rrf_k,
            weights=weights,
            reranker=reranker,
        )
        took = (time.perf_counter() - started) * 1000
        capped = bool(getattr(hits, "scan_capped", False))
        return SearchResult(query, mode, k, pinned.name, pinned.version, took, tuple(hits), capped)

    def answer_from_hits(
        self,
        question: str,
        hits: tuple[Hit, ...],
        version: int | None,
        *,
        provider: str | None = None,
        ledger: Ledger | None = None,
        deadline: float | None = None,
        audience: str = "",
    ) -> Answer:
        context, used = assemble_context(hits, self.qcfg.context.max_tokens)
        messages = render(
            self.qcfg.context.prompts_path, "answer", question=question, context=context
        )
        request = ChatRequest(
            messages,
            task="answer",
            question=question,
            context=used,
            provider=provider,
            audience=audience,
        )
        ledger = ledger or self.gateway.ledger.child()
        response = self.gateway.complete(request, ledger=ledger, deadline=deadline)
        citations = response.citations or citations_from_text(response.text, used)
        return Answer(
            question=question,
            text=response.text,
            answered=response.answered,
            citations=tuple(citations),
            hits=used,
            provider=response.provider,
            model=response.model,
            table_version=version,
            cached=response.cached,
            usage=response.usage,
            accounting=ledger.summary(),
        )

    def ask(
        self,
        question: str,
        *,
        mode: str | None = None,
        k: int | None = None,
        filters: Any = None,
        as_of: str | int | None = None,
        provider: str | None = None,
        caller: Access | None = None,
    ) -> Answer:
        """Retrieve, pack the context into the token budget, answer through the gateway, all
        within one ``gateway.request_deadline_s``."""
        if provider is not None and provider not in self.qcfg.gateway.providers:
            raise QueryError(
                f"unknown provider {provider!r}",
                hint=f"configured: {sorted(self.qcfg.gateway.providers)}",
            )
        deadline = self.gateway.deadline()
        caller = caller if caller is not None else self.access()
        result = self.search(question, mode=mode, k=k, filters=filters, as_of=as_of, caller=caller)
        return self.answer_from_hits(
            question,
            result.hits,
            result.table_version,
            provider=provider,
            deadline=deadline,
            audience=caller.key,
        )

    def agent(
        self,
        question: str,
        *,
        as_of: str | int | None = None,
        max_steps: int | None = None,
        planner: str = "auto",
        mode: str | None = None,
        k: int | None = None,
        filters: Any = None,
        caller: Access | None = None,
    ) -> AgentResult:
        self.check(query=question, k=k, mode=mode)
        deadline = self.gateway.deadline()
        limit = self.qcfg.api.max_agent_steps
        if max_steps is not None and not 1 <= max_steps <= limit:
            raise LimitExceeded(f"max_steps must be within 1..{limit}, got {max_steps}")
        parse_filters(filters)  # refuse bad filters here, not in the middle of a run
        pinned: PinnedTable = self.view(as_of, caller)
        return Agent(self.qcfg, self.gateway).run(
            question,
            pinned,
            max_steps=max_steps,
            planner=planner,
            mode=mode,
            k=k,
            filters=filters or None,
            deadline=deadline,
        )

    def versions(self) -> list[dict[str, Any]]:
        return version_rows(self.reader.db, self.cfg.table)

    def health(self) -> dict[str, Any]:
        """Whether the table opens, its newest version and rows, and the FTS index state."""
        try:
            pinned = self.reader.pinned()
        except Exception as exc:  # reported, not raised: this is the health endpoint
            return {"status": "error", "table": self.cfg.table, "error": str(exc).splitlines()[0]}
        return {
            "status": "ok",
            "table": pinned.name,
            "table_version": pinned.version,
            "rows": pinned.num_rows,
            "embedding_model": pinned.model,
            "vector_engine": pinned.vector_engine,
            "fts_unindexed_rows": store.fts_unindexed_rows(pinned.table),
            "providers": sorted(self.gateway.providers),
        }
