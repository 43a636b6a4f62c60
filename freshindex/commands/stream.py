"""``freshindex stream`` and ``freshindex publish``: the streaming plane's subcommands.

    freshindex stream --bootstrap host:9092 --topic docs [--topic ...] --group G --table docs
        [--batch-interval 0.5] [--max-batch 500] [--stop-at-end | --duration S]
        [--dead-letter-topic docs.dlq] [--allow-uri-messages --allowed-uri-prefix ROOT]
        [--metrics-port 9108]
        [Beam options]
    freshindex publish SOURCE --topic docs       a folder, glob, file or .jsonl corpus
    freshindex publish --topic docs --delete DOC_ID [DOC_ID ...]
    freshindex publish --topic docs --doc-id ID --text "..." [--title T]

Heavy imports stay inside the command functions, so ``freshindex --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys

from freshindex.config import MEMBERSHIPS


def cmd_stream(args, beam_args: list[str]) -> int:
    from freshindex.cli import _json_default, config_from_args
    from freshindex.pipelines.batch import configure_logging
    from freshindex.pipelines.stream import (
        format_stream_summary,
        run_stream,
        stream_config_from_flags,
    )

    configure_logging(args.verbose)
    cfg = config_from_args(args)
    stream = stream_config_from_flags(cfg, args)
    if args.metrics_port:
        from freshindex.observability.metrics import serve_port

        serve_port(args.metrics_port)
    row = run_stream(cfg, stream, beam_args, args.run_id)
    if args.json:
        print(json.dumps(row, default=_json_default, indent=2))
    else:
        print(format_stream_summary(row))
        if row["docs_failed"]:
            errors = f"freshindex errors --run {row['run_id']}"
            print(f"  {row['docs_failed']} errors recorded: {errors}")
    return 0


def _file_messages(source: str):
    """(doc id, uri) of every supported file of a folder, glob or file, as batch reads them."""
    from apache_beam.io.filesystems import FileSystems

    from freshindex.transforms.parse import content_type_for
    from freshindex.transforms.read import doc_id_for, resolve_source

    spec = resolve_source(source)
    for meta in FileSystems.match([spec.pattern])[0].metadata_list:
        doc_id = doc_id_for(meta.path, spec.root)
        if any(part.startswith(".") for part in doc_id.split("/")):
            continue
        if content_type_for(meta.path) is None:
            print(f"skipped {meta.path}: unsupported file type", file=sys.stderr)
            continue
        uri = os.path.abspath(meta.path) if "://" not in meta.path else meta.path
        yield doc_id, uri


def messages_for(args):
    """(key, value) pairs for ``freshindex publish``."""
    from freshindex.schemas.messages import encode_message
    from freshindex.transforms.read import JSONL_SUFFIXES, ref_from_record

    for doc_id in args.delete or ():
        yield encode_message(doc_id, delete=True)
    if args.text is not None:
        yield encode_message(args.doc_id, text=args.text, title=args.title)
    if not args.source:
        return
    if args.source.endswith(JSONL_SUFFIXES):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(args.source) as handle:
            for number, raw in enumerate(handle, 1):
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    ref = ref_from_record(line, args.source)
                except (ValueError, TypeError) as exc:
                    print(f"skipped line {number}: {exc}", file=sys.stderr)
                    continue
                yield encode_message(
                    ref.doc_id, text=ref.inline_text, title=ref.title, metadata=ref.metadata
                )
        return
    for doc_id, uri in _file_messages(args.source):
        yield encode_message(doc_id, uri=uri)


def cmd_publish(args, _beam_args) -> int:
    from freshindex.errors import ConfigError
    from freshindex.pipelines.stream import DEFAULT_BOOTSTRAP
    from freshindex.transforms.kafka_io import KafkaSpec, new_producer, parse_client_options
    from freshindex.transforms.read import JSONL_SUFFIXES

    if args.text is not None and not args.doc_id:
        raise ConfigError("--text needs --doc-id (the message key)")
    if not (args.source or args.delete or args.text is not None):
        raise ConfigError("nothing to publish", hint="give SOURCE, --delete or --text")
    spec = KafkaSpec(
        bootstrap_servers=args.bootstrap_servers
        or os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        or DEFAULT_BOOTSTRAP,
        topics=(args.topic,),
        group_id="freshindex-publish",
        client_options=parse_client_options(args.kafka_option),
    )
    producer = new_producer(spec)
    sent = 0
    try:
        for key, value in messages_for(args):
            producer.send(args.topic, key=key, value=value)
            sent += 1
        producer.flush()
    finally:
        producer.close()
    print(f"published {sent} messages to {args.topic} on {spec.bootstrap_servers}")
    if args.source and not args.source.endswith(JSONL_SUFFIXES):
        print(
            "note: files go as uri messages; the stream reads them only with "
            "--allow-uri-messages and an --allowed-uri-prefix that holds them",
            file=sys.stderr,
        )
    return 0


def register_cli(subparsers) -> None:
    from freshindex.cli import add_common_args

    p = subparsers.add_parser(
        "stream",
        help="index document changes from Kafka topics as they arrive",
        description="Unknown flags are Beam pipeline options (--runner ...). Stops on "
        "SIGTERM/Ctrl-C after the current micro-batch, with a run summary. "
        "See docs/STREAMING.md.",
    )
    # dests as in freshindex.pipelines.options.StreamOptions: one stream_config_from_flags
    # serves both
    p.add_argument("--topic", dest="topics", action="append", required=True, help="repeatable")
    add_common_args(p)
    p.add_argument(
        "--bootstrap",
        "--bootstrap-servers",
        dest="kafka_bootstrap_servers",
        help="host:port,...; env KAFKA_BOOTSTRAP_SERVERS",
    )
    p.add_argument(
        "--group", "--group-id", dest="group_id", help="consumer group; default freshindex-<table>"
    )
    p.add_argument(
        "--membership",
        choices=MEMBERSHIPS,
        help="all (default): read every partition; group: join the consumer group and share "
        "its partitions with the group's other stream processes",
    )
    p.add_argument(
        "--start-offset",
        choices=("earliest", "latest"),
        help="for partitions without committed offsets (default earliest)",
    )
    p.add_argument("--batch-interval", dest="batch_interval_s", type=float, help="seconds")
    p.add_argument("--max-batch", dest="max_batch_messages", type=int, help="messages")
    p.add_argument("--max-message-bytes", type=int, help="larger values go to errors")
    p.add_argument("--stop-at-end", action="store_true", help="index the backlog, then stop")
    p.add_argument("--duration", dest="duration_s", type=float, help="stop after S seconds")
    p.add_argument("--dead-letter-topic", help="copy bad messages there, error in headers")
    p.add_argument(
        "--reader", dest="kafka_reader", choices=("python", "xlang"), help="default python"
    )
    p.add_argument(
        "--expansion-service",
        dest="kafka_expansion_service",
        help="xlang reader: host:port of the service",
    )
    p.add_argument(
        "--gap-wait",
        dest="gap_wait_s",
        type=float,
        help="xlang reader: seconds a read after an offset gap waits before the gap is taken "
        "as compacted away (default 2)",
    )
    p.add_argument("--kafka-option", action="append", metavar="KEY=VALUE")
    p.add_argument(
        "--allow-uri-messages",
        action="store_true",
        help="read files that uri messages name, only under --allowed-uri-prefix "
        "(default off: docs/STREAMING.md)",
    )
    p.add_argument(
        "--allowed-uri-prefix",
        action="append",
        metavar="PREFIX",
        help="absolute folder or bucket prefix uri messages may name (repeatable)",
    )
    p.add_argument(
        "--namespace",
        dest="stream_namespace",
        help="who owns what the stream writes; default kafka:<topic>",
    )
    p.add_argument("--run-id", dest="run_id")
    p.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="expose Prometheus metrics at http://0.0.0.0:PORT/metrics while the stream runs",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_stream, beam=True)

    p = subparsers.add_parser(
        "publish",
        help="send document changes to a Kafka topic (files as uri, JSONL as text messages)",
    )
    p.add_argument("source", nargs="?", help="folder, glob, file, or .jsonl corpus")
    p.add_argument("--topic", required=True)
    p.add_argument(
        "--bootstrap",
        "--bootstrap-servers",
        dest="bootstrap_servers",
        help="host:port,...; env KAFKA_BOOTSTRAP_SERVERS",
    )
    p.add_argument("--delete", nargs="+", metavar="DOC_ID", help="send tombstones")
    p.add_argument("--doc-id", help="key of the --text message")
    p.add_argument("--text", help="publish one text message")
    p.add_argument("--title")
    p.add_argument("--kafka-option", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_publish)
