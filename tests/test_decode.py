"""Decoding a batch: good records become columns, bad ones are rejected with a reason.

The built-in apps' handlers are built the way the worker builds them (their schema, their
features); any app decodes through the same code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from confluent_kafka import Message

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.avro_fast import encode_long
from streaminfer.connectors.records import now_ms
from streaminfer.models.identity import IdentityModel
from streaminfer.streams.app import load_app
from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.decode import RecordDecoder
from streaminfer.streams.learning import labels_of
from streaminfer.streams.pipeline import commit_offsets
from streaminfer.streams.settings import Settings
from streaminfer.streams.worker import build_handler

CODEC = RecordCodec("event")


def decode_events(msgs: list[Message], codec: RecordCodec, num_features: int
                  ) -> tuple[Batch, list[Rejected]]:
    settings = Settings(num_features=num_features)
    handler = build_handler(load_app("classifier", settings), settings, IdentityModel())
    return handler.decode(msgs)


def _msg(value: bytes, offset: int = 0, partition: int = 0, key: bytes = b"k") -> Message:
    return Message(topic="events", partition=partition, offset=offset, key=key, value=value)


def _event(**overrides: object) -> dict[str, object]:
    return {"event_id": "e", "key": "k", "ts": now_ms(), "features": [1.0, 2.0], **overrides}


def test_good_events_become_columns_in_order() -> None:
    msgs = [_msg(CODEC.encode(_event(event_id=f"e{i}")), i) for i in range(3)]
    batch, rejected = decode_events(msgs, CODEC, num_features=2)
    assert rejected == []
    assert batch.event_ids == ["e0", "e1", "e2"]
    assert batch.keys == ["k", "k", "k"]
    assert batch.features.dtype == np.float32 and batch.features.shape == (3, 2)


@pytest.mark.parametrize(
    ("value", "error_type", "reason"),
    [
        (b"\x01\x02 raw", "decode", "unknown wire format"),
        (json.dumps(_event(features=[1.0])).encode(), "validation", "expected 2 numbers, got 1"),
        (json.dumps(_event(features=[1.0, "x"])).encode(), "validation", "expected numbers"),
        (json.dumps(_event(ts=5)).encode(), "validation", "before 2000"),
        (json.dumps(_event(ts=now_ms() + 10 * 86_400_000)).encode(), "validation", "a day ahead"),
        (json.dumps(_event(event_id="")).encode(), "validation", "'event_id'"),
        (b'{"event_id":"e","key":"k","ts":1764120000000,"features":[NaN,1]}', "validation",
         "NaN"),
    ],
)
def test_bad_records_are_rejected_and_the_rest_kept(value: bytes, error_type: str,
                                                    reason: str) -> None:
    good = _msg(CODEC.encode(_event(event_id="good")), 0)
    bad = _msg(value, 1)
    batch, rejected = decode_events([good, bad], CODEC, num_features=2)
    assert batch.event_ids == ["good"]
    assert len(rejected) == 1
    assert rejected[0].msg.offset() == 1
    assert rejected[0].error_type == error_type
    assert reason in rejected[0].reason


def test_ratings_reject_non_numbers() -> None:
    codec = RecordCodec("rating", "json")
    settings = Settings(app="recommender")
    handler = build_handler(load_app("recommender", settings), settings, IdentityModel())
    ok = {"event_id": "r1", "user": "u", "item": "i", "rating": 4.0, "ts": now_ms()}
    bad = dict(ok, event_id="r2", rating="five")
    nan = dict(ok, event_id="r3", rating=float("nan"))
    batch, rejected = handler.decode([_msg(codec.encode(ok), key=b"u"),
                                      _msg(codec.encode(bad), 1, key=b"u"),
                                      _msg(codec.encode(nan), 2, key=b"u")])
    assert batch.event_ids == ["r1"] and batch.columns["rating"].tolist() == [4.0]
    assert batch.keys == ["u"]
    assert [r.msg.offset() for r in rejected] == [1, 2]
    assert all("'rating'" in r.reason for r in rejected)


def test_commit_offsets_are_one_past_the_highest_per_partition() -> None:
    msgs = [_msg(b"x", 7, 0), _msg(b"x", 3, 1), _msg(b"x", 9, 0), _msg(b"x", 4, 1)]
    got = {(tp.partition, tp.offset) for tp in commit_offsets(msgs)}
    assert got == {(0, 10), (1, 5)}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [({"key": ""}, "'key'"), ({"ts": 5}, "before 2000"), ({"features": [1.0]}, "got 1"),
     ({"features": [float("nan"), 1.0]}, "NaN")],
)
def test_avro_events_have_their_values_checked_too(overrides: dict[str, object],
                                                   reason: str) -> None:
    """Avro guarantees the types, not the values: those are checked on the fast path too."""
    bad = _msg(CODEC.encode(_event(**overrides)), 1)
    batch, rejected = decode_events([_msg(CODEC.encode(_event())), bad], CODEC, num_features=2)
    assert len(batch) == 1 and len(rejected) == 1
    assert reason in rejected[0].reason and rejected[0].msg.offset() == 1


def test_feedback_labels_must_be_probabilities() -> None:
    codec = RecordCodec("feedback", "json")
    learning = load_app("classifier", Settings()).learning
    assert learning is not None
    decoder = RecordDecoder(codec, key=learning.join_on, event_id=learning.join_on,
                            event_time=learning.event_time, fields=[learning.label])
    ok = {"event_id": "e1", "key": "k", "label": 1, "ts": now_ms()}
    bad = dict(ok, event_id="e2", label=3)
    batch, rejected = decoder.decode([_msg(codec.encode(ok)), _msg(codec.encode(bad), 1)])
    batch, labels = labels_of(batch, learning, rejected)
    assert batch.event_ids == ["e1"] and labels.tolist() == [1.0]
    assert "'label'" in rejected[0].reason and "[0, 1]" in rejected[0].reason


def test_nested_records_enums_maps_and_nullable_fields_become_columns() -> None:
    schema = {"type": "record", "name": "Order", "fields": [
        {"name": "id", "type": "string"},
        {"name": "customer", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "channel", "type": {"type": "enum", "name": "Channel",
                                     "symbols": ["web", "app"]}},
        {"name": "coupon", "type": ["null", "double"], "default": None},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"}, {"name": "zip", "type": ["null", "int"]}]}},
    ]}
    codec = RecordCodec(schema)
    decoder = RecordDecoder(codec, key="customer", event_id="id", event_time="ts")
    now = now_ms()
    records = [
        {"id": "o1", "customer": "c1", "ts": now, "channel": "web", "coupon": 2.5,
         "tags": {"a": "b"}, "address": {"city": "Oslo", "zip": 150}},
        {"id": "o2", "customer": "c2", "ts": now, "channel": "app", "coupon": None,
         "tags": {}, "address": {"city": "Rome", "zip": None}},
    ]
    msgs = [_msg(codec.encode(r), i) for i, r in enumerate(records)]
    msgs.append(_msg(json.dumps(dict(records[0], id="o3", coupon="free")).encode(), 2))
    batch, rejected = decoder.decode(msgs)
    assert batch.event_ids == ["o1", "o2"] and batch.keys == ["c1", "c2"]
    assert batch.columns["channel"] == ["web", "app"]
    assert np.isnan(batch.columns["coupon"][1]) and batch.columns["coupon"][0] == 2.5
    assert batch.columns["address.city"] == ["Oslo", "Rome"]
    assert batch.columns["tags"] == [{"a": "b"}, {}]
    assert len(rejected) == 1 and "'coupon'" in rejected[0].reason


def test_an_app_reads_its_schema_from_a_registry_subject() -> None:
    """``schema="registry:SUBJECT"`` takes the subject's newest version (here the in-process
    registry; the same client talks to a real one)."""
    from confluent_kafka.schema_registry import Schema

    from streaminfer.connectors.avro import load_schema, registry_client
    from streaminfer.streams.app import App, Input

    url = "mock://decode-test"
    registry_client(url).register_schema("events-value",
                                         Schema(json.dumps(load_schema("event")), "AVRO"))
    app = App("reg", input=Input("events", schema="registry:events-value"), model=lambda s: None)
    assert app.input_schema(url)["name"] == "Event"


def test_records_of_an_older_writer_schema_are_resolved_and_checked() -> None:
    """A producer still on the previous schema version: its records are resolved to the
    reader's (the new field takes its default) and decode into the same columns."""
    old = {"type": "record", "name": "Reading", "fields": [
        {"name": "id", "type": "string"}, {"name": "sensor", "type": "string"},
        {"name": "ts", "type": "long"}, {"name": "value", "type": "double"}]}
    new = {**old, "fields": [*old["fields"],
                             {"name": "unit", "type": "string", "default": "C"}]}
    reader = RecordCodec(new, extra_writers=[old])
    decoder = RecordDecoder(reader, key="sensor", event_id="id", event_time="ts")
    now = now_ms()
    msgs = [_msg(RecordCodec(old).encode({"id": "r1", "sensor": "s", "ts": now, "value": 1.5})),
            _msg(reader.encode({"id": "r2", "sensor": "s", "ts": now, "value": 2.5,
                                "unit": "F"}), 1)]
    batch, rejected = decoder.decode(msgs)
    assert rejected == []
    assert batch.columns["unit"] == ["C", "F"] and batch.columns["value"].tolist() == [1.5, 2.5]


