"""Hot swap: a worker follows its app's ``active`` label in the model registry.

The protocol (docs/lifecycle.md):

1. A watcher thread reads the app's labels every ``registry_poll_s`` (1 s).
2. When ``active`` names another version, the thread builds the app's model, loads the
   version into it (the registry checks the sha256, the model class and every tensor's shape),
   and scores the last batch the lanes saw with it (which also warms it): the outputs must
   have the app's shape and be finite. With ``--quantize int8`` the int8 copy is built here too.
   All of that runs off the hot path; the lanes keep serving the old version meanwhile.
3. It then takes the model lock, which the lanes hold for a batch's scoring and learning, so
   the switch falls between two batches, and points the handler, the learner (and its keyed
   state) and the worker at the new model. The parameter sync is rebuilt on the same log for
   the new version's tag (``models.sync.versioned``): unpublished local deltas of the old
   version are dropped, peers' deltas of another version are never applied. Progressive
   metrics start afresh for the new version; the old version's are kept beside them.
4. A version that fails a check is refused: logged, counted in
   ``streaminfer_model_swaps_total{result="refused"}``, remembered (not retried until the
   label moves again), and the old version keeps serving.
   A version registered by ``model search`` is built with the hyperparameters it won with
   (``lr``, ``l2``, ``optimizer`` from its manifest), so it keeps learning as it did.
5. The same poll follows the ``shadow`` and ``canary`` labels (``streams.candidates``): a
   version they name is loaded and checked the same way, off the hot path, then put beside
   the active one under the lock; a removed label (or one naming the active version) drops
   it at the next batch.
6. It follows the app's ensemble too (``streams.ensemble``): each new member is loaded and
   checked the same way (members already loaded are kept, with what they learnt), and the
   ensemble serves from the next batch. If one member is refused, the whole new ensemble is,
   and what served keeps serving.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from prometheus_client import Counter, Gauge

from streaminfer.errors import StreaminferError
from streaminfer.models.base import Model
from streaminfer.models.progressive import metrics_for
from streaminfer.models.quantize import Int8Serving
from streaminfer.models.registry import ModelRegistry, check_outputs, number_of
from streaminfer.models.sync import OffSync, create_sync
from streaminfer.streams.auto_guard import AutoGuard
from streaminfer.streams.batch import take_rows
from streaminfer.streams.candidates import ROLES, Candidate, Candidates
from streaminfer.streams.ensemble import Ensemble
from streaminfer.streams.search import SEARCHABLE, LiveSearch

__all__ = ["ModelSwap", "SwapTargets"]

log = logging.getLogger(__name__)

SAMPLE_ROWS = 256


@dataclass
class SwapTargets:
    """Everything that holds the serving model; switched together under ``lock``."""

    lock: threading.Lock
    handler: Any
    learner: Any = None
    on_switch: Callable[[Model], None] | None = None
    quantize_refresh_s: float | None = None  # set: serve an int8 copy
    candidates: Candidates | None = None  # set: follow the shadow and canary labels


@dataclass
class ModelSwap:
    """Watches ``registry`` for ``app``'s active label and swaps the serving model."""

    app: str
    registry: ModelRegistry
    build: Callable[[], Model]
    targets: SwapTargets
    outputs: int
    obs_registry: Any = None
    poll_s: float = 1.0
    metrics_kind: str | None = None
    auto_guard: AutoGuard | None = None  # set: promote or drop candidates on their metrics
    search: LiveSearch | None = None  # set: follow ``model search`` (``streams.search``)
    refused: dict[int, str] = field(default_factory=dict)
    swaps: list[dict[str, Any]] = field(default_factory=list)
    by_version: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the registry's ensemble spec last acted on (loaded, dropped or refused)
    _ensemble_spec: dict[str, Any] | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        reg = self.obs_registry
        kw = {"registry": reg} if reg is not None else {"registry": None}
        self._counter = Counter("streaminfer_model_swaps_total",
                                "Model versions loaded from the registry, by result "
                                "(swapped, refused, shadow, canary, ensemble)",
                                ("app", "result"), **kw)
        self._seconds = Gauge("streaminfer_model_swap_seconds",
                              "Last swap: seconds from seeing the label move to serving, and "
                              "the part spent holding the model lock", ("app", "phase"), **kw)

    # -- the version to start with ------------------------------------------------------------
    def tag(self) -> str | None:
        """The sync tag of the active version: ``v7@<time the label moved>``."""
        moves = [h for h in self.registry.history(self.app) if h["label"] == "active"]
        active = self.registry.active(self.app)
        if active is None:
            return None
        at = moves[-1]["at"] if moves else 0.0
        return f"v{active}@{at:.3f}"

    def initial(self, model: Model) -> bool:
        """Load the active version into ``model`` at start (precedence: the registry's
        active label first); ``False`` if there is none or it is refused."""
        active = self.registry.active(self.app)
        if active is None:
            return False
        problem = self._check(model, active, sample=None)
        if problem is not None:
            self._refuse(active, problem)
            return False
        log.info("serving %s v%d from the registry (active label)", self.app, active)
        return True

    # -- watching -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="model-swap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_once()
            except Exception:  # a registry outage must not kill the worker: retry next poll
                log.exception("model registry poll failed; retrying in %.1fs", self.poll_s)

    def current_number(self) -> int | None:
        return number_of(self.targets.handler.model.version.base)

    def check_once(self) -> str | None:
        """One poll: ``"swapped"``, ``"refused"`` or ``None`` (nothing to do) for the active
        label; the shadow and canary labels are followed too."""
        labels, ensemble = self.registry.labels_and_ensemble(self.app)
        result = self._follow_active(labels.get("active"))
        candidates = self.targets.candidates
        if candidates is not None:
            self._follow_candidates(candidates, labels)
            self._follow_ensemble(candidates, ensemble)
            if self.auto_guard is not None and candidates:
                self.auto_guard.check(candidates, self.targets.lock)
            if self.search is not None:
                try:
                    self.search.check(candidates, self.targets.lock, self.targets.handler.model)
                except Exception:  # a search must never stop the watcher or the swaps
                    log.exception("hyperparameter search step failed; retrying next poll")
        return result

    def _follow_candidates(self, candidates: Candidates, labels: dict[str, int]) -> None:
        for role in ROLES:
            want = labels.get(role)
            if want == labels.get("active") or want in self.refused:
                want = None
            have = getattr(candidates, role)
            if (have.number if have is not None else None) == want:
                continue
            if want is None:
                with self.targets.lock:
                    setattr(candidates, role, None)
                log.info("model %s: no %s version any more", self.app, role)
                continue
            candidate = self._candidate(role, want)
            if candidate is None:
                continue
            with self.targets.lock:
                setattr(candidates, role, candidate)
            self._counter.labels(self.app, role).inc()
            log.info("model %s: v%d runs as the %s", self.app, want, role)

    def _candidate(self, role: str, version: int) -> Candidate | None:
        """``version`` loaded and checked off the hot path, or ``None`` (refused)."""
        if version in self.refused:
            return None
        model = self._fresh()
        problem = self._check(model, version, sample=self._sample())
        if problem is not None:
            self._refuse(version, problem)
            return None
        return Candidate(role, version, model)

    def _follow_ensemble(self, candidates: Candidates, spec: dict[str, Any] | None) -> None:
        if spec == self._ensemble_spec:
            return
        self._ensemble_spec = spec  # set first: a refused ensemble is not retried
        if spec is None:
            with self.targets.lock:
                candidates.ensemble = None
            log.info("model %s: no ensemble any more; v%s serves", self.app,
                     self.current_number())
            return
        have = {m.number: m for m in (candidates.ensemble.members
                                      if candidates.ensemble is not None else [])}
        members = []
        for number in spec["members"]:
            try:
                member = have.get(number) or self._candidate("ensemble", number)
            except Exception:
                self._ensemble_spec = None  # e.g. the registry is down: try again next poll
                raise
            if member is None:
                log.error("model %s: ensemble %s refused (v%d); what served keeps serving",
                          self.app, spec["members"], number)
                return
            members.append(member)
        ensemble = Ensemble(members, spec.get("weights", "learnt"),
                            float(spec.get("eta", 0.05)), self.metrics_kind)
        with self.targets.lock:
            candidates.ensemble = ensemble
        self._counter.labels(self.app, "ensemble").inc()
        log.info("model %s: the ensemble %s serves (%s weights)", self.app, ensemble.stamp(),
                 ensemble.weighting)

    def _follow_active(self, active: int | None) -> str | None:
        if active is None or active == self.current_number() or active in self.refused:
            return None
        seen = time.perf_counter()
        model = self._fresh(self._won_with(active))
        problem = self._check(model, active, sample=self._sample())
        if problem is not None:
            self._refuse(active, problem)
            return "refused"
        int8 = (Int8Serving(model, self.targets.quantize_refresh_s)
                if self.targets.quantize_refresh_s is not None else None)
        tag = self.tag() or model.version.base
        held = self._switch(model, int8, tag)
        total = time.perf_counter() - seen
        self._counter.labels(self.app, "swapped").inc()
        self._seconds.labels(self.app, "total").set(total)
        self._seconds.labels(self.app, "locked").set(held)
        self.swaps.append({"version": active, "at": time.time(), "load_s": total - held,
                           "locked_s": held})
        log.info("model %s: now serving v%d (loaded and validated in %.0f ms, switched in "
                 "%.2f ms)", self.app, active, (total - held) * 1000, held * 1000)
        return "swapped"

    # -- steps ----------------------------------------------------------------------------------
    def _won_with(self, version: int) -> dict[str, Any]:
        """The hyperparameters a search winner learnt with (``{}`` for other versions): a
        worker serving it keeps learning with them, not with its own ``--lr``."""
        if self.search is None:
            return {}
        try:
            manifest = self.registry.manifest(self.app, version)
        except StreaminferError:
            return {}  # _check reports a missing or broken version
        if not str(manifest.get("source", "")).startswith("search"):
            return {}
        config = manifest.get("config") or {}
        return {k: config[k] for k in SEARCHABLE if k in config}

    def _fresh(self, hyperparameters: dict[str, Any] | None = None) -> Model:
        if hyperparameters and self.search is not None:
            model = self.search.build(hyperparameters)
        else:
            model = self.build()
        current = self.targets.handler.model
        inner = getattr(current, "module", None)
        if inner is not None and getattr(model, "module", None) is inner:
            # an app declared with an nn.Module instance rebuilds around that same instance:
            # copy it (under the lock) so loading never touches the serving weights
            with self.targets.lock:
                model = copy.deepcopy(current)
        return model

    def _sample(self) -> Any:
        recent = self.targets.handler.recent
        if recent is None:
            return None
        if isinstance(recent, np.ndarray | torch.Tensor):
            return recent[:SAMPLE_ROWS]
        try:
            return take_rows(recent, range(min(SAMPLE_ROWS, _rows(recent))))
        except Exception:
            return recent

    def _check(self, model: Model, version: int, sample: Any) -> str | None:
        try:
            self.registry.load_into(model, self.app, version)
        except StreaminferError as exc:
            return str(exc)
        if sample is None:
            return None
        try:
            with torch.no_grad():
                scores = model.predict(sample)
        except Exception as exc:
            return f"v{version} fails on recent inputs: {exc!r}"
        scores = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(scores)
        problem = check_outputs(scores, _rows(sample), self.outputs)
        return None if problem is None else f"v{version}: {problem}"

    def _refuse(self, version: int, problem: str) -> None:
        self.refused[version] = problem
        self._counter.labels(self.app, "refused").inc()
        log.error("model %s v%d refused, the current version keeps serving: %s", self.app,
                  version, problem)

    def _switch(self, model: Model, int8: Int8Serving | None, tag: str) -> float:
        targets = self.targets
        learner = targets.learner
        with targets.lock:
            start = time.perf_counter()
            old = targets.handler.model
            targets.handler.previous = old
            targets.handler.model = model
            targets.handler.int8 = int8
            if learner is not None:
                learner.model = model
                state = getattr(learner, "state", None)
                if state is not None:
                    state.model = model
                sync = learner.hooks.sync
                if sync is not None and not isinstance(sync, OffSync):
                    learner.hooks.sync = _rebased(sync, model, tag)
                progressive = learner.hooks.progressive
                if progressive is not None and self.metrics_kind is not None:
                    self.by_version[str(old.version.base)] = progressive.snapshot()
                    learner.hooks.progressive = metrics_for(self.metrics_kind)
            if targets.on_switch is not None:
                targets.on_switch(model)
            return time.perf_counter() - start

    def snapshot(self) -> dict[str, Any]:
        candidates = self.targets.candidates
        return {"serving": str(self.targets.handler.model.version),
                "shadow": _described(candidates.shadow) if candidates else None,
                "canary": _described(candidates.canary) if candidates else None,
                "ensemble": candidates.ensemble.snapshot()
                if candidates is not None and candidates.ensemble is not None else None,
                "swaps": len(self.swaps), "refused": {f"v{k}": v for k, v in
                                                      self.refused.items()},
                "last_swap": self.swaps[-1] if self.swaps else None,
                "metrics_by_version": self.by_version,
                "versions": candidates.snapshot() if candidates is not None else {},
                "auto_guard": self.auto_guard.decisions[-10:] if self.auto_guard else None}


def _described(candidate: Candidate | None) -> str | None:
    return str(candidate.model.version) if candidate is not None else None


def _rows(x: Any) -> int:
    if isinstance(x, dict):
        return len(next(iter(x.values()))) if x else 0
    return len(x)


def _rebased(sync: Any, model: Model, tag: str) -> Any:
    """A new sync of the same mode for ``model`` on the same log, reading ``tag`` only."""
    transport = sync.transport
    if hasattr(transport, "rebase"):
        transport.rebase(tag)
    kwargs: dict[str, Any] = {"transport": transport, "worker_id": sync.worker_id,
                              "every_updates": sync.every_updates,
                              "every_ms": sync.every_s * 1000.0}
    if sync.mode == "sync":
        kwargs.update(round_timeout_ms=sync.timeout_s * 1000.0,
                      aggregate="mean" if sync.mean else "sum")
    return create_sync(sync.mode, model, **kwargs)
