"""Column-wise reading of a batch of single-object Avro records, with numpy over all of them.

The compiled row reader (``avro_fast.compile_projection``) runs ~25 lines of Python per
record: about 1.3 us for a 4-field label record, most of a label's cost on the hot path. Here
each field is read for the whole batch at once: one gather of its bytes at every record's
position, then the value, so the Python cost is per field and batch, not per record (strings
still become ``str`` one by one). Arrays of floats come out as one ``(n, length)`` matrix
instead of a list of Python floats per record.

Covers flat records of ``string``, ``bytes``, ``int``/``long`` (timestamps included),
``float``, ``double``, ``boolean`` and arrays of ``float``/``double`` that are one block of the
same length in every record of the batch. Anything else (unions, nested records, enums, maps,
a ragged or multi-block array, a malformed record) gives ``None``: the caller then reads the
batch with the row reader, which also names what is wrong with a bad record.

Hand-written on purpose: fastavro and Avro's own reader build one dict per record; no library
we reach reads single-object Avro into columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from streaminfer.connectors.avro_fast import _type_name

__all__ = ["MIN_RECORDS", "ColumnReader", "compile_columns"]

#: ``read(values) -> [column, ...] | None``
ColumnReader = Callable[[Sequence[bytes | None]], list[Any] | None]

_VARINT_BYTES = np.arange(10)
_VARINT_SHIFTS = (7 * _VARINT_BYTES).astype(np.uint64)
_PAD = bytes(16)  # a gather at a record's last byte stays inside the buffer
_FLOATS = {"float": ("<f4", 4), "double": ("<f8", 8)}
#: below this many records a batch goes to the row reader: numpy's cost per call (~60 us
#: a batch) outweighs what it saves per record
MIN_RECORDS = 64


def _field_kind(ftype: Any) -> str | None:
    """The reader for one field's type, or ``None`` when it is not covered."""
    kind = _type_name(ftype)
    if kind in ("string", "bytes", "boolean", "float", "double"):
        return kind
    if kind in ("int", "long"):
        return "long"
    if kind == "array" and isinstance(ftype, dict) and _type_name(ftype.get("items")) in _FLOATS:
        return "array:" + str(_type_name(ftype["items"]))
    return None


def compile_columns(schema: dict[str, Any], paths: list[tuple[str, ...]], *,
                    header: bytes = b"", max_bytes: int = 1 << 62) -> ColumnReader | None:
    """A reader of the top-level fields ``paths`` (in that order) for batches of values that
    are ``header`` then a body written with ``schema``; ``None`` when the schema has a field
    this module does not read (then every batch goes to the row reader)."""
    if _type_name(schema) != "record":
        return None
    names = [f["name"] for f in schema["fields"]]
    if any(len(p) != 1 or p[0] not in names for p in paths):
        return None
    plan: list[tuple[str, bool]] = []
    for field in schema["fields"]:
        kind = _field_kind(field["type"])
        if kind is None:
            return None
        plan.append((kind, (field["name"],) in paths))
    order = [names.index(p[0]) for p in paths]
    expected = np.frombuffer(header, np.uint8)

    def read(values: Sequence[bytes | None]) -> list[Any] | None:
        if len(values) < MIN_RECORDS or None in values:
            return None
        lengths = np.fromiter(map(len, values), np.int64, len(values))  # type: ignore[arg-type]
        if lengths.min() <= len(header) or lengths.max() > max_bytes:
            return None
        batch = _Batch(b"".join(values), lengths)  # type: ignore[arg-type]
        pos = batch.ends - lengths
        if len(header) and not (batch.buf[pos[:, None] + np.arange(len(header))]
                                == expected).all():
            return None
        pos = pos + len(header)
        read_fields: dict[int, Any] = {}
        for i, (kind, wanted) in enumerate(plan):
            got = batch.field(kind, wanted, pos)
            if got is None:
                return None
            value, pos = got
            if wanted:
                read_fields[i] = value
        if (pos != batch.ends).any():
            return None
        return [read_fields[i] for i in order]

    return read


