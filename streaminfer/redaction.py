"""Masking secrets in text that leaves the process: log lines, error messages, printed URLs.

The one place that knows what a secret looks like, so a log filter (``streams.logs``) and an
error message naming a URL (``connectors.redis_client``) mask the same things: the password of
a URL (``redis://user:pw@host``), values of ``*password*`` / ``*secret*`` / ``*token*``
properties written as ``key=value`` or ``"key": "value"``, and any explicitly given secret.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "SECRET_KEY", "redact"]

MASK = "***"
#: property names whose values are secrets (librdkafka's, and anything named so)
SECRET_KEY = re.compile(r"(password|secret|token|api[._-]?key|private[._-]?key|credentials)",
                        re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s/@:]*:)(?P<pw>[^\s/@]+)(?=@)",
                           re.IGNORECASE)
_KEY_VALUE = re.compile(
    r"(?P<head>[\w.-]*(?:password|secret|token|api[._-]?key)[\w.-]*['\"]?\s*[=:]\s*['\"]?)"
    r"(?P<value>[^\s'\",}]+)", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, secret-named properties and ``secrets`` masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    return _KEY_VALUE.sub(lambda m: m["head"] + MASK, text)
