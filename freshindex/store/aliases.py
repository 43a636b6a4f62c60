"""Aliases: the index names readers use, apart from the physical tables that hold chunks.

An alias maps a name (``docs``) to a physical chunks table (``docs__3f2a9c1b``) and, when
it pins one, a version of it. A name without an alias is the table of that name, so
databases without aliases read as before. Aliases live in one bookkeeping table of the
database, ``aliases``, beside ``runs`` and ``stream_batches``: every writer and reader of
the database sees them, on a local folder and on ``s3://`` alike. The table is a log:

* a switch appends ONE row ``(name, table, version, seq, changed_at, reason)``; a LanceDB
  append is one commit, so a reader sees the old target or the new one, never a mix;
* writers hold the commit lock of ``_aliases`` (a file lock locally, the S3 commit lease
  on ``s3://``: ``freshindex.store.lock``) while they read the last ``seq`` and append the
  next, so two switches never interleave;
* the newest row of a name (highest ``seq``) is its target; the older rows are its history
  (``freshindex alias show``).

Readers resolve a name when they pin a read (``query/readers.py``); a reader that pinned
before a switch keeps its ``PinnedTable`` (a handle checked out at one version of the old
table) to the end of its request.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from freshindex.config import CommitConfig
from freshindex.errors import SchemaMismatch, TableError
from freshindex.schemas.predicates import eq
from freshindex.schemas.tables import META_PREFIX, SCHEMA_VERSION, table_metadata
from freshindex.store.bookkeeping import bookkeeping_table
from freshindex.store.connection import connect, open_if_exists, table_names, utcnow
from freshindex.store.lock import check_held, commit_lock

ALIASES_TABLE = "aliases"
ALIAS_LOCK = "_aliases"  # the commit lock every alias switch holds

ALIASES_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("version", pa.int64()),  # null: the table's newest version
        pa.field("seq", pa.int64(), nullable=False),
        pa.field("changed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("reason", pa.string()),
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)


@dataclass(frozen=True)
class Target:
    """What a name reads: a physical table and, when the alias pins one, its version."""

    name: str
    table: str
    version: int | None = None
    seq: int = 0  # 0: no alias, the table of that name

    @property
    def aliased(self) -> bool:
        return self.seq > 0


def _rows(aliases, name: str | None = None) -> list[dict]:
    query = aliases.search()
    if name is not None:
        query = query.where(eq("name", name).expr())
    return query.limit(None).to_arrow().to_pylist()


def _target(name: str, rows: list[dict]) -> Target:
    if not rows:
        return Target(name, name)
    last = max(rows, key=lambda r: r["seq"])
    return Target(name, last["table"], last["version"], last["seq"])


def resolve_alias(db, name: str) -> Target:
    """The target of ``name`` now (the table of that name when it has no alias)."""
    aliases = open_if_exists(db, ALIASES_TABLE)
    return Target(name, name) if aliases is None else _target(name, _rows(aliases, name))


class AliasResolver:
    """Resolves names again and again on one open handle of the aliases table (a reader
    pins a version per request: it must not reopen the table each time). A name's target
    is read once per version of the aliases table: a pin only looks up that version (the
    table is append-only, so an unchanged version means unchanged targets). ``db=None``:
    every name is the table of that name."""

    def __init__(self, db):
        self.db = db
        self._aliases = None
        self._version: int | None = None
        self._targets: dict[str, Target] = {}

    def resolve(self, name: str) -> Target:
        if self.db is None:  # a resolver of physical names only
            return Target(name, name)
        if self._aliases is None:
            self._aliases = open_if_exists(self.db, ALIASES_TABLE)
            if self._aliases is None:
                return Target(name, name)
        else:
            self._aliases.checkout_latest()
        if self._aliases.version != self._version:
            self._version, self._targets = self._aliases.version, {}
        found = self._targets.get(name)
        if found is None:
            found = self._targets[name] = _target(name, _rows(self._aliases, name))
        return found


def recorded_fingerprint(table) -> str | None:
    """The settings fingerprint a chunks table was created with (None: not recorded)."""
    try:
        return json.loads(table_metadata(table.schema).get("settings") or "{}").get("fingerprint")
    except ValueError:
        return None


def reuse_source(table) -> str | None:
    """The table whose vectors ``table``'s writers may reuse where text and model match
    (recorded in its settings as ``reuse_vectors_from`` by ``freshindex migrate start``)."""
    try:
        settings = json.loads(table_metadata(table.schema).get("settings") or "{}")
    except ValueError:
        return None
    return settings.get("reuse_vectors_from") or None


def writer_table(db, name: str, fingerprint: str) -> str:
    """The table a writer (a batch run, a stream process) named ``name`` writes: the alias's
    target. Resolved once, when the writer starts: its settings belong to one table, so a
    writer whose settings are not the ones the target was built with is refused (after a
    migration's cutover the name serves a table of other settings: chunks of two chunkings
    must not mix)."""
    target = resolve_alias(db, name)
    if target.table == name:
        return name
    table = open_if_exists(db, target.table)
    recorded = None if table is None else recorded_fingerprint(table)
    if recorded is not None and recorded != fingerprint:
        raise SchemaMismatch(
            f"{name!r} now names table {target.table!r}, built with other settings "
            f"(fingerprint {recorded}, this writer's is {fingerprint})",
            table=target.table,
            hint="use the settings of the migration that built it (freshindex migrate status), "
            "or name the table itself",
        )
    return target.table


def list_aliases(db) -> list[Target]:
    """Every alias's current target, by name."""
    aliases = open_if_exists(db, ALIASES_TABLE)
    if aliases is None:
        return []
    by_name: dict[str, list[dict]] = {}
    for row in _rows(aliases):
        by_name.setdefault(row["name"], []).append(row)
    return [_target(name, rows) for name, rows in sorted(by_name.items())]


