"""Ensembles: an app serves the mean of several registered versions' scores (docs/lifecycle.md).

The registry names the members (``streaminfer model ensemble APP 3 5``); the model swap's
watcher loads and checks each one like a shadow (``streams.model_swap``) and puts the
ensemble beside the active version. Every member then scores each batch (one forward pass per
member) and the served score is their weighted mean, stamped ``ens(v3,v5)``.

Why learnt weights: a fixed mean lets a member that went stale drag the served score down.
With ``learnt`` weights (Hedge, exponentially weighted averaging) each member's weight is
``exp(-eta * L_i)``, normalised, where ``L_i`` is its progressive (test-then-train) loss on
the same labels, summed and discounted by ``DECAY`` per label, so a lead earned long ago
fades when the stream drifts. The loss is the one behind the app's progressive metrics
(``models.progressive.row_losses``: log-loss, squared error, or 0/1 for classes). ``equal``
weights are the plain mean; so are ``learnt`` ones of an app without progressive metrics.

Members are candidates (role ``ensemble``): they learn from the labels like a shadow, and
their per-version metrics sit beside the active version's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from streaminfer.models.progressive import row_losses

if TYPE_CHECKING:
    from streaminfer.streams.candidates import Candidate

__all__ = ["DECAY", "Ensemble"]

#: per label: a loss 1,000 labels old counts for about a third of a new one
DECAY = 0.999


@dataclass
class Ensemble:
    """The member versions of a served ensemble and their online weights."""

    members: list[Candidate]
    weighting: str = "learnt"
    eta: float = 0.05
    #: progressive metrics kind (``classifier``...): picks the loss the weights learn from
    kind: str | None = None
    #: per member: discounted sum of its losses; labels: how many it was judged on
    loss: np.ndarray = field(init=False)
    labels: int = 0

    def __post_init__(self) -> None:
        self.loss = np.zeros(len(self.members))

    @property
    def numbers(self) -> list[int]:
        return [m.number for m in self.members]

    def stamp(self, members: Sequence[Candidate] | None = None) -> str:
        """``ens(v3,v5)``: what ``model_version`` says of a row the ensemble served."""
        return "ens(" + ",".join(m.base for m in members or self.members) + ")"

    def weights(self, members: Sequence[Candidate] | None = None) -> np.ndarray:
        """Normalised weights of ``members`` (default all), in their order."""
        chosen = members or self.members
        index = [i for m in chosen for i, x in enumerate(self.members) if x is m]
        if self.weighting == "equal":
            return np.full(len(index), 1.0 / len(index))
        loss = self.loss[index]
        w = np.exp(-self.eta * (loss - loss.min()))
        return w / w.sum()

    def mean(self, scores: Sequence[np.ndarray], members: Sequence[Candidate] | None = None
             ) -> np.ndarray:
        """The weighted mean of ``members``' scores (rows by outputs, any shape)."""
        w = self.weights(members)
        out = np.tensordot(w, np.stack([np.asarray(s, np.float64) for s in scores]), axes=1)
        return out.astype(np.asarray(scores[0]).dtype)

    def observe(self, served: Sequence[np.ndarray], y: np.ndarray) -> None:
        """Every member's served values on the same labelled rows: the weights' step."""
        if self.kind is None:  # nothing to learn from: the weights stay equal
            return
        chunk = np.asarray([row_losses(self.kind, s, y).sum() for s in served])
        self.loss = self.loss * DECAY ** len(y) + chunk
        self.labels += len(y)

    def snapshot(self) -> dict[str, Any]:
        return {"stamp": self.stamp(), "weighting": self.weighting, "eta": self.eta,
                "labels": self.labels,
                "weights": {m.base: round(float(w), 6)
                            for m, w in zip(self.members, self.weights(), strict=True)}}
