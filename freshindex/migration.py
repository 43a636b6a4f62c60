"""Blue-green index migration: a shadow table built with new settings, a quality gate, and
an alias switch (``freshindex migrate start|status|check|cutover|rollback|abort|finish``).

    freshindex migrate start --index docs --config new.yaml [--source DIR]
    freshindex migrate check --index docs --dataset ../shared/data/scifact
    freshindex migrate cutover --index docs [--force]

(the commands: ``freshindex/commands/migrate.py``)

Readers name the index (``docs``); an alias (``freshindex.store.aliases``) says which
physical table that is. ``start`` builds ``docs__<fingerprint>`` from the live table's
source with the new settings (model, chunking, parser) through the batch pipeline;
``cutover`` catches it up with the source once more, then moves the alias in one append;
``rollback`` moves it back; ``finish`` drops the table no longer served; ``abort`` drops the
shadow. Each step appends a row to the ``migrations`` table (the state: index, old and new
table, fingerprint, status, when, what it cost), so every operator sees the same state.
Procedure and costs: docs/MIGRATION.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import pyarrow as pa

from freshindex import store
from freshindex.config import Config
from freshindex.errors import ConfigError, TableError
from freshindex.schemas.predicates import eq
from freshindex.schemas.tables import META_PREFIX, SCHEMA_VERSION, table_metadata

MIGRATIONS_TABLE = "migrations"
ACTIVE = ("building", "ready", "cut_over", "rolled_back")
DEFAULT_TOLERANCE = 0.005  # the same default as `freshindex eval --gate`
KAFKA_SOURCE = "kafka://"  # a stream-fed index: source = kafka://<bootstrap>/<topics>
SWITCH_TIMEOUT_S = 60.0  # how long a switch waits for a stream-fed table to catch up

MIGRATIONS_SCHEMA = pa.schema(
    [
        pa.field("migration_id", pa.string(), nullable=False),
        pa.field("index_name", pa.string(), nullable=False),
        pa.field("old_table", pa.string(), nullable=False),
        pa.field("new_table", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("config", pa.string()),  # the new settings, JSON (no secrets: refs only)
        pa.field("started_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("build_seconds", pa.float64()),  # time spent building and catching up
        pa.field("chunks_embedded", pa.int64()),  # vectors encoded for the shadow
        pa.field("check", pa.string()),  # the last gate's comparison, JSON
        pa.field("note", pa.string()),
    ],
    metadata={f"{META_PREFIX}schema_version": SCHEMA_VERSION},
)


class MigrationError(TableError):
    """A migration step that cannot run in the migration's current state."""


# ------------------------------------------------------------------ state


def _rows(db, index: str) -> list[dict[str, Any]]:
    table = store.open_if_exists(db, MIGRATIONS_TABLE)
    if table is None:
        return []
    rows = table.search().where(eq("index_name", index).expr()).limit(None).to_arrow()
    return sorted(rows.to_pylist(), key=lambda r: r["updated_at"])


def current(db, index: str) -> dict[str, Any] | None:
    """The newest state row of the last migration of ``index`` (None: never migrated)."""
    rows = _rows(db, index)
    return rows[-1] if rows else None


def active(db, index: str) -> dict[str, Any]:
    state = current(db, index)
    if state is None or state["status"] not in ACTIVE:
        raise MigrationError(
            f"no migration of {index!r} in progress",
            table=index,
            hint="start one: freshindex migrate start --index NAME --config NEW.yaml",
        )
    return state


def record(db, state: dict[str, Any], **changes) -> dict[str, Any]:
    row = {**state, **changes, "updated_at": store.utcnow()}
    table = store.bookkeeping_table(db, MIGRATIONS_TABLE, MIGRATIONS_SCHEMA)
    table.add(pa.Table.from_pylist([row], schema=MIGRATIONS_SCHEMA))
    return row


def shadow_name(index: str, cfg: Config) -> str:
    return f"{index}__{cfg.fingerprint()[:8]}"


