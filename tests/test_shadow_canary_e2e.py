"""Acceptance: shadow and canary versions in two real workers, on real Kafka and Redis.

The registry has v1 active, v2 as the shadow and v3 as the canary (``--canary-share 0.1``).
2,500 keys send one event and its label each, twice: once with both workers up, and again
after one worker stopped and the other took its partitions. A user looks at:

* ``pred:{app}:{key}``: 10% +- 2% of the keys are served by v3, stamped so, and the very same
  keys the second time (another process served half of them);
* ``shadow:{app}:{key}``: every key has v2's recorded prediction, never served;
* each worker's metrics: the per-version progressive metrics of v1, v2 and v3 were computed
  over the same labels (equal counts).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from click.testing import CliRunner

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.candidates import canary_mask
from streaminfer.streams.cli import main
from streaminfer.streams.wiring import registry_from_url
from tests.workers import deployment, stop_processes, wait_for, worker_metrics_key

pytestmark = pytest.mark.services

KEYS = 2500
SHARE = 0.1


def _publish(bootstrap: str, dep: Any, keys: list[str], run: str) -> list[str]:
    """One event per key, then its label (the label is the first feature's sign)."""
    producer = make_producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    events, feedback = RecordCodec("event"), RecordCodec("feedback")
    x = np.random.default_rng(len(run)).normal(size=(len(keys), 8))
    ids = [f"{run}-{i}" for i in range(len(keys))]
    for i, key in enumerate(keys):
        ts = now_ms()
        producer.produce(dep.events_topic, events.encode(
            {"event_id": ids[i], "key": key, "ts": ts, "features": x[i].tolist()}),
            key.encode(), timestamp=ts)
        producer.produce(dep.feedback_topic, feedback.encode(
            {"event_id": ids[i], "key": key, "label": float(x[i, 0] > 0), "ts": ts}),
            key.encode(), timestamp=ts)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return ids


def _served(client: redis.Redis, kind: str, keys: list[str], ids: list[str], dep: Any
            ) -> dict[str, dict[bytes, bytes]]:
    """``{kind}:classifier:{key}`` of every key once each holds its event of ``ids``."""
    rows: dict[str, dict[bytes, bytes]] = {}

    def done() -> bool:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(f"{kind}:classifier:{key}")
        rows.update(zip(keys, pipe.execute(), strict=True))
        return all(rows[k].get(b"event_id") == i.encode() for k, i in zip(keys, ids,
                                                                          strict=True))

    wait_for(done, 90, f"{kind} rows of {len(keys)} keys", dep.log_tail)
    return rows


def _lifecycle(client: redis.Redis, pid: int) -> dict[str, Any]:
    raw = client.get(worker_metrics_key("classifier", pid))
    return json.loads(raw).get("lifecycle", {}) if raw else {}


def test_shadow_and_canary_beside_the_active_version(services: Any, new_topic: Any,
                                                     tmp_path: Path) -> None:
    url = str(tmp_path / "registry")
    registry = registry_from_url(url)
    for seed in (1, 2, 3):
        model = OnlineClassifier(8, seed=seed, device="cpu")
        with torch.no_grad():  # the built-in starts at zero weights: make versions differ
            model.net.body.weight.copy_(torch.randn(1, 8, generator=torch.Generator()
                                                    .manual_seed(seed)))
        registry.register("classifier", model)
    registry.promote("classifier", 1)
    registry.label("classifier", "shadow", 2)
    registry.label("classifier", "canary", 3)
    client = redis.Redis.from_url(services.redis_url)
    run = uuid.uuid4().hex[:6]
    keys = [f"user-{i}" for i in range(KEYS)]  # fixed: the share is the same every run
    expected = {k for k, m in zip(keys, canary_mask(keys, SHARE), strict=True) if m}
    started = time.monotonic()
    with deployment(services, new_topic, tmp_path) as dep:
        dep.extra_env.update({"STREAMINFER_REGISTRY_URL": url,
                              "STREAMINFER_REGISTRY_POLL_S": "0.5"})
        procs = [dep.start_worker("--canary-share", str(SHARE)),
                 dep.start_worker("--canary-share", str(SHARE))]
        dep.wait_ready(procs, client)
        wait_for(lambda: all(str(_lifecycle(client, p.pid).get("shadow")).startswith("v2+")
                             and str(_lifecycle(client, p.pid).get("canary")).startswith("v3+")
                             for p in procs), 30, "shadow and canary loaded", dep.log_tail)

        first_ids = _publish(dep.bootstrap, dep, keys, f"{run}a")
        first = _served(client, "pred", keys, first_ids, dep)
        shadow = _served(client, "shadow", keys, first_ids, dep)

        # the per-version metrics of both workers: same labels for every version
        def all_counted() -> bool:
            total = 0
            for proc in procs:
                versions = _lifecycle(client, proc.pid).get("versions", {})
                counts = {name: figures.get("count") for name, figures in versions.items()
                          if figures.get("count") is not None}
                if set(counts) != {"active v1", "shadow v2", "canary v3"}:
                    return False
                assert len(set(counts.values())) == 1, counts
                total += int(counts["active v1"])
            return total == KEYS

        wait_for(all_counted, 60, f"per-version metrics over all {KEYS} labels",
                 dep.log_tail)
        figures = _lifecycle(client, procs[0].pid)["versions"]
        print("\nworker 0 per version:", {n: (f["count"], round(f["auc"], 3))
                                          for n, f in figures.items()})
        assert all(0.0 <= f["auc"] <= 1.0 for f in figures.values())
        result = CliRunner().invoke(main, ["model", "compare", "classifier"],
                                    env={"REDIS_URL": services.redis_url},
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        table = {line.split("\t")[0]: line.split("\t")[1:]
                 for line in result.output.splitlines()[1:]}
        print(result.output)
        assert set(table) == {"active v1", "shadow v2", "canary v3"}
        assert {cells[0] for cells in table.values()} == {str(KEYS)}  # labels, all workers

        # one worker goes; the other serves every key, and each key its same version
        stop_processes(procs[:1])
        dep.wait_ready(procs[1:], client)
        second_ids = _publish(dep.bootstrap, dep, keys, f"{run}b")
        second = _served(client, "pred", keys, second_ids, dep)
    took = time.monotonic() - started

    def canary_keys(rows: dict[str, dict[bytes, bytes]]) -> set[str]:
        bases = {k: r[b"model_version"].decode().split("+u")[0] for k, r in rows.items()}
        assert set(bases.values()) == {"v1", "v3"}, set(bases.values())
        return {k for k, base in bases.items() if base == "v3"}

    once, again = canary_keys(first), canary_keys(second)
    print(f"canary served {len(once)} of {KEYS} keys ({len(once) / KEYS:.1%}), then "
          f"{len(again)}; {took:.0f} s")
    assert abs(len(once) / KEYS - SHARE) <= 0.02
    assert once == again == expected
    assert {r[b"model_version"].decode().split("+u")[0] for r in shadow.values()} == {"v2"}
    # recorded, not served: the shadow's score differs from what pred:{key} holds
    differ = sum(shadow[k][b"score"] != first[k][b"score"] for k in keys)
    assert differ > KEYS * 0.9
