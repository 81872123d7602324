"""Avro schemas and the three wire formats streaminfer reads and writes.

* ``single-object``: Avro single-object encoding (``C3 01`` + 8-byte CRC-64-AVRO fingerprint of
  the writer schema's canonical form + the Avro body). Needs no registry: the writer schema is
  looked up by fingerprint among the repo's schemas (``schemas/**/*.avsc``) and resolved to the
  reader schema, so an older record is read by a newer compatible schema.
* ``confluent``: Confluent Schema Registry framing (``00`` + 4-byte schema id + Avro body) through
  confluent-kafka's schema-registry client (``mock://`` URLs give its in-process registry).
* ``json``: a plain JSON object, so ``kcat`` and scripts can publish.

Decoding sniffs the first bytes, so a topic may mix formats. Timestamps are plain ints
(milliseconds): the fast path never builds ``datetime`` objects.

Hand-written on purpose (no library offers it): the 10-byte single-object header.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any, Literal

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from streaminfer.connectors.avro_columns import ColumnReader, compile_columns
from streaminfer.connectors.avro_fast import (
    compile_columns_encoder,
    compile_decoder,
    compile_encoder,
    compile_projection,
)
from streaminfer.errors import DecodeError

__all__ = [
    "SCHEMA_DIR",
    "RecordCodec",
    "WriterSchemaDecoder",
    "load_schema",
    "make_codec",
    "registry_client",
]

#: ``schemas/`` beside ``connectors/``: the repository's folder in a checkout, and
#: ``streaminfer/schemas`` in an installed wheel (the same relative place).
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0

WireFormat = Literal["single-object", "confluent", "json"]


def _strip_logical_types(schema: Any) -> Any:
    """Same wire layout without logical types, so fastavro hands back ints, not datetimes."""
    if isinstance(schema, dict):
        return {k: _strip_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_strip_logical_types(v) for v in schema]
    return schema


@cache
def _schema_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SCHEMA_DIR.glob("*.avsc"))}


def load_schema(name_or_path: str | Path) -> dict[str, Any]:
    """The JSON schema named ``event``/``prediction``/... in ``schemas/``, or at a path."""
    path = Path(name_or_path)
    if path.suffix != ".avsc":
        files = _schema_files()
        if str(name_or_path) not in files:
            raise KeyError(f"no schema {name_or_path!r}; known: {sorted(files)}")
        path = files[str(name_or_path)]
    return json.loads(path.read_text())


class _Schema:
    """A schema with what the codecs need precomputed: parsed form, fingerprint, and the
    compiled fast paths (``None`` when the schema has types they do not cover)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        plain = _strip_logical_types(raw)
        self.parsed = fastavro.parse_schema(plain)
        self.fast_decode = compile_decoder(plain)
        self.fast_encode = compile_encoder(plain)
        canonical = to_parsing_canonical_form(fastavro.parse_schema(raw))
        self.fingerprint = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        self.header = SINGLE_OBJECT_MAGIC + self.fingerprint
        self.full_name = self.parsed["name"]


