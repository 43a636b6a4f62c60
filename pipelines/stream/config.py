"""The stream's settings: ``StreamConfig`` (how it reads and batches), built from arguments,
flags and the environment, and ``StreamRun``, what a run fixes when its pipeline is built.
The table, model and chunking are in ``freshindex.config.Config``."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from freshindex.config import Config, StreamingConfig, check_namespace
from freshindex.errors import ConfigError
from freshindex.transforms.kafka_io import KafkaSpec, PartitionStart, parse_client_options

DEFAULT_BOOTSTRAP = StreamingConfig().bootstrap_servers  # for commands without a config


@dataclass(frozen=True)
class StreamConfig:
    """How the stream reads and batches; the table, model and chunking are in ``Config``."""

    kafka: KafkaSpec
    # from the config's stream: section (defaults in freshindex.config.StreamingConfig)
    batch_interval_s: float
    max_batch_messages: int
    max_message_bytes: int
    dead_letter_topic: str | None
    allow_uri_messages: bool
    allowed_uri_prefixes: tuple[str, ...]
    # all: this process reads every partition; group: a member of the consumer group
    membership: str = "all"
    # the run's own, from flags
    stop_at_end: bool = False  # index what the topics hold at start, then stop
    duration_s: float | None = None  # stop after this long
    reader: str = "python"  # python: kafka-python SDF; xlang: Beam's Java ReadFromKafka
    expansion_service: str | None = None
    # who owns the documents the stream writes; None: kafka:<topic> per message. Only a
    # namespace shared with a batch source lets the stream replace or delete its documents.
    namespace: str | None = None
    # the Java reader: how long a read after an offset gap waits for the offsets before it;
    # then the gap is taken as offsets no record holds (a compacted topic). See offsets.py.
    gap_wait_s: float = 2.0

    def __post_init__(self) -> None:
        # the section's fields were checked by freshindex.config.StreamingConfig
        # (stream_config builds them through it); these are the run's own
        if self.gap_wait_s < 0:
            raise ConfigError(f"gap_wait_s must be >= 0, got {self.gap_wait_s}")
        if self.duration_s is not None and self.duration_s <= 0:
            raise ConfigError(f"duration_s must be positive, got {self.duration_s}")
        if self.reader not in ("python", "xlang"):
            raise ConfigError(f"kafka_reader must be python or xlang, got {self.reader!r}")
        if self.reader == "xlang" and self.membership == "group":
            raise ConfigError(
                "stream.membership: group needs the python reader",
                hint="the Java reader joins no group here; run one process with it",
            )
        if self.reader == "xlang" and self.stop_at_end:
            raise ConfigError(
                "--stop_at_end needs the python reader",
                hint="the Java reader has no end offsets here; use --duration_s",
            )
        if self.dead_letter_topic and self.dead_letter_topic in self.kafka.topics:
            raise ConfigError("the dead-letter topic must not be one of the topics read")
        check_namespace("stream.namespace", self.namespace)


def stream_config(
    cfg: Config,
    *,
    topics: Sequence[str] | str,
    bootstrap_servers: str | None = None,
    group_id: str | None = None,
    start_offset: str | None = None,
    client_options: Sequence[str] | None = None,
    **settings: Any,
) -> StreamConfig:
    """A validated StreamConfig: arguments (flags), then the config's ``stream:`` section
    (itself defaults < file < environment, e.g. KAFKA_BOOTSTRAP_SERVERS). ``settings`` are
    StreamConfig fields (None values are ignored, so unset flags keep the section's values)."""
    section = cfg.stream
    if isinstance(topics, str):
        topics = [topics]
    topics = [t.strip() for value in topics for t in value.split(",")]
    kafka = KafkaSpec(
        bootstrap_servers=bootstrap_servers or section.bootstrap_servers,
        topics=tuple(t for t in topics if t),
        group_id=group_id or section.group_id_for(cfg.table),
        start_offset=start_offset or section.start_offset,
        client_options=parse_client_options(client_options),
    )
    settings = {k: v for k, v in settings.items() if v is not None}
    if "allowed_uri_prefixes" in settings:  # repeatable flags arrive as a list
        settings["allowed_uri_prefixes"] = tuple(settings["allowed_uri_prefixes"])
    # flags over the config's section, checked by the section's own validation
    section_fields = {f.name for f in dataclasses.fields(section)}
    section = dataclasses.replace(
        section, **{k: settings.pop(k) for k in list(settings) if k in section_fields}
    )
    # the fields StreamConfig shares with the section come from it, whatever they are
    for name in section_fields & {f.name for f in dataclasses.fields(StreamConfig)}:
        settings[name] = getattr(section, name)
    return StreamConfig(kafka=kafka, **settings)


def stream_config_from_flags(cfg: Config, flags: Any) -> StreamConfig:
    """``stream_config`` from parsed flags named as in ``StreamOptions``: the Beam options of
    ``python -m freshindex.pipelines.stream``, or the arguments of ``freshindex stream``."""
    return stream_config(
        cfg,
        topics=flags.topics,
        bootstrap_servers=flags.kafka_bootstrap_servers,
        group_id=flags.group_id,
        start_offset=flags.start_offset,
        client_options=flags.kafka_option,
        batch_interval_s=flags.batch_interval_s,
        max_batch_messages=flags.max_batch_messages,
        max_message_bytes=flags.max_message_bytes,
        stop_at_end=flags.stop_at_end or None,
        duration_s=flags.duration_s,
        dead_letter_topic=flags.dead_letter_topic,
        reader=flags.kafka_reader,
        expansion_service=flags.kafka_expansion_service,
        allow_uri_messages=flags.allow_uri_messages or None,
        allowed_uri_prefixes=flags.allowed_uri_prefix,
        namespace=getattr(flags, "stream_namespace", None),
        gap_wait_s=getattr(flags, "gap_wait_s", None),
        membership=getattr(flags, "membership", None),
    )


@dataclass(frozen=True)
class StreamRun:
    """What the committer needs to know about the run, fixed when the pipeline is built."""

    run_id: str
    cfg: Config
    stream: StreamConfig
    starts: tuple[PartitionStart, ...]
    started_at: float
    first_batch: int = 0  # batches the run committed before this pipeline (a group member)

    @property
    def group_id(self) -> str:
        return self.stream.kafka.group_id
