"""The one micro-batch type: a batch is columns, from decode to the sinks.

Row ``i`` of every column, of ``event_ids``, ``keys``, ``ts`` and of ``features`` belongs to
``messages[i]``, so a rejected row can always be traced back to its topic, partition and offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from confluent_kafka import Message

__all__ = ["Batch", "Rejected", "take_rows"]


@dataclass(frozen=True)
class Rejected:
    """A message that cannot be processed, and why (it goes to the dead-letter topic)."""

    msg: Message
    reason: str
    error_type: str  # decode | validation | model


def take_rows(value: Any, index: Sequence[int]) -> Any:
    """Rows ``index`` of a column or model input: arrays and tensors are indexed, lists are
    picked, and anything else must offer ``take(index)``."""
    if isinstance(value, np.ndarray | torch.Tensor):
        return value[list(index)]
    if isinstance(value, list):
        return [value[i] for i in index]
    if value is None:
        return None
    return value.take(index)


@dataclass
class Batch:
    """Valid records of one micro-batch as columns.

    ``columns`` maps each decoded field (nested fields as ``"outer.inner"``) to a numpy array
    (numbers, booleans; missing numbers are NaN) or a list (strings, arrays, maps). An array
    of floats comes as an ``(n, length)`` array when the batch was read column-wise (records
    written with the input's schema, every row the same length), else as a list of lists:
    ``np.asarray`` takes either.
    ``features`` is what the app's feature function made of the columns: the model's input.
    """

    messages: list[Message]
    event_ids: list[str]
    keys: list[str]
    ts: np.ndarray  # int64 ms
    columns: dict[str, Any] = field(default_factory=dict)
    features: Any = None

    def __len__(self) -> int:
        return len(self.event_ids)

    def take(self, index: Sequence[int]) -> Batch:
        idx = list(index)
        return Batch([self.messages[i] for i in idx], [self.event_ids[i] for i in idx],
                     [self.keys[i] for i in idx], self.ts[idx],
                     {name: take_rows(col, idx) for name, col in self.columns.items()},
                     take_rows(self.features, idx))

    @classmethod
    def empty(cls) -> Batch:
        return cls([], [], [], np.zeros(0, np.int64))
