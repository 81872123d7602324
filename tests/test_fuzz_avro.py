"""Property tests: the compiled codecs agree with fastavro on random schemas and records, and
``RecordCodec.decode`` turns any bytes an attacker or a broken producer sends into a record or
a ``DecodeError`` (the worker dead-letters those), never another exception and never a hang."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import fastavro
import pytest
from fuzzing import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from streaminfer.connectors import avro_fast
from streaminfer.connectors.avro import DecodeError, RecordCodec
from streaminfer.connectors.avro_fast import compile_decoder, compile_encoder, encode_long

pytestmark = pytest.mark.timeout(120)  # a hang fails the test instead of the whole run

PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "string", "bytes"]
FAST_ITEMS = {"int", "long", "float", "double"}  # array items the compiled codecs cover


def _kind(ftype: Any) -> str:
    return ftype if isinstance(ftype, str) else ftype["type"]


def _values(ftype: Any) -> st.SearchStrategy[Any]:
    """Values fastavro accepts for ``ftype`` (no NaN: records are compared with ==)."""
    if isinstance(ftype, list):
        other = ftype[1] if ftype[0] == "null" else ftype[0]
        return st.none() | _values(other)
    kind = _kind(ftype)
    if kind == "array":
        return st.lists(_values(ftype["items"]), max_size=20)
    return {
        "null": st.none(),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": st.floats(width=32, allow_nan=False),
        "double": st.floats(allow_nan=False),
        "string": st.text(max_size=40),
        "bytes": st.binary(max_size=40),
    }[kind]


def _plain(kind: str) -> st.SearchStrategy[Any]:
    return st.sampled_from([kind, {"type": kind}])  # both spellings of a primitive


# (type, covered by the compiled codecs?)
_PRIMITIVE_T = st.sampled_from(PRIMITIVES).flatmap(_plain).map(lambda t: (t, True))
# No arrays of nulls: items of zero bytes let a hostile 10-byte body ask fastavro for 2**62 of
# them, which it builds until memory runs out (Avro allows the schema; ours have none).
_ARRAY_T = st.tuples(st.sampled_from(PRIMITIVES[1:]), st.booleans()).map(
    lambda p: ({"type": "array", "items": p[0] if p[1] else {"type": p[0]}}, p[0] in FAST_ITEMS))
_NULLABLE_T = st.tuples(
    st.one_of(st.sampled_from([p for p in PRIMITIVES if p != "null"]).map(lambda k: (k, True)),
              _ARRAY_T), st.booleans()
).map(lambda p: ((["null", p[0][0]] if p[1] else [p[0][0], "null"]), p[0][1]))
_FIELD_T = st.one_of(_PRIMITIVE_T, _ARRAY_T, _NULLABLE_T)
# Types the compiled codecs leave to fastavro; one makes the whole record unsupported.
_UNSUPPORTED = [
    {"type": "map", "values": "long"},
    {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]},
    {"type": "fixed", "name": "Four", "size": 4},
    ["null", "int", "string"],
    ["int", "string"],
    {"type": "array", "items": ["null", "int"]},
    {"type": "array", "items": {"type": "array", "items": "int"}},
    {"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]},
]
#: Of those, what the compiled decoder reads (the encoder does not need them on the hot path).
_DECODE_ONLY = [_UNSUPPORTED[0], _UNSUPPORTED[1], _UNSUPPORTED[7]]
_UNSUPPORTED_VALUES = [{"k": 1}, "GREEN", b"abcd", "s", 3, [None, 1], [[1, 2], []], {"x": 4}]


@st.composite
def schema_and_records(draw: st.DrawFn, unsupported: bool = False
                       ) -> tuple[dict[str, Any], bool, list[dict[str, Any]]]:
    """A record schema of random fields, whether the compiled codecs must cover it, and
    records that match it (fields with a default are sometimes left out)."""
    names = draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                          min_size=1, max_size=7, unique=True))
    fields, values, covered = [], {}, True
    for name in names:
        ftype, fast = draw(_FIELD_T)
        field: dict[str, Any] = {"name": name, "type": ftype}
        if isinstance(ftype, list) and ftype[0] == "null" and draw(st.booleans()):
            field["default"] = None
        fields.append(field)
        values[name] = _values(ftype)
        covered &= fast
    if unsupported:
        at = draw(st.integers(0, len(fields)))
        i = draw(st.integers(0, len(_UNSUPPORTED) - 1))
        fields.insert(at, {"name": "odd_field", "type": _UNSUPPORTED[i]})
        values["odd_field"] = st.just(_UNSUPPORTED_VALUES[i])
        covered = False
    schema = {"type": "record", "name": "Fuzz", "namespace": "fuzz", "fields": fields}
    optional = {f["name"] for f in fields if "default" in f}
    record = st.fixed_dictionaries(
        {n: v for n, v in values.items() if n not in optional},
        optional={n: v for n, v in values.items() if n in optional})
    return schema, covered, draw(st.lists(record, min_size=1, max_size=4))


def _fastavro_bytes(parsed: Any, record: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


@settings(max_examples=examples(150))
@given(schema_and_records())
def test_compiled_codecs_write_and_read_what_fastavro_does(
        case: tuple[dict[str, Any], bool, list[dict[str, Any]]]) -> None:
    schema, covered, records = case
    parsed = fastavro.parse_schema(schema)
    encode, decode = compile_encoder(schema), compile_decoder(schema)
    # the decoder covers what the encoder does, and more (maps, enums, nested records)
    assert (encode is not None) == covered and (decode is not None or not covered), schema
    if decode is not None:
        for record in records:
            data = _fastavro_bytes(parsed, record)
            assert decode(data) == fastavro.schemaless_reader(io.BytesIO(data), parsed, None)
    if not covered:
        return
    assert encode is not None and decode is not None
    for record in records:
        expected = _fastavro_bytes(parsed, record)
        assert encode(record) == expected
        assert decode(expected) == fastavro.schemaless_reader(io.BytesIO(expected), parsed, None)


@settings(max_examples=examples(40))
@given(schema_and_records(unsupported=True))
def test_schemas_outside_the_compiled_subset_fall_back_to_fastavro(
        case: tuple[dict[str, Any], bool, list[dict[str, Any]]]) -> None:
    schema, _, records = case
    assert compile_encoder(schema) is None
    decode = compile_decoder(schema)
    odd = next(f["type"] for f in schema["fields"] if f["name"] == "odd_field")
    assert (decode is not None) == (odd in _DECODE_ONLY) or decode is None, schema
    codec = RecordCodec(schema)  # fastavro's path where nothing is compiled, same wire format
    parsed = codec.schema.parsed
    for record in records:
        expected = fastavro.schemaless_reader(
            io.BytesIO(_fastavro_bytes(parsed, record)), parsed, None)
        assert codec.decode(codec.encode(record)) == expected
        if decode is not None:
            assert decode(_fastavro_bytes(parsed, record)) == expected


# -- hostile bytes ---------------------------------------------------------------------------

def _decodes_or_rejects(codec: RecordCodec, data: bytes) -> None:
    """The contract the worker relies on: a dict, or DecodeError (dead-lettered)."""
    for decode in (codec.decode, lambda d: codec.decode_typed(d)[0]):
        try:
            record = decode(data)
        except DecodeError:
            continue
        assert isinstance(record, dict)


@st.composite
def mangled(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` truncated, with bytes flipped, with bytes inserted, or with a wrong
    single-object fingerprint."""
    how = draw(st.sampled_from(["truncate", "flip", "insert", "fingerprint"]))
    if how == "truncate":
        return valid[:draw(st.integers(0, len(valid) - 1))]
    if how == "fingerprint":
        return valid[:2] + draw(st.binary(min_size=8, max_size=8)) + valid[10:]
    at = draw(st.integers(0, len(valid) - 1))
    if how == "flip":
        return valid[:at] + bytes([valid[at] ^ draw(st.integers(1, 255))]) + valid[at + 1:]
    return valid[:at] + draw(st.binary(min_size=1, max_size=12)) + valid[at:]


