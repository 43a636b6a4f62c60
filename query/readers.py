"""Readers: who pins versions of a chunks table for queries, and how long they keep them.

* ``IndexReader``: one chunks table opened once; pins versions, tags and run ids (``as_of``)
  and keeps the last ``retrieval.cached_versions`` pinned versions. It owns the thread pool
  hybrid search runs its full-text side on; ``close()`` (or ``with``) releases both.
* ``ReaderCache``: a bounded set of readers by (db URI, table), for callers that name tables
  by URI in a loop (``vector_search``); its owner decides its lifetime.

Both ``IndexReader`` and ``PinnedTable`` answer ``pinned(as_of)``: that is the one way
retrieval asks what to read.
"""

from __future__ import annotations

import collections
import functools
import threading

from freshindex import store
from freshindex.config import EmbeddingConfig
from freshindex.query.config import RetrievalConfig
from freshindex.query.errors import QueryError
from freshindex.query.pinning import FtsPool, PinnedTable

# The tuned ANN parameters live with table upkeep until store takes them (issue 11); this is
# the query plane's only import of it.
from freshindex.store import ann_search_params


class IndexReader:
    """A chunks table opened once; hands out ``PinnedTable``s for versions, tags and run ids.

    ``as_of=None`` reads the newest version at call time. Pinned versions are kept in a
    small LRU (``retrieval.cached_versions``), so repeated queries reuse them. ``close()``
    drops them and stops the reader's FTS threads; ``with IndexReader.open(...) as r:`` does
    it on exit.
    """

    def __init__(
        self,
        db,
        table_name: str,
        *,
        config: RetrievalConfig | None = None,
        embedding: EmbeddingConfig | None = None,
        embedder=None,
        aliases: bool = True,
    ):
        self.db = db
        self.table_name = table_name
        self.config = config or RetrievalConfig()
        self.embedding = embedding
        self._embedder = embedder
        # ``table_name`` is the name readers use: an alias (``store.aliases``) or a table;
        # it is resolved again at every pin, so a switch is seen by the next request.
        # ``aliases=False`` reads the table of that name itself (a migration comparing two
        # physical tables)
        self._aliases = store.AliasResolver(db if aliases else None)
        self._target = self._aliases.resolve(table_name)
        self._head = store.open_chunks(db, self._target.table)
        self._pinned: collections.OrderedDict[tuple[str, int], PinnedTable] = (
            collections.OrderedDict()
        )
        self._fts_pool = FtsPool()
        self._lock = threading.Lock()

    @classmethod
    def open(cls, db_uri: str, table_name: str, **kwargs) -> IndexReader:
        return cls(store.connect(db_uri), table_name, **kwargs)

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the pinned versions (their in-RAM indexes) and stop the FTS threads; the
        reader stays usable and starts them again when asked."""
        with self._lock:
            self._pinned.clear()
        self._fts_pool.shutdown()

    @property
    def cached_versions(self) -> list[int]:
        with self._lock:
            return [version for _, version in self._pinned]

    @property
    def physical_table(self) -> str:
        """The table the name resolved to at the last pin."""
        with self._lock:
            return self._target.table

    def _resolve(self, as_of: str | int | None) -> tuple[str, int]:
        """(physical table, version) that ``as_of`` names now: the alias is read first, so
        a switch takes effect at the next pin, in one step."""
        with self._lock:
            target = self._aliases.resolve(self.table_name)
            if target.table != self._head.name:
                self._head = store.open_chunks(self.db, target.table)
            self._target = target
            if as_of is None or as_of == "":
                if target.version is not None:
                    return target.table, int(target.version)
                self._head.checkout_latest()
                return target.table, int(self._head.version)
            return target.table, store.resolve_version(self._head, as_of)

    def resolve(self, as_of: str | int | None = None) -> int:
        return self._resolve(as_of)[1]

    def pinned(self, as_of: str | int | None = None) -> PinnedTable:
        key = self._resolve(as_of)
        physical, version = key
        with self._lock:
            found = self._pinned.get(key)
            if found is not None:
                self._pinned.move_to_end(key)
                return found
            # the newest version of this table pinned so far: a new version's memory index
            # starts from it
            previous = max(
                (p for (name, _), p in self._pinned.items() if name == physical),
                key=lambda p: p.version,
                default=None,
            )
        table = self.db.open_table(physical)
        table.checkout(version)
        pinned = PinnedTable(
            table,
            version,
            config=self.config,
            embedding=self.embedding,
            embedder=self._embedder,
            read_ann_params=functools.partial(ann_search_params, self.db, physical),
            previous=previous,
            fts_pool=self._fts_pool,
        )
        with self._lock:  # the embedder is shared: get_embedder caches one per model
            pinned = self._pinned.setdefault(key, pinned)
            while len(self._pinned) > self.config.cached_versions:
                self._pinned.popitem(last=False)
        return pinned


class ReaderCache:
    """At most ``max_readers`` ``IndexReader``s by (db URI, table), least recently used
    dropped first: reading a table by URI in a loop must not reopen it each time. Owned by
    its caller (a server, a test, a script), which ``close()``s it."""

    def __init__(self, max_readers: int = 8, *, config: RetrievalConfig | None = None):
        if max_readers < 1:
            raise QueryError(f"max_readers must be at least 1, got {max_readers}")
        self.max_readers = max_readers
        self.config = config
        self._readers: collections.OrderedDict[tuple[str, str], IndexReader] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._readers)

    def __enter__(self) -> ReaderCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def reader(self, db_uri: str, table_name: str) -> IndexReader:
        key = (str(db_uri), table_name)
        with self._lock:
            found = self._readers.get(key)
            if found is not None:
                self._readers.move_to_end(key)
                return found
        reader = IndexReader.open(db_uri, table_name, config=self.config)
        with self._lock:
            reader = self._readers.setdefault(key, reader)
            dropped = []
            while len(self._readers) > self.max_readers:
                dropped.append(self._readers.popitem(last=False)[1])
        for old in dropped:
            old.close()
        return reader

    def close(self) -> None:
        with self._lock:
            readers = list(self._readers.values())
            self._readers.clear()
        for reader in readers:
            reader.close()
