"""How a micro-batch's labels are cut into optimiser steps (``streams.learning``): pure."""

from __future__ import annotations

from streaminfer.streams.learning import step_size


def steps(labels: int, batch_size: int = 8, max_steps: int = 8, one_step_labels: int = 1024
          ) -> int:
    return -(-labels // step_size(labels, batch_size, max_steps, one_step_labels))


def test_few_labels_take_steps_of_batch_size() -> None:
    assert step_size(30, 8, 8) == 8  # 4 steps: 8, 8, 8, 6
    assert steps(3) == 1  # one smaller step


def test_more_labels_than_max_steps_allow_merge_into_larger_steps() -> None:
    assert step_size(100, 8, 8) == 13 and steps(100) == 8
    assert step_size(100, 8, 0, 0) == 8  # no bound


def test_labels_faster_than_steps_run_merge_further_as_the_rate_grows() -> None:
    """2,000 ev/s brings 20-130 labels a micro-batch: max_steps binds. At saturation (500-1000
    labels) the steps fall with the labels, to one from ``one_step_labels`` on."""
    assert [steps(n) for n in (64, 128, 200, 300, 512, 1000, 1024, 5000)] == [
        8, 8, 5, 3, 2, 1, 1, 1]
    assert steps(5000, one_step_labels=0) == 8  # off: max_steps binds
