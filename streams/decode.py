"""From Kafka messages to a columns :class:`~streaminfer.streams.batch.Batch`, for any schema.

The decoder reads each record with the input's codec (compiled Avro, fastavro for evolved
writers, or JSON), takes the event id, key and event time out, and gathers every field into a
column: flat and nested records (``"outer.inner"``), arrays, enums, maps and ``["null", T]``
unions. A record the Avro reader decoded with exactly the reader schema is trusted as typed;
JSON and resolved records get each field checked, so a wrong type is a rejection that names
the field, never a crash later in the model.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from confluent_kafka import Message

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.records import now_ms, parse_event_time
from streaminfer.errors import DecodeError, InvalidRecord
from streaminfer.streams.batch import Batch, Rejected

__all__ = ["MAX_FUTURE_MS", "MAX_ID_CHARS", "MAX_RECORD_BYTES", "MIN_TS", "Column",
           "InvalidRows", "RecordDecoder", "columns_of"]

MIN_TS = 946_684_800_000  # 2000-01-01: older event times are treated as corrupt
MAX_FUTURE_MS = 24 * 3600 * 1000  # event times more than a day ahead are treated as corrupt
#: a record value over this many bytes is rejected before it is decoded (``--max-record-bytes``)
MAX_RECORD_BYTES = 1024 * 1024
#: a key or event id longer than this is rejected: it would become a Redis key and a label
MAX_ID_CHARS = 4096

_NUMBER = {"float": "number", "double": "number", "int": "integer", "long": "integer",
           "boolean": "boolean", "string": "string", "enum": "string", "bytes": "bytes",
           "fixed": "bytes", "array": "array", "map": "map"}


class InvalidRows(ValueError):
    """Raised by a feature function: these rows (index -> reason) cannot be used; the rest
    of the batch can. ``field`` names the column."""

    def __init__(self, field: str, reasons: dict[int, str]) -> None:
        super().__init__(f"field {field!r}: {len(reasons)} invalid row(s)")
        self.field = field
        self.reasons = reasons


@dataclass(frozen=True)
class Column:
    """One field of the input schema as the decoder gathers it."""

    name: str  # "a" or "outer.inner"
    path: tuple[str, ...]
    kind: str  # number | integer | boolean | string | bytes | array | map | timestamp | any
    nullable: bool = False
    has_default: bool = False
    default: Any = None

    def check(self, value: Any) -> Any:
        """``value`` if it fits the column (JSON or resolved records); raises naming the field."""
        if value is None:
            if self.nullable:
                return None
            raise InvalidRecord(self.name, "missing (null) but the field is not nullable")
        kind = self.kind
        ok = True
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        elif kind in ("integer", "timestamp"):
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok and isinstance(value, float) and value.is_integer():
                return int(value)
        elif kind == "boolean":
            ok = isinstance(value, bool)
        elif kind == "string":
            ok = isinstance(value, str)
        elif kind == "bytes":
            ok = isinstance(value, bytes | str)
        elif kind == "array":
            ok = isinstance(value, list)
        elif kind == "map":
            ok = isinstance(value, dict)
        if not ok:
            raise InvalidRecord(self.name, f"expected {kind}, got {type(value).__name__} "
                                f"{_short(value)}")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(ftype: Any) -> tuple[str, bool]:
    """(kind, nullable) of an Avro field type."""
    if isinstance(ftype, list):
        others = [t for t in ftype if t != "null"]
        nullable = len(others) != len(ftype)
        if len(others) == 1:
            return _kind(others[0])[0], nullable
        return "any", nullable
    if isinstance(ftype, dict):
        if str(ftype.get("logicalType", "")).startswith("timestamp"):
            return "timestamp", False
        return _NUMBER.get(ftype.get("type"), "any"), False
    return _NUMBER.get(ftype, "any"), False


def _record_type(ftype: Any) -> tuple[dict[str, Any] | None, bool]:
    if isinstance(ftype, dict) and ftype.get("type") == "record":
        return ftype, False
    if isinstance(ftype, list):
        others = [t for t in ftype if t != "null"]
        if len(others) == 1 and len(others) != len(ftype):
            inner, _ = _record_type(others[0])
            return inner, True
    return None, False


def columns_of(schema: dict[str, Any], prefix: tuple[str, ...] = (),
               nullable: bool = False) -> list[Column]:
    """Every leaf field of a record schema, nested records flattened to dotted names."""
    if schema.get("type") != "record":
        raise DecodeError(f"an input schema must be an Avro record, got {schema.get('type')!r}")
    out: list[Column] = []
    for field in schema["fields"]:
        path = (*prefix, field["name"])
        inner, inner_nullable = _record_type(field["type"])
        if inner is not None:
            out += columns_of(inner, path, nullable or inner_nullable)
            continue
        kind, is_null = _kind(field["type"])
        out.append(Column(".".join(path), path, kind, nullable or is_null, "default" in field,
                          field.get("default")))
    return out


def _getter(columns: Sequence[Column]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """One call that returns every column's value of a typed record: ``itemgetter`` for flat
    schemas; for nested ones a function generated from the schema (each parent record looked
    up once; a null parent gives null children)."""
    if all(len(c.path) == 1 for c in columns):
        if len(columns) == 1:
            name = columns[0].name
            return lambda record: (record[name],)
        return operator.itemgetter(*(c.name for c in columns))
    lines = ["def get(r):"]
    parents: dict[tuple[str, ...], str] = {(): "r"}
    values = []
    for column in columns:
        for depth in range(1, len(column.path)):
            prefix = column.path[:depth]
            if prefix not in parents:
                outer, var = parents[prefix[:-1]], f"p{len(parents)}"
                lines.append(f"    {var} = None if {outer} is None else {outer}[{prefix[-1]!r}]")
                parents[prefix] = var
        outer = parents[column.path[:-1]]
        last = column.path[-1]
        values.append(f"r[{last!r}]" if outer == "r"
                      else f"(None if {outer} is None else {outer}[{last!r}])")
    lines.append(f"    return ({', '.join(values)},)")
    scope: dict[str, Any] = {}
    exec("\n".join(lines), scope)  # source built from the schema's field names alone (repr)
    return scope["get"]  # type: ignore[no-any-return]


def _lookup(record: dict[str, Any], column: Column) -> Any:
    value: Any = record
    for part in column.path:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidRecord(column.name, f"expected a record at {part!r}")
        if part not in value:
            if column.has_default:
                return column.default
            if column.nullable:
                return None
            raise InvalidRecord(column.name, "missing")
        value = value[part]
    return value


def _array(kind: str, values: Any, nullable: bool = True) -> Any:
    """A column's values as the batch holds them: numbers as arrays, the rest as lists (an
    array of floats that was read column-wise is already an ``(n, length)`` matrix)."""
    if kind not in ("number", "integer", "timestamp", "boolean"):
        return values
    if nullable and not isinstance(values, np.ndarray) and None in values:
        return np.asarray([math.nan if v is None else v for v in values], np.float64)
    return np.asarray(values, {"number": np.float64, "boolean": np.bool_}.get(kind, np.int64))


class RecordDecoder:
    """Decodes a batch of one input's messages into a :class:`Batch` and its rejects.

    ``key``/``event_id``/``event_time`` name fields of the record; ``None`` takes the Kafka
    record key, ``"topic:partition:offset"`` and the Kafka timestamp instead. ``fields``
    limits the columns gathered (default: every field of the schema).

    Rejected before or besides the schema's own checks: a value over ``max_record_bytes``
    (never decoded), a key or event id over :data:`MAX_ID_CHARS` characters, and, when the
    key is a field, a Kafka key that differs from it: the Kafka key picks the partition, and
    one key's events must share a partition (its order, its lane's state, its feedback join);
    a record without a Kafka key is accepted. That last check is on with ``kafka_key_is_key``
    (the app's input; a label topic's ``key`` is its join field, not its Kafka key).
    """

    def __init__(self, codec: RecordCodec, *, key: str | None, event_id: str | None,
                 event_time: str | None, fields: Sequence[str] | None = None,
                 max_record_bytes: int = MAX_RECORD_BYTES, kafka_key_is_key: bool = False
                 ) -> None:
        self.codec = codec
        self.max_record_bytes = max_record_bytes
        self.kafka_key_is_key = kafka_key_is_key and key is not None
        schema = codec.schema.raw
        every = {c.name: c for c in columns_of(schema)}
        for role, name in (("key", key), ("event_id", event_id), ("event_time", event_time)):
            if name is not None and name not in every:
                raise InvalidRecord(name, f"the input's {role} field is not in schema "
                                    f"{schema.get('name')!r} (fields: {sorted(every)})")
        wanted = list(fields) if fields is not None else list(every)
        unknown = [f for f in wanted if f not in every]
        if unknown:
            raise InvalidRecord(unknown[0], f"not a field of schema {schema.get('name')!r} "
                                f"(fields: {sorted(every)})")
        self.key, self.event_id, self.event_time = key, event_id, event_time
        roles = [n for n in (event_id, key, event_time) if n is not None]
        self._roles = [every[n] for n in roles]
        self.columns = [every[n] for n in wanted]
        self._get = _getter([*self._roles, *self.columns])
        paths = [c.path for c in (*self._roles, *self.columns)]
        self._project = codec.projection(paths, max_record_bytes)
        self._read_columns = codec.columns(paths, max_record_bytes)
        self._n_roles = len(roles)
        # the column-wise path needs all three roles as fields, ids and keys as text
        self._text_roles = len(roles) == 3 and all(
            c.kind == "string" and not c.nullable for c in self._roles[:2]) and (
            self._roles[2].kind in ("integer", "timestamp") and not self._roles[2].nullable)

    def decode(self, messages: Sequence[Message]) -> tuple[Batch, list[Rejected]]:
        """Valid records as columns, and the rejected rest (each says field and reason).

        The common case, records written with the input's own schema and all three roles
        named fields, is one compiled call per batch and column-wise checks of the roles;
        anything else (JSON, other writers, a bad value) goes record by record, so that a
        rejection names the field.
        """
        rejected: list[Rejected] = []
        fast = self._project_all(messages)
        if fast is not None and fast[1]:
            kept, cols = fast
            ids, keys, times = list(cols[0]), list(cols[1]), cols[2]
            by_column = [col if isinstance(col, np.ndarray | list) else list(col)
                         for col in cols[3:]]
        else:
            kept, ids, keys, times, values = self._decode_each(messages, rejected)
            by_column = [[v[j] for v in values] for j in range(len(self.columns))]
        columns = {c.name: _array(c.kind, col, c.nullable)
                   for c, col in zip(self.columns, by_column, strict=True)}
        return Batch(kept, ids, keys, np.asarray(times, np.int64), columns), rejected

    def _project_all(self, messages: Sequence[Message]
                     ) -> tuple[list[Message], list[Any]] | None:
        """``(messages, [event_ids, keys, times, *columns])`` when every message of the
        batch is read by the compiled projection with fine roles; ``None`` otherwise, and
        the batch goes record by record (in order: a key's records stay in sequence)."""
        project = self._project
        if project is None or not self._text_roles:
            return None
        values = [msg.value() for msg in messages]
        cols = self._read_columns(values) if self._read_columns is not None else None
        if cols is None:  # a small batch, or one the column reader does not cover
            rows = project(values)
            if rows is None:
                return None
            if not rows:
                return list(messages), []
            cols = list(zip(*rows, strict=True))
        ids, keys = cols[0], cols[1]
        cols[2] = ts = np.asarray(cols[2], np.int64)
        if not (all(ids) and ts.min() >= MIN_TS and ts.max() <= now_ms() + MAX_FUTURE_MS
                and max(map(len, ids)) <= MAX_ID_CHARS):
            return None
        # labels join on their event id: key and id are then one column, checked once
        if keys is not ids and not (all(keys) and max(map(len, keys)) <= MAX_ID_CHARS):
            return None
        if self.kafka_key_is_key and not all(
                k is None or k == key.encode()
                for k, key in zip((m.key() for m in messages), keys, strict=True)):
            return None
        return list(messages), cols

    def _decode_each(self, messages: Sequence[Message], rejected: list[Rejected]
                     ) -> tuple[list[Message], list[str], list[str], list[int],
                                list[tuple[Any, ...]]]:
        """Record by record: decode, check, and say which field is wrong."""
        now = now_ms()
        high = now + MAX_FUTURE_MS
        kept: list[Message] = []
        rows: list[tuple[Any, ...]] = []
        ids: list[str] = []
        keys: list[str] = []
        times: list[int] = []
        decode, get, n_roles = self.codec.decode_typed, self._get, self._n_roles
        has_id, has_key, has_ts = (self.event_id is not None, self.key is not None,
                                   self.event_time is not None)
        limit = self.max_record_bytes
        for msg in messages:
            try:
                raw = msg.value()
                if raw is None:
                    raise DecodeError("null value (a tombstone): no record to score")
                if len(raw) > limit:
                    raise DecodeError(f"record value of {len(raw)} bytes is over "
                                      f"max_record_bytes ({limit})")
                record, typed = decode(raw)
                values = get(record) if typed else None
                if values is not None:
                    i = 0
                    if has_id:
                        event_id = values[0]
                        i = 1
                    if has_key:
                        key = values[i]
                        i += 1
                    if has_ts:
                        ts = values[i]
                    if not ((not has_id or event_id) and (not has_key or key)
                            and (not has_ts or MIN_TS <= ts <= high)):
                        values = None  # find and name the problem the slow way
                if values is None:
                    values = self._checked(record, now)
                    event_id, key, ts = values[-3:]
                    values = values[:-3]
                    roles = 0
                else:
                    roles = n_roles
                if not has_id:
                    event_id = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
                if not has_key:
                    key = self._kafka_key(msg)
                elif self.kafka_key_is_key:
                    kafka_key = msg.key()
                    if kafka_key is not None and kafka_key != str(key).encode():
                        raise InvalidRecord(self.key, _key_mismatch(str(key), kafka_key))
                if len(str(key)) > MAX_ID_CHARS or len(str(event_id)) > MAX_ID_CHARS:
                    long_key = len(str(key)) > MAX_ID_CHARS
                    raise InvalidRecord(self.key if long_key else self.event_id,
                                        f"longer than {MAX_ID_CHARS} characters")
                if not has_ts:
                    ts = self._kafka_time(msg, now)
            except DecodeError as exc:
                rejected.append(Rejected(msg, str(exc), "decode"))
                continue
            except InvalidRecord as exc:
                rejected.append(Rejected(msg, str(exc), "validation"))
                continue
            kept.append(msg)
            rows.append(values[roles:] if roles else values)
            ids.append(event_id)
            keys.append(key)
            times.append(ts)
        return kept, ids, keys, times, rows


    def _checked(self, record: dict[str, Any], now: int) -> tuple[Any, ...]:
        """Column values checked one by one, then (event_id, key, ts); raises naming the
        first bad field."""
        event_id = key = ts = None
        if self.event_id is not None:
            event_id = _id_text(record, self.event_id)
        if self.key is not None:
            key = _id_text(record, self.key)
        if self.event_time is not None:
            ts = _event_time(record.get(self.event_time), self.event_time, now)
        values = tuple(c.check(_lookup(record, c)) for c in self.columns)
        return (*values, event_id, key, ts)

    @staticmethod
    def _kafka_key(msg: Message) -> str:
        raw = msg.key()
        if not raw:
            raise InvalidRecord(None, "the record has no Kafka key and the input names no "
                                "key field")
        try:
            return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        except UnicodeDecodeError:
            raise InvalidRecord(None, "the Kafka key is not UTF-8 text") from None

    @staticmethod
    def _kafka_time(msg: Message, now: int) -> int:
        return _event_time(msg.timestamp()[1], "kafka timestamp", now)


def _key_mismatch(key: str, kafka_key: bytes) -> str:
    return (f"is {_short(key)} but the Kafka key is {_short(kafka_key)}: one key's records "
            "must share a partition")


def _id_text(record: dict[str, Any], name: str) -> str:
    value = record.get(name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(name, f"expected a non-empty string, got {_short(value)}")
    return value


def _event_time(value: Any, name: str, now: int) -> int:
    if value is None or isinstance(value, bool):
        raise InvalidRecord(name, f"expected epoch milliseconds, got {value!r}")
    ts = parse_event_time(value, name) if not isinstance(value, int) else value
    if ts < MIN_TS or ts > now + MAX_FUTURE_MS:
        raise InvalidRecord(name, f"event time {ts} is before 2000 or more than a day ahead")
    return ts
