"""``streaminfer init DIR``: a small, working project to start your own app from."""

from __future__ import annotations

import re
from pathlib import Path

import click

__all__ = ["init"]

_APP = '''"""The {name} app: customer events in, P(churn) and P(upsell) out, learning online.

Run it:   streaminfer worker --app {module}:app
Test it:  python -m pytest -q       (needs Kafka and Redis: streaminfer dev up)
"""

import os

import torch

import streaminfer as si
from models import ChurnNet

EVENTS = os.environ.get("{env}_EVENTS_TOPIC", "{name}-events")
LABELS = os.environ.get("{env}_LABELS_TOPIC", "{name}-labels")
PREDICTIONS = os.environ.get("{env}_PREDICTIONS_TOPIC", "{name}-predictions")

features = si.Features(
    si.numeric("age", scale=0.01),
    si.numeric("monthly_spend", scale=0.01),
    si.numeric("tenure_months", scale=0.01, fill=0.0),  # optional: null -> 0
    si.categorical("plan", ["free", "pro", "team"]),
    si.hashed("country", buckets=16),
    si.boolean("is_active"),
)



def churn_loss(outputs: torch.Tensor, churned: torch.Tensor) -> torch.Tensor:
    """Only churn is labelled: learn the first output from it (upsell has no labels yet)."""
    return torch.nn.functional.binary_cross_entropy_with_logits(outputs[:, 0], churned)


app = si.App(
    "{name}",
    input=si.Input(EVENTS, schema="event.avsc", key="customer_id"),
    features=features,
    model=lambda settings: ChurnNet(features.width),
    outputs=si.Outputs(["p_churn", "p_upsell"], activation="sigmoid", topic=PREDICTIONS),
    learning=si.Learning(topic=LABELS, schema="label.avsc", label="churned",
                         loss=churn_loss, progressive="classifier", lr=0.01, batch_size=32),
)
'''

_MODELS = '''"""Your models: plain PyTorch, nothing streaminfer-specific."""

import torch
from torch import nn


class ChurnNet(nn.Module):
    """Two layers; two outputs (churn, upsell logits)."""

    def __init__(self, inputs: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
'''

_EVENT = '''{{
  "type": "record",
  "name": "CustomerEvent",
  "namespace": "{env_lower}",
  "fields": [
    {{"name": "event_id", "type": "string"}},
    {{"name": "customer_id", "type": "string"}},
    {{"name": "ts", "type": {{"type": "long", "logicalType": "timestamp-millis"}}}},
    {{"name": "age", "type": "int"}},
    {{"name": "monthly_spend", "type": "double"}},
    {{"name": "tenure_months", "type": ["null", "int"], "default": null}},
    {{"name": "plan",
      "type": {{"type": "enum", "name": "Plan", "symbols": ["free", "pro", "team"]}}}},
    {{"name": "country", "type": "string"}},
    {{"name": "is_active", "type": "boolean"}}
  ]
}}
'''

_LABEL = '''{{
  "type": "record",
  "name": "ChurnLabel",
  "namespace": "{env_lower}",
  "fields": [
    {{"name": "event_id", "type": "string"}},
    {{"name": "customer_id", "type": "string"}},
    {{"name": "churned", "type": "float"}},
    {{"name": "ts", "type": {{"type": "long", "logicalType": "timestamp-millis"}}}}
  ]
}}
'''

_TEST = '''"""The app end to end on the local Kafka and Redis: publish, serve, read back."""

import time
import uuid
from pathlib import Path

from streaminfer.testing import LocalServices, publish, run_worker, wait_for_predictions

ROOT = Path(__file__).resolve().parents[1]


def test_the_app_predicts_every_customer(tmp_path: Path) -> None:
    services = LocalServices.find()
    run = uuid.uuid4().hex[:8]
    env = {{"{env}_EVENTS_TOPIC": f"{name}-events-{{run}}",
           "{env}_LABELS_TOPIC": f"{name}-labels-{{run}}",
           "{env}_PREDICTIONS_TOPIC": f"{name}-predictions-{{run}}",
           "STREAMINFER_CONSUMER_GROUP": f"test-{{run}}"}}
    now = int(time.time() * 1000)
    events = [{{"event_id": f"{{run}}-{{i}}", "customer_id": f"{{run}}-c{{i}}", "ts": now,
               "age": 20 + i % 50, "monthly_spend": 10.0 + i, "tenure_months": None,
               "plan": ["free", "pro", "team"][i % 3], "country": "NO", "is_active": i % 2 == 0}}
              for i in range(200)]
    labels = [{{"event_id": e["event_id"], "customer_id": e["customer_id"],
               "churned": float(not e["is_active"]), "ts": now}} for e in events]
    with run_worker("{module}:app", services, name="{name}", cwd=ROOT, env=env,
                    log=tmp_path / "worker.log"):
        publish(services, env["{env}_EVENTS_TOPIC"], events, schema=ROOT / "event.avsc",
                key="customer_id")
        publish(services, env["{env}_LABELS_TOPIC"], labels, schema=ROOT / "label.avsc",
                key="customer_id")
        rows = wait_for_predictions(services, app="{name}",
                                    keys=[e["customer_id"] for e in events], timeout=120)
    for row in rows.values():
        assert 0.0 <= float(row["p_churn"]) <= 1.0 and 0.0 <= float(row["p_upsell"]) <= 1.0
'''

_DOCKERFILE = '''# The streaminfer image brings Python, torch and streaminfer; add your app on top.
FROM streaminfer:latest
WORKDIR /app
COPY --chown=streaminfer:streaminfer . /app
CMD ["streaminfer", "worker", "--app", "{module}:app"]
'''

_README = '''# {name}

A streaminfer app made by `streaminfer init`.

- `{module}.py`: the app (input schema, features, model, outputs, learning)
- `models.py`: the PyTorch model
- `event.avsc`, `label.avsc`: the records on the input and label topics
- `tests/test_app.py`: publishes events and labels, runs the worker, reads Redis

```sh
streaminfer dev up                       # local Kafka + Redis
streaminfer worker --app {module}:app    # serve; predictions in Redis pred:{name}:<customer>
python -m pytest -q                      # the test, against the same services
```
'''


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", help="App name (Redis keys, consumer group) [default: the folder's name].")
@click.option("--force", is_flag=True, help="Write into a folder that is not empty.")
def init(directory: Path, name: str | None, force: bool) -> None:
    """Write a small, working app project into DIRECTORY.

    \b
    It has an app module, a PyTorch model, Avro schemas, a Dockerfile built FROM the
    streaminfer image, and a test that runs the app against the local Kafka and Redis.
    """
    name = name or directory.resolve().name
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
        raise click.BadParameter(f"{name!r}: use letters, digits and '_' (it names a Python "
                                 "module)", param_hint="--name")
    if directory.exists() and any(directory.iterdir()) and not force:
        raise click.ClickException(f"{directory} is not empty (use --force to write anyway)")
    module = name.lower()
    values = {"name": name, "module": module, "env": name.upper(), "env_lower": module}
    files = {
        f"{module}.py": _APP, "models.py": _MODELS, "event.avsc": _EVENT, "label.avsc": _LABEL,
        "tests/test_app.py": _TEST, "Dockerfile": _DOCKERFILE, "README.md": _README,
        "pytest.ini": "[pytest]\npythonpath = .\ntestpaths = tests\n",
    }
    for relative, template in files.items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
        click.echo(f"  wrote {path}")
    click.echo(f"next: cd {directory} && streaminfer worker --app {module}:app")
