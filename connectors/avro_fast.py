"""Compiled Avro encoders/decoders for the small flat records on the hot path.

fastavro spends most of its time per *call* (about 8 us) rather than per byte, which is most
of the cost of a 70-byte event. For records made of primitives, arrays of primitives and
``["null", T]`` unions (all of ``schemas/*.avsc``), this module generates one straight-line
Python function per schema. Byte-for-byte identical to fastavro's output (tested against it);
anything else returns ``None`` and callers keep using fastavro.

Hand-written on purpose, where a library (fastavro) does the same: measured in
docs/benchmarks.md, it halves decode and encode time per record.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from functools import partial
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["compile_decoder", "compile_encoder", "compile_projection", "encode_long"]

Decoder = Callable[[bytes], dict[str, Any]]
Encoder = Callable[[dict[str, Any]], bytes]

_FIXED = {"float": ("f", 4), "double": ("d", 8)}
_INTEGER = ("int", "long")


def _type_name(ftype: Any) -> str | None:
    if isinstance(ftype, str):
        return ftype
    if isinstance(ftype, dict) and isinstance(ftype.get("type"), str):
        return ftype["type"]
    return None


# -- decoding -------------------------------------------------------------------------------

_SHIFTS = tuple(range(7, 64, 7))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Zig-zag varint (Avro int/long) at ``pos``; returns (value, next position). At most 10
    bytes and 64 bits, as Avro's long: a longer run would be read as a Python int of any
    size (and a megabyte of continuation bytes takes quadratic time)."""
    b = buf[pos]
    pos += 1
    n = b & 0x7F
    if b & 0x80:
        for shift in _SHIFTS:
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
        else:
            raise ValueError("varint longer than 10 bytes")
        if n >> 64:
            raise ValueError("varint over 64 bits")
    return (n >> 1) ^ -(n & 1), pos


_ARRAY_STRUCTS: dict[tuple[str, int], struct.Struct] = {}


def _unpacker(code: str, count: int) -> struct.Struct:
    key = (code, count)
    found = _ARRAY_STRUCTS.get(key)
    if found is None:
        if len(_ARRAY_STRUCTS) >= 1024:  # bounded: counts come from the input
            _ARRAY_STRUCTS.clear()
        found = _ARRAY_STRUCTS[key] = struct.Struct(f"<{count}{code}")
    return found


def _read_float_array(buf: bytes, pos: int, code: str, size: int) -> tuple[list[Any], int]:
    """A float/double array: usually one block then the end marker, but any number of blocks
    is valid (read in a loop: a recursion per block let a crafted record overflow the stack)."""
    count, pos = _read_varint(buf, pos)
    end = pos + count * size
    if count > 0 and end < len(buf) and buf[end] == 0:  # the usual case: one block, then 0
        return list(_unpacker(code, count).unpack_from(buf, pos)), end + 1
    out: list[Any] = []
    while count:
        if count < 0:  # a block with its byte size first, which we do not need
            count = -count
            _, pos = _read_varint(buf, pos)
        if count * size > len(buf) - pos:  # before building a Struct for a hostile count
            raise ValueError(f"array block of {count} items runs past the record")
        out += _unpacker(code, count).unpack_from(buf, pos)
        count, pos = _read_varint(buf, pos + count * size)
    return out, pos


def _block(buf: bytes, pos: int) -> tuple[int, int]:
    """The item count of the next array/map block (0: the end); a negative count is followed
    by the block's byte size, which a reader does not need."""
    count, pos = _read_varint(buf, pos)
    if count < 0:
        count = -count
        _, pos = _read_varint(buf, pos)
    return count, pos


def _read_array(buf: bytes, pos: int, item: Callable[[bytes, int], tuple[Any, int]]
                ) -> tuple[list[Any], int]:
    out: list[Any] = []
    while True:
        count, pos = _block(buf, pos)
        if count == 0:
            return out, pos
        for _ in range(count):
            value, pos = item(buf, pos)
            out.append(value)


def _read_map(buf: bytes, pos: int, item: Callable[[bytes, int], tuple[Any, int]]
              ) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while True:
        count, pos = _block(buf, pos)
        if count == 0:
            return out, pos
        for _ in range(count):
            key, pos = _read_string(buf, pos)
            out[key], pos = item(buf, pos)


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = _read_length(buf, pos)
    end = pos + n
    if end > len(buf):
        raise ValueError("string runs past the end of the record")
    return buf[pos:end].decode(), end


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_length(buf, pos)
    end = pos + n
    if end > len(buf):
        raise ValueError("bytes run past the end of the record")
    return buf[pos:end], end


