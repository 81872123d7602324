"""Container health: does the worker in this container answer ``/healthz`` with 200?

The worker serves ``/healthz`` on its metrics port (``STREAMINFER_METRICS_PORT``, default 9464;
see ``streams/observability.py``). It fails only when a lane has work but made no progress for
``stall_after_s``; a Redis or Kafka outage is not a failure (the lanes retry and say "waiting on
sink"), because restarting the container would not bring them back. Kubernetes probes the same
endpoint with ``httpGet``; this script is for Docker's HEALTHCHECK, which has no HTTP probe (and
the slim image has no curl). The port is found the way the worker finds it (environment only:
the check does not see a ``--metrics-port`` flag, so set the port through the environment).

Exit 0: healthy; 1: unhealthy, no answer, or the server is off (Docker/Kubernetes semantics).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 9464


def metrics_port() -> int:
    """``STREAMINFER_METRICS_PORT`` as the worker reads it (no pydantic import: this runs every
    15 s, and a fast check does not compete with the worker for CPU)."""
    raw = os.environ.get("STREAMINFER_METRICS_PORT", "").strip()
    return int(raw) if raw else DEFAULT_PORT


def check(port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """(healthy, what the worker said or why it could not be asked)."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:  # 503: the body says which lane stalled
        return False, err.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return False, f"{url} does not answer: {exc}"


def main() -> int:
    try:
        port = metrics_port()
    except ValueError:
        print("unhealthy: STREAMINFER_METRICS_PORT is not a number", file=sys.stderr)
        return 1
    if port <= 0:
        print(f"unhealthy: STREAMINFER_METRICS_PORT={port}: no fixed health port to ask "
              "(-1 turns the server off, 0 picks a random one)", file=sys.stderr)
        return 1
    healthy, said = check(port)
    if not healthy:
        print(f"unhealthy: {said}", file=sys.stderr)
        return 1
    print(f"healthy: {said}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
