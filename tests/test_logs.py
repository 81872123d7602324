"""streams.logs without servers: secrets masked in any log text, JSON lines with their fields."""

from __future__ import annotations

import json
import logging

import pytest

from streaminfer.streams.logs import JsonFormatter, RedactFilter, redact, secrets_of
from streaminfer.streams.settings import load_settings


@pytest.mark.parametrize(("text", "gone"), [
    ("connecting to redis://:hunter2@cache:6379/0", "hunter2"),
    ("rediss://default:hunter2@cache:6380", "hunter2"),
    ("{'sasl.password': 'hunter2', 'sasl.username': 'me'}", "hunter2"),
    ('{"sasl.password": "hunter2"}', "hunter2"),
    ("-X sasl.password=hunter2 -X ssl.key.password=hunter3", "hunter"),
    ("basic.auth.user.info=me:x schema.registry.basic.auth.password=hunter2", "hunter2"),
])
def test_redact_masks_passwords_wherever_they_are_written(text: str, gone: str) -> None:
    out = redact(text)
    assert gone not in out and "***" in out, out


def test_settings_secrets_are_masked_even_in_unknown_text() -> None:
    settings = load_settings(redis_url="redis://u:r3d1s-pw@h:1/0",
                             kafka_properties={"sasl.password": "k4fka-pw",
                                               "sasl.username": "alice"})
    assert set(secrets_of(settings)) == {"r3d1s-pw", "k4fka-pw"}
    out = redact("auth failed for alice with k4fka-pw (then r3d1s-pw)", secrets_of(settings))
    assert out == "auth failed for alice with *** (then ***)"


def test_filter_masks_arguments_and_tracebacks() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "url %s", ("redis://:pw1@h",),
                               None)
    try:
        raise ConnectionError("cannot reach redis://:pw2@h")
    except ConnectionError:
        import sys
        record.exc_info = sys.exc_info()
    RedactFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "pw1" not in text and "pw2" not in text and "redis://:***@h" in text


def test_json_lines_carry_logger_level_app_worker_and_the_record_fields() -> None:
    record = logging.LogRecord("streaminfer.streams.pipeline", logging.WARNING, __file__, 1,
                               "model failed on %s", ("one record",), None)
    record.partition, record.event_id = 3, "e-17"
    line = json.loads(JsonFormatter(app="classifier", worker="host-1").format(record))
    assert line["logger"] == "streaminfer.streams.pipeline" and line["level"] == "warning"
    assert line["message"] == "model failed on one record"
    assert (line["app"], line["worker"], line["partition"], line["event_id"]) == (
        "classifier", "host-1", 3, "e-17")
    assert line["ts"].endswith("Z") and "offset" not in line
