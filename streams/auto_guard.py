"""The automatic guard of a shadow or canary (``--auto-guard``, docs/lifecycle.md).

Each worker judges its own candidates, once per registry poll, on its per-version metrics
(``streams.candidates``): a candidate is compared with the active version over the same
labels only. Two decisions, both moves of registry labels, so every worker follows them:

* **promote**: after ``min_labels`` labels, a candidate whose primary metric (AUC for a
  classifier, RMSE for the recommender, accuracy for a multiclass model) beats the active
  version's by ``margin`` becomes ``active``; its shadow/canary label is removed.
* **rollback**: a canary whose share of failed or non-finite rows passes ``max_error_rate``
  (over at least ``MIN_ROWS`` rows) loses its ``canary`` label; the active version serves
  its keys again at the next batch.

Each decision is logged and counted in ``streaminfer_auto_guard_decisions_total``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from streaminfer.models.registry import ModelRegistry
from streaminfer.streams.candidates import ROLES, Candidate, Candidates

__all__ = ["PRIMARY", "AutoGuard"]

log = logging.getLogger(__name__)

MIN_ROWS = 100
#: metrics kind -> (metric, True when higher is better)
PRIMARY = {"classifier": ("auc", True), "recommender": ("rmse", False),
           "multiclass": ("accuracy", True)}


@dataclass
class AutoGuard:
    """Promotes a candidate that beats the active version; removes a failing canary."""

    app: str
    registry: ModelRegistry
    metrics_kind: str
    min_labels: int = 2000
    margin: float = 0.01
    max_error_rate: float = 0.01
    obs_registry: Any = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._counter = Counter("streaminfer_auto_guard_decisions_total",
                                "Label moves the automatic guard made (promote, rollback)",
                                ("app", "decision", "role"), registry=self.obs_registry)

    def check(self, candidates: Candidates, lock: threading.Lock) -> list[dict[str, Any]]:
        """Judge the current candidates; returns the decisions taken (label moves done)."""
        with lock:
            views = [self._view(c) for c in candidates.current() if c.role in ROLES]
        made = []
        for view in views:
            decision = self._decide(view)
            if decision is None:
                continue
            if self.registry.labels(self.app).get(view["role"]) != view["number"]:
                continue  # another worker (or a person) moved the label meanwhile
            if decision["decision"] == "promote":
                self.registry.promote(self.app, view["number"])
            self.registry.label(self.app, view["role"], None)
            self._counter.labels(self.app, decision["decision"], view["role"]).inc()
            log.warning("auto guard: %s %s v%d of %s: %s", decision["decision"], view["role"],
                        view["number"], self.app, decision["why"])
            made.append(decision)
        self.decisions += made
        return made

    def _view(self, c: Candidate) -> dict[str, Any]:
        """What the decision needs, copied under the model lock."""
        return {"role": c.role, "number": c.number, "rows": c.rows,
                "failed_rows": c.failed_rows,
                "mine": c.metrics.snapshot() if c.metrics is not None else None,
                "active": c.baseline.snapshot() if c.baseline is not None else None,
                "active_base": c.baseline_of}

    def _decide(self, view: dict[str, Any]) -> dict[str, Any] | None:
        tried = view["rows"] + view["failed_rows"]
        if view["role"] == "canary" and tried >= MIN_ROWS:
            rate = view["failed_rows"] / tried
            if rate > self.max_error_rate:
                return self._decision("rollback", view, f"{rate:.1%} of {tried} rows failed "
                                      f"or were not finite (limit {self.max_error_rate:.1%})")
        mine, active = view["mine"], view["active"]
        if mine is None or active is None or mine.get("count", 0) < self.min_labels:
            return None
        metric, higher = PRIMARY[self.metrics_kind]
        a, b = active.get(metric), mine.get(metric)
        if a is None or b is None or a != a or b != b:  # NaN: e.g. one class seen so far
            return None
        gain = (b - a) if higher else (a - b)
        if gain < self.margin:
            return None
        return self._decision("promote", view, f"{metric} {b:.4f} against {a:.4f} of the "
                              f"active {view['active_base']} over the same "
                              f"{int(mine['count'])} labels (margin {self.margin})")

    @staticmethod
    def _decision(kind: str, view: dict[str, Any], why: str) -> dict[str, Any]:
        return {"decision": kind, "role": view["role"], "version": view["number"], "why": why,
                "at": time.time()}