def test_fields_a_worker_does_not_need_are_skipped_not_lost() -> None:
    """Only the named fields become columns; the others (a string, a map, a nested record)
    are read past, and the record's own values stay right."""
    schema = {"type": "record", "name": "Wide", "fields": [
        {"name": "id", "type": "string"}, {"name": "note", "type": "string"},
        {"name": "k", "type": "string"}, {"name": "ts", "type": "long"},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "x", "type": "double"},
        {"name": "geo", "type": {"type": "record", "name": "Geo", "fields": [
            {"name": "lat", "type": "double"}, {"name": "name", "type": "string"}]}}]}
    codec = RecordCodec(schema)
    decoder = RecordDecoder(codec, key="k", event_id="id", event_time="ts",
                            fields=["x", "geo.lat"])
    now = now_ms()
    msgs = [_msg(codec.encode({"id": f"i{n}", "note": "é" * n, "k": "key", "ts": now,
                               "tags": {"a": "b"} if n else {}, "x": n / 2,
                               "geo": {"lat": -n, "name": "somewhere"}}), n) for n in range(3)]
    msgs.append(_msg(msgs[0].value()[:-3], 3))  # truncated: a dead letter, not a crash
    batch, rejected = decoder.decode(msgs)
    assert set(batch.columns) == {"x", "geo.lat"}
    assert batch.columns["x"].tolist() == [0.0, 0.5, 1.0]
    assert batch.columns["geo.lat"].tolist() == [0.0, -1.0, -2.0]
    assert [r.msg.offset() for r in rejected] == [3] and rejected[0].error_type == "decode"


