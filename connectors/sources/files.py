"""Records from JSONL or CSV files, each checked against a schema, with line numbers in errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from streaminfer.connectors.records import coerce_record, now_ms
from streaminfer.errors import InvalidRecord

__all__ = ["FileSource", "LineError"]


@dataclass(frozen=True)
class LineError:
    """A line that could not become a record; reported, never silently dropped."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class FileSource:
    """Yields ``dict`` records (matching ``schema``) or ``LineError`` for bad lines.

    ``ts_field`` names the input column holding event time; when the input has no such
    value the record is stamped with the time it is read ("now").
    """

    def __init__(
        self,
        path: str | Path,
        schema: dict[str, Any],
        *,
        fmt: Literal["auto", "jsonl", "csv"] = "auto",
        ts_field: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.fmt = fmt if fmt != "auto" else ("csv" if self.path.suffix == ".csv" else "jsonl")
        ts_fields = [f["name"] for f in schema["fields"] if _is_ts(f["type"])]
        self.schema_ts = ts_fields[0] if ts_fields else None
        self.ts_field = ts_field or self.schema_ts

    def __iter__(self) -> Iterator[dict[str, Any] | LineError]:
        rows = self._csv_rows() if self.fmt == "csv" else self._json_rows()
        for line, row in rows:
            if isinstance(row, LineError):
                yield row
                continue
            if self.ts_field and self.schema_ts and self.ts_field != self.schema_ts:
                row[self.schema_ts] = row.pop(self.ts_field, None)
            try:
                yield coerce_record(self.schema, row, default_ts=now_ms())
            except InvalidRecord as exc:
                yield LineError(str(self.path), line, str(exc))

    def _json_rows(self) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
        with self.path.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as exc:
                    yield line, LineError(str(self.path), line, f"invalid JSON: {exc.msg}")
                    continue
                if not isinstance(row, dict):
                    reason = f"expected a JSON object, got {type(row).__name__}"
                    yield line, LineError(str(self.path), line, reason)
                    continue
                yield line, row

    def _csv_rows(self) -> Iterator[tuple[int, dict[str, Any] | LineError]]:
        with self.path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for row in reader:
                line = reader.line_num
                if None in row:
                    reason = f"{len(row) - 1 + len(row[None])} cells, header has {len(row) - 1}"
                    yield line, LineError(str(self.path), line, reason)
                    continue
                yield line, dict(row)


def _is_ts(ftype: Any) -> bool:
    return isinstance(ftype, dict) and ftype.get("logicalType", "").startswith("timestamp")
