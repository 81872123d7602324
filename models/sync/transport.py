"""What the sync algorithm needs from its log, and an in-memory log for unit tests.

The sync modes only ever see :class:`Transport` and :class:`SyncMessage`, both Protocols, so
this package stays pure torch: the Kafka log lives in ``connectors.sync_transport`` and
satisfies them structurally. A log has one partition per shard and is read whole by every
worker. :class:`MemoryLog` is the same contract in memory, for unit tests of the protocol logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["MemoryLog", "SyncMessage", "Transport"]


class SyncMessage(Protocol):
    """One record of the sync log, with its headers decoded to strings."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def headers(self) -> dict[str, str]: ...

    @property
    def value(self) -> bytes: ...


class Transport(Protocol):
    """A partitioned, replayable log: send to a partition, read everything without blocking."""

    partitions: int

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None: ...

    def receive(self, max_messages: int) -> Sequence[SyncMessage]:
        """What has arrived, without waiting."""
        ...

    def positions(self) -> dict[int, int]:
        """Next offset to read, per partition."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _Message:
    partition: int
    offset: int
    headers: dict[str, str]
    value: bytes


class MemoryLog:
    """An in-memory partitioned log; ``transport()`` gives one worker's reader/writer on it."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.records: list[list[tuple[dict[str, str], bytes]]] = [[] for _ in range(partitions)]

    def transport(self, start: dict[int, int] | None = None) -> _MemoryTransport:
        return _MemoryTransport(self, dict(start or {}))


class _MemoryTransport:
    def __init__(self, log: MemoryLog, start: dict[int, int]) -> None:
        self.log, self.partitions = log, log.partitions
        self._next = {p: start.get(p, 0) for p in range(log.partitions)}

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None:
        self.log.records[partition].append((dict(headers), value))

    def receive(self, max_messages: int) -> list[SyncMessage]:
        out: list[SyncMessage] = []
        for p in range(self.partitions):
            records = self.log.records[p]
            while self._next[p] < len(records) and len(out) < max_messages:
                headers, value = records[self._next[p]]
                out.append(_Message(p, self._next[p], headers, value))
                self._next[p] += 1
        return out

    def positions(self) -> dict[int, int]:
        return dict(self._next)

    def close(self) -> None:
        return None
