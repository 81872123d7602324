"""How a lane follows Faust's partition assignment (the command logic, without a broker)."""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from streaminfer.streams.assignment import FollowedAssignment

TOPIC = "events"


class RecordingConsumer:
    """Stands in for the lane's consumer: only the calls a command makes are recorded."""

    def __init__(self, calls: list[tuple[str, Any]]) -> None:
        self.calls = calls

    def incremental_assign(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("assign", {tp.partition for tp in tps}))

    def incremental_unassign(self, tps: list[TopicPartition]) -> None:
        self.calls.append(("unassign", {tp.partition for tp in tps}))


def _lane() -> tuple[FollowedAssignment, RecordingConsumer, list[tuple[str, Any]]]:
    calls: list[tuple[str, Any]] = []
    assignment = FollowedAssignment([TOPIC])
    assignment.on_assigned = lambda parts: calls.append(("on_assigned", set(parts)))
    assignment.on_revoked = lambda parts: calls.append(("on_revoked", set(parts)))
    consumer = RecordingConsumer(calls)

    def commit_written(only: set[tuple[str, int]] | None) -> None:
        calls.append(("commit", {p for _, p in only or set()}))

    def forget(tps: set[tuple[str, int]]) -> None:
        calls.append(("forget", {p for _, p in tps}))

    assignment.start(consumer, commit_written, forget)  # type: ignore[arg-type]
    return assignment, consumer, calls


def _run(assignment: FollowedAssignment, consumer: RecordingConsumer, kind: str,
         parts: set[int]) -> None:
    done = assignment.post(kind, frozenset(parts))
    assignment.apply_pending(consumer)  # type: ignore[arg-type]
    assert done.is_set()


def test_a_new_assignment_releases_partitions_it_no_longer_names() -> None:
    """A late assign (Faust recovered after the next rebalance began) must not leave the lane
    reading partitions another worker was given: the next assign hands them back, written
    offsets committed first."""
    assignment, consumer, calls = _lane()
    _run(assignment, consumer, "assign", {0, 1, 2, 3})
    calls.clear()

    _run(assignment, consumer, "assign", {0, 1})

    assert assignment.owned == {(TOPIC, 0), (TOPIC, 1)}
    assert calls == [("commit", {2, 3}), ("forget", {2, 3}), ("unassign", {2, 3}),
                     ("on_revoked", {2, 3})]


def test_repeating_an_assignment_changes_nothing() -> None:
    assignment, consumer, calls = _lane()
    _run(assignment, consumer, "assign", {1, 3})
    assert calls == [("assign", {1, 3}), ("on_assigned", {1, 3})]
    calls.clear()

    _run(assignment, consumer, "assign", {1, 3})

    assert calls == []  # no state reload, no offset reset: reading goes on where it was
    assert assignment.owned == {(TOPIC, 1), (TOPIC, 3)}


def test_revoke_commits_only_what_the_lane_reads() -> None:
    assignment, consumer, calls = _lane()
    _run(assignment, consumer, "assign", {0, 1})
    calls.clear()

    _run(assignment, consumer, "revoke", {1, 2})

    assert assignment.owned == {(TOPIC, 0)}
    assert calls == [("commit", {1}), ("forget", {1}), ("unassign", {1}), ("on_revoked", {1})]


def test_assignment_moves_in_one_command() -> None:
    """Partitions that stay keep being read; only the difference is released or taken."""
    assignment, consumer, calls = _lane()
    _run(assignment, consumer, "assign", {0, 1})
    calls.clear()

    _run(assignment, consumer, "assign", {1, 2})

    assert assignment.owned == {(TOPIC, 1), (TOPIC, 2)}
    assert calls == [("commit", {0}), ("forget", {0}), ("unassign", {0}), ("on_revoked", {0}),
                     ("assign", {2}), ("on_assigned", {2})]
