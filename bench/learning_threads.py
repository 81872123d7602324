"""Learning cost against torch's intra-op threads: the classifier lane, side by side.

Why: a worker used to keep torch's default of one intra-op thread per core, and every tiny op
of an online learning step then forked that pool: the step cost 5-7x the CPU. The worker now
applies ``configure_threads`` to every app's model (cores - 1, at most 4). This runs
``bench/sync.py``'s lane, learning off (1) and learning on with sync async (3), with torch at
``--before`` threads and at the policy's, in alternating rounds over the same pre-filled
topics, and prints the best round of each and the issue 11 goal (3) >= 0.8x (1).

Usage: ``python bench/learning_threads.py --count 30000``
"""

from __future__ import annotations

import argparse
import sys

import torch
from _common import Goal, create_topics, delete_topics, publish_synthetic, start_run, unique_name
from sync import CONFIGS, _lane_line, _parse_args, publish_feedback, run_lane

from streaminfer.models.device import configure_threads


def main(argv: list[str] | None = None) -> int:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    own.add_argument("--before", type=int, default=2,
                     help="torch threads of the 'before' runs [default 2: torch's default "
                          "on a 2-core machine].")
    ours, rest = own.parse_known_args(argv)
    args = _parse_args(rest)
    start_run()
    after = configure_threads()
    topics = {n: unique_name(f"bench-threads-{n}") for n in ("events", "feedback", "predictions")}
    create_topics(args.bootstrap, list(topics.values()), args.partitions)
    sync_topics: list[str] = []
    best: dict[tuple[int, str], float] = {}
    try:
        data = {"seed": 1, "num_features": args.num_features, "keys": args.keys}
        publish_synthetic(args.bootstrap, topics["events"], args.count, **data)
        publish_feedback(args.bootstrap, topics["feedback"], args.count, **data)
        for i in range(args.rounds):
            for threads in (ours.before, after):
                for config in (CONFIGS[0], CONFIGS[2]):
                    r = run_lane(args, topics, config, sync_topics,
                                 lambda _hot, _learner, t=threads: torch.set_num_threads(t))
                    key = (threads, config.name)
                    best[key] = max(best.get(key, 0.0), r.per_s(r.events))
                    print(f"round {i + 1} torch threads {threads} {_lane_line(r)}", flush=True)
    finally:
        delete_topics(args.bootstrap, [*topics.values(), *sync_topics])
    for threads in (ours.before, after):
        off, on = best[(threads, CONFIGS[0].name)], best[(threads, CONFIGS[2].name)]
        print(f"torch threads {threads}: learning off {off:,.0f} ev/s, learning on (sync async) "
              f"{on:,.0f} ev/s")
        print(Goal(f"with {threads} torch thread(s), learning on vs off", on / off, 0.8).line())
    gain = best[(after, CONFIGS[2].name)] / best[(ours.before, CONFIGS[2].name)]
    print(f"learning on, {after} vs {ours.before} torch threads: {gain:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
