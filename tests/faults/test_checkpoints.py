"""Checkpoint faults: the checkpoint directory's disk is full for a while."""

from __future__ import annotations

import subprocess
import time

import pytest
from harness import settle


def test_disk_full_checkpoint_directory(ready, client) -> None:  # type: ignore[no-untyped-def]
    if not ready.checkpoints_mounted:
        pytest.skip("needs root to mount a small tmpfs as the checkpoint directory")
    stream = ready.stream(4500, 300)
    time.sleep(4)
    ballast = ready.checkpoints / "ballast"
    subprocess.run(["dd", "if=/dev/zero", f"of={ballast}", "bs=1M", "count=64"],
                   capture_output=True, check=False)  # fills the disk: dd stops at ENOSPC
    time.sleep(8)  # several checkpoints (every 2 s) fail meanwhile
    ballast.unlink()
    back = time.time()
    settle(ready, stream, client, "checkpoint disk full 8 s", fault_end=back, dup_bound=0)
    logs = ready.dep.log_tail(10_000)
    assert "a checkpoint failed, will retry" in logs
    newest = max(p.stat().st_mtime for p in ready.checkpoints.rglob("*") if p.is_file())
    assert newest > back  # checkpoints are written again once there is room


def test_rebalance_while_a_checkpoint_is_written(ready, client) -> None:  # type: ignore[no-untyped-def]
    """A third worker joins while both workers are inside a 6 s checkpoint write (the chaos
    model's ``state_dict`` is slow, under the model lock, as a large model's would be); it
    leaves again (SIGTERM) later. Each rebalance waits for the checkpoint; nothing is lost."""
    stream = ready.stream(6000, 300)
    time.sleep(4)
    ready.chaos("slow-checkpoint 6")
    markers = ready.chaos_file.parent
    deadline = time.time() + 20
    while not list(markers.glob("checkpointing-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(markers.glob("checkpointing-*")), "no checkpoint began within 20 s"
    joined = time.time()
    third = ready.dep.start_worker()  # a rebalance while the checkpoint is being written
    try:
        time.sleep(15)
        assert third.poll() is None, ready.dep.log_tail()
    finally:
        third.terminate()
        third.wait(60)
    out = settle(ready, stream, client, "rebalance during a 6 s checkpoint write",
                 fault_end=joined, dup_bound=4 * 200)
    assert out.workers_running and third.returncode in (0, -15, 143), third.returncode