def _read_double(buf: bytes, pos: int) -> tuple[float, int]:
    return _UNPACK_D(buf, pos)[0], pos + 8


def _read_float(buf: bytes, pos: int) -> tuple[float, int]:
    return _UNPACK_F(buf, pos)[0], pos + 4


def _read_bool(buf: bytes, pos: int) -> tuple[bool, int]:
    return buf[pos] == 1, pos + 1


_UNPACK_D = struct.Struct("<d").unpack_from
_UNPACK_F = struct.Struct("<f").unpack_from
#: readers of map values and array items that are not numbers in bulk
_ITEM_READERS = {"string": "_read_string", "bytes": "_read_bytes", "int": "_read_varint",
                 "long": "_read_varint", "double": "_read_double", "float": "_read_float",
                 "boolean": "_read_bool"}


def _varint_lines(target: str, indent: str) -> list[str]:
    """Inline the one- and two-byte cases (lengths, small ints: |v| < 8192) and a loop for
    longer ones (timestamps take 6 bytes): no call per value."""
    return [f"{indent}b = buf[pos]",
            f"{indent}if b < 0x80:",
            f"{indent}    {target} = (b >> 1) ^ -(b & 1)",
            f"{indent}    pos += 1",
            f"{indent}elif buf[pos + 1] < 0x80:",
            f"{indent}    b = (b & 0x7F) | (buf[pos + 1] << 7)",
            f"{indent}    {target} = (b >> 1) ^ -(b & 1)",
            f"{indent}    pos += 2",
            f"{indent}else:",
            f"{indent}    n = (b & 0x7F) | ((buf[pos + 1] & 0x7F) << 7)",
            f"{indent}    pos += 2",
            f"{indent}    shift = 14",
            f"{indent}    while True:",
            f"{indent}        b = buf[pos]",
            f"{indent}        pos += 1",
            f"{indent}        n |= (b & 0x7F) << shift",
            f"{indent}        if b < 0x80:",
            f"{indent}            break",
            f"{indent}        shift += 7",
            f"{indent}        if shift > 63:",
            f"{indent}            raise ValueError('varint longer than 10 bytes')",
            f"{indent}    if n >> 64:",
            f"{indent}        raise ValueError('varint over 64 bits')",
            f"{indent}    {target} = (n >> 1) ^ -(n & 1)"]


def _read_length(buf: bytes, pos: int) -> tuple[int, int]:
    n, pos = _read_varint(buf, pos)
    if n < 0:  # sliced as is, it would move ``pos`` back and read garbage as a record
        raise ValueError(f"negative length {n}")
    return n, pos


def _length_lines(target: str, indent: str) -> list[str]:
    """A string/bytes length: one-byte lengths (an even byte under 0x80) inline, the rest,
    negative ones included, through ``_read_length``."""
    return [f"{indent}b = buf[pos]",
            f"{indent}if b < 0x80 and not b & 1:",
            f"{indent}    {target} = b >> 1",
            f"{indent}    pos += 1",
            f"{indent}else:",
            f"{indent}    {target}, pos = _read_length(buf, pos)"]


