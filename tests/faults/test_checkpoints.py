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
