"""Worker faults: kill -9 under load then restart; SIGSTOP past the session timeout."""

from __future__ import annotations

import time

from harness import freeze, settle

#: duplicates a crash may cause on the predictions topic: the batches a lane had in flight
#: (written, not yet committed: at most 3) plus one, of at most --batch-max-records (200 here)
CRASH_DUPLICATES = 4 * 200


def test_kill_9_a_worker_under_load_then_start_it_again(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(6000, 300)
    time.sleep(6)
    victim = ready.workers[0]
    victim.kill()
    victim.wait(10)
    killed = time.time()
    time.sleep(5)
    ready.restart(victim)
    settle(ready, stream, client, "kill -9 + restart", fault_end=killed,
           dup_bound=CRASH_DUPLICATES)


def test_sigstop_past_the_session_timeout_then_sigcont(ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = ready.stream(9000, 300)
    time.sleep(6)
    victim = ready.workers[0]
    freeze(victim, 30)  # > the 10 s session timeout: its partitions move meanwhile
    resumed = time.time()
    settle(ready, stream, client, "SIGSTOP 30 s", fault_end=resumed - 30,
           dup_bound=CRASH_DUPLICATES)
    # the fence: on waking it refused to commit and dropped its partitions uncommitted
    log = (ready.dep.log_dir / f"worker-{ready.dep.procs.index(victim)}.log").read_text()
    assert "this process was frozen for" in log
    assert "released partitions" in log and "uncommitted" in log