def _decode_lines(name: str, ftype: Any, target: str, indent: str) -> list[str] | None:
    """Source lines that read one value of ``ftype`` into ``target``; None if unsupported."""
    kind = _type_name(ftype)
    if isinstance(ftype, list):
        if len(ftype) != 2 or "null" not in ftype:
            return None
        other = ftype[1] if ftype[0] == "null" else ftype[0]
        null_index = ftype.index("null")
        inner = _decode_lines(name, other, target, indent + "    ")
        deeper = _decode_lines(name, other, target, indent + "        ")
        if inner is None or deeper is None:
            return None
        # the branch index is one byte, 0x00 or 0x02 (zig-zag), in all but odd encodings
        return [f"{indent}b = buf[pos]",
                f"{indent}if b == {2 * null_index}:",
                f"{indent}    {target} = None",
                f"{indent}    pos += 1",
                f"{indent}elif b == {2 - 2 * null_index}:",
                f"{indent}    pos += 1", *inner,
                f"{indent}else:", *_varint_lines("branch", indent + "    "),
                f"{indent}    if branch == {null_index}:",
                f"{indent}        {target} = None",
                f"{indent}    elif branch == {1 - null_index}:",
                *deeper,
                f"{indent}    else:",
                f"{indent}        raise ValueError(f'union branch {{branch}} is neither 0 nor 1')"]
    if kind in _INTEGER:
        return _varint_lines(target, indent)
    if kind in _FIXED:
        code, size = _FIXED[kind]
        return [f"{indent}{target} = _unpack_{code}(buf, pos)[0]", f"{indent}pos += {size}"]
    if kind in ("string", "bytes"):
        text = ".decode()" if kind == "string" else ""
        return [*_length_lines("n", indent),
                f"{indent}{target} = buf[pos:pos + n]{text}",
                f"{indent}pos += n"]
    if kind == "boolean":
        return [f"{indent}{target} = buf[pos] == 1", f"{indent}pos += 1"]
    if kind == "null":
        return [f"{indent}{target} = None"]
    if kind == "array" and isinstance(ftype, dict):
        items = _type_name(ftype.get("items"))
        if items in _FIXED:
            code, size = _FIXED[items]
            return [f"{indent}{target}, pos = _read_float_array(buf, pos, {code!r}, {size})"]
        if items in _ITEM_READERS:
            return [f"{indent}{target}, pos = _read_array(buf, pos, {_ITEM_READERS[items]})"]
        return None
    if kind == "map" and isinstance(ftype, dict):
        values = ftype.get("values")
        if isinstance(values, str) and values in _ITEM_READERS:
            return [f"{indent}{target}, pos = _read_map(buf, pos, {_ITEM_READERS[values]})"]
        return None
    if kind == "enum" and isinstance(ftype, dict):
        symbols = tuple(str(s) for s in ftype.get("symbols", ()))
        if len(symbols) <= 64:  # every index is one byte: look the byte up
            by_byte = tuple(symbols[b >> 1] if not b & 1 and b >> 1 < len(symbols) else None
                            for b in range(0x80))
            return [f"{indent}{target} = {by_byte!r}[buf[pos]]",
                    f"{indent}if {target} is None:",
                    f"{indent}    raise ValueError(f'enum index byte {{buf[pos]}} out of range')",
                    f"{indent}pos += 1"]
        return [*_varint_lines("i", indent),
                f"{indent}if not 0 <= i < {len(symbols)}:",
                f"{indent}    raise ValueError(f'enum index {{i}} out of range')",
                f"{indent}{target} = {symbols!r}[i]"]
    if kind == "record" and isinstance(ftype, dict) and isinstance(ftype.get("fields"), list):
        lines: list[str] = []
        parts = []
        for j, field in enumerate(ftype["fields"]):
            body = _decode_lines(field["name"], field["type"], f"{target}_{j}", indent)
            if body is None:
                return None
            lines += body
            parts.append(f"{field['name']!r}: {target}_{j}")
        return [*lines, f"{indent}{target} = {{{', '.join(parts)}}}"]
    return None


def _skip_lines(ftype: Any, indent: str) -> list[str] | None:
    """Source lines that move past a value of ``ftype`` the caller does not need: strings and
    bytes without copying them, maps and arrays of strings without keeping them."""
    kind = _type_name(ftype)
    if kind in ("string", "bytes"):
        return [*_length_lines("n", indent), f"{indent}pos += n",
                f"{indent}if pos > len(buf):",
                f"{indent}    raise ValueError('string runs past the end of the record')"]
    if kind == "map" and isinstance(ftype, dict) and ftype.get("values") in ("string", "bytes"):
        return [f"{indent}pos = _skip_strings(buf, pos, 2)"]
    if (kind == "array" and isinstance(ftype, dict)
            and _type_name(ftype.get("items")) in ("string", "bytes")):
        return [f"{indent}pos = _skip_strings(buf, pos, 1)"]
    return _decode_lines("_", ftype, "_", indent)


def _skip_strings(buf: bytes, pos: int, per_item: int) -> int:
    """Past a map of strings (``per_item`` 2: key and value) or an array of strings (1),
    with the one-byte counts and lengths of short strings read inline."""
    end = len(buf)
    while True:
        b = buf[pos]
        if b < 0x80 and not b & 1:
            count = b >> 1
            pos += 1
        else:
            count, pos = _block(buf, pos)
        if count == 0:
            return pos
        for _ in range(count * per_item):
            b = buf[pos]
            if b < 0x80 and not b & 1:
                pos += 1 + (b >> 1)
            else:
                n, pos = _read_length(buf, pos)
                pos += n
            if pos > end:
                raise ValueError("string runs past the end of the record")


