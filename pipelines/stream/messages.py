"""What an upsert message names, as the SourceRef the processing path takes: inline text
(hashed like a JSONL corpus record, so batch and stream agree on it), or a file read only
when ``uri`` messages are allowed and only under the allowed prefixes
(``freshindex.transforms.source_io``)."""

from __future__ import annotations

import dataclasses
import json

from freshindex.config import ParsingConfig
from freshindex.errors import UnsupportedFormat
from freshindex.pipelines.stream.config import StreamConfig
from freshindex.schemas.messages import DocumentMessage
from freshindex.schemas.records import SourceRef, sha256_hex
from freshindex.transforms.parse import CONTENT_TYPES, content_type_for, max_file_bytes, read_bytes
from freshindex.transforms.read import ref_from_record
from freshindex.transforms.source_io import SourceNotAllowed, resolve_allowed


def message_source(
    msg: DocumentMessage, stream: StreamConfig, parsing: ParsingConfig
) -> tuple[SourceRef, bytes | None]:
    """The SourceRef of an upsert message; a ``uri`` is read here, since its hash needs the
    bytes, and only where ``stream`` allows it."""
    modified_at = msg.modified_at
    if msg.text is not None:
        # the same record shape and content hash as a line of a JSONL corpus
        record = {"_id": msg.doc_id, "title": msg.title, "text": msg.text}
        record |= {"metadata": msg.metadata, "acl": msg.acl}
        line = json.dumps(record)
        ref = ref_from_record(line, f"kafka://{msg.record.topic}")
        return dataclasses.replace(ref, modified_at=modified_at), None
    if not stream.allow_uri_messages:
        raise SourceNotAllowed(
            "uri messages are off: the stream reads no file a producer names",
            doc_id=msg.doc_id,
            hint="send the text inline, or set stream.allow_uri_messages: true and "
            "stream.allowed_uri_prefixes (flags --allow-uri-messages --allowed-uri-prefix "
            "ROOT) to let producers name files under those roots",
        )
    path = resolve_allowed(msg.uri, stream.allowed_uri_prefixes, doc_id=msg.doc_id)
    # the type is the file's (its resolved name), never the producer's word for it
    content_type = content_type_for(path)
    if content_type is None:
        raise UnsupportedFormat(
            f"unsupported file type for {msg.uri}",
            doc_id=msg.doc_id,
            hint=f"supported extensions: {', '.join(sorted(CONTENT_TYPES))}",
        )
    if msg.content_type is not None and msg.content_type != content_type:
        raise UnsupportedFormat(
            f"content_type {msg.content_type!r} differs from the file's type {content_type!r}",
            doc_id=msg.doc_id,
            hint="drop content_type: the type comes from the file's name",
        )
    data = read_bytes(path, max_file_bytes(parsing), roots=stream.allowed_uri_prefixes)
    content_hash = sha256_hex(data)
    if msg.title or msg.metadata:  # they are part of what the message says
        content_hash = sha256_hex(
            json.dumps([content_hash, msg.title, msg.metadata], sort_keys=True)
        )
    ref = SourceRef(
        doc_id=msg.doc_id,
        source_uri=path,
        content_hash=content_hash,
        content_type=content_type,
        size=len(data),
        modified_at=modified_at,
        title=msg.title,
        metadata=dict(msg.metadata),
        acl=msg.acl,
    )
    return ref, data
