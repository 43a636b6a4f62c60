"""Access labels: who may read a document, as the principals and groups stored beside its chunks.

Every chunk row carries its document's labels in the ``acl`` column (a list of strings). A
caller reads a row when one of its principals is among the row's labels; ``public`` is every
caller's principal, so ``["public"]`` is readable by all and ``[]`` by nobody but ``admin``,
the privileged principal of evaluation and upkeep. The query plane enforces this before
ranking (``freshindex.query.access``); docs/SECURITY.md has the whole model.

Labels are plain names (letters, digits and ``_ . : @ -``, at most 128 characters), so a
label is never text that could change the meaning of a predicate it is put in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

ACL_COLUMN = "acl"
PUBLIC = "public"  # every caller has it; a document labelled public is readable by all
ADMIN = "admin"  # sees every row; for evaluation, upkeep and operators
MAX_LABELS = 256
_LABEL = re.compile(r"^[A-Za-z0-9_.:@\-]{1,128}$")


def check_label(value: Any) -> str:
    """``value`` if it is a valid label, else ValueError saying what a label may be."""
    if not isinstance(value, str) or not _LABEL.match(value):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ValueError(
            f"invalid access label {shown}: labels are 1-128 letters, digits or _ . : @ -"
        )
    return value


def labels(values: Iterable[Any] | str) -> tuple[str, ...]:
    """Sorted, unique, checked labels; a string is a comma-separated list.

    >>> labels("hr, alice,hr")
    ('alice', 'hr')
    """
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    if not isinstance(values, list | tuple | set | frozenset):
        raise ValueError(f"access labels are a list of strings, got {type(values).__name__}")
    out = tuple(sorted({check_label(v) for v in values}))
    if len(out) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} access labels per document, got {len(out)}")
    return out


def optional_labels(value: Any) -> tuple[str, ...] | None:
    """The ``acl`` field of a JSONL record or a Kafka message: None when absent (the
    source's rules and default decide), else its checked labels."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError(f"acl must be a list of labels, got {type(value).__name__}")
    return labels(value)
