"""Property-based fuzzing of the Kafka message decoder
(``freshindex.schemas.messages.decode_message``):
whatever a producer sends, as key and value bytes or as JSON-shaped values (deep nesting,
huge numbers, NaN/Infinity tokens, lone surrogates, wrong types), decoding gives a valid
``DocumentMessage`` that every later stage can store, or an ``InvalidMessage``: never
another exception, and never slowly (hypothesis ``deadline`` bounds each example).
"""

from __future__ import annotations

import datetime as dt
import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from freshindex.schemas.messages import (
    DELETE,
    MAX_EPOCH_S,
    MESSAGE_FIELDS,
    MIN_EPOCH_S,
    UPSERT,
    DocumentMessage,
    InvalidMessage,
    KafkaRecord,
    decode_message,
)
from freshindex.schemas.records import MAX_METADATA_BYTES, MAX_METADATA_DEPTH

# a liveness bound per example (a hang or a quadratic blow-up is the bug), not a benchmark
FUZZ = settings(
    deadline=dt.timedelta(seconds=2),
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
FIELDS = sorted(MESSAGE_FIELDS)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["upsert", "delete", "2024-01-02T03:04:05Z", "9999-12-31", "0001-01-01"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
bodies = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=len(FIELDS) + 1
)
keys = (
    st.none()
    | st.binary(max_size=40)
    | st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass"))
)


def _record(key: bytes | None, value: bytes | None, timestamp_ms: int = 1_700_000_000_000):
    return KafkaRecord("docs", 0, 42, key, value, timestamp_ms)


def _depth(value, level: int = 1) -> int:
    children = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    )
    return max([level] + [_depth(c, level + 1) for c in children if isinstance(c, dict | list)])


def check(record: KafkaRecord, max_bytes: int = 4096) -> DocumentMessage | None:
    """Decode; a valid result must be one every later stage can store."""
    try:
        msg = decode_message(record, max_bytes)
    except InvalidMessage as exc:
        assert exc.stage == "decode" and str(exc)
        return None
    assert isinstance(msg, DocumentMessage)
    assert msg.doc_id == record.key.decode("utf-8") and msg.record is record
    assert msg.op in (UPSERT, DELETE)
    if msg.op == UPSERT:
        assert (msg.text is None) != (msg.uri is None)
        for text in (msg.text, msg.uri, msg.title, msg.content_type):
            assert text is None or (isinstance(text, str) and text.encode("utf-8") is not None)
        assert isinstance(msg.metadata, dict) and _depth(msg.metadata) <= MAX_METADATA_DEPTH
        compact = json.dumps(
            msg.metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
        assert len(compact.encode("utf-8")) <= MAX_METADATA_BYTES
    modified = msg.modified_at
    if modified is not None:
        assert math.isfinite(modified) and MIN_EPOCH_S <= modified <= MAX_EPOCH_S
        dt.datetime.fromtimestamp(modified, dt.UTC)  # what the writer does with it
    return msg


@FUZZ
@given(key=keys, value=st.none() | st.binary(max_size=300), ts=st.integers(-(2**63), 2**63 - 1))
def test_any_bytes_decode_or_are_invalid(key, value, ts):
    check(_record(key, value, ts))


@FUZZ
@given(key=st.text(min_size=1, max_size=20), body=bodies, allow_nan=st.booleans())
def test_any_json_object_decodes_or_is_invalid(key, body, allow_nan):
    try:
        value = json.dumps(body, allow_nan=allow_nan).encode("utf-8", "surrogatepass")
    except ValueError:  # NaN with allow_nan=False: send it as a token anyway
        value = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
    check(_record(key.encode("utf-8", "surrogatepass"), value))


@FUZZ
@given(
    text=st.text(max_size=50),
    updated_at=json_values,
    metadata=json_values,
    title=json_values,
    content_type=json_values,
)
def test_upserts_with_wrong_types_anywhere(text, updated_at, metadata, title, content_type):
    body = {
        "text": text,
        "updated_at": updated_at,
        "metadata": metadata,
        "title": title,
        "content_type": content_type,
    }
    check(_record(b"doc", json.dumps(body).encode("utf-8", "surrogatepass")))


@FUZZ
@given(
    depth=st.integers(1, 200_000),
    opener=st.sampled_from(["[", '{"a":']),
    where=st.sampled_from(["top", "metadata", "text"]),
)
def test_deep_nesting_is_invalid_not_a_recursion_error(depth, opener, where):
    closer = "]" if opener == "[" else "}"
    nested = opener * depth + "1" + closer * depth
    value = {
        "top": nested,
        "metadata": '{"text": "x", "metadata": {"k": ' + nested + "}}",
        "text": '{"text": ' + nested + "}",
    }[where]
    msg = check(_record(b"doc", value.encode()), max_bytes=10**7)
    if msg is not None:  # shallow enough to be valid metadata
        assert where == "metadata" and depth + 1 <= MAX_METADATA_DEPTH


@FUZZ
@given(
    number=st.sampled_from(["1e20", "-1e20", "1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
    | st.integers(0, 6000).map(lambda n: "9" * max(n, 1))
    | st.integers(-400, 400).map(lambda e: f"1e{e}")
    | st.floats(allow_nan=False, allow_infinity=False).map(repr),
    field=st.sampled_from(["updated_at", "schema_version", "metadata"]),
)
def test_huge_and_non_finite_numbers(number, field):
    inner = '{"n": ' + number + "}" if field == "metadata" else number
    value = '{"text": "x", "' + field + '": ' + inner + "}"
    check(_record(b"doc", value.encode()), max_bytes=10**5)


@FUZZ
@given(
    seconds=st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(-(10**30), 10**30)
    | st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.text(max_size=80)
)
def test_timestamps_are_finite_and_in_range_or_invalid(seconds):
    value = json.dumps({"text": "x", "updated_at": seconds}).encode("utf-8", "surrogatepass")
    msg = check(_record(b"doc", value))
    if msg is not None:
        assert msg.updated_at is not None
