"""An app's part of the hot path: decode a batch, make features, score it, shape the outputs.

The pipeline knows only :class:`Handler`'s three calls, and :class:`AppHandler` makes them out
of any :class:`~streaminfer.streams.app.App`, so the pipeline never asks which app it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from confluent_kafka import Message

from streaminfer.connectors.prediction import Predictions, Recommendations
from streaminfer.connectors.redis_sink import latest_index
from streaminfer.errors import ConfigError
from streaminfer.models.base import Model
from streaminfer.streams.app import Learning, Outputs
from streaminfer.streams.batch import Batch, Rejected
from streaminfer.streams.candidates import Candidates
from streaminfer.streams.decode import InvalidRows, RecordDecoder
from streaminfer.streams.learning import labels_of

__all__ = ["AppHandler", "Handler", "Outputs", "Written"]

log = logging.getLogger(__name__)


@dataclass
class Written:
    """What one batch writes: predictions for Redis and the topic, optional top-N lists, and
    a shadow version's predictions (recorded in Redis, never served)."""

    predictions: Predictions
    recommendations: Recommendations | None = None
    shadow: Predictions | None = None


class Handler(Protocol):
    model: Model

    def decode(self, messages: Sequence[Message]) -> tuple[Batch, list[Rejected]]: ...
    def score(self, batch: Batch) -> np.ndarray: ...
    def outputs(self, batch: Batch, scores: np.ndarray, processed_ts: int) -> Written: ...


@dataclass
class AppHandler:
    """Decode with the app's input schema, featurise, score with its model.

    A feature function that fails on some rows costs those rows only: rows it names
    (:class:`~streaminfer.streams.decode.InvalidRows`) or, for any other error, rows that
    fail on their own go to the dead-letter topic; the rest of the batch is scored.
    """

    model: Model
    decoder: RecordDecoder
    features: Callable[[dict[str, Any]], Any] | None
    outputs_spec: Outputs
    #: learning from a label column of the input: rows without a usable label are rejected
    #: before they are scored
    inline_labels: Learning | None = None
    #: ``--quantize int8``: scores come from this int8 copy of ``model`` (``models.quantize``)
    int8: Any = None
    #: the features of the last scored batch: a hot swap validates a new version on them
    recent: Any = None
    #: the version served before the last hot swap, kept warm: the first fallback while the
    #: model's circuit breaker is open (``streams.guard``)
    previous: Any = None
    #: shadow and canary versions beside the model, and a served ensemble
    #: (``streams.candidates``, ``streams.ensemble``)
    candidates: Candidates | None = None
    #: ``ens(v3,v5)`` while the last batch was scored by the ensemble
    ensemble_stamp: str | None = None

    def decode(self, messages: Sequence[Message]) -> tuple[Batch, list[Rejected]]:
        batch, rejected = self.decoder.decode(messages)
        if len(batch) and self.inline_labels is not None:
            batch, _ = labels_of(batch, self.inline_labels, rejected)
        if len(batch):
            batch = self._featurize(batch, rejected)
        return batch, rejected

    def _featurize(self, batch: Batch, rejected: list[Rejected]) -> Batch:
        if self.features is None:
            batch.features = batch.columns
            return batch
        try:
            x = self.features(batch.columns)
        except InvalidRows as exc:
            for row, reason in sorted(exc.reasons.items()):
                rejected.append(Rejected(batch.messages[row], f"field {exc.field!r}: {reason}",
                                         "validation"))
            keep = [i for i in range(len(batch)) if i not in exc.reasons]
            return self._featurize(batch.take(keep), rejected) if keep else Batch.empty()
        except ConfigError:
            raise
        except Exception as exc:
            log.warning("feature function failed on a batch of %d (%r); finding the rows",
                        len(batch), exc)
            return self._featurize_rows(batch, rejected)
        batch.features = x
        return _drop_non_finite(batch, rejected)

    def _featurize_rows(self, batch: Batch, rejected: list[Rejected]) -> Batch:
        assert self.features is not None
        keep = []
        for i in range(len(batch)):
            try:
                self.features(batch.take([i]).columns)
            except Exception as exc:
                rejected.append(Rejected(batch.messages[i], f"features: {exc!r}", "validation"))
            else:
                keep.append(i)
        if not keep:
            return Batch.empty()
        batch = batch.take(keep)
        batch.features = self.features(batch.columns)
        return _drop_non_finite(batch, rejected)

    def score(self, batch: Batch) -> np.ndarray:
        self.recent = batch.features
        ensemble = (self.candidates.score_ensemble(batch.features, len(batch))
                    if self.candidates is not None else None)
        if ensemble is not None:
            self.ensemble_stamp, scores = ensemble
            return scores
        self.ensemble_stamp = None
        serving = self.int8.current() if self.int8 is not None else self.model
        return _numpy(serving.predict(batch.features))

    def serving_version(self) -> str:
        """What scored the last batch: the ensemble (``ens(v3,v5)``), the model's version, or
        its int8 copy's (which trails the fp32 master by at most the refresh interval)."""
        if self.ensemble_stamp is not None:
            return self.ensemble_stamp
        return str(self.int8.copy.version if self.int8 is not None else self.model.version)

    def outputs(self, batch: Batch, scores: np.ndarray, processed_ts: int) -> Written:
        names = self.outputs_spec.names
        if not len(batch):  # e.g. a batch of labels only
            columns: dict[str, list[float]] = {name: [] for name in names}
        elif scores.ndim == 1:
            if len(names) != 1:
                raise ConfigError(f"the model returned one output per row but the app "
                                  f"declares {len(names)}: {list(names)}")
            columns = {names[0]: scores.tolist()}
        else:
            if scores.shape[1] != len(names):
                raise ConfigError(f"the model returned {scores.shape[1]} outputs per row but "
                                  f"the app declares {len(names)}: {list(names)}")
            columns = {name: scores[:, j].tolist() for j, name in enumerate(names)}
        out = Written(Predictions(batch.event_ids, batch.keys, columns, batch.ts.tolist(),
                                  processed_ts, self.model.name, self.serving_version(),
                                  digits=9 if scores.dtype == np.float32 else None))
        if self.outputs_spec.top_n:
            out.recommendations = self._top_n(batch, processed_ts)
        return out

    def _top_n(self, batch: Batch, processed_ts: int) -> Recommendations:
        """Each key's best items, once per key of the batch (for its newest event)."""
        ts = batch.ts.tolist()
        keep = latest_index(batch.keys, ts, batch.event_ids)
        users = [batch.keys[i] for i in keep]
        items, scores, counts = self.model.top_n_arrays(users, self.outputs_spec.top_n)  # type: ignore[attr-defined]
        return Recommendations(users, items, scores, counts, [batch.event_ids[i] for i in keep],
                               [ts[i] for i in keep], processed_ts, str(self.model.version))


def _numpy(scores: Any) -> np.ndarray:
    if isinstance(scores, torch.Tensor):
        return scores.detach().cpu().numpy()
    return np.asarray(scores, np.float32)


def _drop_non_finite(batch: Batch, rejected: list[Rejected]) -> Batch:
    x = batch.features
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        return batch
    finite = np.isfinite(x).all(axis=1) if x.ndim == 2 else np.isfinite(x)
    if finite.all():
        return batch
    for i in np.flatnonzero(~finite).tolist():
        rejected.append(Rejected(batch.messages[i], "field 'features': NaN or infinite value",
                                 "validation"))
    return batch.take(np.flatnonzero(finite).tolist())
