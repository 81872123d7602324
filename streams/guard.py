"""One lane's circuit breaker around the model, and what a batch gets while it is open.

``ModelGuard.score`` runs a batch's forward pass through the lane's
:class:`~streaminfer.streams.breaker.CircuitBreaker` (error-rate and slow-call thresholds over
a rolling window of batches, a timeout on the pass). When the model fails on a batch, the
batch is split (on the breaker's thread, under the same timeout) to find the records it fails
on alone; those go to the dead-letter topic as before (error type ``model``), and the batch
counts as a good call. When it fails on every part, or times out, or the breaker is open, the
model is the problem, not the records, and each row gets, in order:

1. ``previous``: the model version served before the last hot swap (kept warm by
   ``streams.model_swap``), behind a breaker of its own;
2. ``cached``: the last prediction stored for the row's key in Redis (``pred:{app}:{key}``);
3. ``default``: ``--fallback-defaults`` per output (0.0 where unset).

Every row is still written and its offset committed; the prediction says ``degraded`` and
which ``fallback`` served it, and ``streaminfer_fallbacks_total{kind}`` counts them.

A timed-out forward pass keeps running on the breaker's thread (a thread cannot be killed);
learning steps on the same model may run beside it (torch allows it on CPU; the step sees
the weights as they are).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import redis

from streaminfer.connectors.redis_client import RedisClient
from streaminfer.errors import ModelError
from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.breaker import BreakerOpen, CallTimeout, CircuitBreaker

__all__ = ["CachedPredictions", "ModelFailed", "ModelGuard"]

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class ModelFailed(ModelError):
    """The model failed on every record of a batch: the model is sick, not the records."""


class CachedPredictions:
    """The last stored prediction per key, read with short timeouts (Redis may be the thing
    that is down; then the rows get the default)."""

    def __init__(self, client: RedisClient, app: str, names: Sequence[str]) -> None:
        self.client = client
        self.prefix = f"pred:{app}:"
        self.names = list(names)

    def read(self, keys: Sequence[str]) -> list[list[float] | None]:
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.prefix + key, self.names)
        out: list[list[float] | None] = []
        for values in pipe.execute():
            try:
                out.append([float(v) for v in values])
            except (TypeError, ValueError):  # a missing key or field
                out.append(None)
        return out


class ModelGuard:
    """``score(batch, rejected) -> (batch, scores, fallback kinds or None)`` for one lane."""

    def __init__(self, handler: Any, breaker: CircuitBreaker, *,
                 names: Sequence[str], defaults: Mapping[str, float] | None = None,
                 cached: CachedPredictions | None = None,
                 previous_breaker: CircuitBreaker | None = None,
                 on_fallback: Callable[[str, int], None] | None = None) -> None:
        self.handler = handler
        self.breaker = breaker
        self.names = list(names)
        defaults = defaults or {}
        self.default_row = np.asarray([float(defaults.get(n, 0.0)) for n in self.names],
                                      np.float32)
        self.cached = cached
        self.previous_breaker = previous_breaker or CircuitBreaker(
            timeout_s=breaker.timeout_s, open_for_s=breaker.open_for_s, name="previous")
        self.on_fallback = on_fallback
        self._logged = 0.0

    def score(self, batch: Batch, rejected: list[Rejected]
              ) -> tuple[Batch, np.ndarray, list[str] | None]:
        if not len(batch):
            return batch, np.zeros(0, np.float32), None
        try:
            kept, scores, failed = self.breaker.call(self._isolate, batch)
        except (BreakerOpen, CallTimeout) as exc:
            self._note(f"model not called: {exc}")
            return (batch, *self._fallback(batch))
        except ModelFailed as exc:
            self._note(str(exc))
            return (batch, *self._fallback(batch))
        for i, exc in failed:
            msg = batch.messages[i]
            log.warning("model failed on one record (to the dead-letter topic): %r", exc,
                        extra={"topic": msg.topic(), "partition": msg.partition(),
                               "offset": msg.offset(), "event_id": batch.event_ids[i]})
            rejected.append(Rejected(msg, f"model error: {exc!r}", "model"))
        return (batch if kept is None else batch.take(kept)), scores, None

    def _isolate(self, batch: Batch
                 ) -> tuple[list[int] | None, np.ndarray, list[tuple[int, BaseException]]]:
        """The breaker's call: ``(rows kept or None for all, their scores, rows the model
        fails on alone)``. A failing batch is split in halves until its bad records are found;
        if the model fails on every part, it is the model's fault (:class:`ModelFailed`, a
        bad outcome for the breaker), else the batch counts as a good call."""
        try:
            return None, np.asarray(self.handler.score(batch), np.float32), []
        except Exception as exc:
            log.warning("model failed on a batch of %d (%r); splitting it", len(batch), exc)
            first = exc
        scored: dict[int, np.ndarray] = {}
        failed: list[tuple[int, BaseException]] = []
        self._bisect(batch, list(range(len(batch))), scored, failed)
        if not scored:
            raise ModelFailed(f"model failed on each of {len(batch)} record(s): "
                              f"{first!r}") from first
        kept = sorted(scored)
        return kept, np.stack([scored[i] for i in kept]).astype(np.float32), failed

    def _bisect(self, batch: Batch, index: list[int], scored: dict[int, np.ndarray],
                failed: list[tuple[int, BaseException]]) -> None:
        try:
            scores = np.asarray(self.handler.score(batch.take(index)))
        except Exception as exc:
            if len(index) == 1:
                failed.append((index[0], exc))
                return
            half = len(index) // 2
            self._bisect(batch, index[:half], scored, failed)
            self._bisect(batch, index[half:], scored, failed)
            return
        scored.update(zip(index, scores, strict=True))

    # -- fallbacks ------------------------------------------------------------------------
    def _fallback(self, batch: Batch) -> tuple[np.ndarray, list[str]]:
        """Scores for every row of ``batch`` (shaped like the model's) and who gave each."""
        previous = getattr(self.handler, "previous", None)
        if previous is not None:
            try:
                scores = np.asarray(_numpy(self.previous_breaker.call(previous.predict,
                                                                      batch.features)),
                                    np.float32)
                self._count("previous", len(batch))
                return scores, ["previous"] * len(batch)
            except Exception as exc:  # the previous version cannot serve either
                self._note(f"previous model version failed too: {exc!r}")
        rows = np.tile(self.default_row, (len(batch), 1))
        kinds = ["default"] * len(batch)
        if self.cached is not None:
            try:
                stored = self.cached.read(batch.keys)
            except (redis.RedisError, OSError) as exc:
                self._note(f"no cached predictions (Redis: {exc})")
                stored = [None] * len(batch)
            for i, values in enumerate(stored):
                if values is not None:
                    rows[i] = values
                    kinds[i] = "cached"
        for kind in ("cached", "default"):
            n = kinds.count(kind)
            if n:
                self._count(kind, n)
        return (rows[:, 0] if len(self.names) == 1 else rows), kinds

    def _count(self, kind: str, n: int) -> None:
        if self.on_fallback is not None:
            self.on_fallback(kind, n)

    def _note(self, what: str) -> None:
        now = time.monotonic()
        if now - self._logged >= LOG_EVERY_S:
            self._logged = now
            log.warning("serving fallbacks (breaker %s): %s", self.breaker.state, what)


def _numpy(scores: Any) -> Any:
    detach = getattr(scores, "detach", None)
    return detach().cpu().numpy() if detach is not None else scores