def _accepts_only_what_fastavro_reads(fast: Any, parsed: Any, body: bytes) -> None:
    """A body the compiled decoder accepts must be one fastavro reads the same way (fastavro
    is laxer, e.g. about trailing bytes, so the converse does not hold)."""
    try:
        record = fast(body)
    except (IndexError, ValueError, struct.error):
        return
    assert repr(record) == repr(fastavro.schemaless_reader(io.BytesIO(body), parsed, None))


@settings(max_examples=examples(150))
@given(st.data(), schema_and_records())
def test_mangled_records_of_random_schemas_decode_or_raise_decode_error(
        data: st.DataObject, case: tuple[dict[str, Any], bool, list[dict[str, Any]]]) -> None:
    schema, _, records = case
    codec = RecordCodec(schema)
    fast = codec.schema.fast_decode
    # fastavro reads any non-zero boolean byte as true, Java and the compiled decoder only 1
    compare = fast is not None and "boolean" not in json.dumps(schema)
    for record in records:
        valid = codec.encode(record)
        assert codec.decode(valid) == codec.decode_typed(valid)[0]
        for _ in range(5):
            bad = data.draw(mangled(valid))
            _decodes_or_rejects(codec, bad)
            if compare and bad[:10] == codec.schema.header:
                _accepts_only_what_fastavro_reads(fast, codec.schema.parsed, bad[10:])