class _Batch:
    """One batch's values back to back, as bytes and as a uint8 array, with each record's
    end. Every read checks that a field ends within its record before gathering it."""

    def __init__(self, raw: bytes, lengths: np.ndarray) -> None:
        self.raw = raw
        self.buf = np.frombuffer(raw + _PAD, np.uint8)
        self.ends = np.cumsum(lengths)
        self._text: str | None = None  # the batch read as latin-1: ASCII text slices from it

    def field(self, kind: str, wanted: bool, pos: np.ndarray) -> tuple[Any, np.ndarray] | None:
        """``(column or None, positions after the field)``; ``None`` when the batch does not
        fit the column-wise reading."""
        if kind in ("string", "bytes"):
            return self._strings(kind == "string", wanted, pos)
        if kind == "long":
            got = _varints(self.buf, pos)
            return None if got is None or (got[1] > self.ends).any() else got
        if (pos >= self.ends).any():
            return None
        if kind == "boolean":
            byte = self.buf[pos]
            return None if (byte > 1).any() else (byte == 1, pos + 1)
        if kind in _FLOATS:
            dtype, size = _FLOATS[kind]
            if (pos + size > self.ends).any():
                return None
            return _floats(self.buf, pos, dtype, size, 1).ravel() if wanted else None, pos + size
        return self._float_arrays(kind.split(":", 1)[1], wanted, pos)

    def _strings(self, text: bool, wanted: bool, pos: np.ndarray
                 ) -> tuple[list[Any] | None, np.ndarray] | None:
        got = _varints(self.buf, pos)
        if got is None or got[0].min() < 0:
            return None
        length, start = got
        end = start + length
        if (end > self.ends).any():
            return None
        if not wanted:
            return None, end
        pieces = map(slice, start.tolist(), end.tolist())
        if not text:
            return list(map(self.raw.__getitem__, pieces)), end
        if self._text is None:
            self._text = self.raw.decode("latin-1")
        column = list(map(self._text.__getitem__, pieces))
        if "".join(column).isascii():  # most ids and keys: then latin-1 read them as UTF-8 does
            return column, end
        pieces = map(slice, start.tolist(), end.tolist())
        try:
            return [self.raw[piece].decode() for piece in pieces], end
        except UnicodeDecodeError:
            return None

    def _float_arrays(self, items: str, wanted: bool, pos: np.ndarray
                      ) -> tuple[np.ndarray | None, np.ndarray] | None:
        """Arrays of one block, the same length in every record: an ``(n, length)`` array."""
        dtype, size = _FLOATS[items]
        got = _varints(self.buf, pos)
        if got is None or (got[1] >= self.ends).any():
            return None
        counts, pos = got
        count = int(counts[0])
        if count < 0 or (counts != count).any():
            return None  # a ragged batch, or a block written with its byte size
        if not count:
            return np.zeros((len(pos), 0), dtype) if wanted else None, pos
        width = count * size
        if (pos + width + 1 > self.ends).any() or (self.buf[pos + width] != 0).any():
            return None  # past the record, or more than one block
        return _floats(self.buf, pos, dtype, size, count) if wanted else None, pos + width + 1


def _floats(buf: np.ndarray, pos: np.ndarray, dtype: str, size: int, count: int) -> np.ndarray:
    """``count`` little-endian floats at each position, as an ``(n, count)`` array."""
    raw = buf[pos[:, None] + np.arange(count * size)]
    return raw.view(dtype).reshape(len(pos), count)


def _varints(buf: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Zig-zag varints (Avro int/long) at each position: ``(values, next positions)``.
    ``None`` for one longer than 9 bytes (63 bits; the row reader takes those, and says
    what is wrong with a bad one)."""
    first = buf[pos]
    if (first < 0x80).all():
        n = first.astype(np.int64)
        return (n >> 1) ^ -(n & 1), pos + 1
    window = buf[pos[:, None] + _VARINT_BYTES].astype(np.uint64)
    more = window >= 0x80
    length = more.argmin(axis=1) + 1  # the first byte without a continuation bit
    if (length > 9).any() or more[:, :9].all(axis=1).any():
        return None
    parts = ((window & 0x7F) << _VARINT_SHIFTS) * (length[:, None] > _VARINT_BYTES)
    n = np.bitwise_or.reduce(parts, axis=1)
    values = (n >> np.uint64(1)).astype(np.int64) ^ -(n & np.uint64(1)).astype(np.int64)
    return values, pos + length