def check_model_available(cfg: Config) -> None:
    """Load the new model now: one that is not installed (or needs the network while
    offline) fails here with a hint, not at the first query."""
    from freshindex.embedding import get_embedder

    try:
        get_embedder(cfg.embedding)
    except ConfigError:
        raise
    except Exception as exc:  # sentence-transformers raises OSError, ValueError, HF errors
        raise ConfigError(
            f"embedding model {cfg.embedding.model!r} cannot be loaded here: {exc}",
            hint="install it (or copy it to a local path and name that path) before "
            "starting the migration; freshindex runs offline (HF_HUB_OFFLINE=1)",
        ) from exc


def _last_source(db, table: str) -> str | None:
    runs = [r for r in store.read_runs(db, table) if r.get("kind") == "batch" and r["source"]]
    return runs[-1]["source"] if runs else None


def _table_bytes(db_uri: str, table: str) -> int | None:
    """Bytes the table's files take (local folder or object store)."""
    import pyarrow.fs as pafs

    fs, root = store.filesystem(db_uri.rstrip("/") + f"/{table}.lance")
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, FileNotFoundError):
        return None
    return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)


# ------------------------------------------------------------------ steps


def start(
    cfg: Config,
    index: str,
    source: str | None = None,
    *,
    topics: list[str] | None = None,
    bootstrap_servers: str | None = None,
    beam_args: list[str] | None = None,
    log=print,
    **stream_settings,
) -> dict[str, Any]:
    """Build the shadow table of ``index`` with ``cfg``'s settings; returns the state row.

    The source is a batch source (a folder, glob or JSONL; default: the live table's last
    batch run's), or Kafka ``topics``: the shadow is then built by a catch-up stream run
    from the topics' first offsets, in a consumer group of its own
    (``freshindex-<shadow table>``), and kept current by a stream process of its own."""
    db = store.connect(cfg.db)
    state = current(db, index)
    if state is not None and state["status"] in ACTIVE:
        raise MigrationError(
            f"a migration of {index!r} to {state['new_table']!r} is {state['status']}",
            table=index,
            hint="finish, abort or roll it back first (freshindex migrate status)",
        )
    old = store.resolve_alias(db, index).table
    if store.open_if_exists(db, old) is None:
        raise MigrationError(f"no table behind {index!r}", table=index)
    new = shadow_name(index, cfg)
    if new == old:
        raise MigrationError(
            f"{index!r} is already built with these settings ({old!r})",
            table=index,
            hint="change the model, chunking or parsing settings in --config",
        )
    if topics:
        bootstrap_servers = bootstrap_servers or cfg.stream.bootstrap_servers
        source = f"{KAFKA_SOURCE}{bootstrap_servers}/{','.join(topics)}"
    source = source or _last_source(db, old)
    if not source:
        raise MigrationError(
            f"no batch run recorded the source of {old!r}",
            table=old,
            hint="pass --source (the folder, glob or JSONL the index is built from) or, "
            "for a stream-fed index, --topics",
        )
    check_model_available(cfg)
    now = store.utcnow()
    state = record(
        db,
        {
            "migration_id": f"{index}-{now:%Y%m%dT%H%M%S}-{cfg.fingerprint()[:8]}",
            "index_name": index,
            "old_table": old,
            "new_table": new,
            "fingerprint": cfg.fingerprint(),
            "status": "building",
            "source": source,
            "config": json.dumps(cfg.to_dict(), default=str, sort_keys=True),
            "started_at": now,
            "build_seconds": 0.0,
            "chunks_embedded": 0,
            "check": None,
            "note": None,
        },
    )
    log(f"building {new} from {source} (live: {old})")
    started = time.perf_counter()
    shadow_cfg = dataclasses.replace(cfg, table=new)
    try:
        _create_shadow(db, shadow_cfg, old)
        if topics:
            from freshindex.pipelines.stream import run_stream, stream_config

            stream = stream_config(
                shadow_cfg,
                topics=topics,
                bootstrap_servers=bootstrap_servers,
                start_offset="earliest",
                stop_at_end=True,
                **stream_settings,
            )
            row = run_stream(shadow_cfg, stream, beam_args)
        else:
            from freshindex.pipelines.batch import run_ingest

            row = run_ingest(shadow_cfg, source, beam_args or [], physical=True)
    except BaseException as exc:
        # not active any more: a new `start` resumes the build (the batch and the stream
        # are incremental), `abort` is not needed
        record(db, state, status="failed", note=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return record(
        db,
        state,
        status="ready",
        build_seconds=time.perf_counter() - started,
        chunks_embedded=int(row.get("chunks_embedded") or 0),
        note=f"built: run {row['run_id']}, version {row['table_version']}",
    )


def _create_shadow(db, cfg: Config, live: str) -> None:
    """Create the shadow table, recording the live table as the source of vectors its
    writers may reuse where text and model match (``store.reuse_source``)."""
    from freshindex.embedding import get_embedder
    from freshindex.pipelines.batch import run_settings

    settings = {**run_settings(cfg), "reuse_vectors_from": live}
    dim = get_embedder(cfg.embedding).dim
    with store.commit_lock(cfg.db, cfg.table, cfg.commit):
        store.open_or_create_chunks(
            db, cfg.table, dim=dim, model=cfg.embedding.model, settings=settings
        )


def table_config(db, table: str, cfg: Config) -> Config:
    """``cfg`` with the settings ``table`` was built with (model, chunking, parsing: its
    metadata, ``pipelines.batch.run_settings``), writing ``table`` itself."""
    from freshindex.config import load_config

    settings = json.loads(table_metadata(store.open_chunks(db, table).schema)["settings"])
    overrides = {
        f"{section}.{key}": value
        for section in ("embedding", "chunking", "parsing")
        for key, value in settings.get(section, {}).items()
    }
    built = load_config(overrides={**overrides, "db": cfg.db}, environ={})
    return dataclasses.replace(
        cfg, table=table, embedding=built.embedding, chunking=built.chunking, parsing=built.parsing
    )


def _behind(db, ahead: str, behind: str) -> int:
    """Messages recorded with ``ahead``'s commits and not (yet) with ``behind``'s."""
    a, b = _stream_offsets(db, ahead), _stream_offsets(db, behind)
    return sum(max(0, n - b.get(tp, 0)) for tp, n in a.items())


def switch(
    cfg: Config,
    state: dict[str, Any],
    to_side: str,
    reason: str,
    *,
    timeout_s: float = SWITCH_TIMEOUT_S,
    beam_args=None,
    log=print,
) -> dict[str, Any]:
    """Move the alias from the table it serves to ``state[to_side]``, with nothing applied
    to the one and not the other at that moment; returns the state with the cost added.

    * batch source: under the serving table's run lock (no batch run changes it
      meanwhile), the target is caught up with the source (incremental), then switched;
    * Kafka source: under both tables' commit locks (no micro-batch commits to either
      meanwhile), the switch happens once the target's recorded offsets have reached the
      serving table's; until then the locks are released and it waits (``timeout_s``).
    """
    db = store.connect(cfg.db)
    index = state["index_name"]
    serving = store.resolve_alias(db, index)
    target = state[to_side]
    started = time.perf_counter()
    embedded = 0

    def move():
        store.set_alias(
            cfg.db, index, target, reason=reason, expect=serving, commit=cfg.commit, db=db
        )

    if state["source"].startswith(KAFKA_SOURCE):
        deadline = time.monotonic() + timeout_s
        while True:
            with (
                store.commit_lock(cfg.db, serving.table, cfg.commit),
                store.commit_lock(cfg.db, target, cfg.commit),
            ):
                behind = _behind(db, serving.table, target)
                if behind == 0:
                    move()
                    break
            if time.monotonic() > deadline:
                raise MigrationError(
                    f"{target!r} is {behind} messages behind {serving.table!r}",
                    table=target,
                    hint=f"is a stream writing {target!r} running? (freshindex stream "
                    f"--table {target} with its settings); try again when it caught up",
                )
            time.sleep(0.2)
    else:
        from freshindex.pipelines.batch import run_ingest
        from freshindex.schemas.bookkeeping import new_run_id

        run_id = new_run_id()
        with store.run_lock(cfg.db, serving.table, run_id, if_running="wait", commit=cfg.commit):
            row = run_ingest(
                table_config(db, target, cfg), state["source"], beam_args or [], physical=True
            )
            embedded = int(row.get("chunks_embedded") or 0)
            log(
                f"caught up {target}: {row['docs_added']} added, {row['docs_updated']} "
                f"updated, {row['docs_deleted']} deleted"
            )
            move()
    return {
        "build_seconds": (state["build_seconds"] or 0) + time.perf_counter() - started,
        "chunks_embedded": (state["chunks_embedded"] or 0) + embedded,
    }


def lag(db, state: dict[str, Any]) -> dict[str, Any]:
    """How far the shadow is behind the live table: documents whose content differs (or
    that one of them lacks), and stream offsets recorded with one and not the other."""
    live = store.read_ledger(store.open_chunks(db, state["old_table"]))
    shadow = store.read_ledger(store.open_chunks(db, state["new_table"]))
    differ = sorted(
        d
        for d in live.keys() | shadow.keys()
        if d not in live or d not in shadow or live[d].content_hash != shadow[d].content_hash
    )
    behind = _behind(db, state["old_table"], state["new_table"])
    return {"docs_differ": len(differ), "sample": differ[:5], "messages_behind": behind}


def _stream_offsets(db, table: str) -> dict[tuple[str, int], int]:
    """(topic, partition) -> next offset recorded with the table's commits, whichever
    consumer group wrote it (a shadow fed by its own stream has a group of its own)."""
    groups = {r["group_id"] for r in store.read_stream_batches(db, table_name=table)}
    merged: dict[tuple[str, int], int] = {}
    for group in groups:
        for tp, n in store.read_stream_offsets(db, table, group).items():
            merged[tp] = max(n, merged.get(tp, 0))
    return merged


def status(db_uri: str, index: str) -> dict[str, Any]:
    db = store.connect(db_uri)
    state = current(db, index)
    if state is None:
        raise MigrationError(f"{index!r} was never migrated", table=index)
    out = {k: v for k, v in state.items() if k != "config"}
    out["serving"] = store.resolve_alias(db, index).table
    if state["status"] in ACTIVE:
        out["lag"] = lag(db, state)
        out["disk_bytes"] = {
            t: _table_bytes(db_uri, t) for t in (state["old_table"], state["new_table"])
        }
    return out


def labelled_set(folder: str, split: str = "test", queries: str | None = None, qrels=None):
    """A BEIR folder (``queries.jsonl``, ``qrels/<split>.tsv``; its corpus is not read), or
    a user's own ``queries`` (JSONL ``{_id, text}``) and ``qrels`` (TSV ``query-id,
    corpus-id, score``) files."""
    from pathlib import Path

    from freshindex.evaluation import BeirDataset, load_beir

    if queries is None and qrels is None and (Path(folder) / "corpus.jsonl").exists():
        return load_beir(folder, split)
    queries_path = Path(queries or Path(folder) / "queries.jsonl")
    qrels_path = Path(qrels or Path(folder) / "qrels" / f"{split}.tsv")
    for needed in (queries_path, qrels_path):
        if not needed.exists():
            raise ConfigError(
                f"{needed} not found",
                hint="a labelled set is queries.jsonl ({_id, text} per line) and a qrels "
                "TSV (query-id, corpus-id, score), or a BEIR folder",
            )
    judged: dict[str, dict[str, int]] = {}
    for i, line in enumerate(qrels_path.read_text().splitlines()):
        parts = line.split("\t")
        if (i == 0 and parts[0] == "query-id") or len(parts) < 3:
            continue
        judged.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    texts = {}
    for line in queries_path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if str(record["_id"]) in judged:
                texts[str(record["_id"])] = record["text"]
    return BeirDataset(Path(folder or queries_path.parent), split, texts, judged)


def check(
    cfg: Config,
    index: str,
    dataset: str | None,
    *,
    queries: str | None = None,
    qrels: str | None = None,
    split: str = "test",
    modes=("vector",),
    tolerance: float = DEFAULT_TOLERANCE,
    chunk_k: int = 100,
    log=print,
) -> dict[str, Any]:
    """Evaluate the live and the shadow table on a labelled set; record the gate's verdict."""
    from freshindex.evaluation import compare, evaluate, gate
    from freshindex.query.retrieval import IndexReader, retrieve_batch

    db = store.connect(cfg.db)
    state = active(db, index)
    data = labelled_set(dataset or "", split, queries, qrels)
    results = {}
    for side in ("old_table", "new_table"):
        # the physical tables themselves: the index's name may serve either of them
        with IndexReader(db, state[side], aliases=False) as reader:
            pinned = reader.pinned()

            def retriever(queries, mode, pinned=pinned):
                return retrieve_batch(pinned, queries, mode=mode, k=chunk_k)

            log(f"{state[side]} (version {pinned.version}):")
            results[side] = {"modes": evaluate(data, retriever, modes, log=log)}
    passed, drops = gate(results["new_table"], results["old_table"], tolerance)
    diff = compare(results["new_table"], results["old_table"])
    verdict = {
        "dataset": str(dataset or queries),
        "split": split,
        "tolerance": tolerance,
        "passed": passed,
        "drops": drops,
        "old": {m: r["mean"] for m, r in results["old_table"]["modes"].items()},
        "new": {m: r["mean"] for m, r in results["new_table"]["modes"].items()},
        "delta": {m: d["delta"] for m, d in diff.items()},
        "new_version": store.open_chunks(db, state["new_table"]).version,
    }
    record(db, state, check=json.dumps(verdict))
    return verdict


def cutover(
    cfg: Config,
    index: str,
    *,
    force: bool = False,
    timeout_s: float = SWITCH_TIMEOUT_S,
    beam_args=None,
    log=print,
) -> dict[str, Any]:
    """Move the alias to the shadow, only when the last check passed (or ``force``)."""
    db = store.connect(cfg.db)
    state = active(db, index)
    if state["status"] not in ("ready", "rolled_back"):
        raise MigrationError(f"migration of {index!r} is {state['status']}", table=index)
    verdict = json.loads(state["check"]) if state["check"] else None
    if not force:
        if verdict is None:
            raise MigrationError(
                f"the shadow of {index!r} was never checked",
                table=index,
                hint="run `freshindex migrate check --dataset DIR` first, or pass --force",
            )
        if not verdict["passed"]:
            raise MigrationError(
                f"the gate refused {state['new_table']!r}: {verdict['drops']} exceed "
                f"tolerance {verdict['tolerance']}",
                table=index,
                hint="keep the live table (migrate abort), or --force to switch anyway",
            )
    cost = switch(
        cfg,
        state,
        "new_table",
        f"migrate cutover {state['migration_id']}" + (" (forced)" if force else ""),
        timeout_s=timeout_s,
        beam_args=beam_args,
        log=log,
    )
    return record(db, state, status="cut_over", **cost)


def rollback(
    cfg: Config, index: str, *, timeout_s: float = SWITCH_TIMEOUT_S, beam_args=None, log=print
) -> dict[str, Any]:
    """Point the alias back at the old table (kept until ``finish``), caught up first."""
    db = store.connect(cfg.db)
    state = active(db, index)
    if state["status"] != "cut_over":
        raise MigrationError(
            f"migration of {index!r} is {state['status']}: nothing to roll back", table=index
        )
    cost = switch(
        cfg,
        state,
        "old_table",
        f"migrate rollback {state['migration_id']}",
        timeout_s=timeout_s,
        beam_args=beam_args,
        log=log,
    )
    return record(db, state, status="rolled_back", **cost)


def abort(cfg: Config, index: str) -> dict[str, Any]:
    """Drop the shadow of a migration that does not serve (before cutover or rolled back).
    Stop the shadow's stream process first (it would create the table again)."""
    db = store.connect(cfg.db)
    state = active(db, index)
    if store.resolve_alias(db, index).table == state["new_table"]:
        raise MigrationError(
            f"{state['new_table']!r} serves {index!r}",
            table=index,
            hint="roll back first (freshindex migrate rollback), then abort",
        )
    if state["new_table"] in store.table_names(db):
        db.drop_table(state["new_table"])
    return record(db, state, status="aborted")


def finish(cfg: Config, index: str) -> dict[str, Any]:
    """After a cutover: drop the old table (the end of rollbacks)."""
    db = store.connect(cfg.db)
    state = active(db, index)
    if state["status"] != "cut_over":
        raise MigrationError(
            f"migration of {index!r} is {state['status']}: finish follows a cutover",
            table=index,
            hint="a rolled-back migration ends with `migrate abort`",
        )
    if state["old_table"] in store.table_names(db):
        # also when the old table has the index's own name: the alias keeps the name
        db.drop_table(state["old_table"])
    return record(db, state, status="finished")
