"""Wire formats: single-object, Schema Registry framing, JSON; evolution; bad bytes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streaminfer.connectors.avro import (
    RecordCodec,
    _strip_logical_types,
    load_schema,
    registry_client,
)
from streaminfer.connectors.avro_fast import compile_columns_encoder
from streaminfer.errors import DecodeError

EVENT = {"event_id": "e-1", "key": "user-7", "ts": 1_764_120_000_123, "features": [0.5, -2.0]}


@pytest.mark.parametrize("wire", ["single-object", "json"])
def test_round_trip_keeps_every_field(wire: str) -> None:
    codec = RecordCodec("event", wire)
    assert codec.decode(codec.encode(EVENT)) == EVENT


def test_single_object_header_is_the_avro_spec_marker_and_fingerprint() -> None:
    data = RecordCodec("event").encode(EVENT)
    assert data[:2] == b"\xc3\x01"
    # CRC-64-AVRO of the canonical form, little-endian (Avro spec "Single-object encoding").
    assert len(data[2:10]) == 8
    assert data[2:10] != RecordCodec("feedback").encode(
        {"event_id": "e", "key": "k", "label": 1.0, "ts": 1}
    )[2:10]


def test_encode_many_matches_encode() -> None:
    codec = RecordCodec("event")
    records = [dict(EVENT, event_id=f"e-{i}") for i in range(50)]
    assert codec.encode_many(records) == [codec.encode(r) for r in records]


def test_registry_framing_is_readable_by_confluent_deserializer() -> None:
    url = "mock://test-avro-registry"
    codec = RecordCodec("event", "confluent", registry_url=url, topic="events")
    data = codec.encode(EVENT)
    assert data[0] == 0  # Confluent magic byte, then a 4-byte schema id
    plain = AvroDeserializer(registry_client(url))
    record = plain(data, SerializationContext("events", MessageField.VALUE))
    assert record["event_id"] == "e-1"
    assert record["features"] == [0.5, -2.0]
    assert codec.decode(data) == EVENT  # our reader gives ms ints, not datetimes


def test_newer_reader_schema_reads_old_records() -> None:
    old = load_schema("event")
    new = copy.deepcopy(old)
    new["fields"].append({"name": "source", "type": "string", "default": "unknown"})
    written = RecordCodec(old).encode(EVENT)
    reader = RecordCodec(new, extra_writers=[old])
    assert reader.decode(written) == {**EVENT, "source": "unknown"}


def test_incompatible_reader_is_a_decode_error() -> None:
    old = load_schema("event")
    new = copy.deepcopy(old)
    new["fields"].append({"name": "required_new", "type": "string"})  # no default
    written = RecordCodec(old).encode(EVENT)
    with pytest.raises(DecodeError, match="does not match"):
        RecordCodec(new).decode(written)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\xff\xfe garbage", "unknown wire format"),
        (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown writer schema"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "expected an object"),
        (b"\x00\x00\x00\x00\x01abc", "no schema registry"),
    ],
)
def test_bad_bytes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        RecordCodec("event").decode(data)


def test_truncated_avro_body_is_a_decode_error() -> None:
    data = RecordCodec("event").encode(EVENT)
    with pytest.raises(DecodeError):
        RecordCodec("event").decode(data[:14])


@pytest.mark.parametrize("wire", ["single-object", "json"])
def test_encode_columns_matches_per_record_encoding(wire: str) -> None:
    codec = RecordCodec("prediction", wire)
    columns = {"event_id": ["a", "b"], "key": ["k1", "k2"], "score": [0.25, 0.5],
               "event_ts": [1_764_120_000_000, 1_764_120_000_001]}
    constants = {"model_name": "classifier", "model_version": "v1+u7", "processed_ts": 5}
    records = [{"event_id": e, "key": k, "score": s, "event_ts": t, **constants}
               for e, k, s, t in zip(*columns.values(), strict=True)]
    got = codec.encode_columns(columns, constants)
    assert [codec.decode(v) for v in got] == [codec.decode(v) for v in codec.encode_many(records)]
    if wire == "single-object":
        assert got == codec.encode_many(records)


def test_encode_columns_is_byte_exact_on_awkward_values() -> None:
    """Column-wise encoding (numpy varints, C-level string maps) against fastavro, record by
    record: long and non-ASCII text, varints of several lengths in one column, the union and
    boolean columns of fallbacks, per-row versions."""
    codec = RecordCodec("prediction")
    ids = ["", "é" * 40, "x" * 64, "id-" + "ü" * 30, "a" * 9_000, "b"]
    columns = {"event_id": ids, "key": ["k", "ключ", "k" * 63, "k" * 64, "", "k2"],
               "score": np.array([0.0, -1.5, np.nan, np.inf, 1e-40, 0.3], np.float32),
               "event_ts": np.array([0, -1, 63, -65, 1_764_120_000_000, 2**62], np.int64),
               "degraded": [False, True, False, True, True, False],
               "fallback": [None, "previous", None, "cached", "default", None],
               "model_version": ["v1+u1", "v1+u2", "v2", "v2", "v3+u9", "v1"]}
    constants = {"model_name": "classifier", "processed_ts": 1_764_120_000_500}
    records = [{**constants, **dict(zip(columns, row, strict=True))}
               for row in zip(*columns.values(), strict=True)]
    # the compiled encoder itself: ``encode_columns`` would hide its failure (it falls back)
    encode = compile_columns_encoder(_strip_logical_types(codec.schema.raw), tuple(columns))
    assert encode is not None
    assert encode(columns, constants, codec.schema.header) == codec.encode_many(records)
    same_ts = {**columns, "event_ts": [1_764_120_000_000] * 6}  # one varint length: numpy
    assert encode(same_ts, constants, codec.schema.header) == codec.encode_many(
        [{**r, "event_ts": 1_764_120_000_000} for r in records])


def test_encode_columns_refuses_a_float_out_of_range_as_record_encoding_does() -> None:
    """numpy would write 1e300 as an infinite float32; the records are refused instead."""
    codec = RecordCodec("prediction")
    columns = {"event_id": ["a", "b"], "key": ["k1", "k2"], "score": [0.5, 1e300],
               "event_ts": [1, 2]}
    constants = {"model_name": "m", "model_version": "v1", "processed_ts": 5}
    with pytest.raises(OverflowError):
        codec.encode_columns(columns, constants)
