"""A user's own app, as a user would write and run it: their own project folder (with their own
``models`` package), their own Avro schema of mixed types, their own two-output ``nn.Module``,
served by ``streaminfer worker --app userapp:app`` against the real Kafka and Redis."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from workers import read_topic, stop_processes, wait_for, workers_ready

from streaminfer.connectors.avro import RecordCodec
from streaminfer.connectors.kafka import make_producer
from streaminfer.connectors.records import now_ms

pytestmark = pytest.mark.services

CUSTOMER_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "Customer", "namespace": "acme",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "customer_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "age", "type": "int"},
        {"name": "balance", "type": "double"},
        {"name": "tenure", "type": ["null", "int"], "default": None},
        {"name": "score_ext", "type": "float"},
        {"name": "is_active", "type": "boolean"},
        {"name": "plan", "type": {"type": "enum", "name": "Plan",
                                  "symbols": ["free", "pro", "team"]}},
        {"name": "country", "type": "string"},
        {"name": "device", "type": ["null", "string"], "default": None},
        {"name": "last_amounts", "type": {"type": "array", "items": "float"}},
        {"name": "tags", "type": {"type": "map", "values": "string"}, "default": {}},
        {"name": "address", "type": {"type": "record", "name": "Address", "fields": [
            {"name": "city", "type": "string"},
            {"name": "zip", "type": ["null", "int"], "default": None}]}},
    ],
}
LABEL_SCHEMA: dict[str, Any] = {
    "type": "record", "name": "ChurnLabel", "namespace": "acme",
    "fields": [{"name": "event_id", "type": "string"}, {"name": "customer_id", "type": "string"},
               {"name": "churned", "type": "int"},
               {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
}

USER_MODELS = '''
"""The user's own models package (streaminfer's is streaminfer.models: no clash)."""
import torch
from torch import nn


class ChurnNet(nn.Module):
    """Two outputs: logits of stay / churn."""

    def __init__(self, inputs: int, hidden: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
'''

USER_APP = '''
import os

import streaminfer as si
from models import ChurnNet

features = si.Features(
    si.numeric("age", "tenure", scale=0.01),
    si.numeric("balance", "address.zip", scale=0.001),
    si.numeric("score_ext"),
    si.boolean("is_active"),
    si.categorical("plan", ["free", "pro", "team"]),
    si.hashed("country", 8),
    si.categorical("device", ["ios", "android"]),
    si.array("last_amounts", 3),
    si.hashed("address.city", 4),
)


def _app(name, model, learn):
    learning = si.Learning(topic=os.environ["USERAPP_LABELS"], schema="label.avsc",
                           label="churned", join_on="event_id", loss="ce", lr=0.01,
                           batch_size=64) if learn else None
    return si.App(
        name,
        input=si.Input(os.environ["USERAPP_TOPIC"], schema="customer.avsc", key="customer_id"),
        features=features,
        model=model,
        outputs=si.Outputs(["p_stay", "p_churn"], activation="softmax",
                           topic=os.environ["USERAPP_PREDICTIONS"] + "-" + name),
        learning=learning,
    )


def _module(settings):
    """The same weights as the exported files when USERAPP_WEIGHTS names them."""
    net = ChurnNet(features.width)
    if os.environ.get("USERAPP_WEIGHTS"):
        from safetensors.torch import load_file
        net.load_state_dict(load_file(os.environ["USERAPP_WEIGHTS"]))
    return net


app = _app(os.environ.get("USERAPP_NAME", "churn"), _module, learn=True)
module_app = _app("churn-module", _module, learn=False)
script_app = _app("churn-script", "churn.ts", learn=False)
export_app = _app("churn-export", "churn.pt2", learn=False)
'''


def customer(i: int, run: str, rng: np.random.Generator) -> dict[str, Any]:
    return {
        "event_id": f"{run}-{i}", "customer_id": f"{run}-c{i % 2000}", "ts": now_ms(),
        "age": int(rng.integers(18, 90)), "balance": float(rng.normal(1000, 300)),
        "tenure": None if i % 7 == 0 else int(rng.integers(0, 120)),
        "score_ext": float(rng.random()), "is_active": bool(i % 3),
        "plan": ["free", "pro", "team"][i % 3], "country": ["NO", "IT", "DE", "BR"][i % 4],
        "device": None if i % 5 == 0 else ["ios", "android", "web"][i % 3],
        "last_amounts": [float(v) for v in rng.random(3)], "tags": {"src": "test"},
        "address": {"city": ["Oslo", "Rome", "Recife"][i % 3],
                    "zip": None if i % 4 == 0 else int(rng.integers(1000, 9999))},
    }


def churned(record: dict[str, Any]) -> int:
    """A learnable rule: inactive free-plan customers churn."""
    return int(not record["is_active"] and record["plan"] == "free")


@dataclass
class UserProject:
    """The user's folder and the worker processes run from it."""

    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def worker(self, app: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "streaminfer", "worker", "--app", app,
                                 *args], cwd=self.root, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace")
                                                        .splitlines()[-25:])
                         for p in sorted(self.root.glob("worker-*.log")))

    def stop(self) -> None:
        stop_processes(self.procs)


