"""The naive baseline ``bench/pipeline.py`` compares against: a Faust agent, one event at a time.

What a first streaming-inference service usually looks like: ``async for value in stream``,
decode the record, score it with the same PyTorch model as a batch of one, write one Redis
``HSET`` per event (redis.asyncio, so the loop is not blocked). No micro-batching, no guarded
Lua write, no predictions topic: it does *less* work per event than streaminfer's hot path.

Run as a Faust worker, configured by environment variables (the bench sets them)::

    NAIVE_TOPIC=events NAIVE_COUNT=20000 python bench/naive_faust.py worker -l warning

Every 1000 events it reports to Redis under ``NAIVE_PROGRESS_KEY`` (JSON: ``count``, ``rate``,
``p50_ms``/``p99_ms`` event-time -> Redis-written latency, ``done`` once ``NAIVE_COUNT`` events
were scored), so the bench can stop it by PID when done or out of time.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
import numpy as np
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.records import now_ms
from streaminfer.models.factory import create_model

ENV = os.environ
TOPIC = ENV.get("NAIVE_TOPIC", "events")
COUNT = int(ENV.get("NAIVE_COUNT", "20000"))
NUM_FEATURES = int(ENV.get("NAIVE_NUM_FEATURES", "8"))
PROGRESS_KEY = ENV.get("NAIVE_PROGRESS_KEY", "bench:naive:progress")
KEY_PREFIX = ENV.get("NAIVE_KEY_PREFIX", "pred:naivebench:")
REPORT_EVERY = 1000

app = faust.App(
    ENV.get("NAIVE_APP_ID", "bench-naive"),
    broker=f"kafka://{ENV.get('NAIVE_BOOTSTRAP', '127.0.0.1:9092')}",
    store="memory://",
    web_enabled=False,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    datadir=ENV.get("NAIVE_DATADIR", str(Path(tempfile.gettempdir()) / "naive-faust")),
)
events = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
codec = RecordCodec("event", "single-object", topic=TOPIC)
model = create_model("classifier", num_features=NUM_FEATURES, seed=int(ENV.get("NAIVE_SEED", "0")),
                     device="cpu")
client = aioredis.from_url(ENV.get("NAIVE_REDIS_URL", "redis://127.0.0.1:6379/14"))


class _Progress:
    """Counts events and keeps their latencies; the first event starts the clock."""

    def __init__(self) -> None:
        self.count = 0
        self.first_at = 0.0
        self.last_at = 0.0
        self.latencies: list[int] = []

    def report(self) -> dict[str, Any]:
        """Rate over first -> latest event (the first left out) and latency percentiles."""
        lat = np.asarray(self.latencies, float)
        seconds = self.last_at - self.first_at
        return {"count": self.count, "done": self.count >= COUNT, "seconds": seconds,
                "rate": (self.count - 1) / seconds if seconds > 0 else 0.0,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


progress = _Progress()


@app.agent(events)
async def score_each(stream: Any) -> None:
    """Decode -> score one -> HSET one, for every event."""
    async for value in stream:
        record = codec.decode(value)
        features = np.asarray([record["features"]], dtype=np.float32)
        score = float(model.predict(features)[0])
        await client.hset(KEY_PREFIX + record["key"], mapping={
            "event_id": record["event_id"], "event_ts": record["ts"],
            "processed_ts": now_ms(), "score": repr(score),
            "model_name": model.name, "model_version": str(model.version),
        })
        written = now_ms()
        progress.last_at = time.perf_counter()
        if not progress.count:
            progress.first_at = progress.last_at
        progress.count += 1
        progress.latencies.append(written - record["ts"])
        if progress.count % REPORT_EVERY == 0 or progress.count == COUNT:
            await client.set(PROGRESS_KEY, json.dumps(progress.report()), ex=3600)


if __name__ == "__main__":
    app.main()