_DECODE_SCOPE: dict[str, Any] = {
    "_read_varint": _read_varint, "_read_array": _read_array, "_read_length": _read_length,
    "_read_map": _read_map, "_read_string": _read_string, "_read_bytes": _read_bytes,
    "_read_double": _read_double, "_read_float": _read_float, "_read_bool": _read_bool,
    "_read_float_array": _read_float_array, "_unpack_f": _UNPACK_F, "_unpack_d": _UNPACK_D,
    "_skip_strings": _skip_strings,
}


def _finish(lines: list[str], result: str) -> Any:
    lines += ["    if pos != len(buf):",
              "        raise ValueError(f'{len(buf) - pos} bytes after the record')",
              f"    return {result}"]
    scope = dict(_DECODE_SCOPE)
    exec("\n".join(lines), scope)  # source built from the schema alone
    return scope["decode"]


def compile_decoder(schema: dict[str, Any]) -> Decoder | None:
    """``decode(body) -> dict`` for a record schema written *and* read with ``schema``."""
    if _type_name(schema) != "record":
        return None
    lines = ["def decode(buf):", "    pos = 0"]
    names = []
    for i, field in enumerate(schema["fields"]):
        body = _decode_lines(field["name"], field["type"], f"v{i}", "    ")
        if body is None:
            return None
        lines += body
        names.append(f"{field['name']!r}: v{i}")
    return _finish(lines, "{" + ", ".join(names) + "}")  # type: ignore[no-any-return]


Projection = Callable[[Iterable[Any]], list[tuple[Any, ...]] | None]


def compile_projection(schema: dict[str, Any], paths: list[tuple[str, ...]], *,
                       header: bytes = b"", max_bytes: int = 1 << 62) -> Projection | None:
    """``read(values) -> [tuple, ...]``: of every value (``header`` then a body written with
    ``schema``), only the leaf fields at ``paths`` (nested records as ``("outer", "inner")``),
    in that order; ``None`` for the whole batch when a value is empty, longer than
    ``max_bytes`` or lacks the header. A body that does not match raises ``ValueError``,
    ``IndexError`` or ``struct.error``.

    What the worker needs of a batch, without building records: no dict per record (or per
    nested record), no lookups after it, and no call per record. Every field is still read,
    since Avro has no index; ``None`` when a type is not covered (then the caller decodes
    whole records).
    """
    if _type_name(schema) != "record":
        return None
    skip = len(header)
    lines = ["def read(values):", "    rows = []", "    append = rows.append",
             "    for buf in values:",
             f"        if not buf or len(buf) > {max_bytes} or buf[:{skip}] != _header:",
             "            return None",
             f"        pos = {skip}"]
    where: dict[tuple[str, ...], str] = {}
    count = iter(range(1 << 30))

    def walk(record: dict[str, Any], prefix: tuple[str, ...], indent: str) -> bool:
        for field in record["fields"]:
            path = (*prefix, field["name"])
            var = f"v{next(count)}"
            ftype = field["type"]
            inner = ftype if _type_name(ftype) == "record" and isinstance(ftype, dict) else None
            if inner is not None and any(p[:len(path)] == path for p in paths):
                if not walk(inner, path, indent):
                    return False
                continue
            wanted = path in paths
            body = (_decode_lines(field["name"], ftype, var, indent) if wanted
                    else _skip_lines(ftype, indent))
            if body is None:
                return False
            lines.extend(body)
            if wanted:
                where[path] = var
        return True

    if not walk(schema, (), "        "):
        return None
    if any(path not in where for path in paths):
        return None  # e.g. a nullable nested record: leave it to the whole-record path
    lines += ["        if pos != len(buf):",
              "            raise ValueError(f'{len(buf) - pos} bytes after the record')",
              "        append((" + "".join(f"{where[p]}, " for p in paths) + "))",
              "    return rows"]
    scope = {**_DECODE_SCOPE, "_header": header}
    exec("\n".join(lines), scope)  # source built from the schema alone
    return scope["read"]  # type: ignore[no-any-return]


# -- encoding -------------------------------------------------------------------------------

