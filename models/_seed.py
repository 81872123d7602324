"""Seeded parameter initialisation that leaves the process-wide RNG alone."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules on CPU under ``seed``: same seed => bitwise-identical initial weights.

    ``fork_rng`` restores the global CPU RNG afterwards, so creating a model never changes
    what other code draws; CUDA RNGs are not touched because init happens on CPU.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
