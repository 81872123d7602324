"""Loose input (JSON, CSV cells) to schema records: conversions and errors naming the field."""

from __future__ import annotations

import pytest

from streaminfer.connectors.avro import load_schema
from streaminfer.connectors.records import coerce_record, parse_event_time
from streaminfer.errors import InvalidRecord

EVENT = load_schema("event")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_764_120_000_123, 1_764_120_000_123),
        (1_764_120_000, 1_764_120_000_000),  # seconds
        ("1764120000.5", 1_764_120_000_500),
        ("2025-11-26T01:20:00Z", 1_764_120_000_000),
        ("2025-11-26T01:20:00", 1_764_120_000_000),  # naive = UTC
    ],
)
def test_event_time_forms(value: object, expected: int) -> None:
    assert parse_event_time(value) == expected


@pytest.mark.parametrize("value", ["yesterday", float("nan"), True, None])
def test_bad_event_time_names_the_field(value: object) -> None:
    with pytest.raises(InvalidRecord, match="'when'"):
        parse_event_time(value, "when")


def test_csv_cells_become_typed_fields() -> None:
    row = {"event_id": "e1", "key": 42, "ts": "1764120000000", "features": "1.5 2 -3"}
    assert coerce_record(EVENT, row) == {
        "event_id": "e1", "key": "42", "ts": 1_764_120_000_000, "features": [1.5, 2.0, -3.0]
    }


def test_missing_time_takes_default_and_missing_field_is_named() -> None:
    row = {"event_id": "e1", "key": "k", "features": "[1, 2]"}
    assert coerce_record(EVENT, row, default_ts=5)["ts"] == 5
    with pytest.raises(InvalidRecord, match="'event_id': missing"):
        coerce_record(EVENT, {"key": "k", "ts": 1, "features": []})


def test_non_numeric_feature_names_its_index() -> None:
    with pytest.raises(InvalidRecord, match=r"features\[1\]"):
        coerce_record(EVENT, {"event_id": "e", "key": "k", "ts": 1, "features": [1, "x"]})
