"""``--processing-guarantee exactly-once`` under worker faults: after kill -9 (and a restart)
or SIGSTOP past the session timeout, a ``read_committed`` reader sees every event_id exactly
once on the predictions topic (``settle``'s reader is read_committed; ``dup_bound=0``).

Fencing: partition ``p``'s transactional id is ``{group}-{app}-offsets-{p}`` on every worker;
the worker that takes ``p`` over calls ``init_transactions`` with it before fetching ``p``'s
committed offsets, which aborts the old holder's open transaction and fences its producer, so
a zombie waking from SIGSTOP can neither make records visible nor commit offsets."""

from __future__ import annotations

import time

from harness import freeze, settle


def test_exactly_once_kill_9_then_restart(eos_ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = eos_ready.stream(6000, 300)
    time.sleep(6)
    victim = eos_ready.workers[0]
    victim.kill()
    victim.wait(10)
    killed = time.time()
    time.sleep(5)
    eos_ready.restart(victim)
    settle(eos_ready, stream, client, "exactly-once: kill -9 + restart", fault_end=killed,
           dup_bound=0)


def test_exactly_once_sigstop_30_s(eos_ready, client) -> None:  # type: ignore[no-untyped-def]
    stream = eos_ready.stream(9000, 300)
    time.sleep(6)
    victim = eos_ready.workers[0]
    freeze(victim, 30)
    resumed = time.time()
    settle(eos_ready, stream, client, "exactly-once: SIGSTOP 30 s", fault_end=resumed - 30,
           dup_bound=0)
