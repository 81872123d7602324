"""The column-wise batch reader reads what the row reader does, or declines the batch."""

from __future__ import annotations

import io
import random
from typing import Any

import fastavro
import numpy as np
import pytest

from streaminfer.connectors.avro import _strip_logical_types, load_schema
from streaminfer.connectors.avro_columns import MIN_RECORDS, compile_columns
from streaminfer.connectors.avro_fast import compile_projection
from streaminfer.streams.decode import RecordDecoder
from streaminfer.streams.features import Features, array

HEADER = b"\xc3\x01" + bytes(range(8))
FLAT = {"type": "record", "name": "Flat", "fields": [
    {"name": "id", "type": "string"},
    {"name": "blob", "type": "bytes"},
    {"name": "n", "type": "int"},
    {"name": "big", "type": "long"},
    {"name": "ok", "type": "boolean"},
    {"name": "x", "type": "double"},
    {"name": "f", "type": "float"},
    {"name": "xs", "type": {"type": "array", "items": "double"}},
]}


def _value(kind: Any, rng: random.Random, width: int) -> Any:
    kind = kind["type"] if isinstance(kind, dict) else kind
    if kind == "string":  # ASCII and not, empty, and over 63 bytes (a two-byte length)
        return "".join(rng.choice("ab-_0é€") for _ in range(rng.choice([0, 5, 40, 90])))
    if kind == "bytes":
        return bytes(rng.randint(0, 255) for _ in range(rng.choice([0, 3, 70])))
    if kind == "int":
        return rng.choice([0, -1, 63, -64, 64, rng.randint(-(2**31), 2**31 - 1)])
    if kind == "long":  # up to 63 bits: timestamps in ms take 6 bytes
        return rng.choice([0, -1, 1_795_996_409_133, -(2**62), rng.randint(-(2**62), 2**62)])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("float", "double"):
        return rng.choice([0.0, -2.5, rng.uniform(-1e6, 1e6)])
    if kind == "array":
        return [rng.uniform(-5, 5) for _ in range(width)]
    raise AssertionError(kind)


def _values(schema: dict[str, Any], n: int, seed: int, width: int = 9) -> list[bytes]:
    parsed = fastavro.parse_schema(schema)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf, parsed, {f["name"]: _value(f["type"], rng, width) for f in schema["fields"]})
        out.append(HEADER + buf.getvalue())
    return out


def _same(columns: list[Any], rows: list[tuple[Any, ...]]) -> None:
    for j, column in enumerate(columns):
        expected = [row[j] for row in rows]
        if isinstance(column, np.ndarray):
            assert np.allclose(column.astype(np.float64), np.asarray(expected, np.float64))
        else:
            assert column == expected


@pytest.mark.parametrize("name", ["flat", "event", "feedback", "rating"])
def test_columns_equal_the_row_reader(name: str) -> None:
    schema = FLAT if name == "flat" else _strip_logical_types(load_schema(name))
    paths = [(f["name"],) for f in schema["fields"]]
    read = compile_columns(schema, paths, header=HEADER)
    rows = compile_projection(schema, paths, header=HEADER)
    assert read is not None and rows is not None
    for seed in range(5):
        values = _values(schema, 300, seed)
        columns = read(values)
        assert columns is not None
        _same(columns, rows(values))


def test_a_subset_of_fields_in_any_order_and_twice() -> None:
    paths = [("xs",), ("id",), ("big",), ("id",)]
    read = compile_columns(FLAT, paths, header=HEADER)
    rows = compile_projection(FLAT, paths, header=HEADER)
    assert read is not None and rows is not None
    values = _values(FLAT, 100, 7, width=3)
    columns = read(values)
    assert columns is not None and columns[0].shape == (100, 3)
    _same(columns, rows(values))


def test_batches_it_does_not_read_are_declined() -> None:
    read = compile_columns(FLAT, [("id",), ("xs",)], header=HEADER)
    assert read is not None
    good = _values(FLAT, MIN_RECORDS, 1)
    assert read(good) is not None
    assert read(good[: MIN_RECORDS - 1]) is None  # small: the row reader is cheaper
    assert read([*good[:-1], good[-1][:-1]]) is None  # truncated
    assert read([*good[:-1], good[-1] + b"\x00"]) is None  # bytes after the record
    assert read([*good[:-1], None]) is None  # a tombstone
    assert read([*good[:-1], b"\xc3\x01" + bytes(8) + good[-1][10:]]) is None  # other writer
    ragged = _values(FLAT, MIN_RECORDS - 1, 2) + _values(FLAT, 1, 3, width=4)
    assert read(ragged) is None


def test_hostile_lengths_are_declined_before_anything_is_gathered() -> None:
    schema = {"type": "record", "name": "A", "fields": [
        {"name": "s", "type": "string"},
        {"name": "xs", "type": {"type": "array", "items": "float"}}]}
    read = compile_columns(schema, [("s",), ("xs",)], header=b"")
    assert read is not None
    huge_string = b"\xfe\xff\xff\xff\x0f" + b"ab"  # length ~2**31, 2 bytes there
    huge_array = b"\x00" + b"\xfe\xff\xff\xff\x0f" + bytes(8)  # ~2**31 floats
    assert read([huge_string] * MIN_RECORDS) is None
    assert read([huge_array] * MIN_RECORDS) is None


def test_schemas_with_other_types_use_the_row_reader() -> None:
    nullable = {"type": "record", "name": "N", "fields": [
        {"name": "a", "type": ["null", "string"]}]}
    nested = {"type": "record", "name": "R", "fields": [
        {"name": "in", "type": {"type": "record", "name": "I", "fields": [
            {"name": "a", "type": "int"}]}}]}
    assert compile_columns(nullable, [("a",)]) is None
    assert compile_columns(nested, [("in", "a")]) is None


def test_decoded_feature_arrays_are_one_matrix_that_features_take_as_is() -> None:
    from streaminfer.connectors.avro import make_codec

    codec = make_codec("event", "single-object", None, "t")
    decoder = RecordDecoder(codec, key="key", event_id="event_id", event_time="ts",
                            fields=["features"])
    rng = np.random.default_rng(4)
    values = [codec.encode({"event_id": f"e-{i}", "key": f"k{i % 7}", "ts": 1_795_996_409_133 + i,
                            "features": rng.normal(size=9).tolist()}) for i in range(100)]

    class Message:
        def __init__(self, value: bytes) -> None:
            self._value = value

        def value(self) -> bytes:
            return self._value

        def key(self) -> None:
            return None

    batch, rejected = decoder.decode([Message(v) for v in values])  # type: ignore[misc]
    assert not rejected and len(batch) == 100
    column = batch.columns["features"]
    assert isinstance(column, np.ndarray) and column.shape == (100, 9)
    x = Features(array("features", 9))(batch.columns)
    assert x.dtype == np.float32 and np.array_equal(x, column)
    padded = Features(array("features", 12, fill=0.0))(batch.columns)
    assert padded.shape == (100, 12) and np.array_equal(padded[:, :9], column)
