"""Exactly-once output: a batch's prediction records and its input offsets in one Kafka
transaction per input partition (``--processing-guarantee exactly-once``).

**Transactional ids.** One transactional producer per input partition *number* ``p`` (the
input and label topics are co-partitioned, so ``p`` names both), with
``transactional.id = {prefix}-{p}`` (``prefix``: the lanes' offsets group). Whoever reads
``p`` next, on any worker, uses the same id: its ``init_transactions()`` (``claim``, called
before the lane fetches ``p``'s committed offsets) aborts the previous holder's open
transaction and bumps the producer epoch, so a zombie that still holds the old producer (a
SIGSTOPped worker waking after its partitions moved) fails with ``PRODUCER_FENCED`` on its
next send or commit: nothing it writes becomes visible to ``read_committed`` readers and it
commits no offsets. The id cannot come from the consumer group's generation (KIP-447),
because the lanes commit under a group without members (manual assignment); the fixed
per-partition id is the classic (pre-447) scheme.

A fenced partition is reported (:class:`ProducerFenced`) and refused until claimed again; the
lane then stops reading it, and claims it again at once only if it was not frozen (then it is
still the rightful holder; a frozen one waits for Faust). A producer is never replaced on the
fly: a worker waking from a freeze mid-commit once did so and fenced the partition's new
holder, which duplicated a batch. A commit that times out is retried, not aborted.

Dead letters stay at-least-once (their own producer); Redis writes are idempotent (event-time
guard) and happen inside the transaction, before its commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from streaminfer.connectors.kafka import make_producer
from streaminfer.errors import DeliveryError

__all__ = ["PartitionTransactions", "ProducerFenced"]

log = logging.getLogger(__name__)

_FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


class ProducerFenced(DeliveryError):
    """Another process took over input partition ``partition``'s transactional id."""

    def __init__(self, partition: int, detail: str) -> None:
        super().__init__(f"input partition {partition}: this producer was fenced by a newer "
                         f"holder of its transactional id ({detail}); nothing was committed")
        self.partition = partition


class PartitionTransactions:
    """Transactional producers for the predictions topic, one per input partition number."""

    def __init__(self, kafka_config: dict[str, Any], prefix: str, topic: str, *,
                 timeout_s: float = 30.0) -> None:
        self.kafka_config = kafka_config
        self.prefix = prefix
        self.topic = topic
        self.timeout_s = timeout_s
        self._producers: dict[int, Producer] = {}
        #: partitions fenced (or whose producer failed fatally) and not claimed again: the
        #: lane stops reading them, and claims them again only if it still owns them
        self.fenced: set[int] = set()
        #: False once the lane claims partitions as it takes them (``claim``): a producer is
        #: then never made on the fly, which would fence the partition's rightful holder
        self.lazy = True

    def transactional_id(self, partition: int) -> str:
        return f"{self.prefix}-{partition}"

    def claim(self, partitions: Iterable[int]) -> None:
        """Become the holder of each partition's id (fences and aborts older holders)."""
        for p in partitions:
            self.fenced.discard(p)
            self._close(p)
            self._producer(p)

    def release(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._close(p)

    def close(self) -> None:
        for p in list(self._producers):
            self._close(p)

    def commit(self, partition: int, keys: Sequence[str], values: Sequence[bytes],
               stamps: Sequence[int], offsets: list[TopicPartition], group_metadata: Any,
               before_commit: Callable[[], None]) -> None:
        """Produce the records, run ``before_commit`` (the Redis write), then commit them
        with ``offsets`` atomically; on failure abort (nothing visible, nothing committed)."""
        if partition in self.fenced:
            raise ProducerFenced(partition, "fenced earlier")
        if not self.lazy and partition not in self._producers:
            self.fenced.add(partition)
            raise ProducerFenced(partition, "its transactional id is not claimed")
        producer = self._producer(partition)
        try:
            producer.begin_transaction()
            topic = self.topic
            for key, value, ts in zip(keys, values, stamps, strict=True):
                while True:
                    try:
                        producer.produce(topic, value, key.encode(), timestamp=ts)
                        break
                    except BufferError:
                        producer.poll(0.05)
            before_commit()
            producer.send_offsets_to_transaction(offsets, group_metadata, self.timeout_s)
            self._commit(partition, producer)
        except KafkaException as exc:
            self._failed(partition, producer, exc.args[0])
            raise
        except Exception:
            self._abort(partition, producer)
            raise

    # -- internals -------------------------------------------------------------------------
    def _producer(self, partition: int) -> Producer:
        producer = self._producers.get(partition)
        if producer is None:
            producer = make_producer(self.kafka_config, **{
                "transactional.id": self.transactional_id(partition),
                "transaction.timeout.ms": int(max(self.timeout_s * 2, 60) * 1000)})
            producer.init_transactions(self.timeout_s)
            self._producers[partition] = producer
        return producer

    def _commit(self, partition: int, producer: Producer) -> None:
        """``commit_transaction``, called again while its error is retriable (e.g. a timeout:
        the commit may be under way; aborting then would conflict with it)."""
        for attempt in range(5):
            try:
                producer.commit_transaction(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or err.code() in _FENCED or attempt == 4:
                    raise
                log.warning("committing partition %d's transaction: %s; trying again",
                            partition, err.str())

    def _failed(self, partition: int, producer: Producer, err: KafkaError) -> None:
        """Raise ProducerFenced if the producer is unusable; else abort (the caller retries
        the whole transaction)."""
        if err.code() in _FENCED or err.fatal():
            self._lost(partition, err.str())
        self._abort(partition, producer)

    def _abort(self, partition: int, producer: Producer) -> None:
        try:
            producer.abort_transaction(self.timeout_s)
        except KafkaException as exc:
            self._lost(partition, f"abort failed: {exc.args[0].str()}")

    def _lost(self, partition: int, why: str) -> None:
        """The producer cannot go on: the partition must be claimed again (only by a lane
        that still owns it), never silently replaced, which could fence its new holder."""
        self.fenced.add(partition)
        self._close(partition)
        raise ProducerFenced(partition, why)

    def _close(self, partition: int) -> None:
        producer = self._producers.pop(partition, None)
        if producer is not None:
            producer.flush(0)
