"""Acceptance: two real workers on a steady stream follow promote and rollback.

2,000 events/s for 30 s; v2 is promoted at 6 s, rolled back to v1 at 12 s, promoted again at
18 s and rolled back at 24 s. Learning is off here (the sync across a swap is covered in
``test_model_swap``), so each prediction's version says exactly which registered weights
scored it. Latency is event time to the prediction's ``processed_ts`` (scored and queued for
Redis), read from the predictions topic.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.wiring import registry_from_url
from tests.workers import deployment, wait_all_served

pytestmark = pytest.mark.services

RATE = 2000
SECONDS = 30
#: when each move happens (s after the stream starts) and the version it makes active
MOVES = [(6.0, 2), (12.0, 1), (18.0, 2), (24.0, 1)]
#: the latency baseline: this long before each move
WINDOW_MS = 2500
#: the switch window: from this long before the first of the two workers' switches to this
#: long after the second
SWITCH_BEFORE_MS, SWITCH_AFTER_MS = 250, 500


def _produce(bootstrap: str, topic: str, run: str, marks: list[float],
             registry: Any) -> list[str]:
    producer = make_producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    codec = RecordCodec("event")
    rng = np.random.default_rng(0)
    ids: list[str] = []
    start = time.perf_counter()
    i = 0
    while (elapsed := time.perf_counter() - start) < SECONDS:
        if len(marks) < len(MOVES) and elapsed >= MOVES[len(marks)][0]:
            if MOVES[len(marks)][1] == 2:
                registry.promote("classifier", 2)
            else:
                registry.rollback("classifier")
            marks.append(time.time() * 1000)
        for _ in range(20):
            ts, key, eid = now_ms(), f"{run}-k{i % 500}", f"{run}-{i}"
            producer.produce(topic, codec.encode(
                {"event_id": eid, "key": key, "ts": ts,
                 "features": rng.normal(size=8).tolist()}), key.encode(), timestamp=ts)
            ids.append(eid)
            i += 1
        producer.poll(0)
        ahead = i / RATE - (time.perf_counter() - start)
        if ahead > 0:
            time.sleep(ahead)
    assert producer.flush(30) == 0
    return ids


def _p99(values: list[float]) -> float:
    return float(np.percentile(np.asarray(values), 99)) if values else float("nan")


def test_two_workers_follow_promote_and_rollback(services: Any, new_topic: Any,
                                                 tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    registry = registry_from_url(url)
    registry.register("classifier", OnlineClassifier(8, seed=1, device="cpu"))
    v2 = OnlineClassifier(8, seed=2, device="cpu")
    with np.errstate(all="ignore"):
        v2.net.body.bias.data.fill_(3.0)  # v2 scores visibly differently
    registry.register("classifier", v2)
    registry.promote("classifier", 1)
    client = redis.Redis.from_url(services.redis_url)
    with deployment(services, new_topic, tmp_path) as dep:
        dep.extra_env.update({"STREAMINFER_REGISTRY_URL": url, "STREAMINFER_LEARN": "false"})
        procs = [dep.start_worker(), dep.start_worker()]
        dep.wait_ready(procs, client)
        marks: list[float] = []
        run = uuid.uuid4().hex[:6]
        ids: list[str] = []
        producer = threading.Thread(target=lambda: ids.extend(
            _produce(dep.bootstrap, dep.events_topic, run, marks, registry)))
        started = time.time() * 1000
        producer.start()
        producer.join()
        took = (time.time() * 1000 - started) / 1000
        assert len(ids) / took >= RATE * 0.9, f"only {len(ids) / took:.0f} ev/s produced"
        served = wait_all_served(dep, len(ids), 120, f"all {len(ids)} events served")
        logs = dep.log_tail(200)
    missing = set(ids) - set(served)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:3]}"
    rows = [served[i] for i in ids]
    bases = {r["model_version"].split("+u")[0] for r in rows}
    assert bases <= {"v1", "v2"}, bases
    ends = [*marks[1:], float("inf")]
    for (_, version), move, end in zip(MOVES, marks, ends, strict=True):
        late = [r["model_version"] for r in rows if move + 5000 <= r["processed_ts"] < end]
        assert late, f"no prediction 5 s after the move to v{version}"
        wrong = [v for v in late if not v.startswith(f"v{version}+")]
        assert not wrong, (f"{len(wrong)} predictions 5 s after the move to v{version} came "
                           f"from another version: {wrong[:3]}")
    promote = marks[0]
    first_v2 = min(r["processed_ts"] for r in rows if r["model_version"].startswith("v2+"))
    last_v1 = max(r["processed_ts"] for r in rows if r["model_version"].startswith("v1+")
                  and r["processed_ts"] < marks[1])
    latency = {r["event_id"]: r["processed_ts"] - r["event_ts"] for r in rows}

    def p99_within(lo: float, hi: float) -> float:
        return _p99([latency[r["event_id"]] for r in rows if lo <= r["processed_ts"] < hi])

    def switching(move: float, end: float, version: int) -> tuple[float, float]:
        """Where both workers switch: around the first prediction of the new version and the
        last one of the old version (each is one worker's switch)."""
        after = [r for r in rows if move <= r["processed_ts"] < end]
        new = min(r["processed_ts"] for r in after
                  if r["model_version"].startswith(f"v{version}+"))
        old = max((r["processed_ts"] for r in after
                   if not r["model_version"].startswith(f"v{version}+")), default=new)
        return min(new, old) - SWITCH_BEFORE_MS, max(new, old) + SWITCH_AFTER_MS

    # A swap that costs latency stalls the lanes where the workers switch, so that window
    # (~0.8 s) is compared with the 2.5 s before the move. This shared 2-core host has
    # scheduling hiccups of 40-200 ms at random moments, swap or not; one in a window sets
    # that window's p99, and in a window that covered the 2.5 s after the move it did so
    # often enough to fail 2 runs of 10 in one day. The median ratio over the four swaps is
    # what a swap that really cost latency moves and a stray hiccup does not. Timestamps are
    # whole ms, so each p99 (~13 ms) carries +-1 ms: 2 ms of slack.
    windows = [switching(m, end, version)
               for (_, version), m, end in zip(MOVES, marks, ends, strict=True)]
    pairs = [(p99_within(m - WINDOW_MS, m), p99_within(lo, hi))
             for m, (lo, hi) in zip(marks, windows, strict=True)]
    ratios = sorted((after - 2) / before for before, after in pairs)
    median = float(np.median(ratios))
    print(f"\n{len(ids)} events at {len(ids) / took:.0f} ev/s; promote -> first v2 "
          f"{first_v2 - promote:.0f} ms, last v1 {last_v1 - promote:.0f} ms after promote; "
          f"p99 latency before each move / where the workers switch (ms): "
          f"{', '.join(f'{b:.0f} / {a:.0f}' for b, a in pairs)}; switch windows "
          f"{', '.join(f'{hi - lo:.0f}' for lo, hi in windows)} ms; median ratio {median:.2f}")
    assert "now serving v2" in logs and "now serving v1" in logs
    assert median <= 1.5, pairs
