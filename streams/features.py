"""Vectorised feature helpers: from a batch's columns to one float32 matrix.

A feature function takes the batch's columns (``{field: array or list}``) and returns the
model's input for every row at once. :class:`Features` builds that function from parts for
the common cases, so most apps need no code of their own::

    features = Features(
        numeric("age", "balance"),                 # NaN (missing) -> 0, plus nothing else
        categorical("plan", ["free", "pro"]),      # one-hot, one extra slot for other/missing
        hashed("country", buckets=16),             # one-hot of a stable hash
        array("last_amounts", length=4),           # a fixed-length list of numbers
    )
    x = features(batch.columns)                    # float32, shape (n, features.width)

A row a part cannot use (an array of the wrong length, say) raises
:class:`~streaminfer.streams.decode.InvalidRows`; the worker sends those rows to the
dead-letter topic and scores the rest.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, Protocol

import numpy as np

from streaminfer.errors import ConfigError
from streaminfer.streams.decode import InvalidRows

__all__ = ["Feature", "Features", "array", "boolean", "categorical", "hashed", "numeric"]

Columns = Mapping[str, Any]


class Feature(Protocol):
    """One part of a :class:`Features`: some columns in, ``width`` float32 columns out."""

    fields: tuple[str, ...]
    width: int

    def __call__(self, columns: Columns, n: int) -> np.ndarray: ...


def _column(columns: Columns, name: str) -> Any:
    if name not in columns:
        raise ConfigError(f"feature field {name!r} is not a column of the input "
                          f"(columns: {sorted(columns)})")
    return columns[name]


@dataclass(frozen=True)
class _Numeric:
    fields: tuple[str, ...]
    fill: float
    scale: float

    @property
    def width(self) -> int:
        return len(self.fields)

    def __call__(self, columns: Columns, n: int) -> np.ndarray:
        out = np.empty((n, len(self.fields)), np.float32)
        for j, name in enumerate(self.fields):
            col = np.asarray(_column(columns, name), np.float32) * self.scale
            out[:, j] = np.where(np.isnan(col), self.fill, col)
        return out


def numeric(*fields: str, fill: float = 0.0, scale: float = 1.0) -> Feature:
    """Number (or boolean) fields times ``scale`` (bring large values near 1, which neural
    nets learn from far better); a missing value (null) becomes ``fill``."""
    if not fields:
        raise ConfigError("numeric() needs at least one field")
    return _Numeric(tuple(fields), float(fill), float(scale))


def boolean(*fields: str, fill: float = 0.0) -> Feature:
    """Boolean fields as 0/1; null becomes ``fill``."""
    return numeric(*fields, fill=fill)


@dataclass(frozen=True)
class _Categorical:
    field: str
    vocabulary: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    @property
    def width(self) -> int:
        return len(self.vocabulary) + 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v: i for i, v in enumerate(self.vocabulary)})

    def __call__(self, columns: Columns, n: int) -> np.ndarray:
        other = repeat(len(self.vocabulary), n)  # the "other" slot: unknown values and null
        index: dict[Any, int] = self._index  # type: ignore[attr-defined]
        codes = np.fromiter(map(index.get, _column(columns, self.field), other), np.int64, n)
        return _one_hot(codes, self.width)


def _one_hot(codes: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((len(codes), width), np.float32)
    out[np.arange(len(codes)), codes] = 1.0
    return out


def categorical(field: str, vocabulary: Sequence[str]) -> Feature:
    """One-hot of a string or enum field over ``vocabulary``; anything else (and null) sets
    one extra "other" slot, so new values never break the model's input width."""
    if not vocabulary:
        raise ConfigError(f"categorical({field!r}) needs a non-empty vocabulary")
    return _Categorical(field, tuple(str(v) for v in vocabulary))


