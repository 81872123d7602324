"""Publish river's SolarFlare data set as a stream: each region, then its label.

    python publish.py --rate 200 --epochs 3

Events go to ``flares`` (Avro, ``flare.avsc``) and labels to ``flare-labels`` a moment later,
so the worker scores each region before it learns what the region did.
"""

from __future__ import annotations

import argparse
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from river.datasets import SolarFlare

from streaminfer.connectors.avro import RecordCodec

HERE = Path(__file__).resolve().parent


def flare_class(y: dict[str, int]) -> int:
    """0: no flare, 1: C-class flares only, 2: at least one M or X class flare."""
    if y["m-class-flares"] or y["x-class-flares"]:
        return 2
    return 1 if y["c-class-flares"] else 0


def region(i: int, x: dict[str, Any], ts: int, run: str) -> dict[str, Any]:
    return {
        "event_id": f"flare-{run}-{i}", "region": f"r{i % 200}", "ts": ts,
        "zurich_class": x["zurich-class"], "largest_spot_size": x["largest-spot-size"],
        "spot_distribution": x["spot-distribution"], "activity": int(x["activity"]),
        "evolution": int(x["evolution"]),
        "previous_activity": int(x["previous-24h-flare-activity"]),
        "hist_complex": x["hist-complex"] == 2, "hist_complex_this_pass":
        x["hist-complex-this-pass"] == 2,
        # every 10th region has no area reported: the app fills it in
        "area": None if i % 10 == 0 else int(x["area"]),
        "largest_spot_area": int(x["largest-spot-area"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--rate", type=float, default=500.0, help="regions per second")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the 1,066 regions")
    args = parser.parse_args()
    events = RecordCodec(str(HERE / "flare.avsc"))
    labels = RecordCodec(str(HERE / "flare_label.avsc"))
    producer = Producer({"bootstrap.servers": args.bootstrap, "enable.idempotence": True})
    sent = 0
    start = time.monotonic()
    run = uuid.uuid4().hex[:6]  # event ids unique to this run: labels join their own events
    for epoch in range(args.epochs):
        for i, (x, y) in enumerate(SolarFlare()):
            ts = int(time.time() * 1000)
            record = region(i, x, ts, f"{run}-{epoch}")
            key = record["region"].encode()
            producer.produce("flares", events.encode(record), key, timestamp=ts)
            label = {"event_id": record["event_id"], "region": record["region"],
                     "flare_class": flare_class(y), "ts": ts}
            producer.produce("flare-labels", labels.encode(label), key, timestamp=ts)
            producer.poll(0)
            sent += 1
            delay = sent / args.rate - (time.monotonic() - start)
            if delay > 0:
                time.sleep(delay)
    producer.flush(30)
    print(f"published {sent} regions and their labels in {time.monotonic() - start:.1f}s")


if __name__ == "__main__":
    main()
