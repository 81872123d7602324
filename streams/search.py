"""Online hyperparameter search: K candidate learners beside the active version.

``streaminfer model search APP --grid 'lr=0.01,0.05,0.1;l2=0,1e-4'`` writes a search to Redis
(``search:{app}``). Each worker of the app, on its registry poll, starts one learner per point
of the grid from the active version's weights (``streams.candidates``, role ``search``): each
scores every labelled chunk before learning from it (progressive validation, on exactly the
labels the active version is scored on), then takes its own steps with its own settings.

Every poll a worker writes its learners' metrics state to the leaderboard hash
``search:{app}:board`` (one field per worker; a restarted worker adds its own field and the
old one still counts), so the merged leaderboard survives restarts. With ``promote`` on, once
the best candidate has ``min_labels`` labels over all workers and beats the active version
over those same labels by ``margin`` on the primary metric, the first worker to claim it
(``SET NX``) registers its copy of the winner as a new version (its hyperparameters in the
manifest's metrics) and promotes it; the search then ends.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from streaminfer.connectors.redis_client import RedisClient
from streaminfer.errors import ConfigError
from streaminfer.models.base import Model
from streaminfer.models.progressive import metrics_from_state
from streaminfer.models.registry import ModelRegistry, model_class
from streaminfer.streams.auto_guard import PRIMARY
from streaminfer.streams.candidates import Candidate, Candidates

__all__ = ["MAX_CANDIDATES", "SEARCHABLE", "LiveSearch", "leaderboard", "parse_grid",
           "start_search"]

log = logging.getLogger(__name__)

MAX_CANDIDATES = 8
#: settings a search may vary (each a model-building setting of the built-in apps)
SEARCHABLE = {"lr": float, "l2": float, "optimizer": str}


def parse_grid(text: str) -> list[dict[str, Any]]:
    """``'lr=0.01,0.05;l2=0,1e-4'`` -> the grid's points, in order."""
    axes: list[tuple[str, list[Any]]] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition("=")
        name = name.strip()
        if name not in SEARCHABLE or not values:
            raise ConfigError(f"grid axis {part!r}: expected NAME=V1,V2,... with NAME one of "
                              f"{sorted(SEARCHABLE)}")
        try:
            axes.append((name, [SEARCHABLE[name](v.strip()) for v in values.split(",")]))
        except ValueError as exc:
            raise ConfigError(f"grid axis {name!r}: {exc}") from None
    points = [dict(zip([n for n, _ in axes], combo, strict=True))
              for combo in itertools.product(*(vs for _, vs in axes))]
    if not points or len(points) > MAX_CANDIDATES:
        raise ConfigError(f"a search runs 1 to {MAX_CANDIDATES} candidates; the grid {text!r} "
                          f"has {len(points)}")
    return points


def _params(point: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in point.items())


def start_search(client: RedisClient, app: str, grid: str, *, min_labels: int = 2000,
                 margin: float = 0.01, promote: bool = True) -> dict[str, Any]:
    """Write a new search for ``app``'s workers (replacing any running one)."""
    spec = {"id": uuid.uuid4().hex[:8], "points": parse_grid(grid), "min_labels": min_labels,
            "margin": margin, "promote": promote, "started": time.time()}
    client.set(f"search:{app}", json.dumps(spec))
    client.delete(f"search:{app}:board")
    return spec


def leaderboard(client: RedisClient, app: str) -> dict[str, Any]:
    """The search, and its candidates ranked best first over every worker's labels:
    ``{"search": spec, "rows": [{"params", "count", metric..., "active": {...}}]}``."""
    raw = client.get(f"search:{app}")
    if raw is None:
        return {"search": None, "rows": []}
    spec = json.loads(raw)
    merged: dict[str, dict[str, Any]] = {}
    for value in client.hvals(f"search:{app}:board"):
        board = json.loads(value)
        if board.get("id") != spec["id"]:
            continue
        spec.setdefault("kind", board.get("kind"))
        for params, states in board["candidates"].items():
            row = merged.setdefault(params, {})
            for which in ("mine", "active"):
                metrics = metrics_from_state(states[which])
                row[which] = row[which].merge(metrics) if which in row else metrics
    kind = spec.get("kind") or "classifier"
    metric, higher = PRIMARY[kind]
    rows = [{"params": params, **row["mine"].snapshot(),
             "active": row["active"].snapshot()} for params, row in merged.items()]
    # best first; a metric not known yet (NaN: one class seen so far) ranks last
    rows.sort(key=lambda r: (r[metric] == r[metric],
                             (r[metric] if higher else -r[metric]) if r[metric] == r[metric]
                             else 0.0), reverse=True)
    return {"search": spec, "metric": metric, "rows": rows}


