"""Apply sparse-row gradients to embedding tables in place, with numpy on CPU.

An online step touches a few dozen rows; torch's sparse optimiser path costs ~0.1 ms per
table in per-op overhead (coalesce, sparse_mask, sparse tensors), several times the
arithmetic. Where the rule is simple (SGD, Adagrad) and the tables live in CPU memory, the
same update on numpy views of the tables and the optimiser's state costs a fraction of that,
which makes small steps (hence many steps per micro-batch) affordable. The result equals
``torch.optim.Adagrad`` / ``SGD`` on the sparse gradients to float rounding; other optimisers
and devices keep torch's path (``sparse_apply`` returns ``None`` for them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

__all__ = ["Apply", "sparse_apply"]

#: torch.optim.Adagrad's default ``eps``
_ADAGRAD_EPS = 1e-10

Apply = Callable[[np.ndarray, Sequence[np.ndarray]], None]


def sparse_apply(optimizer: torch.optim.Optimizer, weights: Sequence[torch.nn.Parameter]
                 ) -> Apply | None:
    """``apply(rows, grads)``: one step of ``optimizer`` on ``weights`` (tables indexed by the
    same rows), ``grads[k]`` holding one gradient row per entry of ``rows`` for ``weights[k]``
    (rows may repeat: their gradients add up, as in a sparse gradient); ``None`` where only
    torch can do it (another optimiser, a device, momentum, decay)."""
    groups = [next((g for g in optimizer.param_groups if any(p is w for p in g["params"])),
                   None) for w in weights]
    group = groups[0]
    if (group is None or any(g is not group for g in groups)
            or any(w.device.type != "cpu" or w.dtype != torch.float32 for w in weights)):
        return None
    lr = float(group["lr"])
    tables = [w.detach().numpy() for w in weights]
    if isinstance(optimizer, torch.optim.Adagrad):
        if (group["lr_decay"] or group["weight_decay"] or group["eps"] != _ADAGRAD_EPS
                or group.get("maximize")):
            return None
        sums = [optimizer.state[w]["sum"].numpy() for w in weights]

        def adagrad(rows: np.ndarray, grads: Sequence[np.ndarray]) -> None:
            index, summed = _coalesce(rows, grads)
            for table, total, g in zip(tables, sums, summed, strict=True):
                acc = total[index] + g * g
                total[index] = acc
                np.sqrt(acc, out=acc)
                acc += _ADAGRAD_EPS
                table[index] -= lr * g / acc

        return adagrad
    if isinstance(optimizer, torch.optim.SGD):
        if group["momentum"] or group["weight_decay"] or group.get("maximize"):
            return None

        def sgd(rows: np.ndarray, grads: Sequence[np.ndarray]) -> None:
            for table, g in zip(tables, grads, strict=True):
                np.subtract.at(table, rows, lr * g)

        return sgd
    return None


def _coalesce(rows: np.ndarray, grads: Sequence[np.ndarray]
              ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each row once (sorted), with the sum of its gradients in each of ``grads``."""
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    first = np.empty(len(rows), bool)
    first[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    if first.all():
        return ordered, [g[order] for g in grads]
    starts = np.flatnonzero(first)
    return ordered[starts], [np.add.reduceat(g[order], starts, axis=0) for g in grads]
