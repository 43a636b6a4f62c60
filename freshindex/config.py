"""Typed configuration: ``configs/default.yaml`` < a user file < environment < flags.

Example::

    cfg = load_config("configs/default.yaml", overrides={"table": "papers"})
    cfg.chunking.max_tokens  # 254
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from freshindex.errors import ConfigError
from freshindex.schemas.tables import RESERVED_TABLES

# The shipped configuration is package data of freshindex.configs: a wheel has it too.
CONFIGS_DIR = Path(str(importlib.resources.files("freshindex.configs")))
DEFAULT_CONFIG = CONFIGS_DIR / "default.yaml"

# Bumped when parsing or chunking changes in a way that changes chunk text: every
# document is then re-processed on the next run, because its fingerprint changes.
PIPELINE_VERSION = "1"

_ENV_OVERRIDES = {
    "FRESHINDEX_DB": "db",
    "FRESHINDEX_TABLE": "table",
    "FRESHINDEX_EMBEDDING_DTYPE": "embedding.dtype",
}
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16")
_MAX_RETENTION_HOURS = 100 * 366 * 24


@dataclass(frozen=True)
class EmbeddingConfig:
    model: str = "all-MiniLM-L6-v2"
    batch_size: int = 16
    normalize: bool = True
    device: str = "cpu"
    # auto: bfloat16 on CPUs with bfloat16 instructions (AMX/AVX512-BF16: encoding 1.5-2x
    # faster, vectors within cosine 0.99 of float32, SciFact nDCG@10 within 0.002), else
    # float32. Not part of the fingerprint: like the CPU's kernels, precision moves vectors
    # by less than it matters, and stored vectors of the same text are reused whatever
    # precision made them (README, Configuration).
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"embedding.batch_size must be >= 1, got {self.batch_size}")
        if self.dtype not in EMBEDDING_DTYPES:
            raise ConfigError(
                f"embedding.dtype must be one of {', '.join(EMBEDDING_DTYPES)}, got {self.dtype!r}"
            )


@dataclass(frozen=True)
class ChunkingConfig:
    max_tokens: int = 254
    overlap_tokens: int = 32
    section_titles: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 16:
            raise ConfigError(f"chunking.max_tokens must be >= 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens // 2:
            raise ConfigError(
                f"chunking.overlap_tokens must be in [0, max_tokens/2), got {self.overlap_tokens}",
                hint="overlap is the tail of one chunk repeated at the head of the next",
            )


@dataclass(frozen=True)
class ParsingConfig:
    pdf_strategy: str = "fast"
    max_file_mb: float = 50
    # Limits of one document's parse (README, Batch re-indexing). The parser runs in a worker
    # process that is stopped past the deadline or the memory ceiling.
    timeout_s: float = 120
    max_memory_mb: float = 2048  # what one parse may add to the worker's resident memory
    # Zip-based formats (DOCX, PPTX) are checked from the zip's directory before parsing.
    max_inflated_mb: float = 100  # the members' total inflated size
    max_zip_members: int = 10_000
    max_zip_ratio: float = 100  # inflated/compressed of a member over 1 MiB

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


@dataclass(frozen=True)
class IngestConfig:
    sync: str = "full"
    max_failure_fraction: float = 0.25
    docs_per_batch: int = 64
    commit_max_rows: int = 100_000
    # a sync that would delete more than this fraction of the source's documents refuses
    # (``--allow-mass-delete`` overrides): an unmounted share or a wrong glob deletes nothing
    max_delete_fraction: float = 0.5
    # who owns the documents a batch run writes; None: derived from the source
    # (files:<root> or jsonl:<file>). Sources share documents only in one namespace.
    namespace: str | None = None

    def __post_init__(self) -> None:
        if self.sync not in ("full", "append"):
            raise ConfigError(f"ingest.sync must be 'full' or 'append', got {self.sync!r}")
        if not 0.0 <= self.max_failure_fraction <= 1.0:
            raise ConfigError("ingest.max_failure_fraction must be within [0, 1]")
        if not 0.0 <= self.max_delete_fraction <= 1.0:
            raise ConfigError(
                "ingest.max_delete_fraction must be within [0, 1]",
                hint="1 turns the mass-delete guard off",
            )
        check_namespace("ingest.namespace", self.namespace)
        if self.docs_per_batch < 1 or self.commit_max_rows < 1:
            raise ConfigError("ingest.docs_per_batch and ingest.commit_max_rows must be >= 1")


@dataclass(frozen=True)
class MaintenanceConfig:
    """Table upkeep: compaction, index refresh, retention, ANN index (docs/MAINTENANCE.md).

    Retention keeps every recent version, then thins the history with age to checkpoints
    (the last version of each hour, then of each day), so a table that commits every second
    holds a bounded number of versions; tags other than freshindex's own ``run-*`` and
    ``checkpoint-v*`` are never removed.
    """

    keep_versions: int = 20  # the last N versions are always kept
    keep_all_hours: float = 0.25  # and every version newer than this
    min_version_age_minutes: float = 10.0  # never remove a version younger than this
    checkpoint_hourly_days: float = 7.0  # older versions: the last of each hour, this long
    checkpoint_daily_days: float = 90.0  # then the last of each day, this long
    keep_run_tags: int = 20  # run-<id> tags of the newest N runs are kept ...
    run_tags_max_days: float = 30.0  # ... while younger than this; the newest is always kept
    after_batch: bool = True  # the batch pipeline runs upkeep at the end of every run
    every_commits: int = 100  # the stream runs upkeep every K commits ...
    every_minutes: float = 10.0  # ... or every T minutes, whichever comes first
    ann_min_rows: int = 100_000  # below: exact (brute-force) vector search
    ann_target_recall: float = 0.95  # recall@10 against exact search, on the table's own data
    ann_sample_queries: int = 100
    ann_rebuild_growth: float = 2.0  # rebuild the ANN index when rows grew by this factor
    # a batch run's staging folder untouched this long belongs to a run that died before
    # its commit: upkeep removes it
    staging_max_age_hours: float = 24.0

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


@dataclass(frozen=True)
class StreamingConfig:
    """What Kafka messages may make the stream read (docs/STREAMING.md, "What the stream
    reads"). ``uri`` messages name files the worker reads: off unless enabled, and then only
    under these prefixes (absolute local folders, or bucket prefixes like s3://bucket/docs/)."""

    allow_uri_messages: bool = False
    # a list, so that ``Config.to_dict`` stays YAML: normalized (real paths) when built
    allowed_uri_prefixes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.allow_uri_messages, bool):
            raise ConfigError("stream.allow_uri_messages must be true or false")
        if isinstance(self.allowed_uri_prefixes, str):
            raise ConfigError("stream.allowed_uri_prefixes must be a list of prefixes")
        prefixes = [normalize_uri_prefix(p) for p in self.allowed_uri_prefixes or ()]
        object.__setattr__(self, "allowed_uri_prefixes", prefixes)
        if self.allow_uri_messages and not prefixes:
            raise ConfigError(
                "stream.allow_uri_messages needs stream.allowed_uri_prefixes",
                hint="list the folders or bucket prefixes uri messages may name",
            )


@dataclass(frozen=True)
class Config:
    db: str = "./data/lancedb"
    table: str = "docs"
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    parsing: ParsingConfig = field(default_factory=ParsingConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    maintenance: MaintenanceConfig = field(default_factory=MaintenanceConfig)
    stream: StreamingConfig = field(default_factory=StreamingConfig)

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
        return dataclasses.asdict(self)

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
}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(
                f"cannot set {dotted!r}: {'.'.join(parts[: i + 1])} is not a section",
                hint=f"sections: {', '.join(_SECTIONS)}",
            )
    node[parts[-1]] = value


# Values of a field's declared type only: the checks in __post_init__ compare numbers, and a
# string or a list there would raise TypeError instead of saying which key is wrong.
_ACCEPTED = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _show(value: Any) -> str:
    try:
        return repr(value)[:60]
    except ValueError:  # an int past Python's digit limit
        return "(too long to show)"


def _check_types(prefix: str, cls: type, values: dict[str, Any]) -> None:
    declared = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, value in values.items():
        expected = declared.get(key)
        if expected not in _ACCEPTED:
            continue
        if (isinstance(value, bool) and expected != "bool") or not isinstance(
            value, _ACCEPTED[expected]
        ):
            raise ConfigError(
                f"{prefix}{key} must be {expected}, got {type(value).__name__} {_show(value)}",
                hint="numbers without quotes; true/false for switches",
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{key} must be a finite number, got {value}")


class _DepthLimitedLoader(yaml.SafeLoader):
    """PyYAML composes nested nodes recursively: 2,000 nested brackets take seconds to end
    in a RecursionError. A config is a few levels deep, so deeper input is refused early."""

    max_depth = 16
    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {self.max_depth}", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _read_yaml(path: Path) -> Any:
    try:
        # a SafeLoader: no Python object tags
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_DepthLimitedLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path} cannot be read: {exc}", hint="give a UTF-8 YAML file"
        ) from None
    except (yaml.YAMLError, RecursionError, ValueError) as exc:  # ValueError: a 5,000-digit int
        where = getattr(exc, "problem_mark", None)
        raise ConfigError(
            f"config file {path} is not valid YAML"
            + (f" (line {where.line + 1}, column {where.column + 1})" if where else ""),
            hint="check indentation and brackets; nesting deeper than a few levels is refused",
        ) from None


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a validated Config; unknown keys are refused with the list of known ones."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"the configuration must be a mapping of keys to values, got {type(raw).__name__}",
            hint="e.g. 'table: docs' on the first line",
        )
    known_top = {"db", "table", *_SECTIONS}
    unknown = set(raw) - known_top
    if unknown:
        raise ConfigError(
            f"unknown config keys: {sorted(unknown, key=str)}",
            hint=f"known keys: {sorted(known_top)}",
        )
    kwargs: dict[str, Any] = {k: raw[k] for k in ("db", "table") if raw.get(k) is not None}
    _check_types("", Config, kwargs)
    for name, cls in _SECTIONS.items():
        section = raw.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(
                f"{name} must be a mapping of keys to values, got {type(section).__name__}",
                hint=f"e.g. '{name}:' then indented 'key: value' lines",
            )
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = set(section) - fields
        if bad:
            raise ConfigError(
                f"unknown keys in {name}: {sorted(bad, key=str)}",
                hint=f"known keys: {sorted(fields)}",
            )
        _check_types(f"{name}.", cls, section)
        kwargs[name] = cls(**section)
    return Config(**kwargs)


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Load defaults, then ``path``, then environment variables, then ``overrides``.

    ``overrides`` uses dotted keys for sections: ``{"chunking.max_tokens": 128}``;
    ``None`` values are ignored so unset CLI flags do not clobber the file.
    """
    raw: dict[str, Any] = yaml.safe_load(DEFAULT_CONFIG.read_text()) or {}
    if path is not None:
        user_path = Path(path)
        if not user_path.exists():
            raise ConfigError(f"config file {user_path} does not exist")
        user = _read_yaml(user_path)
        if user is not None and not isinstance(user, dict):
            raise ConfigError(
                f"config file {user_path} must hold a mapping of keys to values, "
                f"got {type(user).__name__}",
                hint="e.g. 'table: docs' on the first line",
            )
        raw = _merge(raw, user or {})
    env = os.environ if environ is None else environ
    for var, key in _ENV_OVERRIDES.items():
        if env.get(var):
            _set_dotted(raw, key, env[var])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, dotted, value)
    return config_from_dict(raw)
