"""A Faust table as the join state's store, written from the hot-path thread.

Faust tables are normally modified inside a stream event; here the hot path (another thread)
writes: the value goes into the table's local data at once, and the changelog record is sent
on Faust's event loop to the given partition, so Faust restores it on whichever worker gets
that partition next.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["FaustTableStore"]


class FaustTableStore:
    def __init__(self, table: Any, app: Any) -> None:
        self.table = table
        self.app = app

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        self.put_many([(partition, key, value)])

    def put_many(self, records: Sequence[tuple[int, bytes, bytes | None]]) -> None:
        """Several ``(partition, key, value)`` writes, reaching Faust's loop in one callback:
        each ``call_soon_threadsafe`` wakes the loop thread, and each wake-up takes the GIL
        from the hot path (measured: bench/user_state.py)."""
        data = self.table.data
        for _, key, value in records:
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        self.app.loop.call_soon_threadsafe(self._send_many, records)

    def _send_many(self, records: Sequence[tuple[int, bytes, bytes | None]]) -> None:
        for partition, key, value in records:
            self.table.send_changelog(partition, key, value)

    def items(self, partitions: set[int]) -> Iterable[tuple[bytes, bytes]]:
        out = []
        for key, value in list(self.table.data.items()):
            raw = key if isinstance(key, bytes) else str(key).encode()
            try:
                partition = int(raw.split(b":", 2)[1])
            except (IndexError, ValueError):
                continue
            if partition in partitions and value is not None:
                out.append((raw, value if isinstance(value, bytes) else bytes(value)))
        return out
