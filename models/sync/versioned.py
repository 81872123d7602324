"""A sync log filter that keeps workers serving different model versions from mixing deltas.

Why: a delta is ``live - base`` of one model version; added to another version's weights it
is noise. After a hot swap (``streams.model_swap``) each worker restarts its sync from the new
version, and for a second or two its peers may still be on the old one. Every record this
transport sends carries ``sync.base`` (the version's tag, ``v7@<time of the label move>``, so
a rollback to v7 is a new epoch too); ``receive`` hands the sync only records of the current
tag. Records of another tag are held back (bounded), because a peer that swapped first has
already published for the new tag: :meth:`rebase` replays those, then drops the rest.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from streaminfer.models.sync.transport import SyncMessage, Transport

__all__ = ["VersionedTransport"]

HEADER = "sync.base"


class VersionedTransport:
    """Wraps a :class:`Transport`; only records of the current ``tag`` reach the sync."""

    def __init__(self, inner: Transport, tag: str, *, hold: int = 20_000) -> None:
        self.inner, self.tag = inner, tag
        self.partitions = inner.partitions
        self._held: deque[SyncMessage] = deque(maxlen=hold)
        self._replay: list[SyncMessage] = []
        self.ignored = 0

    def send(self, partition: int, value: bytes, headers: dict[str, str]) -> None:
        self.inner.send(partition, value, {**headers, HEADER: self.tag})

    def receive(self, max_messages: int) -> Sequence[SyncMessage]:
        out, self._replay = self._replay[:max_messages], self._replay[max_messages:]
        for msg in self.inner.receive(max(0, max_messages - len(out))):
            if msg.headers.get(HEADER, "") == self.tag:
                out.append(msg)
            else:
                self._held.append(msg)
        return out

    def rebase(self, tag: str) -> None:
        """From now on read and write ``tag``: held records of it are replayed first."""
        self.tag = tag
        keep = [m for m in self._held if m.headers.get(HEADER, "") == tag]
        self.ignored += len(self._held) - len(keep)
        self._held.clear()
        self._replay = keep

    def positions(self) -> dict[int, int]:
        return self.inner.positions()

    def close(self) -> None:
        self.inner.close()
