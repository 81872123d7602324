"""Turning loosely typed input (JSON, CSV cells) into records that match an Avro schema.

One place for the rules, used by ``streaminfer produce`` for files and by the worker for JSON
input, so both reject the same things with the same words: which field, what was expected.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from typing import Any

from streaminfer.errors import InvalidRecord

__all__ = ["coerce_record", "now_ms", "parse_event_time"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_SECONDS_LIMIT = 100_000_000_000  # numbers below this are seconds (until year 5138), above: ms


def parse_event_time(value: Any, field: str = "ts") -> int:
    """Event time in ms from int/float (ms, or seconds when small) or an ISO-8601 string."""
    if isinstance(value, bool):
        raise InvalidRecord(field, f"expected a timestamp, got {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidRecord(field, f"expected a timestamp, got {value!r}")
        return int(value * 1000) if abs(value) < _SECONDS_LIMIT else int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return parse_event_time(float(text), field)
        except (ValueError, InvalidRecord):
            pass
        try:
            parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRecord(
                field, f"expected epoch ms/s or ISO-8601 time, got {value!r}"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return int(parsed.timestamp() * 1000)
    raise InvalidRecord(field, f"expected a timestamp, got {type(value).__name__}")


def _is_timestamp(ftype: Any) -> bool:
    return isinstance(ftype, dict) and ftype.get("logicalType", "").startswith("timestamp")


def _coerce(name: str, ftype: Any, value: Any) -> Any:
    if _is_timestamp(ftype):
        return parse_event_time(value, name)
    if isinstance(ftype, list):  # union: ["null", X] (other unions are passed as given)
        if value is None and "null" in ftype:
            return None
        others = [t for t in ftype if t != "null"]
        return _coerce(name, others[0], value) if len(others) == 1 else value
    kind = ftype["type"] if isinstance(ftype, dict) else ftype
    if kind in ("string", "enum"):
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidRecord(name, f"expected a string, got {type(value).__name__}")
        if kind == "enum" and value not in ftype["symbols"]:
            raise InvalidRecord(name, f"expected one of {ftype['symbols']}, got {value!r}")
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
            return value.strip().lower() in ("true", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidRecord(name, f"expected true or false, got {value!r}")
    if kind in ("float", "double"):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InvalidRecord(name, f"expected a number, got {value!r}") from None
        return number
    if kind in ("int", "long"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise InvalidRecord(name, f"expected an integer, got {value!r}") from None
    if kind in ("bytes", "fixed"):
        return value.encode() if isinstance(value, str) else bytes(value)
    if kind in ("array", "map", "record") and isinstance(value, str):
        try:
            value = json.loads(value) if value.strip()[:1] in "[{" else value
        except json.JSONDecodeError:
            raise InvalidRecord(name, f"expected JSON, got {value!r}") from None
    if kind == "array":
        if isinstance(value, str):
            value = value.replace(";", " ").split()
        if not isinstance(value, list | tuple):
            raise InvalidRecord(name, f"expected a list, got {type(value).__name__}")
        return [_coerce(f"{name}[{i}]", ftype["items"], v) for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise InvalidRecord(name, f"expected an object, got {type(value).__name__}")
        return {str(k): _coerce(f"{name}.{k}", ftype["values"], v) for k, v in value.items()}
    if kind == "record":
        if not isinstance(value, dict):
            raise InvalidRecord(name, f"expected an object, got {type(value).__name__}")
        return coerce_record(ftype, value, prefix=f"{name}.")
    raise InvalidRecord(name, f"unsupported schema type {kind!r}")


def coerce_record(
    schema: dict[str, Any], record: dict[str, Any], *, default_ts: int | None = None,
    prefix: str = "",
) -> dict[str, Any]:
    """``record`` with exactly ``schema``'s fields, converted; raises ``InvalidRecord``.

    A missing timestamp field takes ``default_ts`` when given (``produce`` stamps "now").
    """
    out: dict[str, Any] = {}
    for field in schema["fields"]:
        name, ftype = field["name"], field["type"]
        if name in record and record[name] not in (None, ""):
            out[name] = _coerce(prefix + name, ftype, record[name])
        elif _is_timestamp(ftype) and default_ts is not None:
            out[name] = default_ts
        elif "default" in field:
            out[name] = field["default"]
        elif isinstance(ftype, list) and "null" in ftype:
            out[name] = None
        else:
            raise InvalidRecord(prefix + name, "missing")
    return out