_EVENT = RecordCodec("event")
_HEADER = _EVENT.schema.header


def _array_blocks(blocks: int) -> bytes:
    """An event whose features come in ``blocks`` one-float blocks (valid Avro)."""
    return (_HEADER + b"\x02e\x02k\x02" + (encode_long(1) + b"\x00\x00\x80\x3f") * blocks
            + b"\x00")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)

HOSTILE = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: _HEADER + b),
    st.binary(max_size=200).map(lambda b: b"\xc3\x01" + b),
    st.binary(max_size=100).map(lambda b: b"\x00" + b),
    st.text(max_size=200).map(lambda s: ("{" + s).encode()),
    st.binary(max_size=200).map(lambda b: b"[" + b),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 100_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(4_000, 50_000).map(lambda n: b'{"a":' + b"7" * n + b"}"),
    st.integers(100_000, 4_000_000).map(lambda n: b'{"a":"' + b"x" * n + b'"}'),
    st.integers(1, 5_000).map(_array_blocks),
    st.integers(0, 2**80).map(lambda n: _HEADER + b"\x02e\x02k" + encode_long(n % 2**64 - 2**63)
                              + b"\x02"),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: _HEADER + encode_long(n) + b"abc"),
)


@settings(max_examples=examples(300))
@given(HOSTILE)
def test_any_bytes_decode_to_a_record_or_raise_decode_error(data: bytes) -> None:
    _decodes_or_rejects(_EVENT, data)


def test_valid_but_unusual_encodings_are_read() -> None:
    """Thousands of one-item blocks are valid Avro (some writers flush per item)."""
    assert _EVENT.decode(_array_blocks(3_000))["features"] == [1.0] * 3_000
    assert _EVENT.decode(b'{"a":' + b"7" * 4_300 + b"}")["a"] > 0


@pytest.mark.parametrize("data", [
    b"[" * 100_000,  # RecursionError inside json
    b'{"a":' + b"1" * 5_000 + b"}",  # ValueError: int digits limit, not a JSONDecodeError
    _HEADER + b"\x02e\x02k\x02" + encode_long(-1 << 62) + b"\x02",  # struct size overflow
    _HEADER + b"\x01\x00",  # negative string lengths: read as {"event_id": "", ...}
    _HEADER + b"\x02e\x02k" + b"\x80" * 9 + b"\x02\x00",  # a long of 2**63 (fastavro: 0)
    _HEADER + b"\x02e\x02k" + b"\xff" * 1_000_000 + b"\x00\x00",  # quadratic, ~a hang
], ids=["deep-json", "huge-int", "huge-block", "negative-length", "long-over-64-bits",
        "megabyte-varint"])
def test_known_hostile_inputs_raise_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        _EVENT.decode(data)
    with pytest.raises(DecodeError):
        _EVENT.decode_typed(data)


def test_hostile_array_counts_do_not_grow_the_decoder_cache() -> None:
    """Each distinct block count used to leave a ``struct.Struct`` behind: a stream of
    garbage grew the process without bound."""
    for count in range(5_000, 8_000):
        with pytest.raises(DecodeError):
            _EVENT.decode(_HEADER + b"\x02e\x02k\x02" + encode_long(count) + b"\x00" * 8)
    assert len(avro_fast._ARRAY_STRUCTS) <= 1_024
