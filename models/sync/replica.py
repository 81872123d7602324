"""One worker's shared tensors and their base: the values at its last sync point.

Why a base: a delta is ``live - base``, and both modes move the base as deltas are merged.
In rounds, ``base`` is ``base_r``, identical on every worker; what was sent is remembered
exactly so that ``live = base_{r+1} + (live - sent)`` keeps the updates made after sending
(and is bit-identical to ``base_{r+1}`` when there were none).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streaminfer.models.base import Model
from streaminfer.models.sync.adapter import SharedState, Table, canonical_rows, shared_state
from streaminfer.models.sync.delta import Delta, TableDelta

__all__ = ["Replica"]


@dataclass(slots=True)
class _Sent:
    """Exactly what the live tensors held when the pending delta was taken."""

    dense: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]


class Replica:
    """Computes a model's delta and merges deltas into it, in place, under ``no_grad``."""

    def __init__(self, model: Model) -> None:
        self.model = model
        state = self.state()
        self.base: dict[str, torch.Tensor] = {
            k: v.detach().clone() for k, v in {**state.dense, **state.stats}.items()
        }
        self.base_tables = {k: t.weight.detach().clone() for k, t in state.tables.items()}
        self.shared_ids: dict[str, set[str]] = {k: set() for k in state.tables}
        self._sent: _Sent | None = None

    def state(self) -> SharedState:
        return shared_state(self.model)

    # -- taking a delta --------------------------------------------------------------------

    @torch.no_grad()
    def take(self) -> tuple[Delta, dict[str, torch.Tensor]]:
        """``live - base`` (tables: touched rows only) and the local rows it covers.

        Remembers the live values it covered, for :meth:`apply_round`.
        """
        state = self.state()
        dense, stats, tables = {}, {}, {}
        sent = _Sent({}, {}, {})
        for group, out in ((state.dense, dense), (state.stats, stats)):
            for name, live in group.items():
                if not torch.equal(live, self.base[name]):
                    out[name] = (live - self.base[name]).cpu()
                    sent.dense[name] = live.clone()
        rows_by_table: dict[str, torch.Tensor] = {}
        for name, table in state.tables.items():
            base = self.base_tables[name]
            known = len(table.vocab)
            changed = (table.weight[:known] != base[:known]).any(dim=1)
            rows = changed.nonzero().squeeze(1)
            rows_by_table[name] = rows
            values = table.weight[rows]
            sent.rows[name], sent.values[name] = rows, values.clone()
            tables[name] = TableDelta(table.ids_of(rows.cpu()), (values - base[rows]).cpu())
        self._sent = sent
        return Delta(dense, stats, tables), rows_by_table

    # -- async: merge as deltas come ---------------------------------------------------------

    @torch.no_grad()
    def commit_own(self, delta: Delta, rows_by_table: dict[str, torch.Tensor]) -> None:
        """After sending ``delta``: it is now part of the base; new ids move to canonical."""
        state = self.state()
        for name, live in {**state.dense, **state.stats}.items():
            if name in delta.dense or name in delta.stats:
                self.base[name].copy_(live)
        for name, table in state.tables.items():
            rows, part = rows_by_table.get(name), delta.tables.get(name)
            if rows is None or part is None or not part.ids:
                continue
            base, shared = self.base_tables[name], self.shared_ids[name]
            fresh = torch.tensor([i not in shared for i in part.ids], device=rows.device)
            base[rows] = table.weight[rows]
            if bool(fresh.any()):
                fresh_ids = [i for i in part.ids if i not in shared]
                new = self._canonical(table, fresh_ids) + part.values[fresh.cpu()].to(base)
                table.weight[rows[fresh]] = new
                base[rows[fresh]] = new
            shared.update(part.ids)
        self._sent = None

    @torch.no_grad()
    def apply_remote(self, delta: Delta) -> None:
        """``live += delta`` and ``base += delta`` (so the change is not sent back)."""
        state = self.state()
        for group, part in ((state.dense, delta.dense), (state.stats, delta.stats)):
            for name, change in part.items():
                if name in group:
                    change = change.to(group[name])
                    group[name].add_(change)
                    self.base[name].add_(change)
        for name, part in delta.tables.items():
            table = state.tables.get(name)
            if table is None or not part.ids:
                continue
            base, shared = self.base_tables[name], self.shared_ids[name]
            rows = table.vocab.rows(part.ids).to(base.device)
            values = part.values.to(base)
            known = torch.tensor([i in shared for i in part.ids], device=base.device)
            table.weight.index_add_(0, rows[known], values[known])
            base.index_add_(0, rows[known], values[known])
            if not bool(known.all()):
                fresh_ids = [i for i in part.ids if i not in shared]
                fresh_rows = rows[~known]
                pending = table.weight[fresh_rows] - base[fresh_rows]
                new = self._canonical(table, fresh_ids) + values[~known]
                base[fresh_rows] = new
                table.weight[fresh_rows] = new + pending
            shared.update(part.ids)

    # -- rounds: base_{r+1} = base_r + aggregate ---------------------------------------------

    @torch.no_grad()
    def apply_round(self, deltas: list[Delta], *, mean: bool) -> None:
        """Move to ``base_{r+1} = base_r + aggregate(deltas)`` keeping unsent local updates.

        ``deltas`` must be in the same order on every worker (sorted by worker id); stats are
        always summed, parameters summed or averaged over ``len(deltas)``.
        """
        state, sent = self.state(), self._sent
        n = max(1, len(deltas))
        for group, is_stats in ((state.dense, False), (state.stats, True)):
            for name, live in group.items():
                agg: torch.Tensor | None = None
                for d in deltas:
                    change = (d.stats if is_stats else d.dense).get(name)
                    if change is not None:
                        change = change.to(live)
                        agg = change if agg is None else agg + change
                base = self.base[name]
                if agg is not None and mean and not is_stats:
                    agg = agg / n
                base_next = base if agg is None else base + agg
                ref = sent.dense.get(name, base) if sent is not None else base
                live.copy_(base_next + (live - ref))
                base.copy_(base_next)
        for name, table in state.tables.items():
            self._round_table(name, table, deltas, mean=mean, n=n, sent=sent)
        self._sent = None

    def _round_table(
        self, name: str, table: Table, deltas: list[Delta], *, mean: bool, n: int,
        sent: _Sent | None,
    ) -> None:
        base, shared, live = self.base_tables[name], self.shared_ids[name], table.weight
        ids = sorted({i for d in deltas if name in d.tables for i in d.tables[name].ids})
        pos = {key: k for k, key in enumerate(ids)}
        agg = torch.zeros(len(ids), base.shape[1], dtype=base.dtype)
        for d in deltas:
            part = d.tables.get(name)
            if part is not None and part.ids:
                index = torch.tensor([pos[i] for i in part.ids], dtype=torch.int64)
                agg.index_add_(0, index, part.values.to(agg.dtype))
        if mean:
            agg = agg / n
        rows = table.vocab.rows(ids).to(base.device)
        known = torch.tensor([i in shared for i in ids], dtype=torch.bool)
        start = base[rows].clone()
        if not bool(known.all()):
            fresh_ids = [i for i, k in zip(ids, known.tolist(), strict=True) if not k]
            start[~known.to(base.device)] = self._canonical(table, fresh_ids)
        new = start + agg.to(base.device)
        sent_rows = sent.rows.get(name) if sent is not None else None
        parts = [rows] if sent_rows is None else [rows, sent_rows.to(base.device)]
        affected = torch.unique(torch.cat(parts))
        ref = base[affected].clone()
        if sent_rows is not None and sent_rows.numel():
            assert sent is not None
            ref[torch.searchsorted(affected, sent_rows)] = sent.values[name]
        residual = live[affected] - ref
        base[rows] = new
        live[affected] = base[affected] + residual
        shared.update(ids)

    @staticmethod
    def _canonical(table: Table, ids: list[str]) -> torch.Tensor:
        return canonical_rows(ids, table.weight.shape[1], table.init_std, table.weight)
