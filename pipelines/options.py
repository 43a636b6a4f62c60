"""Beam options of freshindex pipelines: every other Beam option (--runner,
--direct_num_workers, --direct_running_mode, Flink and Dataflow options) passes through.

Beam only collects flags from *direct* subclasses of PipelineOptions, so each options
class here derives from it and no flag is defined twice.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from freshindex.config import IF_RUNNING, MEMBERSHIPS, Config, load_config


class FreshIndexOptions(PipelineOptions):
    """Flags of every freshindex pipeline; unset ones come from the config file."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--config", default=None, help="YAML config file")
        parser.add_argument("--db", default=None, help="LanceDB URI (folder, s3://, gs://)")
        parser.add_argument("--table", default=None, help="chunks table name")
        parser.add_argument("--source", default=None, help="folder, glob, URI or .jsonl file")
        parser.add_argument("--sync", choices=("full", "append"), default=None)
        parser.add_argument("--embedding_model", default=None)
        parser.add_argument("--embed_batch_size", type=int, default=None)
        parser.add_argument("--chunk_max_tokens", type=int, default=None)
        parser.add_argument("--chunk_overlap_tokens", type=int, default=None)
        parser.add_argument("--max_failure_fraction", type=float, default=None)
        parser.add_argument("--run_id", default=None, help="defaults to a UTC timestamp")
        parser.add_argument(
            "--namespace", default=None, help="batch: the namespace that owns what it writes"
        )
        parser.add_argument(
            "--allow_mass_delete",
            action="store_true",
            default=False,
            help="batch: let a full sync delete more than ingest.max_delete_fraction",
        )
        parser.add_argument(
            "--retry_failed",
            "--retry-failed",
            dest="retry_failed",
            action="store_true",
            default=False,
            help="re-parse documents that failed permanently before with the same bytes "
            "and settings (skipped otherwise)",
        )
        parser.add_argument(
            "--full_hash",
            "--full-hash",
            dest="full_hash",
            action="store_true",
            default=False,
            help="batch: read and hash every file instead of trusting an unchanged listing "
            "(size, mtime); ingest.change_detection: hash",
        )

        parser.add_argument(
            "--if_running",
            "--if-running",
            dest="if_running",
            choices=IF_RUNNING,
            default=None,
            help="batch: when another batch run holds the table: skip (exit status 75), "
            "wait for it, or fail (ingest.if_running; default skip)",
        )

    def to_config(self) -> Config:
        """The typed config: defaults, the --config file, environment, then these flags."""
        o = self.get_all_options()
        return load_config(
            o.get("config"),
            overrides={
                "db": o.get("db"),
                "table": o.get("table"),
                "embedding.model": o.get("embedding_model"),
                "embedding.batch_size": o.get("embed_batch_size"),
                "chunking.max_tokens": o.get("chunk_max_tokens"),
                "chunking.overlap_tokens": o.get("chunk_overlap_tokens"),
                "ingest.max_failure_fraction": o.get("max_failure_fraction"),
                "ingest.sync": o.get("sync"),
                "ingest.namespace": o.get("namespace"),
                "ingest.change_detection": "hash" if o.get("full_hash") else None,
                "ingest.if_running": o.get("if_running"),
            },
        )


class StreamOptions(PipelineOptions):
    """Flags of the streaming pipeline (``python -m freshindex.pipelines.stream``); the table,
    model and chunking flags come from FreshIndexOptions. Kafka flags not given fall back to the
    environment (KAFKA_BOOTSTRAP_SERVERS), then to the defaults of ``StreamConfig``."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # Beam's Kafka Streams runner already owns --bootstrap_servers.
        parser.add_argument("--kafka_bootstrap_servers", default=None, help="host:port,...")
        parser.add_argument("--topics", default=None, help="comma-separated topics to index")
        parser.add_argument("--group_id", default=None, help="default: freshindex-<table>")
        parser.add_argument(
            "--membership",
            choices=MEMBERSHIPS,
            default=None,
            help="all: read every partition; group: join the consumer group and share the "
            "partitions with the other processes of the group",
        )
        parser.add_argument(
            "--start_offset",
            choices=("earliest", "latest"),
            default=None,
            help="where to start a partition that has no committed or recorded offset",
        )
        parser.add_argument("--batch_interval_s", type=float, default=None)
        parser.add_argument("--max_batch_messages", type=int, default=None)
        parser.add_argument(
            "--metrics_port", type=int, default=None, help="Prometheus metrics on this port"
        )
        parser.add_argument("--max_message_bytes", type=int, default=None)
        parser.add_argument(
            "--stop_at_end",
            action="store_true",
            default=False,
            help="index what the topics hold now, then stop (catch-up run)",
        )
        parser.add_argument("--duration_s", type=float, default=None, help="stop after this")
        parser.add_argument("--dead_letter_topic", default=None)
        parser.add_argument(
            "--kafka_reader",
            choices=("python", "xlang"),
            default=None,
            help="python: kafka-python SDF (default); xlang: Beam's Java ReadFromKafka",
        )
        parser.add_argument(
            "--kafka_option",
            action="append",
            default=None,
            help="KEY=VALUE kafka-python client setting (repeatable); VALUE ${NAME} reads "
            "the environment variable NAME (for secrets)",
        )
        parser.add_argument("--kafka_expansion_service", default=None, help="xlang only")
        parser.add_argument(
            "--gap_wait_s",
            type=float,
            default=None,
            help="xlang only: how long a read after an offset gap waits before the gap is "
            "taken as compacted away (default 2)",
        )
        parser.add_argument(
            "--allow_uri_messages",
            action="store_true",
            default=False,
            help="read files that uri messages name (only under --allowed_uri_prefix)",
        )
        parser.add_argument(
            "--allowed_uri_prefix",
            action="append",
            default=None,
            help="absolute folder or bucket prefix (s3://bucket/docs/) uri messages may name "
            "(repeatable; replaces stream.allowed_uri_prefixes)",
        )
        parser.add_argument(
            "--stream_namespace",
            default=None,
            help="who owns what the stream writes; default kafka:<topic>",
        )
