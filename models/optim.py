"""One optimiser factory for every model: ``"sgd" | "adagrad" | "adam"``, a learning rate, L2.

Embedding tables produce sparse gradients so an online step costs O(batch), not O(table).
Not every torch optimiser accepts them, so the factory takes dense and sparse parameters
separately and returns an :class:`OptimizerSet` that steps them together:

- sgd, adagrad: one optimiser with a dense group (``weight_decay=l2``) and a sparse group
  (``weight_decay=0``: torch's weight decay would touch, or refuse, the whole table);
- adam: ``Adam`` for dense parameters plus ``SparseAdam`` for sparse ones.

For sparse parameters the caller adds ``l2`` to its loss over the rows in the batch (the
classic matrix-factorisation regulariser), which keeps the gradient sparse.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

import torch

__all__ = ["OptimizerName", "OptimizerSet", "build_optimizer"]

OptimizerName = Literal["sgd", "adagrad", "adam"]


class OptimizerSet:
    """Several torch optimisers that step as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        # Opt out of torch's sparse invariant checks explicitly: the gradients come from
        # nn.Embedding and are well-formed, and the implicit default warns on every process.
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            for opt in self.optimizers:
                opt.step()

    def __repr__(self) -> str:
        return f"OptimizerSet({[type(o).__name__ for o in self.optimizers]})"


def build_optimizer(
    name: str,
    *,
    dense: Iterable[torch.nn.Parameter] = (),
    sparse: Iterable[torch.nn.Parameter] = (),
    lr: float,
    l2: float = 0.0,
) -> OptimizerSet:
    """Optimiser(s) for ``dense`` (weight decay ``l2``) and ``sparse`` (no decay) parameters."""
    if name not in get_args(OptimizerName):
        raise ValueError(f"optimizer must be one of {list(get_args(OptimizerName))}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    dense_params, sparse_params = list(dense), list(sparse)
    if not dense_params and not sparse_params:
        raise ValueError("build_optimizer needs at least one parameter")

    if name == "adam":
        opts: list[torch.optim.Optimizer] = []
        if dense_params:
            opts.append(torch.optim.Adam(dense_params, lr=lr, weight_decay=l2))
        if sparse_params:
            opts.append(torch.optim.SparseAdam(sparse_params, lr=lr))
        return OptimizerSet(opts)

    groups = []
    if dense_params:
        groups.append({"params": dense_params, "weight_decay": l2})
    if sparse_params:
        groups.append({"params": sparse_params, "weight_decay": 0.0})
    cls = torch.optim.SGD if name == "sgd" else torch.optim.Adagrad
    return OptimizerSet([cls(groups, lr=lr)])
