"""The compiled hot-path codecs write and read exactly what fastavro does."""

from __future__ import annotations

import io
import random

import fastavro
import pytest

from streaminfer.connectors.avro import _strip_logical_types, load_schema
from streaminfer.connectors.avro_fast import compile_decoder, compile_encoder

SCHEMAS = ["event", "feedback", "rating", "prediction", "dead_letter"]


def _value(ftype: object, rng: random.Random) -> object:
    if isinstance(ftype, list):
        return None if rng.random() < 0.3 else _value(ftype[1], rng)
    kind = ftype["type"] if isinstance(ftype, dict) else ftype
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return "".join(rng.choice("aé€z0-_") for _ in range(rng.randint(0, 90)))
    if kind == "bytes":
        return bytes(rng.randint(0, 255) for _ in range(rng.randint(0, 300)))
    if kind in ("int",):
        return rng.randint(-(2**31), 2**31 - 1)
    if kind == "long":
        return rng.choice([0, -1, 63, 64, -65, 2**62, -(2**63), rng.randint(-(2**63), 2**63 - 1)])
    if kind in ("float", "double"):
        return rng.choice([0.0, -2.5, 1e30, rng.uniform(-1e6, 1e6)])
    if kind == "array":
        return [_value(ftype["items"], rng) for _ in range(rng.choice([0, 1, 8, 200]))]
    raise AssertionError(kind)


@pytest.mark.parametrize("name", SCHEMAS)
def test_same_bytes_and_values_as_fastavro(name: str) -> None:
    schema = _strip_logical_types(load_schema(name))
    parsed = fastavro.parse_schema(schema)
    encode, decode = compile_encoder(schema), compile_decoder(schema)
    assert encode is not None and decode is not None
    rng = random.Random(name)
    for _ in range(300):
        record = {f["name"]: _value(f["type"], rng) for f in schema["fields"]}
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        assert encode(record) == out.getvalue()
        assert decode(out.getvalue()) == fastavro.schemaless_reader(
            io.BytesIO(out.getvalue()), parsed, None)


def test_multi_block_arrays_from_other_writers_are_read() -> None:
    schema = {"type": "record", "name": "A", "fields": [
        {"name": "xs", "type": {"type": "array", "items": "double"}}]}
    # two blocks, the second with a byte size (negative count), as Java writers may emit
    body = b"\x04" + b"\x00" * 16 + b"\x01" + b"\x10" + b"\x00" * 8 + b"\x00"
    assert compile_decoder(schema)(body) == {"xs": [0.0, 0.0, 0.0]}


def test_unsupported_schemas_fall_back() -> None:
    union = {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["int", "string"]}]}
    assert compile_decoder(union) is None and compile_encoder(union) is None


def test_maps_enums_and_nested_records_decode_compiled() -> None:
    """What user schemas often hold is read by the compiled decoder too (the encoder, only
    needed for predictions, leaves them to fastavro)."""
    schema = {"type": "record", "name": "N", "fields": [
        {"name": "m", "type": {"type": "map", "values": "string"}},
        {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["a", "b"]}},
        {"name": "r", "type": {"type": "record", "name": "R", "fields": [
            {"name": "x", "type": ["null", "int"]}, {"name": "s", "type": "string"}]}},
        {"name": "tags", "type": {"type": "array", "items": "string"}}]}
    record = {"m": {"k": "v"}, "e": "b", "r": {"x": None, "s": "t"}, "tags": ["p", "q"]}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    assert compile_encoder(schema) is None
    assert compile_decoder(schema)(out.getvalue()) == record


def test_trailing_bytes_are_an_error() -> None:
    schema = _strip_logical_types(load_schema("feedback"))
    body = compile_encoder(schema)({"event_id": "e", "key": "k", "label": 1.0, "ts": 5})
    with pytest.raises(ValueError, match="after the record"):
        compile_decoder(schema)(body + b"\x00")
