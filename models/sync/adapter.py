"""Which tensors of a model are shared between workers, and how each kind merges.

Why an adapter here rather than a method on :class:`models.base.Model`: the sync is one
consumer of this knowledge and the model surface stays the same small one for the stream code.
Tensors are looked up afresh on every call (``load_state_dict`` may replace a buffer object).

Three kinds:

* ``dense``: parameters, merged by the sync's aggregate (sum or mean of deltas).
* ``stats``: additive sufficient statistics (standardizer count/sum/sumsq, rating sum/count),
  always summed whatever the aggregate, so the merged statistics are those of all the data.
* ``tables``: embedding tables keyed by a vocabulary. Workers grow their vocabularies in the
  order they meet ids, so one id has different rows on different workers: deltas carry ids,
  not rows, and an id enters the shared state from a *canonical* initial value derived from
  the id alone (see :func:`canonical_rows`), identical on every worker.

Per-key state (recommender user tables, optimiser moments, seen pairs) is not shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streaminfer.models.base import Model
from streaminfer.models.classifier import OnlineClassifier
from streaminfer.models.recommender import MatrixFactorization, canonical_rows
from streaminfer.models.vocab import Vocabulary

__all__ = ["SharedState", "Table", "canonical_rows", "shared_state", "shared_tensors"]


@dataclass(frozen=True, slots=True)
class Table:
    """A live embedding table whose rows belong to the ids of ``vocab``."""

    weight: torch.Tensor
    vocab: Vocabulary
    init_std: float  # rows start as N(0, init_std); 0 means zeros

    def ids_of(self, rows: torch.Tensor) -> list[str]:
        return [self.vocab.id_of(r) for r in rows.tolist()]


@dataclass(frozen=True, slots=True)
class SharedState:
    """The live tensors a sync reads and modifies in place."""

    dense: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor]
    tables: dict[str, Table]

    @property
    def empty(self) -> bool:
        return not (self.dense or self.stats or self.tables)


def shared_state(model: Model) -> SharedState:
    """The shared tensors of ``model``; an unknown model shares nothing."""
    if isinstance(model, OnlineClassifier):
        dense = {f"body.{k}": p.data for k, p in model.net.body.named_parameters()}
        scaler = model.net.scaler
        stats = {f"scaler.{k}": getattr(scaler, k) for k in ("count", "sum", "sumsq")}
        return SharedState(dense, stats, {})
    if isinstance(model, MatrixFactorization):
        t = model.tables
        stats = {"rating_sum": model._rating_sum, "rating_count": model._rating_count}
        tables = {
            "item_emb": Table(t["item_emb"].weight.data, model.items, model.init_std),
            "item_bias": Table(t["item_bias"].weight.data, model.items, 0.0),
        }
        return SharedState({}, stats, tables)
    return SharedState({}, {}, {})


def shared_tensors(model: Model) -> dict[str, torch.Tensor]:
    """Every shared live tensor by name (tables whole), e.g. to compare two replicas."""
    state = shared_state(model)
    return {
        **state.dense,
        **state.stats,
        **{name: table.weight for name, table in state.tables.items()},
    }


