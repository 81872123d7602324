"""Worker log output: plain or JSON lines, with secrets masked in both.

Why a filter on the handler and not care at each call site: secrets reach logs through
messages we do not write (a client library's error naming a URL, an exception's repr), so the
last step before output masks them all: passwords in URLs (``redis://:pw@host``), ``*password*``
/ ``*secret*`` properties written as ``key=value`` or ``"key": "value"``, and every secret value
the settings hold (``-X sasl.password=...``, the Redis URL's password), wherever they appear.

``--log-format json`` writes one object per line: ``ts``, ``level``, ``logger``, ``message``,
``app``, ``worker``, and ``partition`` / ``event_id`` / ``topic`` / ``offset`` when the call
passes them (``log.warning(..., extra={"partition": p, "event_id": e})``), plus ``exc_info``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from streaminfer.redaction import MASK, SECRET_KEY, redact
from streaminfer.streams.settings import Settings

__all__ = ["MASK", "JsonFormatter", "RedactFilter", "logging_config", "redact", "secrets_of"]

LogFormat = Literal["text", "json"]
#: record attributes a call may pass with ``extra=``; shown as fields in JSON
EXTRA_FIELDS = ("partition", "event_id", "topic", "offset")


def secrets_of(settings: Settings) -> list[str]:
    """Secret values in ``settings``: secret-named Kafka properties and URL passwords."""
    found = [str(v) for k, v in settings.kafka_properties.items() if SECRET_KEY.search(k) and v]
    if settings.kafka_sasl_password is not None:
        found.append(settings.kafka_sasl_password.get_secret_value())
    for url in (settings.redis_url, settings.schema_registry_url, settings.checkpoint_url):
        if url and "://" in url:
            password = urlsplit(url).password
            if password:
                found.append(password)
    return sorted(set(found), key=len, reverse=True)  # longest first: no partial masks


class RedactFilter(logging.Filter):
    """Masks secrets in a record's rendered message and exception text (handler filter)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record (fields in the module docstring)."""

    def __init__(self, app: str = "", worker: str = "") -> None:
        super().__init__()
        self.static = {k: v for k, v in (("app", app), ("worker", worker)) if v}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **self.static,
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_text or record.exc_info:
            out["exc_info"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def logging_config(log_format: LogFormat, settings: Settings, *, app: str = "",
                   worker: str = "") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` fragment for Faust's worker (``merge``: its root
    level and other handlers stay): the default handler gets our filter and formatter."""
    formatter = ({"()": JsonFormatter, "app": app, "worker": worker} if log_format == "json"
                 else {"format": "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: "
                                 "%(message)s"})
    return {
        "merge": True,
        "version": 1,
        "filters": {"redact": {"()": RedactFilter, "secrets": secrets_of(settings)}},
        "formatters": {"streaminfer": formatter},
        "handlers": {"default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                 "formatter": "streaminfer", "filters": ["redact"]}},
    }