@cache
def _known_writers() -> dict[bytes, _Schema]:
    """Every schema version shipped in ``schemas/`` (older versions live in subfolders)."""
    known: dict[bytes, _Schema] = {}
    for path in sorted(SCHEMA_DIR.rglob("*.avsc")):
        schema = _Schema(json.loads(path.read_text()))
        known[schema.fingerprint] = schema
    return known


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _to_millis(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        # exact integer arithmetic: int(timestamp() * 1000) turns 1.005 s into 1004 ms
        return (value - _EPOCH) // dt.timedelta(milliseconds=1)
    return value


def _fast_call(encode: Callable[[dict[str, Any]], bytes], record: dict[str, Any],
               name: str) -> bytes:
    try:
        return encode(record)
    except (KeyError, TypeError, ValueError, AttributeError, struct.error) as exc:
        raise ValueError(f"record does not fit {name}: {exc!r}") from None


class RecordCodec:
    """Encodes records of one schema in one wire format; decodes any of the three formats.

    ``extra_writers`` are further writer schemas (older versions) a single-object reader
    should resolve by fingerprint, besides those shipped in ``schemas/``.
    """

    def __init__(
        self,
        schema: str | Path | dict[str, Any],
        wire_format: WireFormat = "single-object",
        *,
        registry_url: str | None = None,
        topic: str | None = None,
        extra_writers: Iterable[dict[str, Any]] = (),
    ) -> None:
        raw = schema if isinstance(schema, dict) else load_schema(schema)
        self.schema = _Schema(raw)
        self.wire_format = wire_format
        self.topic = topic or "streaminfer"
        self._writers = dict(_known_writers())
        for extra in extra_writers:
            writer = _Schema(extra)
            self._writers[writer.fingerprint] = writer
        self._writers[self.schema.fingerprint] = self.schema
        self._registry = _RegistryFraming(registry_url, raw, self.topic) if registry_url else None
        self._columns_encoders: dict[tuple[str, ...], Callable[..., list[bytes]] | None] = {}
        if wire_format == "confluent" and self._registry is None:
            raise ValueError("wire format 'confluent' needs a schema registry URL")
        self.encode: Callable[[dict[str, Any]], bytes] = {
            "single-object": self._encode_single_object,
            "confluent": self._encode_confluent,
            "json": self._encode_json,
        }[wire_format]

    # -- encoding --------------------------------------------------------------------------
    def _encode_single_object(self, record: dict[str, Any]) -> bytes:
        fast = self.schema.fast_encode
        if fast is not None:
            return self.schema.header + _fast_call(fast, record, self.schema.full_name)
        out = io.BytesIO()
        out.write(self.schema.header)
        fastavro.schemaless_writer(out, self.schema.parsed, record)
        return out.getvalue()

    def _encode_confluent(self, record: dict[str, Any]) -> bytes:
        assert self._registry is not None
        return self._registry.encode(record, self.schema.parsed)

    @staticmethod
    def _encode_json(record: dict[str, Any]) -> bytes:
        return json.dumps(record, separators=(",", ":")).encode()

    def encode_many(self, records: Iterable[dict[str, Any]]) -> list[bytes]:
        """Encode a batch (single-object without a fast path reuses one fastavro buffer)."""
        if self.wire_format != "single-object":
            return [self.encode(record) for record in records]
        fast, header = self.schema.fast_encode, self.schema.header
        if fast is not None:
            try:
                return [header + fast(record) for record in records]
            except Exception:  # find and name the bad record the slow way
                return [self._encode_single_object(record) for record in records]
        out = io.BytesIO()
        header, parsed, write = self.schema.header, self.schema.parsed, fastavro.schemaless_writer
        ends = []
        for record in records:
            out.write(header)
            write(out, parsed, record)
            ends.append(out.tell())
        view = out.getbuffer()
        values, start = [], 0
        for end in ends:
            values.append(bytes(view[start:end]))
            start = end
        del view
        return values

    def encode_columns(self, columns: dict[str, list[Any]], constants: dict[str, Any]
                       ) -> list[bytes]:
        """Encode a batch held as columns plus per-batch constants (the hot path's output):
        constants are encoded once per batch, and no per-row dict is built."""
        varying = tuple(columns)
        fast = None
        if self.wire_format == "single-object":
            fast = self._columns_encoders.get(varying)
            if fast is None and varying not in self._columns_encoders:
                fast = self._columns_encoders[varying] = compile_columns_encoder(
                    _strip_logical_types(self.schema.raw), varying)
        if fast is not None:
            try:
                return fast(columns, constants, self.schema.header)
            except Exception:  # find and name the bad record the slow way
                pass
        order = [f["name"] for f in self.schema.raw["fields"]]
        records = []
        for values in zip(*columns.values(), strict=True):
            merged = {**constants, **dict(zip(varying, values, strict=True))}
            records.append({name: merged[name] for name in order if name in merged})
        return self.encode_many(records)

    # -- decoding --------------------------------------------------------------------------
    def projection(self, paths: list[tuple[str, ...]], max_bytes: int
                   ) -> Callable[[Iterable[bytes | None]], list[tuple[Any, ...]] | None] | None:
        """A compiled reader of just the fields at ``paths`` for a batch of values, each
        written with exactly this codec's schema (single-object encoding); ``None`` when the
        schema has types the compiled readers do not cover. The reader returns one tuple per
        value, or ``None`` when any value is empty, over ``max_bytes``, written with another
        schema or does not decode (then the caller goes record by record, to say which
        record and why)."""
        read = compile_projection(_strip_logical_types(self.schema.raw), paths,
                                  header=self.schema.header, max_bytes=max_bytes)
        if read is None:
            return None

        def project(values: Iterable[bytes | None]) -> list[tuple[Any, ...]] | None:
            try:
                return read(values)
            except (IndexError, ValueError, struct.error):  # UnicodeError is a ValueError
                return None

        return project

    def columns(self, paths: list[tuple[str, ...]], max_bytes: int) -> ColumnReader | None:
        """Like :meth:`projection`, but one column per path for the whole batch, read with
        numpy (``connectors.avro_columns``): flat schemas and batches of at least
        ``avro_columns.MIN_RECORDS`` values; ``None`` returned means: use the projection."""
        return compile_columns(_strip_logical_types(self.schema.raw), paths,
                               header=self.schema.header, max_bytes=max_bytes)

    def decode_typed(self, data: bytes | None) -> tuple[dict[str, Any], bool]:
        """``(record, typed)``: ``typed`` is true when the record was read with exactly the
        reader schema, so every field already has its schema type (no checks needed)."""
        if data and data[:10] == self.schema.header:
            return self._decode_single_object(data), True
        return self.decode(data), False

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """One record as a dict (timestamps as int ms); raises ``DecodeError`` saying why."""
        if not data:
            raise DecodeError("empty value")
        first = data[0]
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._decode_single_object(data)
        if first == CONFLUENT_MAGIC:
            return self._decode_confluent(data)
        if first in b"{[ \t\r\n":
            return self._decode_json(data)
        raise _unknown_format(first)

    def _decode_single_object(self, data: bytes) -> dict[str, Any]:
        if len(data) < 10:
            raise DecodeError(f"single-object record too short ({len(data)} bytes)")
        writer = self._writers.get(data[2:10])
        if writer is None:
            raise DecodeError(f"unknown writer schema fingerprint {data[2:10].hex()}")
        if writer is self.schema and writer.fast_decode is not None:
            try:
                return writer.fast_decode(data[10:])
            except (IndexError, ValueError, struct.error) as exc:  # UnicodeError is a ValueError
                raise DecodeError(f"Avro body does not match {writer.full_name}: {exc}") from None
        # Written with the reader's own schema: nothing to resolve (fastavro's resolution
        # path costs about twice the plain read).
        reader = None if writer is self.schema else self.schema.parsed
        try:
            return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer.parsed, reader)
        except Exception as exc:
            raise DecodeError(f"Avro body does not match {writer.full_name}: {exc}") from exc

    def _decode_confluent(self, data: bytes) -> dict[str, Any]:
        if self._registry is None:
            raise DecodeError("Schema Registry framed record but no schema registry is configured")
        try:
            record = self._registry.decode(data, self.schema.parsed)
        except Exception as exc:
            raise DecodeError(f"Schema Registry record could not be read: {exc}") from exc
        return {k: _to_millis(v) for k, v in record.items()}

    @staticmethod
    def _decode_json(data: bytes) -> dict[str, Any]:
        try:
            record = json.loads(data)
        except (ValueError, RecursionError) as exc:  # also too deep, or a too-long int
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(record, dict):
            raise DecodeError(f"JSON value is a {type(record).__name__}, expected an object")
        return record


