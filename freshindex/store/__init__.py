"""The storage floor: LanceDB access shared by every writer and reader.

One module per concern; the names callers use are re-exported here, so
``from freshindex import store; store.connect(uri)`` reads as before.

* ``connection``: connect, table names, filesystems, the clock
* ``lock`` (with ``lease``): the commit lock every writer of a table holds; the S3 lease
* ``runlock``: the run lock a batch run holds from start to end (one run per table)
* ``verify``: the post-commit check (the commit is in the table, once)
* ``chunks``: open or create a chunks table (model, width and schema version checked)
* ``upgrade``: schema versions checked on open; the additive upgrade path
* ``ledger``: what the table knows about each document; stored vectors by text hash
* ``indexes``: scalar and full-text indexes
* ``versions``: tags, version references, as-of reads
* ``bookkeeping``: ``runs``, ``errors``, ``stream_batches``, ``ann_state``
* ``aliases``: index names readers use -> physical tables (``aliases`` table)
* ``staging``: the batch runs' staging folders
* ``upkeep`` (with ``retention`` and ``ann``): table upkeep, imported on its own
"""

from freshindex.store.aliases import (
    ALIASES_TABLE,
    AliasResolver,
    Target,
    alias_history,
    list_aliases,
    recorded_fingerprint,
    resolve_alias,
    reuse_source,
    set_alias,
    writer_table,
)
from freshindex.store.bookkeeping import (
    ann_search_params,
    append_errors,
    append_records,
    append_run,
    append_stream_batch,
    bookkeeping_table,
    last_ann_state,
    read_errors,
    read_known_failures,
    read_runs,
    read_stream_batches,
    read_stream_offsets,
    record_ann_state,
)
from freshindex.store.chunks import (
    check_model,
    current_version,
    open_chunks,
    open_or_create_chunks,
)
from freshindex.store.connection import (
    connect,
    filesystem,
    is_local,
    open_created,
    open_if_exists,
    table_names,
    utcnow,
)
from freshindex.store.indexes import (
    FTS_COLUMN,
    FTS_REFRESH_FRACTION,
    FTS_REFRESH_MIN_ROWS,
    create_fts_index,
    ensure_scalar_indexes,
    fts_unindexed_rows,
    refresh_fts_index,
)
from freshindex.store.lease import CommitLease, LeaseLost, LeaseTimeout
from freshindex.store.ledger import (
    LedgerEntry,
    iter_ledger,
    ledger_of,
    lookup_vectors,
    read_ledger,
    relabel,
)
from freshindex.store.lock import CommitNotCoordinated, check_held, commit_lock, token_of
from freshindex.store.runlock import RunInProgress, RunSkipped, run_lock
from freshindex.store.staging import remove_stale_staging, staging_dir, staging_root
from freshindex.store.upgrade import (
    UpgradeReport,
    apply_upgrades,
    check_schema_version,
    upgrade_chunks,
)
from freshindex.store.verify import CommitCheckFailed, verify_commit
from freshindex.store.versions import RUN_TAG_PREFIX, open_as_of, resolve_version, tag_version

__all__ = [
    "ALIASES_TABLE",
    "FTS_COLUMN",
    "FTS_REFRESH_FRACTION",
    "FTS_REFRESH_MIN_ROWS",
    "RUN_TAG_PREFIX",
    "AliasResolver",
    "CommitCheckFailed",
    "CommitLease",
    "CommitNotCoordinated",
    "LeaseLost",
    "LeaseTimeout",
    "LedgerEntry",
    "RunInProgress",
    "RunSkipped",
    "Target",
    "UpgradeReport",
    "alias_history",
    "ann_search_params",
    "append_errors",
    "append_records",
    "append_run",
    "append_stream_batch",
    "apply_upgrades",
    "bookkeeping_table",
    "check_held",
    "check_model",
    "check_schema_version",
    "commit_lock",
    "connect",
    "create_fts_index",
    "current_version",
    "ensure_scalar_indexes",
    "filesystem",
    "fts_unindexed_rows",
    "is_local",
    "iter_ledger",
    "last_ann_state",
    "ledger_of",
    "list_aliases",
    "lookup_vectors",
    "open_as_of",
    "open_chunks",
    "open_created",
    "open_if_exists",
    "open_or_create_chunks",
    "read_errors",
    "read_known_failures",
    "read_ledger",
    "read_runs",
    "read_stream_batches",
    "read_stream_offsets",
    "record_ann_state",
    "recorded_fingerprint",
    "refresh_fts_index",
    "relabel",
    "remove_stale_staging",
    "resolve_alias",
    "resolve_version",
    "reuse_source",
    "run_lock",
    "set_alias",
    "staging_dir",
    "staging_root",
    "table_names",
    "tag_version",
    "token_of",
    "upgrade_chunks",
    "utcnow",
    "verify_commit",
    "writer_table",
]