def encode_long(value: int) -> bytes:
    """Avro's encoding of an int/long (zig-zag varint)."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return _SMALL[n]
    found = _MEMO.get(value)
    if found is not None:  # timestamps of one batch repeat: most long varints are hits
        return found
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    if len(_MEMO) >= 4096:
        _MEMO.clear()
    found = _MEMO[value] = bytes(out)
    return found


_SMALL = [bytes([i]) for i in range(0x80)]
_MEMO: dict[int, bytes] = {}


def _float_array(values: Any, code: str) -> bytes:
    count = len(values)
    if not count:
        return b"\x00"
    return encode_long(count) + struct.pack(f"<{count}{code}", *values) + b"\x00"


def _encode_expr(ftype: Any, value: str) -> str | None:
    """A Python expression giving the Avro bytes of ``value`` (an expression) of ``ftype``."""
    kind = _type_name(ftype)
    if isinstance(ftype, list):
        if len(ftype) != 2 or "null" not in ftype:
            return None
        other = ftype[1] if ftype[0] == "null" else ftype[0]
        null_index, other_index = ftype.index("null"), 1 - ftype.index("null")
        inner = _encode_expr(other, value)
        if inner is None:
            return None
        return (f"(encode_long({null_index}) if {value} is None else "
                f"encode_long({other_index}) + {inner})")
    if kind in _INTEGER:
        return f"encode_long(int({value}))"
    if kind in _FIXED:
        return f"_pack_{_FIXED[kind][0]}({value})"
    if kind == "string":
        return f"_string({value})"
    if kind == "bytes":
        return f"encode_long(len({value})) + bytes({value})"
    if kind == "boolean":
        return f"(b'\\x01' if {value} else b'\\x00')"
    if kind == "null":
        return "b''"
    if kind == "array" and isinstance(ftype, dict):
        items = _type_name(ftype.get("items"))
        if items in _FIXED:
            return f"_float_array({value}, {_FIXED[items][0]!r})"
        if items in _INTEGER:
            return f"_int_array({value})"
    return None


def _string(value: str) -> bytes:
    data = value.encode()
    return encode_long(len(data)) + data


def _int_array(values: Any) -> bytes:
    if not len(values):
        return b"\x00"
    return encode_long(len(values)) + b"".join(encode_long(int(v)) for v in values) + b"\x00"


def _field_value(field: dict[str, Any], source: str, defaults: dict[str, Any]) -> str:
    """Expression reading ``field`` from the mapping ``source`` (its default when absent)."""
    name = field["name"]
    if "default" in field:
        defaults[name] = field["default"]
        return f"{source}.get({name!r}, _defaults[{name!r}])"
    return f"{source}[{name!r}]"


def _compile(source: str, name: str, defaults: dict[str, Any]) -> Any:
    scope: dict[str, Any] = {"encode_long": encode_long, "_string": _string,
                             "_float_array": _float_array, "_int_array": _int_array,
                             "_pack_f": struct.Struct("<f").pack,
                             "_pack_d": struct.Struct("<d").pack, "_defaults": defaults}
    exec(source, scope)  # source built by this module from a schema alone
    return scope[name]


def compile_encoder(schema: dict[str, Any]) -> Encoder | None:
    """``encode(record) -> body bytes`` (no header); fields with defaults may be absent."""
    if _type_name(schema) != "record":
        return None
    parts = []
    defaults: dict[str, Any] = {}
    for field in schema["fields"]:
        expr = _encode_expr(field["type"], _field_value(field, "record", defaults))
        if expr is None:
            return None
        parts.append(expr)
    source = "def encode(record):\n    return b''.join((" + ", ".join(parts) + ",))"
    return _compile(source, "encode", defaults)  # type: ignore[no-any-return]


ColumnEncoder = Callable[[Any], tuple[list[bytes], ...]]


def compile_columns_encoder(schema: dict[str, Any], varying: tuple[str, ...]
                            ) -> Callable[..., list[bytes]] | None:
    """``encode(columns, constants, header) -> [header + body, ...]`` for a batch held as
    columns: fields in ``varying`` come from ``columns[name]`` (sequences of equal length),
    the others from ``constants`` (or the schema default) and are encoded once per batch.

    Column by column, then one ``b"".join`` per record: strings, longs and floats of a whole
    column are encoded by C-level maps (and numpy for varints), which is what a per-record
    function spent most of its time calling (~0.9 against ~0.4 us per prediction record).
    """
    if _type_name(schema) != "record" or not varying:
        return None
    names = [f["name"] for f in schema["fields"]]
    if not set(varying) <= set(names):
        return None
    defaults: dict[str, Any] = {}
    # per field: (its column's encoder, None) or (None, its per-batch value's encoder)
    plan: list[tuple[str, ColumnEncoder | None, Callable[[dict[str, Any]], bytes] | None]] = []
    for field in schema["fields"]:
        name = field["name"]
        if name in varying:
            column = _column_encoder(field["type"])
            if column is None:
                return None
            plan.append((name, column, None))
            continue
        expr = _encode_expr(field["type"], _field_value(field, "constants", defaults))
        if expr is None:
            return None
        plan.append((name, None, _compile(f"def value(constants):\n    return {expr}",
                                          "value", defaults)))
    join = b"".join

    def encode(columns: dict[str, Any], constants: dict[str, Any], header: bytes
               ) -> list[bytes]:
        n = len(columns[varying[0]])
        if any(len(columns[name]) != n for name in varying):
            raise ValueError(f"columns of different lengths: "
                             f"{ {name: len(columns[name]) for name in varying} }")
        parts: list[Iterable[bytes]] = []
        same = [header]  # consecutive per-batch bytes, joined into one part
        for name, column, value in plan:
            if column is not None:
                if same:
                    parts.append(repeat(join(same), n))
                    same = []
                parts.extend(column(columns[name]))
            else:
                assert value is not None
                same.append(value(constants))
        if same:
            parts.append(repeat(join(same), n))
        return list(map(join, zip(*parts, strict=False)))  # lengths checked; repeat is endless

    return encode


def _column_encoder(ftype: Any) -> ColumnEncoder | None:
    """Encodes a column of ``ftype`` values as parts of records (lists, one item per row)."""
    kind = _type_name(ftype)  # None for a union: its values go one by one
    if kind == "string":
        return _string_column
    if kind in _INTEGER:
        return _long_column
    if kind in _FIXED:
        code = _FIXED[kind][0]
        return partial(_fixed_column, f"<{code}", struct.Struct("<" + code).pack)
    expr = _encode_expr(ftype, "value")
    if expr is None:
        return None
    one = _compile(f"def value(value):\n    return {expr}", "value", {})
    return lambda values: (list(map(one, values)),)


_LENGTHS = _SMALL[::2]  # the varint of a length below 64: zig-zag doubles it


def _string_column(values: Any) -> tuple[list[bytes], list[bytes]]:
    data = list(map(str.encode, values))
    lengths = list(map(len, data))
    if lengths and max(lengths) >= 64:
        return list(map(encode_long, lengths)), data
    return list(map(_LENGTHS.__getitem__, lengths)), data


def _long_column(values: Any) -> tuple[list[bytes]]:
    """Zig-zag varints of a column at once (numpy), when they all have the same length (a
    batch's timestamps); one by one otherwise."""
    ints = np.asarray(values, np.int64)
    if not ints.size:
        return ([],)
    zigzag = ((ints << 1) ^ (ints >> 63)).view(np.uint64)
    size = max(1, (int(zigzag.max()).bit_length() + 6) // 7)
    if size != max(1, (int(zigzag.min()).bit_length() + 6) // 7):
        return (list(map(encode_long, ints.tolist())),)
    groups = ((zigzag[:, None] >> _GROUP_SHIFTS[:size]) & np.uint64(0x7F)).astype(np.uint8)
    groups[:, :-1] |= 0x80
    return (_rows_as_bytes(groups),)


def _fixed_column(dtype: str, pack: Callable[[Any], bytes], values: Any) -> tuple[list[bytes]]:
    """Little-endian floats of a column at once; one by one (``struct``, which refuses a
    value out of a float's range) when the column has a value numpy made infinite."""
    with np.errstate(over="ignore"):
        floats = np.asarray(values, dtype)
    if not np.isfinite(floats).all():
        return (list(map(pack, values)),)
    return (_rows_as_bytes(floats.reshape(len(floats), 1).view(np.uint8)),)


def _rows_as_bytes(rows: np.ndarray) -> list[bytes]:
    """Each row of a 2-d uint8 array as ``bytes`` (a void view keeps trailing zero bytes)."""
    rows = np.ascontiguousarray(rows)
    return rows.view(f"V{rows.shape[1]}").ravel().tolist()  # type: ignore[no-any-return]


_GROUP_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)