@dataclass(frozen=True)
class _Hashed:
    field: str
    buckets: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_cache", {})

    def _bucket(self, value: Any) -> int:
        """crc32 is stable across processes and machines (Python's hash() is salted); values
        repeat, so each is hashed once (up to 100,000 of them)."""
        cache: dict[Any, int] = self._cache  # type: ignore[attr-defined]
        bucket = cache.get(value)
        if bucket is None:
            bucket = zlib.crc32(str(value).encode()) % self.buckets
            if len(cache) < 100_000:
                cache[value] = bucket
        return bucket

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    @property
    def width(self) -> int:
        return self.buckets

    def __call__(self, columns: Columns, n: int) -> np.ndarray:
        values = _column(columns, self.field)
        cache: dict[Any, int] = self._cache  # type: ignore[attr-defined]
        codes = list(map(cache.get, values))  # values repeat: hash only the new ones
        if None in codes:
            codes = [self._bucket(v) if c is None else c
                     for v, c in zip(values, codes, strict=True)]
        return _one_hot(np.fromiter(codes, np.int64, n), self.buckets)


def hashed(field: str, buckets: int) -> Feature:
    """One-hot of a stable hash (crc32) of the field's text into ``buckets`` slots: for
    categories too many or too open to list."""
    if buckets < 1:
        raise ConfigError(f"hashed({field!r}) needs buckets >= 1, got {buckets}")
    return _Hashed(field, int(buckets))


@dataclass(frozen=True)
class _Array:
    field: str
    length: int
    fill: float | None

    @property
    def fields(self) -> tuple[str, ...]:
        return (self.field,)

    @property
    def width(self) -> int:
        return self.length

    def __call__(self, columns: Columns, n: int) -> np.ndarray:
        values = _column(columns, self.field)
        if isinstance(values, np.ndarray) and values.ndim == 2:
            if values.shape[1] == self.length:  # read column-wise: already one matrix
                return values.astype(np.float32, copy=False)
            values = values.tolist()
        try:  # the common case: every row has the right length (flat first: 1.6x faster)
            if set(map(len, values)) == {self.length}:
                flat = np.fromiter(chain.from_iterable(values), np.float32, n * self.length)
                return flat.reshape(n, self.length)
        except (TypeError, ValueError):
            pass
        out = np.empty((n, self.length), np.float32)
        bad: dict[int, str] = {}
        for i, row in enumerate(values):
            if row is None:
                row = []
            if len(row) != self.length and self.fill is None:
                bad[i] = f"expected {self.length} numbers, got {len(row)}"
                continue
            try:
                part = np.asarray(row[: self.length], np.float32)
            except (TypeError, ValueError):
                bad[i] = "expected numbers"
                continue
            out[i, : len(part)] = part
            out[i, len(part):] = self.fill if self.fill is not None else 0.0
        if bad:
            raise InvalidRows(self.field, bad)
        return out


def array(field: str, length: int, *, fill: float | None = None) -> Feature:
    """A list-of-numbers field as ``length`` columns. With ``fill=None`` a row of another
    length is rejected; otherwise short rows are padded with ``fill`` and long ones cut."""
    if length < 1:
        raise ConfigError(f"array({field!r}) needs length >= 1, got {length}")
    return _Array(field, int(length), fill)


class Features:
    """Parts side by side: ``Features(a, b)(columns)`` is ``[a(columns) | b(columns)]``."""

    def __init__(self, *parts: Feature) -> None:
        if not parts:
            raise ConfigError("Features() needs at least one part")
        self.parts = parts

    @property
    def width(self) -> int:
        """Columns of the matrix: the model's input size."""
        return sum(p.width for p in self.parts)

    @property
    def fields(self) -> tuple[str, ...]:
        """The input fields the parts read."""
        return tuple(dict.fromkeys(f for p in self.parts for f in p.fields))

    def __call__(self, columns: Columns) -> np.ndarray:
        n = _rows(columns, self.fields)
        blocks = [p(columns, n) for p in self.parts]
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)

    def __repr__(self) -> str:
        return f"Features(width={self.width}, fields={list(self.fields)})"


def _rows(columns: Columns, fields: Sequence[str]) -> int:
    for name in fields:
        return len(_column(columns, name))
    return 0
