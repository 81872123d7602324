"""Would learning in its own process leave serving its speed? The classifier lane, two processes.

Why: in one worker the learner shares the serving lane's GIL, and ``bench/sync.py`` bounds what
in-lane learning can reach (reading and decoding the labels alone). Moving the learner to a
process of its own, with its updates reaching the serving workers through parameter sync,
needs cores to spare. This measures the serving lane of ``bench/sync.py`` with learning off
(1) alone, and beside a second process running the learning lane (3) over the same pre-filled
topics (its own consumer group), in alternating rounds. The second process does more than a
learner would (it also scores and writes predictions), so the rate beside it is a lower bound
for a serving process beside a learner.

Usage: ``python bench/learner_process.py --count 200000 --rounds 3``
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from multiprocessing.queues import Queue
from typing import Any

from _common import Goal, create_topics, delete_topics, publish_synthetic, start_run, unique_name
from sync import CONFIGS, _parse_args, publish_feedback, run_lane

#: The second process starts this long before the measured one, so that it is past its start-up
#: (consumer group, model) and reading while the measured lane runs.
HEAD_START_S = 1.5


def _lane(argv: list[str], topics: dict[str, str], config: int, out: Queue[Any]) -> None:
    """One lane in this process; puts ``(events/s, events)`` on ``out``."""
    args = _parse_args(argv)
    sync_topics: list[str] = []
    try:
        result = run_lane(args, topics, CONFIGS[config], sync_topics)
        out.put((result.per_s(result.events), result.events))
    finally:
        if sync_topics:
            delete_topics(args.bootstrap, sync_topics)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Other options go to bench/sync.py's lane (--bootstrap, --partitions, --keys, "
               "--num-features, --redis-url).")
    parser.add_argument("--count", type=int, default=200_000,
                        help="Events pre-filled (and as many labels) [default 200,000].")
    parser.add_argument("--rounds", type=int, default=3,
                        help="Alternating rounds of (1) alone and beside (3) [default 3].")
    ours, rest = parser.parse_known_args(argv)
    lane_argv = [*rest, "--count", str(ours.count), "--skip-isolated"]
    args = _parse_args(lane_argv)
    start_run()
    topics = {n: unique_name(f"bench-2proc-{n}") for n in ("events", "feedback", "predictions")}
    create_topics(args.bootstrap, list(topics.values()), args.partitions)
    spawn = mp.get_context("spawn")
    alone: list[float] = []
    beside: list[float] = []
    try:
        data = {"seed": 1, "num_features": args.num_features, "keys": args.keys}
        publish_synthetic(args.bootstrap, topics["events"], ours.count, **data)
        publish_feedback(args.bootstrap, topics["feedback"], ours.count, **data)

        def start(config: int, out: Queue[Any]) -> mp.process.BaseProcess:
            proc = spawn.Process(target=_lane, args=(lane_argv, topics, config, out))
            proc.start()
            return proc

        for i in range(ours.rounds):
            out: Queue[Any] = spawn.Queue()
            proc = start(0, out)
            alone.append(out.get(timeout=600)[0])
            proc.join()
            learner_out: Queue[Any] = spawn.Queue()
            learner = start(2, learner_out)
            time.sleep(HEAD_START_S)
            proc = start(0, out)
            beside.append(out.get(timeout=600)[0])
            learner_rate = learner_out.get(timeout=600)[0]
            proc.join()
            learner.join()
            print(f"round {i + 1}: (1) alone {alone[-1]:,.0f} ev/s; (1) beside a (3) process "
                  f"{beside[-1]:,.0f} ev/s ({beside[-1] / alone[-1]:.2f}x); the (3) process "
                  f"{learner_rate:,.0f} ev/s", flush=True)
    finally:
        delete_topics(args.bootstrap, list(topics.values()))
    print(f"best: (1) alone {max(alone):,.0f} ev/s, beside a learning process "
          f"{max(beside):,.0f} ev/s")
    print(Goal("issue 11 goal 1 with learning in a second process: serving beside it vs alone",
               max(beside) / max(alone), 0.8).line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
