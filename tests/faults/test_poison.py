"""Poison records through real workers: each goes to the dead-letter topic with a reason that
says what is wrong, and the workers go on serving the good records published after them.

The workers run with ``--max-record-bytes 1040000`` (under the broker's 1 MB message limit, so
a larger record can still be published to show the rule)."""

from __future__ import annotations

import json
import struct
import time
import uuid
from typing import Any

import numpy as np
from harness import Cluster
from workers import read_topic, redis_predictions, wait_for

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms

DAY_MS = 24 * 3600 * 1000


def _poison(run: str) -> dict[str, tuple[bytes | None, bytes | None, str]]:
    """name -> (Kafka key, value, a phrase the dead letter's reason must hold)."""
    codec = RecordCodec("event")
    features = [0.5] * 8

    def event(i: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"{run}-{i}", "key": f"{run}-k", "ts": now_ms(),
                "features": features, **fields}

    def js(record: dict[str, Any]) -> bytes:
        return json.dumps(record, ensure_ascii=False).encode()

    avro = codec.encode(event("avro"))
    key = f"{run}-k".encode()
    unicode_key = "€" * 333_333  # 999,999 bytes of UTF-8
    deep = b'{"event_id": "deep", "features": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    return {
        "truncated avro": (key, avro[:-6], "Avro body does not match"),
        "unknown fingerprint": (key, b"\xc3\x01" + b"\x13" * 8 + avro[10:],
                                "unknown writer schema fingerprint"),
        "unknown registry id": (key, b"\x00" + struct.pack(">I", 987654) + avro[10:],
                                "Schema Registry"),
        "wrong json types": (key, js(event("types", features="eight numbers")),
                             "'features'"),
        "wrong json id type": (key, js(event("idtype", event_id=["a", "list"])),
                               "'event_id'"),
        "over max-record-bytes": (key, js(event("big", pad="x" * 1_045_000)),
                                  "over max_record_bytes (1040000)"),
        "nan feature": (key, js(event("nan")).replace(b"0.5", b"NaN", 1),
                        "NaN or infinite"),
        "inf feature": (key, js(event("inf")).replace(b"0.5", b"Infinity", 1),
                        "NaN or infinite"),
        "missing timestamp": (key, js({k: v for k, v in event("nots").items() if k != "ts"}),
                              "'ts'"),
        "negative timestamp": (key, js(event("negts", ts=-5)), "before 2000"),
        "far-future timestamp": (key, js(event("future", ts=now_ms() + 30 * DAY_MS)),
                                 "more than a day ahead"),
        "key does not match": (b"another-key", js(event("mismatch")), "the Kafka key is"),
        "empty value": (key, b"", "empty value"),
        "null value": (key, None, "null value"),
        "deeply nested json": (key, deep, "invalid JSON"),
        "1 MB unicode key": (None, js(event("ukey", key=unicode_key)),
                             "longer than 4096 characters"),
    }


def test_poison_records_go_to_the_dlq_with_a_reason(ready: Cluster, client) -> None:  # type: ignore[no-untyped-def]
    run = uuid.uuid4().hex[:8]
    poison = _poison(run)
    producer = make_producer({"bootstrap.servers": ready.bootstrap,
                              "message.max.bytes": 2_000_000, "compression.type": "none",
                              "delivery.report.only.error": False})
    where: dict[tuple[int, int], str] = {}
    errors: list[str] = []

    def delivered(name: str) -> Any:
        def report(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(f"{name}: {err}")
            else:
                where[(msg.partition(), msg.offset())] = name
        return report

    for name, (key, value, _) in poison.items():
        producer.produce(ready.dep.events_topic, value, key, partition=0,
                         on_delivery=delivered(name))
    assert producer.flush(30) == 0 and not errors, errors
    # good records after the poison: the workers must still serve them
    codec = RecordCodec("event")
    good = [f"{run}-good{i}" for i in range(20)]
    for i, eid in enumerate(good):
        record = {"event_id": eid, "key": eid, "ts": now_ms(),
                  "features": np.random.default_rng(i).normal(size=8).tolist()}
        producer.produce(ready.dep.events_topic, codec.encode(record), eid.encode(),
                         partition=i % ready.dep.partitions)
    assert producer.flush(30) == 0
    started = time.time()
    wait_for(lambda: len(redis_predictions(client, "classifier", good)) == len(good), 60,
             "the good records after the poison", ready.dep.log_tail)
    reasons: dict[str, str] = {}

    def all_dead() -> bool:
        for d in read_topic(ready.bootstrap, ready.dep.events_topic + ".dlq", schema="",
                            idle_s=1.0):
            h = d["_headers"]
            spot = (int(h["streaminfer.source_partition"]), int(h["streaminfer.source_offset"]))
            if spot in where:
                reasons[where[spot]] = (h["streaminfer.error_type"].decode() + ": "
                                        + h["streaminfer.reason"].decode())
        return len(reasons) == len(poison)

    wait_for(all_dead, 60, "a dead letter for each poison record",
             lambda: f"missing: {sorted(set(poison) - set(reasons))}\n{ready.dep.log_tail()}")
    for name, (_, _, phrase) in poison.items():
        print(f"POISON {name}: {reasons[name][:150]}")
        assert phrase in reasons[name], (name, reasons[name])
    assert ready.alive(), ready.dep.log_tail()
    print(f"POISON {len(poison)} kinds dead-lettered, workers running; good records served "
          f"{time.time() - started:.1f} s after publishing")
