"""Access labels of the documents a run writes: the record's or message's own ``acl``, else the
source's rules (``access.rules``: source URI glob -> labels), else ``access.default``.

Labels are set on the ``SourceRef`` before planning, so the plan compares them with the
ledger's: a document whose bytes and settings did not change but whose labels did is
relabelled in place (``freshindex.store.ledger.relabel``), neither parsed nor embedded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass

from freshindex.config import AccessConfig
from freshindex.schemas.access import PUBLIC, labels
from freshindex.schemas.records import SourceRef


@dataclass(frozen=True)
class Labeler:
    """Picklable (a Beam DoFn carries it): the rules as (glob, labels) pairs and the default."""

    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    default: tuple[str, ...] = (PUBLIC,)

    @classmethod
    def of(cls, cfg: AccessConfig | None) -> Labeler:
        cfg = cfg or AccessConfig()
        rules = tuple((pattern, labels(values)) for pattern, values in cfg.rules.items())
        return cls(rules, (PUBLIC,) if cfg.default == "public" else ())

    def labels_for(self, source_uri: str, explicit: tuple[str, ...] | None = None):
        """The labels of a document from ``source_uri`` (``explicit``: its own acl field).

        >>> Labeler((("/hr/*", ("hr",)),)).labels_for("/hr/pay.md")
        ('hr',)
        """
        if explicit is not None:
            return tuple(explicit)
        found: set[str] = set()
        matched = False
        for pattern, values in self.rules:
            if fnmatch.fnmatchcase(source_uri or "", pattern):
                found.update(values)
                matched = True
        return tuple(sorted(found)) if matched else self.default

    def label(self, ref: SourceRef) -> SourceRef:
        """``ref`` with its effective labels."""
        return dataclasses.replace(ref, acl=self.labels_for(ref.source_uri, ref.acl))
