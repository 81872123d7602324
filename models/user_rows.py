"""The matrix factorisation's per-user rows as bytes: what the recommender's keyed state
writes to its changelog for each touched user (see ``streams.user_state``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import torch
from safetensors.numpy import load as st_load

from streaminfer.models.recommender import UserRows

__all__ = ["decode_users", "encode_users"]


Layout = tuple[tuple[str, tuple[int, ...]], ...]


def encode_users(rows: UserRows) -> list[bytes]:
    """One safetensors buffer per user: float32 ``emb``, ``bias``, ``optim.<name>``, and
    ``seen`` (uint8: the JSON list of item ids).

    Written by hand, because this runs for every touched user of every batch on the hot
    path: the float parts of all users are gathered into one array, and the users share one
    header layout, formatted from a cached prefix (~10x cheaper than a ``safetensors.save``
    per user; bench/user_state.py).
    """
    if not len(rows):
        return []
    parts = [("emb", rows.emb), ("bias", rows.bias),
             *((f"optim.{k}", v) for k, v in sorted(rows.optim.items()))]
    layout = tuple((name, tuple(t.shape[1:])) for name, t in parts)
    prefix = _HEADERS.get(layout)
    if prefix is None:
        prefix = _HEADERS[layout] = _header_prefix(layout)
    head, size = prefix
    n = len(rows)
    floats = np.concatenate([t.detach().to("cpu", torch.float32).reshape(n, -1).numpy()
                             for _, t in parts], axis=1)
    out = []
    for k, seen_ids in enumerate(rows.seen):
        seen = json.dumps(seen_ids, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        header = f'{head}{len(seen)}],"data_offsets":[{size},{size + len(seen)}]}}}}'.encode()
        header += b" " * (-len(header) % 8)
        out.append(b"".join([len(header).to_bytes(8, "little"), header, floats[k].tobytes(),
                             seen]))
    return out


_HEADERS: dict[Layout, tuple[str, int]] = {}


def _header_prefix(layout: Layout) -> tuple[str, int]:
    """The header up to the ``seen`` entry's shape, and the float tensors' byte size."""
    entries, offset = [], 0
    for name, shape in layout:
        size = 4 * math.prod(shape)
        entries.append(json.dumps({name: {"dtype": "F32", "shape": list(shape),
                                          "data_offsets": [offset, offset + size]}})[1:-1])
        offset += size
    return "{" + ",".join(entries) + ',"seen":{"dtype":"U8","shape":[', offset


def decode_users(records: Sequence[tuple[str, bytes]]) -> UserRows:
    """Inverse of :func:`encode_users` for ``(user id, value)`` pairs."""
    if not records:
        return UserRows([], torch.zeros(0, 0), torch.zeros(0, 1))
    decoded = [st_load(value) for _, value in records]
    names = [k.removeprefix("optim.") for k in decoded[0] if k.startswith("optim.")]
    return UserRows(
        ids=[user for user, _ in records],
        emb=torch.from_numpy(np.stack([d["emb"] for d in decoded])),
        bias=torch.from_numpy(np.stack([d["bias"] for d in decoded])),
        seen=[tuple(json.loads(d["seen"].tobytes())) for d in decoded],
        optim={name: torch.from_numpy(np.stack([d[f"optim.{name}"] for d in decoded]))
               for name in names},
    )