def alias_history(db, name: str) -> list[dict]:
    """Every switch of ``name``, oldest first."""
    aliases = open_if_exists(db, ALIASES_TABLE)
    return [] if aliases is None else sorted(_rows(aliases, name), key=lambda r: r["seq"])


def _check_target(db, name: str, table: str, version: int | None, current: dict) -> None:
    if table != name and current.get(table, table) != table:
        raise TableError(
            f"alias {name!r}: {table!r} is itself an alias (of {current[table]!r})",
            table=table,
            hint="point the alias at a physical table; aliases do not chain",
        )
    if table not in table_names(db):
        raise TableError(
            f"alias {name!r}: no table {table!r} in this database",
            table=table,
            hint="`freshindex alias list` shows the aliases; an alias names a chunks table",
        )
    opened = db.open_table(table)
    if "vector" not in opened.schema.names:
        raise TableError(f"alias {name!r}: {table!r} is not a chunks table", table=table)
    if version is not None and version not in {v["version"] for v in opened.list_versions()}:
        raise TableError(
            f"alias {name!r}: table {table!r} has no version {version}",
            table=table,
            hint="`freshindex versions --table NAME` lists them",
        )


def set_alias(
    db_uri: str,
    name: str,
    table: str,
    version: int | None = None,
    *,
    reason: str = "",
    expect: Target | None = None,
    commit: CommitConfig | None = None,
    db=None,
) -> Target:
    """Point ``name`` at ``table`` (at ``version``, or its newest when None) in one append.

    ``expect``: the target the caller decided from; when the alias moved since, nothing is
    written (``TableError``), so a cutover never undoes a switch it did not see."""
    db = db if db is not None else connect(db_uri)
    with commit_lock(db_uri, ALIAS_LOCK, commit) as lease:
        aliases = bookkeeping_table(db, ALIASES_TABLE, ALIASES_SCHEMA)
        rows = _rows(aliases)
        current = {t.name: t.table for t in _latest(rows)}
        now = _target(name, [r for r in rows if r["name"] == name])
        if expect is not None and (now.table, now.version) != (expect.table, expect.version):
            raise TableError(
                f"alias {name!r} moved to {now.table!r} meanwhile (expected {expect.table!r})",
                table=name,
                hint="look at `freshindex alias show NAME` and decide again",
            )
        _check_target(db, name, table, version, current)
        seq = max((r["seq"] for r in rows), default=0) + 1
        row = {
            "name": name,
            "table": table,
            "version": version,
            "seq": seq,
            "changed_at": utcnow(),
            "reason": reason,
        }
        check_held(lease)
        aliases.add(pa.Table.from_pylist([row], schema=ALIASES_SCHEMA))
    return Target(name, table, version, seq)


def _latest(rows: list[dict]) -> list[Target]:
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    return [_target(n, r) for n, r in by_name.items()]
