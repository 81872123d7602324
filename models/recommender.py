"""Streaming matrix factorisation: ``rating = mu + b_u + b_i + <p_u, q_i>``.

Embedding and bias tables are preallocated to a capacity and produce sparse gradients, so a
``learn`` step touches only the rows in its batch (O(batch), not O(table)). ``mu`` is the
running mean of all ratings seen, kept as a buffer rather than learned. String ids map to
rows through a :class:`~models.vocab.Vocabulary` (grow on first sight, then hash), which is
part of the saved state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from streaminfer.models._inputs import as_targets
from streaminfer.models._seed import seeded
from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.device import Runner
from streaminfer.models.optim import build_optimizer
from streaminfer.models.seen_items import SeenItems
from streaminfer.models.sparse_rows import Apply, sparse_apply
from streaminfer.models.vocab import Vocabulary

#: Scores per matmul in ``top_n_many`` (64 MB of float32): bounds the (users x items) score
#: matrix while ranking all of a batch's users in one matmul for catalogues up to ~100k items.
_TOP_N_SCORES = 1 << 24

__all__ = ["Interactions", "MatrixFactorization", "RowBatch", "UserRows", "canonical_rows"]


@dataclass(frozen=True, slots=True)
class Interactions:
    """(user, item) pairs by their string ids, as they arrive on the stream."""

    users: Sequence[str]
    items: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.users) != len(self.items):
            raise ValueError(
                f"Interactions needs one item per user, got {len(self.users)} users and "
                f"{len(self.items)} items"
            )

    def __len__(self) -> int:
        return len(self.users)

    def take(self, index: Sequence[int]) -> Interactions:
        """The pairs at ``index`` (a batch's rows that survived validation)."""
        return Interactions([self.users[i] for i in index], [self.items[i] for i in index])


@dataclass(frozen=True, slots=True)
class RowBatch:
    """(user, item) pairs as int64 embedding rows; ``-1`` marks an id the model never saw."""

    users: torch.Tensor
    items: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class UserRows:
    """Some users' part of the model, which parameter sync does not share: it moves with the
    partition that owns the user (``streams.user_state``), so it holds all a worker needs to
    serve and keep training those users: embeddings, biases, the optimiser's per-row state
    (e.g. Adagrad's sums, without which the next step would be a full-size first step) and
    the items each user rated, by id (item rows differ between workers). Row ``k`` of every
    tensor belongs to ``ids[k]``; columnar so that exporting a batch's users is one gather.
    """

    ids: list[str]
    emb: torch.Tensor  # (n, num_factors)
    bias: torch.Tensor  # (n, 1)
    seen: list[tuple[str, ...]] = field(default_factory=list)
    optim: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (n, ...)

    def __len__(self) -> int:
        return len(self.ids)


class MatrixFactorization(Model):
    """``predict(pairs) -> rating``; ``learn(pairs, ratings)`` is one regularised MSE step.

    A batch is :class:`Interactions` (string ids; ``learn`` grows the vocabularies, ``predict``
    does not: an unseen id scores with a zero vector and zero bias, i.e. the cold-start
    prediction ``mu + b_i``) or :class:`RowBatch` / a ``(users, items)`` pair of int64 tensors.
    """

    name = "recommender"

    def __init__(
        self,
        *,
        num_factors: int = 16,
        user_capacity: int = 100_000,
        item_capacity: int = 100_000,
        lr: float = 0.1,
        optimizer: str = "adagrad",
        l2: float = 1e-4,
        init_std: float = 0.01,
        seed: int = 0,
        device: str | torch.device = "auto",
        amp: str = "off",
        base_version: str = "v1",
    ) -> None:
        if num_factors < 1:
            raise ValueError(f"num_factors must be >= 1, got {num_factors}")
        self.num_factors, self.init_std = num_factors, init_std
        self.lr, self.optimizer_name, self.l2, self.seed = lr, optimizer, l2, seed
        self.users, self.items = Vocabulary(user_capacity), Vocabulary(item_capacity)
        self.runner = Runner(device, amp)
        self.version = ModelVersion(base_version, 0)
        with seeded(seed):
            tables = nn.ModuleDict(
                {
                    "user_emb": nn.Embedding(user_capacity, num_factors, sparse=True),
                    "item_emb": nn.Embedding(item_capacity, num_factors, sparse=True),
                    "user_bias": nn.Embedding(user_capacity, 1, sparse=True),
                    "item_bias": nn.Embedding(item_capacity, 1, sparse=True),
                }
            )
            nn.init.normal_(tables["user_emb"].weight, std=init_std)
            nn.init.normal_(tables["item_emb"].weight, std=init_std)
            nn.init.zeros_(tables["user_bias"].weight)
            nn.init.zeros_(tables["item_bias"].weight)
        self.tables = tables.to(self.runner.device)
        dev = self.runner.device
        self._rating_sum = torch.zeros((), dtype=torch.float64, device=dev)
        self._rating_count = torch.zeros((), dtype=torch.float64, device=dev)
        self._seen = SeenItems()
        self.optimizer = build_optimizer(optimizer, sparse=self.tables.parameters(), lr=lr, l2=0.0)

    # -- inputs -------------------------------------------------------------------------

    def _start_items(self, rows: range) -> None:
        """A new item's embedding starts from a value of its id alone (``canonical_rows``), so
        every worker that meets it starts alike and parameter sync never has to move it."""
        table = self.tables["item_emb"].weight.data
        ids = [self.items.id_of(r) for r in rows]
        table[rows.start : rows.stop] = canonical_rows(ids, table.shape[1], self.init_std, table)

    def _rows(self, batch: Any, *, grow: bool) -> RowBatch:
        if isinstance(batch, Interactions):
            if grow:
                known = len(self.items)
                rows = RowBatch(self.users.rows(batch.users), self.items.rows(batch.items))
                if len(self.items) > known:
                    self._start_items(range(known, len(self.items)))
                return rows
            return RowBatch(
                _unknown_as_minus_one(self.users.row(u, grow=False) for u in batch.users),
                _unknown_as_minus_one(self.items.row(i, grow=False) for i in batch.items),
            )
        if isinstance(batch, tuple) and len(batch) == 2:
            batch = RowBatch(torch.as_tensor(batch[0]), torch.as_tensor(batch[1]))
        if not isinstance(batch, RowBatch):
            raise ValueError(
                f"{self.name} expects Interactions, RowBatch or (users, items) int64 tensors, "
                f"got {type(batch).__name__}"
            )
        users, items = batch.users.reshape(-1).long().cpu(), batch.items.reshape(-1).long().cpu()
        if users.shape != items.shape:
            raise ValueError(
                f"{self.name} expects as many items as users, got {users.shape[0]} users and "
                f"{items.shape[0]} items"
            )
        for what, rows, cap in (
            ("user", users, self.users.capacity),
            ("item", items, self.items.capacity),
        ):
            if rows.numel() and (int(rows.min()) < -1 or int(rows.max()) >= cap):
                raise ValueError(
                    f"{self.name} expects {what} rows in [-1, {cap}), got values in "
                    f"[{int(rows.min())}, {int(rows.max())}]"
                )
        return RowBatch(users, items)

    # -- the model ----------------------------------------------------------------------

    @property
    def global_mean(self) -> float:
        """Mean of all ratings learned so far (0 before the first)."""
        return float(self._rating_sum / self._rating_count.clamp_min(1.0))

    def _mu(self) -> torch.Tensor:
        return (self._rating_sum / self._rating_count.clamp_min(1.0)).float()

    def _score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Ratings for device rows; rows ``-1`` contribute nothing (cold start)."""
        known_u = (users >= 0).unsqueeze(-1).float()
        known_i = (items >= 0).unsqueeze(-1).float()
        u, i = users.clamp_min(0), items.clamp_min(0)
        t = self.tables
        p, q = t["user_emb"](u) * known_u, t["item_emb"](i) * known_i
        b_u, b_i = t["user_bias"](u) * known_u, t["item_bias"](i) * known_i
        return self._mu() + (b_u + b_i).squeeze(-1) + (p * q).sum(-1)

    def predict(self, batch: Any) -> torch.Tensor:
        rows = self._rows(batch, grow=False)
        return self.runner.infer(self._score, rows.users, rows.items)

    def learn(self, batch: Any, targets: Any) -> float:
        losses = self.learn_steps(batch, targets, 0)
        return losses[0] if losses else 0.0

    def learn_steps(self, batch: Any, targets: Any, size: int) -> list[float]:
        """Optimiser steps on consecutive runs of ``size`` pairs of ``batch`` (0: one step),
        as ``learn`` on each run would take them; returns their losses. What a step does not
        need afresh (checks, ids to rows, the seen items) is done once for the micro-batch."""
        # Check the targets before growing the vocabularies: a refused batch changes nothing.
        n = len(batch) if isinstance(batch, Interactions) else len(self._rows(batch, grow=False))
        y = as_targets(targets, n, self.name, low=float("-inf"), high=float("inf"))
        rows = self._rows(batch, grow=True)
        if n == 0:
            return []
        if bool((rows.users < 0).any() or (rows.items < 0).any()):
            raise ValueError(f"{self.name} cannot learn from unknown rows (-1); pass string ids")
        self._seen.add(rows.users.tolist(), rows.items.tolist())
        size = size if size > 0 else n
        t = self.tables
        weights = [t[name].weight for name in _TABLES]
        fast = self._numpy_steps(weights)
        if fast is not None:  # SGD / Adagrad on CPU: numpy, a fraction of torch's per-op cost
            tables: list[Any] = [w.detach().numpy() for w in weights]
            users, items, y, f64 = rows.users.numpy(), rows.items.numpy(), y.numpy(), np.float64
        else:
            dev = self.runner.device
            tables = [w.detach() for w in weights]
            users, items, y, f64 = rows.users.to(dev), rows.items.to(dev), y.to(dev), torch.float64
        total, count = float(self._rating_sum), float(self._rating_count)
        losses = []
        for lo in range(0, n, size):
            u, i, r = users[lo:lo + size], items[lo:lo + size], y[lo:lo + size]
            total, count = total + float(r.sum(dtype=f64)), count + len(r)
            mu = float(np.float32(total / count))  # the running mean, this step's ratings in
            mse, user_grads, item_grads = _gradients(*tables, u, i, r, mu, self.l2)
            if fast is not None:
                fast[0](u, user_grads)
                fast[1](i, item_grads)
            else:
                self._torch_step(weights, u, i, [*user_grads, *item_grads])
            self._bump()
            losses.append(mse)
        self._rating_sum.fill_(total)
        self._rating_count.fill_(count)
        return losses

    def _numpy_steps(self, weights: list[nn.Parameter]) -> tuple[Apply, Apply] | None:
        """In-place steps of the (user, item) tables' rows, if numpy can take them."""
        if len(self.optimizer.optimizers) != 1:
            return None
        opt = self.optimizer.optimizers[0]
        user, item = sparse_apply(opt, weights[0::2]), sparse_apply(opt, weights[1::2])
        return (user, item) if user is not None and item is not None else None

    def _torch_step(self, weights: list[nn.Parameter], users: torch.Tensor, items: torch.Tensor,
                    grads: list[torch.Tensor]) -> None:
        """The optimiser's step on sparse gradients, one row per rating (as nn.Embedding's
        backward gives them): ``grads`` of the user rows (embedding, bias), then the item
        rows'. Each step replaces all four, so no zero_grad."""
        for weight, index, grad in zip((*weights[0::2], *weights[1::2]),
                                       (users, users, items, items), grads, strict=True):
            weight.grad = torch.sparse_coo_tensor(index.unsqueeze(0), grad, weight.shape,
                                                  check_invariants=False)
        self.optimizer.step()

    def top_n(
        self, user: str, n: int = 10, *, exclude_seen: bool = True
    ) -> list[tuple[str, float]]:
        """The ``n`` best items for ``user`` as ``(item_id, predicted rating)``, best first.

        An unknown user gets the cold-start ranking (``mu + b_i``). ``exclude_seen`` drops
        items the user rated in ``learn``.
        """
        return self.top_n_many([user], n, exclude_seen=exclude_seen)[0]

    def top_n_many(
        self, users: Sequence[str], n: int = 10, *, exclude_seen: bool = True
    ) -> list[list[tuple[str, float]]]:
        """:meth:`top_n` for each of ``users`` (:meth:`top_n_arrays` as lists)."""
        items, scores, counts = self.top_n_arrays(users, n, exclude_seen=exclude_seen)
        return [list(zip(ids[:count], values[:count], strict=True))
                for ids, values, count in zip(items.tolist(), scores.tolist(), counts.tolist(),
                                              strict=True)]

    def top_n_arrays(
        self, users: Sequence[str], n: int = 10, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`top_n` for each of ``users`` as columns: item ids (object) and scores
        (float32), both ``(len(users), k)`` with ``k = min(n, items known)``, best first, and
        how many of row ``i``'s are real (fewer than ``k`` once a user rated nearly every
        item). The worker ranks every user of a batch: one matmul per chunk of users, and no
        Python object per user or item until the sink packs them."""
        if n < 1:
            raise ValueError(f"top_n expects n >= 1, got {n}")
        num_items = len(self.items)
        k = min(n, num_items)
        if k == 0:
            return (np.empty((len(users), 0), object), np.empty((len(users), 0), np.float32),
                    np.zeros(len(users), np.int64))
        chunk = max(1, _TOP_N_SCORES // num_items)
        parts = [self._rank_users(users[lo:lo + chunk], k, num_items, exclude_seen)
                 for lo in range(0, len(users), chunk)]
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]

    def _rank_users(self, users: Sequence[str], k: int, num_items: int, exclude_seen: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = [self.users.row(user, grow=False) for user in users]  # None: unknown user
        # a known row includes a hashed overflow row, which was trained
        masked_users, masked_items, seen_count = self._seen.pairs(
            rows if exclude_seen else [None] * len(rows), num_items)
        user_rows = torch.tensor([row if row is not None else 0 for row in rows], dtype=torch.int64)
        known = torch.tensor([row is not None for row in rows], dtype=torch.float32)
        # the seen cells by their index in the flattened score matrix: index_fill_ on that is
        # ~50x cheaper than indexing with (user, item) pairs
        masked = torch.from_numpy(masked_users * num_items + masked_items)

        def rank(u: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            t = self.tables
            p = t["user_emb"].weight[u] * weight.unsqueeze(-1)
            b_u = t["user_bias"].weight[u, 0] * weight
            q = t["item_emb"].weight[:num_items]
            scores = ((p @ q.T).float() + t["item_bias"].weight[:num_items, 0]
                      + b_u.unsqueeze(-1) + self._mu())
            scores.view(-1).index_fill_(0, mask, float("-inf"))
            values, index = torch.topk(scores, k, dim=1)
            return torch.stack([values, index.float()])

        values, index = self.runner.infer(rank, user_rows, known, masked)
        counts = np.minimum(k, num_items - seen_count)
        return self.items.ids_of(index.long().numpy()), values.numpy(), counts

    # -- per-user state -----------------------------------------------------------------

    def export_users(self, user_ids: Iterable[str]) -> UserRows:
        """The rows of the known users among ``user_ids``, once each (unknown ids left out)."""
        found: dict[str, int] = {}
        for user in user_ids:
            row = self.users.row(user, grow=False)
            if row is not None:
                found[user] = row
        rows = torch.tensor(list(found.values()), dtype=torch.int64, device=self.runner.device)
        t = self.tables
        num_items, id_of = len(self.items), self.items.id_of
        return UserRows(
            ids=list(found),
            emb=t["user_emb"].weight.detach()[rows].cpu(),
            bias=t["user_bias"].weight.detach()[rows].cpu(),
            seen=[tuple(id_of(i) for i in sorted(self._seen.of(row)) if i < num_items)
                  for row in found.values()],
            optim={name: live[rows].cpu() for name, live in self._user_optim_state()},
        )

    def import_users(self, rows: UserRows) -> None:
        """Replace (or add) these users' rows, e.g. those of a partition this worker took over.

        Seen items this model has no row for are left out: ``top_n`` cannot rank them anyway.
        Optimiser state is restored where the optimiser keeps per-row state of that name.
        """
        if not len(rows):
            return
        dev = self.runner.device
        index = self.users.rows(rows.ids).to(dev)
        t = self.tables
        with torch.no_grad():
            for live, value in ((t["user_emb"].weight, rows.emb),
                                (t["user_bias"].weight, rows.bias),
                                *((live, rows.optim[name]) for name, live in
                                  self._user_optim_state() if name in rows.optim)):
                live[index] = value.to(dev, live.dtype)
        for row, seen in zip(index.tolist(), rows.seen, strict=True):
            items = (self.items.row(i, grow=False) for i in seen)
            self._seen.replace(row, (i for i in items if i is not None))

    def export_keys(self, keys: Iterable[str]) -> list[tuple[str, bytes]]:
        """Known users' rows as bytes, one record per user: the keyed state's changelog."""
        from streaminfer.models.user_rows import encode_users

        rows = self.export_users(keys)
        return list(zip(rows.ids, encode_users(rows), strict=True))

    def import_keys(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Inverse of :meth:`export_keys` (a partition's users, after a rebalance)."""
        from streaminfer.models.user_rows import decode_users

        self.import_users(decode_users(records))

    def _user_optim_state(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The optimiser's per-row tensors of the user tables, named ``<table>.<state>``."""
        for table in ("user_emb", "user_bias"):
            weight = self.tables[table].weight
            for opt in self.optimizer.optimizers:
                for key, value in opt.state.get(weight, {}).items():
                    if torch.is_tensor(value) and value.shape == weight.shape:
                        yield f"{table}.{key}", value

    # -- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu() for k, v in self.tables.state_dict().items()}
        pairs = [(u, i) for u, items in self._seen for i in sorted(items)]
        seen = torch.tensor(pairs, dtype=torch.int64).reshape(-1, 2)
        return {
            **{f"tables.{k}": v for k, v in state.items()},
            "rating_sum": self._rating_sum.cpu(),
            "rating_count": self._rating_count.cpu(),
            "vocab.users": self.users.to_tensor(),
            "vocab.items": self.items.to_tensor(),
            "seen": seen,
            **self._version_state(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        tables = {k.removeprefix("tables."): v for k, v in state.items() if k.startswith("tables.")}
        try:
            self.tables.load_state_dict(tables, strict=True)
            dev = self.runner.device
            self._rating_sum = state["rating_sum"].to(dev, torch.float64).clone()
            self._rating_count = state["rating_count"].to(dev, torch.float64).clone()
            self.users.load_tensor(state["vocab.users"])
            self.items.load_tensor(state["vocab.items"])
            seen_pairs = state["seen"].reshape(-1, 2).tolist()
        except (RuntimeError, KeyError) as exc:
            raise ValueError(f"{self.name} state does not fit this model's config: {exc}") from None
        self._seen = SeenItems()
        self._seen.add((u for u, _ in seen_pairs), (i for _, i in seen_pairs))
        self._load_version_state(state)

    def config(self) -> dict[str, Any]:
        return {
            "num_factors": self.num_factors,
            "user_capacity": self.users.capacity,
            "item_capacity": self.items.capacity,
            "lr": self.lr,
            "optimizer": self.optimizer_name,
            "l2": self.l2,
            "init_std": self.init_std,
            "seed": self.seed,
            "amp": self.runner.amp,
            "base_version": self.version.base,
        }

    def manifest_extra(self) -> dict[str, Any]:
        return {"vocab": {"users": self.users.ids, "items": self.items.ids}}

    def __repr__(self) -> str:
        return (
            f"MatrixFactorization(factors={self.num_factors}, users={len(self.users)}/"
            f"{self.users.capacity}, items={len(self.items)}/{self.items.capacity}, "
            f"version={self.version}, {self.runner})"
        )


#: The tables in the order ``_gradients`` takes them: user rows (0, 2) and item rows (1, 3).
_TABLES = ("user_emb", "item_emb", "user_bias", "item_bias")


def _gradients(p_table: Any, q_table: Any, bu_table: Any, bi_table: Any, users: Any,
               items: Any, y: Any, mu: float, l2: float) -> tuple[float, tuple[Any, Any],
                                                                   tuple[Any, Any]]:
    """MSE and, one row per rating, the gradient of ``mse + l2 * mean(|p|^2 + |q|^2 + b_u^2 +
    b_i^2)`` (L2 on the batch's rows only, which keeps it sparse, see models.optim) for the
    (embedding, bias) rows of the users and of the items. Closed form, no autograd graph, and
    written once for numpy arrays and torch tensors alike."""
    p, q, b_u, b_i = p_table[users], q_table[items], bu_table[users], bi_table[items]
    err = mu + (b_u + b_i)[:, 0] + (p * q).sum(-1) - y
    mse = float((err * err).mean())
    c = 2.0 / len(y)
    e, decay = (c * err)[:, None], c * l2
    return mse, (e * q + decay * p, e + decay * b_u), (e * p + decay * q, e + decay * b_i)


def _unknown_as_minus_one(rows: Iterable[int | None]) -> torch.Tensor:
    return torch.tensor([-1 if r is None else r for r in rows], dtype=torch.int64)


def canonical_rows(ids: Sequence[str], dim: int, std: float, like: torch.Tensor) -> torch.Tensor:
    """Initial rows for ``ids`` that depend on the id only: N(0, std) seeded by blake2b(id).

    Every worker computes the same bits for the same id, so an id that first appears in the
    shared state starts from the same base everywhere whichever worker met it first.
    """
    out = torch.zeros(len(ids), dim, dtype=like.dtype)
    if std > 0:
        gen = torch.Generator()
        for i, key in enumerate(ids):
            seed = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
            gen.manual_seed(int.from_bytes(seed, "little") & ((1 << 63) - 1))
            out[i] = torch.randn(dim, generator=gen, dtype=torch.float32).to(like.dtype) * std
    return out.to(like.device)