@dataclass
class LiveSearch:
    """A worker's part of the search: follows ``search:{app}``, runs its learners, publishes
    their metrics, and promotes the winner when the search says so."""

    app: str
    client: RedisClient
    registry: ModelRegistry | None
    #: the app's model built with some settings changed (``{"lr": 0.05}``)
    build: Callable[[dict[str, Any]], Model]
    worker_id: str
    metrics_kind: str
    running: str | None = None
    promoted: list[int] = field(default_factory=list)

    def check(self, candidates: Candidates, lock: threading.Lock, active: Model) -> None:
        """One poll: start, stop, publish and maybe promote."""
        raw = self.client.get(f"search:{self.app}")
        spec = json.loads(raw) if raw is not None else None
        if spec is None or spec.get("done"):
            if self.running is not None:
                with lock:
                    candidates.search = []
                self.running = None
                log.info("search of %s ended", self.app)
            return
        if spec["id"] != self.running:
            self._start(spec, candidates, lock, active)
        self._publish(spec, candidates, lock)
        if spec.get("promote"):
            self._maybe_promote(spec, candidates, lock)

    def _start(self, spec: dict[str, Any], candidates: Candidates, lock: threading.Lock,
               active: Model) -> None:
        number = int(active.version.base.lstrip("v") or 0)
        learners = []
        for point in spec["points"]:
            model = self.build(point)
            if self.registry is not None and self.registry.active(self.app) == number:
                self.registry.load_into(model, self.app, number)
            else:  # not from the registry: start from the serving weights
                with lock:
                    model.load_state_dict(active.state_dict())
            learners.append(Candidate("search", number, model, params=_params(point)))
        with lock:
            candidates.search = learners
        self.running = spec["id"]
        log.info("search %s of %s: %d candidate learners (%s)", spec["id"], self.app,
                 len(learners), "; ".join(c.params for c in learners))

    def _publish(self, spec: dict[str, Any], candidates: Candidates,
                 lock: threading.Lock) -> None:
        with lock:  # copies only: the (compressed) states are made off the lanes' lock
            copies = {c.params: (copy.deepcopy(c.metrics), copy.deepcopy(c.baseline))
                      for c in candidates.search
                      if c.metrics is not None and c.baseline is not None}
        states = {params: {"mine": mine.state(), "active": active.state()}
                  for params, (mine, active) in copies.items()}
        board = {"id": spec["id"], "kind": self.metrics_kind, "candidates": states,
                 "at": time.time()}
        self.client.hset(f"search:{self.app}:board", self.worker_id, json.dumps(board))

    def _maybe_promote(self, spec: dict[str, Any], candidates: Candidates,
                       lock: threading.Lock) -> None:
        if self.registry is None:
            return
        board = leaderboard(self.client, self.app)
        if not board["rows"]:
            return
        best, metric = board["rows"][0], board["metric"]
        _, higher = PRIMARY[self.metrics_kind]
        gain = (best[metric] - best["active"][metric]) * (1 if higher else -1)
        if best["count"] < spec["min_labels"] or not gain >= spec["margin"]:
            return
        mine = next((c for c in candidates.search if c.params == best["params"]), None)
        if mine is None or not self.client.set(f"search:{self.app}:{spec['id']}:claimed",
                                               self.worker_id, nx=True, ex=3600):
            return
        with lock:
            tensors = {k: v.detach().clone() for k, v in mine.model.state_dict().items()}
        version = self.registry.register_tensors(
            self.app, tensors, model_class=model_class(mine.model), model_name=mine.model.name,
            config=mine.model.config(), parent=mine.number, source=f"search {spec['id']}",
            metrics={"search": spec["id"], "params": best["params"], metric: best[metric],
                     "labels": best["count"]})
        self.registry.promote(self.app, version)
        self.promoted.append(version)
        self.client.set(f"search:{self.app}", json.dumps({**spec, "done": True,
                                                          "promoted": version,
                                                          "winner": best["params"]}))
        log.warning("search %s of %s: %s wins (%s %.4f against %.4f of the active version "
                    "over %d labels): registered and promoted as v%d", spec["id"], self.app,
                    best["params"], metric, best[metric], best["active"][metric],
                    best["count"], version)