def _unknown_format(first: int) -> DecodeError:
    return DecodeError(
        f"unknown wire format: first byte 0x{first:02x} is not Avro single-object (C3 01), "
        "Schema Registry framing (00) or a JSON object"
    )


class WriterSchemaDecoder:
    """Decodes each record with the schema that wrote it, for readers with no schema of their
    own (``streaminfer consume`` without ``--schema``): the record names its writer, by the
    single-object fingerprint (looked up among the shipped schemas and ``extra_writers``) or by
    the registry's schema id, so no reader schema has to be guessed from a topic name."""

    def __init__(self, *, registry_url: str | None = None, topic: str | None = None,
                 extra_writers: Iterable[dict[str, Any]] = ()) -> None:
        self._writers = dict(_known_writers())
        for extra in extra_writers:
            writer = _Schema(extra)
            self._writers[writer.fingerprint] = writer
        self._registry_url = registry_url
        self._topic = topic or "streaminfer"
        self._deserializer: Any = None

    def decode(self, data: bytes | None) -> dict[str, Any]:
        """One record as a dict (timestamps as int ms); raises ``DecodeError`` saying why."""
        if not data:
            raise DecodeError("empty value")
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._single_object(data)
        if data[0] == CONFLUENT_MAGIC:
            return self._confluent(data)
        if data[0] in b"{[ \t\r\n":
            return RecordCodec._decode_json(data)
        raise _unknown_format(data[0])

    def _single_object(self, data: bytes) -> dict[str, Any]:
        if len(data) < 10:
            raise DecodeError(f"single-object record too short ({len(data)} bytes)")
        writer = self._writers.get(data[2:10])
        if writer is None:
            raise DecodeError(
                f"unknown writer schema fingerprint {data[2:10].hex()}: not one of the shipped "
                "schemas; give the reader schema (consume --schema NAME)")
        try:
            if writer.fast_decode is not None:
                return writer.fast_decode(data[10:])
            return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer.parsed, None)
        except Exception as exc:
            raise DecodeError(f"Avro body does not match {writer.full_name}: {exc}") from None

    def _confluent(self, data: bytes) -> dict[str, Any]:
        if self._registry_url is None:
            raise DecodeError("Schema Registry framed record but no schema registry is "
                              "configured (--schema-registry URL)")
        from confluent_kafka.schema_registry.avro import AvroDeserializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        if self._deserializer is None:  # no reader schema: the deserializer uses the writer's
            self._deserializer = AvroDeserializer(registry_client(self._registry_url))
        try:
            record = self._deserializer(data, SerializationContext(self._topic,
                                                                   MessageField.VALUE))
        except Exception as exc:
            raise DecodeError(f"Schema Registry record could not be read: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError("Schema Registry record is not an Avro record")
        return {k: _to_millis(v) for k, v in record.items()}


@cache
def registry_client(url: str) -> Any:
    """One Schema Registry client per URL and process (``mock://`` gives the in-memory one)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient.new_client({"url": url})


class _RegistryFraming:
    """Schema Registry framing via confluent-kafka's serializer/deserializer classes."""

    def __init__(self, url: str, raw_schema: dict[str, Any], topic: str) -> None:
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.client = registry_client(url)
        schema_str = json.dumps(raw_schema)
        self._serializer = AvroSerializer(self.client, schema_str)
        self._deserializer = AvroDeserializer(self.client, schema_str)
        self._context = SerializationContext(topic, MessageField.VALUE)

    def encode(self, record: dict[str, Any], _parsed: Any) -> bytes:
        data = self._serializer(record, self._context)
        assert data is not None
        return data

    def decode(self, data: bytes, _parsed: Any) -> dict[str, Any]:
        record = self._deserializer(data, self._context)
        if not isinstance(record, dict):
            raise DecodeError("Schema Registry record is not an Avro record")
        return record


def make_codec(
    schema: str, wire_format: WireFormat, registry_url: str | None, topic: str
) -> RecordCodec:
    """The codec the CLI and workers use for ``schema`` records on ``topic``."""
    return RecordCodec(schema, wire_format, registry_url=registry_url, topic=topic)
