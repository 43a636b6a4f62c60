"""Who is asking: a caller's principals, and the access condition every read adds for them.

A caller is an ``Access``: its principals and groups (``public`` always among them), or
``admin``, who reads every row. ``PinnedTable.restricted(access)`` gives the caller's view
of a version: vector (LanceDB prefilter and the in-RAM mask), full-text, hybrid, listings
and document lookups all apply the condition *before* ranking, so a caller gets ``k`` hits
whenever ``k`` visible ones exist, and never a row it may not read. The response cache is
keyed by ``Access.key`` as well (``freshindex.query.service``).

Rows without labels (written before labels existed) are readable as ``public`` when
``retrieval.unlabeled`` is ``public`` (the default, so an older index keeps answering) and by
``admin`` only when it is ``deny``. docs/SECURITY.md has the model.

    caller = Access.of(["alice", "eng"])   # sees acl containing alice, eng or public
    view = reader.pinned().restricted(caller)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from freshindex.query.errors import QueryError
from freshindex.query.filters import Filter
from freshindex.schemas.access import ACL_COLUMN, ADMIN, PUBLIC, labels

UNLABELED_CHOICES = ("public", "deny")


@dataclass(frozen=True)
class Access:
    """A caller's principals (sorted, ``public`` included); ``admin`` reads everything."""

    principals: tuple[str, ...] = (PUBLIC,)
    unlabeled: str = "public"  # retrieval.unlabeled: who reads rows without labels

    @classmethod
    def of(cls, principals: Iterable[str] | str | None, *, unlabeled: str = "public") -> Access:
        """``principals`` (a list, or text ``alice,eng``) plus ``public``; None or empty: an
        anonymous caller, who reads public documents only."""
        if unlabeled not in UNLABELED_CHOICES:
            raise QueryError(f"unlabeled must be public or deny, got {unlabeled!r}")
        try:
            given = labels(principals) if principals else ()
        except ValueError as exc:
            raise QueryError(
                str(exc), hint="principals are names such as alice or hr, comma-separated"
            ) from None
        return cls(tuple(sorted({*given, PUBLIC})), unlabeled)

    @classmethod
    def admin(cls) -> Access:
        return cls((ADMIN, PUBLIC))

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.principals

    @property
    def key(self) -> str:
        """What a cached answer is filed under besides its prompt: a hash of the principals
        (answers built from one caller's visible set are never served to another set)."""
        blob = "\x00".join((*self.principals, f"unlabeled={self.unlabeled}"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def conditions(self, schema) -> tuple[tuple[Filter, ...], bool]:
        """(filters every read of a table with ``schema`` adds, whether the caller sees no
        row at all). A table written before labels existed has no ``acl`` column: all its
        rows are unlabelled."""
        if self.is_admin:
            return (), False
        unlabeled_ok = self.unlabeled == "public"
        if ACL_COLUMN not in schema.names:
            return (), not unlabeled_ok
        return (Filter.visible_to(self.principals, unlabeled=unlabeled_ok),), False

    def describe(self) -> str:
        return "admin" if self.is_admin else ",".join(self.principals)


ANONYMOUS = Access()


def audience_of(pinned) -> str:
    """The cache audience of a table view: its caller's ``Access.key`` ("" unrestricted)."""
    access = getattr(pinned, "access", None)
    return access.key if access is not None else ""


def readable_docs(table, access: Access) -> tuple[set[str], set[str]]:
    """(documents ``access`` may read in ``table``'s checked-out version by the labels it
    holds there, every document there). One scan of (doc_id, acl)."""
    names = [c for c in ("doc_id", ACL_COLUMN) if c in table.schema.names]
    rows = table.search().select(names).limit(None).to_arrow()
    all_docs = set(rows["doc_id"].to_pylist())
    conditions, nothing = access.conditions(table.schema)
    if nothing:
        return set(), all_docs
    if not conditions:
        return all_docs, all_docs
    from freshindex.query.filters import arrow_mask

    mask = arrow_mask(rows, conditions)
    docs = rows["doc_id"].to_pylist()
    return {d for d, ok in zip(docs, mask, strict=True) if ok}, all_docs


def denied_now(table, access: Access) -> set[str]:
    """Documents in ``table``'s checked-out (newest) version whose labels deny ``access``:
    hidden from every older version's view too (a revoked principal reads no version)."""
    if access.is_admin:
        return set()
    readable, present = readable_docs(table, access)
    return present - readable


def hidden_since(old, new, access: Access) -> tuple[str, ...]:
    """Documents ``access`` could read at the old version ``old`` (a PinnedTable) but may
    not read now (``new``): their labels changed since. An as-of read hides them, so a
    revoked principal reads no version of a document, old or new. Documents deleted since
    keep the labels they had. Two scans of (doc_id, acl); the service caches the answer."""
    if access.is_admin:
        return ()
    then, _ = readable_docs(old.table, access)
    return tuple(sorted(then & denied_now(new.table, access)))


def document_labels(pinned, doc_id: str) -> list[list[str]] | None:
    """The distinct label lists of ``doc_id``'s rows in ``pinned`` (normally one; None:
    no such document). An operator's view: not filtered by any caller."""
    from freshindex.query.filters import Filter, to_expr

    names = [c for c in ("doc_id", ACL_COLUMN) if c in pinned.table.schema.names]
    rows = (
        pinned.table.search()
        .where(to_expr([Filter.of("doc_id", "=", doc_id)]))
        .select(names)
        .limit(None)
        .to_arrow()
    )
    if rows.num_rows == 0:
        return None
    if ACL_COLUMN not in names:
        return [None]
    found = {tuple(v) if v is not None else None for v in rows[ACL_COLUMN].to_pylist()}
    return [list(v) if v is not None else None for v in sorted(found, key=str)]


def visible_counts(pinned, access: Access) -> list[dict]:
    """Per source (namespace): how many documents and chunks ``access`` may read, of how
    many. One scan of (doc_id, namespace, acl)."""
    from freshindex.query.filters import arrow_mask

    names = [c for c in ("doc_id", "namespace", ACL_COLUMN) if c in pinned.table.schema.names]
    rows = pinned.table.search().select(names).limit(None).to_arrow()
    conditions, nothing = access.conditions(pinned.table.schema)
    if nothing:
        mask = [False] * rows.num_rows
    elif conditions:
        mask = arrow_mask(rows, conditions).tolist()
    else:
        mask = [True] * rows.num_rows
    sources = rows["namespace"].to_pylist() if "namespace" in names else [None] * rows.num_rows
    counts: dict[str, dict] = {}
    for doc_id, source, ok in zip(rows["doc_id"].to_pylist(), sources, mask, strict=True):
        entry = counts.setdefault(
            source or "(none)",
            {"source": source or "(none)", "docs": set(), "visible_docs": set(), "chunks": 0},
        )
        entry["docs"].add(doc_id)
        entry["chunks"] += 1
        if ok:
            entry["visible_docs"].add(doc_id)
            entry["visible_chunks"] = entry.get("visible_chunks", 0) + 1
    return [
        {
            "source": e["source"],
            "visible_docs": len(e["visible_docs"]),
            "docs": len(e["docs"]),
            "visible_chunks": e.get("visible_chunks", 0),
            "chunks": e["chunks"],
        }
        for _, e in sorted(counts.items())
    ]


def hash_key(key: str) -> str:
    """How ``api.keys`` stores a key: ``sha256:<hex>`` of its UTF-8 bytes."""
    if not key or not key.strip():
        raise QueryError("an API key must not be empty")
    return "sha256:" + hashlib.sha256(key.strip().encode()).hexdigest()