def test_records_the_fast_reader_does_not_take_are_still_read_right() -> None:
    """The compiled batch reader takes the common encodings (one-byte union branches and
    enum indices, short strings); other valid encodings, here a union branch written as a
    two-byte varint, an enum of 100 symbols and map strings over 63 bytes, are read by the
    slower path with the same values, and nothing is rejected."""
    symbols = [f"s{i}" for i in range(100)]
    schema = {"type": "record", "name": "Odd", "fields": [
        {"name": "id", "type": "string"}, {"name": "k", "type": "string"},
        {"name": "ts", "type": "long"}, {"name": "n", "type": ["null", "int"]},
        {"name": "e", "type": {"type": "enum", "name": "Big", "symbols": symbols}},
        {"name": "tags", "type": {"type": "map", "values": "string"}},
        {"name": "x", "type": "double"}]}
    codec = RecordCodec(schema)
    decoder = RecordDecoder(codec, key="k", event_id="id", event_time="ts",
                            fields=["n", "e", "x"])
    now = now_ms()
    records = [{"id": f"i{i}", "k": "key", "ts": now, "n": i, "e": symbols[i * 33],
                "tags": {"long": "v" * 70 * i}, "x": i / 4} for i in range(3)]
    values = [codec.encode(r) for r in records]
    # record 1: its union branch 1 (byte 0x02) as the two-byte varint 0x82 0x00
    at = len(codec.schema.header) + len(b"\x04i1") + len(b"\x06key") + len(encode_long(now))
    assert values[1][at:at + 2] == b"\x02\x02"  # branch 1, then the int 1
    values[1] = values[1][:at] + b"\x82\x00" + values[1][at + 1:]
    batch, rejected = decoder.decode([_msg(v, i, key=b"key") for i, v in enumerate(values)])
    assert rejected == []
    assert batch.columns["n"].tolist() == [0, 1, 2]
    assert batch.columns["e"] == ["s0", "s33", "s66"]
    assert batch.columns["x"].tolist() == [0.0, 0.25, 0.5]