@pytest.fixture
def project(services: Any, new_topic: Callable[..., str], tmp_path: Path
            ) -> Iterator[UserProject]:
    root = tmp_path / "acme"
    (root / "models").mkdir(parents=True)
    (root / "models" / "__init__.py").write_text(USER_MODELS)
    (root / "userapp.py").write_text(USER_APP)
    (root / "customer.avsc").write_text(json.dumps(CUSTOMER_SCHEMA))
    (root / "label.avsc").write_text(json.dumps(LABEL_SCHEMA))
    run = uuid.uuid4().hex[:8]
    env = {**os.environ, "KAFKA_BOOTSTRAP": services.bootstrap, "REDIS_URL": services.redis_url,
           "USERAPP_TOPIC": new_topic(partitions=4, prefix="customers"),
           "USERAPP_LABELS": new_topic(partitions=4, prefix="churn-labels"),
           "USERAPP_PREDICTIONS": f"churn-predictions-{run}",
           "USERAPP_NAME": f"churn-{run}", "STREAMINFER_CONSUMER_GROUP": f"acme-{run}",
           "STREAMINFER_CHECKPOINT_URL": str(tmp_path / "checkpoints"),
           "STREAMINFER_CHECKPOINT_EVERY_S": "1", "PYTHONUNBUFFERED": "1",
           "STREAMINFER_METRICS_PORT": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[1]),
                                                     os.environ.get("PYTHONPATH")) if p)}
    proj = UserProject(root, env)
    try:
        yield proj
    finally:
        proj.stop()


def _publish_kcat(bootstrap: str, topic: str, lines: list[tuple[str, str]]) -> None:
    """JSON records as any non-Python client sends them (kcat, key TAB value per line)."""
    data = "".join(f"{key}\t{value}\n" for key, value in lines).encode()
    subprocess.run(["kcat", "-P", "-b", bootstrap, "-t", topic, "-K", "\t"], input=data,
                   check=True, timeout=120)


