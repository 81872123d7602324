"""A worker's delta (its shared tensors now minus at the last sync point) and its wire form.

Why a value object: the same delta is computed once, split into shards, sent, reassembled by
every receiver and merged; keeping it as plain named tensors makes each step a small function.
Embedding tables carry only the touched rows, as ids plus values (ids, not rows: see
:mod:`models.sync.adapter`). The wire form is safetensors bytes, never pickle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = ["Delta", "TableDelta", "decode", "encode"]


@dataclass(frozen=True, slots=True)
class TableDelta:
    """Changed rows of one embedding table: ``values[i]`` is the change of id ``ids[i]``."""

    ids: list[str]
    values: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.ids) != self.values.shape[0]:
            raise ValueError(f"table delta has {len(self.ids)} ids but {self.values.shape[0]} rows")


@dataclass(frozen=True, slots=True)
class Delta:
    """Named dense/stats tensor changes plus per-table row changes (all on CPU)."""

    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    tables: dict[str, TableDelta] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.dense or self.stats or any(t.ids for t in self.tables.values()))

    @property
    def nbytes(self) -> int:
        tensors = [*self.dense.values(), *self.stats.values()]
        tensors += [t.values for t in self.tables.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def pieces(self, max_piece_bytes: int) -> list[dict[str, torch.Tensor]]:
        """Self-describing groups of tensors to place on shards; tables split by row ranges."""
        out: list[dict[str, torch.Tensor]] = []
        out += [{f"dense/{k}": v.contiguous()} for k, v in self.dense.items()]
        out += [{f"stats/{k}": v.contiguous()} for k, v in self.stats.items()]
        for name, table in self.tables.items():
            n = len(table.ids)
            if n == 0:
                continue
            row_bytes = max(1, table.values[0].numel() * table.values.element_size())
            step = max(1, max_piece_bytes // row_bytes)
            for start in range(0, n, step):
                stop = min(n, start + step)
                out.append({
                    f"table/{name}/{start}/ids": _ids_tensor(table.ids[start:stop]),
                    f"table/{name}/{start}/values": table.values[start:stop].contiguous(),
                })
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> Delta:
        """Inverse of :meth:`pieces` once all shards' tensors are merged into one dict."""
        dense: dict[str, torch.Tensor] = {}
        stats: dict[str, torch.Tensor] = {}
        parts: dict[str, list[tuple[int, list[str], torch.Tensor]]] = {}
        for key, value in tensors.items():
            kind, _, rest = key.partition("/")
            if kind == "dense":
                dense[rest] = value
            elif kind == "stats":
                stats[rest] = value
            elif kind == "table" and rest.endswith("/ids"):
                name, start, _ = rest.rsplit("/", 2)
                values = tensors[f"table/{name}/{start}/values"]
                parts.setdefault(name, []).append((int(start), _ids_list(value), values))
            elif kind != "table":
                raise ValueError(f"sync delta has an unknown tensor {key!r}")
        tables = {}
        for name, chunks in parts.items():
            chunks.sort(key=lambda c: c[0])
            ids = [i for _, chunk_ids, _ in chunks for i in chunk_ids]
            tables[name] = TableDelta(ids, torch.cat([v for _, _, v in chunks]))
        return cls(dense, stats, tables)


def encode(tensors: dict[str, torch.Tensor]) -> bytes:
    return st_save(tensors)


def decode(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


def _ids_tensor(ids: list[str]) -> torch.Tensor:
    data = json.dumps(ids, ensure_ascii=False).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def _ids_list(tensor: torch.Tensor) -> list[str]:
    ids = json.loads(tensor.numpy().tobytes().decode("utf-8"))
    if not isinstance(ids, list):
        raise ValueError("sync delta ids must be a JSON list")
    return [str(i) for i in ids]