def _publish_labels(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    codec = RecordCodec(LABEL_SCHEMA)
    producer = make_producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for r in records:
        producer.produce(topic, codec.encode({"event_id": r["event_id"],
                                              "customer_id": r["customer_id"],
                                              "churned": churned(r), "ts": r["ts"]}),
                         r["customer_id"].encode(), timestamp=r["ts"])
        producer.poll(0)
    assert producer.flush(60) == 0


def _served(bootstrap: str, topic: str, want: set[str], timeout: float,
            logs: Callable[[], str]) -> dict[str, dict[str, Any]]:
    served: dict[str, dict[str, Any]] = {}

    def enough() -> bool:
        for r in read_topic(bootstrap, topic, schema="", idle_s=1.0):
            record = CODECS[topic].decode(r["_value"])
            served[record["event_id"]] = record
        return want <= set(served)

    wait_for(enough, timeout, f"{len(want)} predictions on {topic}", logs)
    return served


CODECS: dict[str, RecordCodec] = {}


def _prediction_codec(topic: str, app: str) -> RecordCodec:
    """A reader for the app's generated prediction schema (what ``consume`` would use)."""
    from streaminfer.streams.app import Outputs

    CODECS[topic] = RecordCodec(Outputs(["p_stay", "p_churn"]).prediction_schema(app))
    return CODECS[topic]


def test_user_app_serves_learns_and_restores_identically(
        project: UserProject, services: Any, redis_client: redis.Redis) -> None:
    env, bootstrap = project.env, services.bootstrap
    name, topic = env["USERAPP_NAME"], env["USERAPP_TOPIC"]
    predictions = f"{env['USERAPP_PREDICTIONS']}-{name}"
    _prediction_codec(predictions, name)
    proc = project.worker("userapp:app")
    wait_for(lambda: workers_ready(redis_client, name, [proc], 4), 120, "the worker",
             project.logs)

    rng = np.random.default_rng(7)
    run = name
    records = [customer(i, run, rng) for i in range(20_000)]
    # 10,000 as JSON through kcat, plus poison; 10,000 as Avro through `streaminfer produce`.
    poison = [("p1", "not json"), ("p2", json.dumps({**records[0], "age": "old"})),
              ("p3", json.dumps({**records[0], "event_id": ""})),
              ("p4", json.dumps({**records[0], "last_amounts": [1.0]}))]
    _publish_kcat(bootstrap, topic, [(r["customer_id"], json.dumps(r)) for r in records[:10_000]]
                  + poison)
    avro_file = project.root / "avro-half.jsonl"
    avro_file.write_text("".join(json.dumps(r) + "\n" for r in records[10_000:]))
    subprocess.run([sys.executable, "-m", "streaminfer", "produce", topic, "--file",
                    str(avro_file), "--app", "userapp:app", "--count", "0", "-q"],
                   cwd=project.root, env=env, check=True, timeout=300)
    _publish_labels(bootstrap, env["USERAPP_LABELS"], records)

    served = _served(bootstrap, predictions, {r["event_id"] for r in records}, 300,
                     project.logs)
    some = served[records[123]["event_id"]]
    assert abs(some["p_stay"] + some["p_churn"] - 1.0) < 1e-4
    assert some["model_name"] == name and some["model_version"].startswith("v1+u")
    # Redis: each customer's hash holds its newest event's declared outputs.
    newest: dict[str, dict[str, Any]] = {}
    for r in records:
        newest[r["customer_id"]] = r
    sample = list(newest)[:50]
    pipe = redis_client.pipeline()
    for cid in sample:
        pipe.hgetall(f"pred:{name}:{cid}")
    for cid, row in zip(sample, pipe.execute(), strict=True):
        row = {k.decode(): v.decode() for k, v in row.items()}
        assert row["event_id"] == newest[cid]["event_id"]
        assert {"p_stay", "p_churn", "model_version", "event_ts"} <= set(row)
    dlq = read_topic(bootstrap, f"{topic}.dlq", schema="", idle_s=2.0)
    assert sorted(r["_key"] for r in dlq) == [b"p1", b"p2", b"p3", b"p4"]
    assert all(r["_headers"].get("streaminfer.reason") for r in dlq)

    # Learning settles once every label is joined; then a checkpoint holds the final model.
    def learned_all() -> bool:
        raw = redis_client.get(f"metrics:{name}:{_worker_id(proc)}")
        snap = json.loads(raw) if raw else {}
        return (snap.get("learning") or {}).get("learned", 0) >= 20_000
    wait_for(learned_all, 120, "every label learned", project.logs)
    time.sleep(2.5)  # >= 2 checkpoint periods: the newest checkpoint has the final weights

    probe = [customer(i, f"{run}-probe", np.random.default_rng(11)) for i in range(300)]
    _publish_kcat(bootstrap, topic, [(r["customer_id"], json.dumps(r)) for r in probe])
    before = _served(bootstrap, predictions, {r["event_id"] for r in probe}, 60, project.logs)
    # It learned the rule from the label topic (most events were served before their labels
    # came, so the progressive accuracy says little here; the probe says what it learned).
    hits = sum((before[r["event_id"]]["p_churn"] > 0.5) == bool(churned(r)) for r in probe)
    assert hits / len(probe) > 0.9, hits
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    again = project.worker("userapp:app")
    wait_for(lambda: workers_ready(redis_client, name, [again], 4), 120, "the restarted worker",
             project.logs)
    probe2 = [{**r, "event_id": r["event_id"] + "-again"} for r in probe]
    _publish_kcat(bootstrap, topic, [(r["customer_id"], json.dumps(r)) for r in probe2])
    after = _served(bootstrap, predictions, {r["event_id"] for r in probe2}, 60, project.logs)
    for r in probe:
        old, new = before[r["event_id"]], after[r["event_id"] + "-again"]
        assert new["model_version"] == old["model_version"]
        # the same weights; only the batch a row was scored in may differ (BLAS blocking)
        assert abs(new["p_churn"] - old["p_churn"]) < 1e-6
        assert abs(new["p_stay"] - old["p_stay"]) < 1e-6


def _worker_id(proc: subprocess.Popen[bytes]) -> str:
    import socket

    return f"{socket.gethostname()}-{proc.pid}"


def test_torchscript_and_export_files_serve_the_module_scores(
        project: UserProject, services: Any, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("USERAPP_TOPIC", "USERAPP_LABELS", "USERAPP_PREDICTIONS"):
        monkeypatch.setenv(var, project.env[var])
    sys.modules.pop("models", None)
    sys.path.insert(0, str(project.root))
    try:
        import userapp  # the user's module, with its own `models` package

        from models import ChurnNet
    finally:
        sys.path.remove(str(project.root))
    from safetensors.torch import save_file

    torch.manual_seed(3)
    net = ChurnNet(userapp.features.width).eval()
    save_file(net.state_dict(), str(project.root / "weights.safetensors"))
    project.env["USERAPP_WEIGHTS"] = str(project.root / "weights.safetensors")
    torch.jit.save(torch.jit.script(net), str(project.root / "churn.ts"))
    example = torch.zeros(4, userapp.features.width)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(project.root / "churn.pt2"))
    for name in ("module", "script", "export"):
        _prediction_codec(f"{project.env['USERAPP_PREDICTIONS']}-churn-{name}", f"churn-{name}")

    procs = [project.worker(f"userapp:{kind}_app") for kind in ("module", "script", "export")]
    for proc, kind in zip(procs, ("module", "script", "export"), strict=True):
        wait_for(lambda p=proc, k=kind: workers_ready(redis_client, f"churn-{k}", [p], 4),
                 180, f"the {kind} worker", project.logs)
    records = [customer(i, "files", np.random.default_rng(5)) for i in range(500)]
    _publish_kcat(services.bootstrap, project.env["USERAPP_TOPIC"],
                  [(r["customer_id"], json.dumps(r)) for r in records])
    want = {r["event_id"] for r in records}
    scores = {kind: _served(services.bootstrap,
                            f"{project.env['USERAPP_PREDICTIONS']}-churn-{kind}", want, 120,
                            project.logs)
              for kind in ("module", "script", "export")}
    for eid in want:
        ref = scores["module"][eid]
        for kind in ("script", "export"):
            got = scores[kind][eid]
            assert abs(got["p_churn"] - ref["p_churn"]) < 1e-5, (kind, eid)
            assert abs(got["p_stay"] - ref["p_stay"]) < 1e-5, (kind, eid)
