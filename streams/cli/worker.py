"""``streaminfer worker``: run a stream worker (one process of a consumer group)."""

from __future__ import annotations

from pathlib import Path

import click

from streaminfer.streams.cli._common import settings_from

__all__ = ["worker"]


@click.command()
@click.option("--app", metavar="NAME|MODULE:ATTR",
              help="The app to run [env STREAMINFER_APP; default classifier]: a built-in "
              "(classifier reads --events-topic, recommender reads --ratings-topic) or your "
              "own, as package.module:attribute naming a streaminfer.App or a function "
              "(settings) -> App; the working directory is importable.")
@click.option("--workers-in-process", "lanes", type=click.IntRange(1, 64), default=1,
              show_default=True, help="Hot-path consumer threads in this process (each owns "
              "part of the partitions). Start more processes to use more cores.")
@click.option("--events-topic", help="Input topic of the classifier [default events].")
@click.option("--ratings-topic", help="Input topic of the recommender [default ratings].")
@click.option("--predictions-topic", help="Output topic [default predictions].")
@click.option("--group", "consumer_group", help="Consumer group prefix; the group is "
              "PREFIX-APP [default streaminfer].")
@click.option("--model", "model_path", type=click.Path(exists=True, path_type=Path),
              help="Checkpoint (safetensors + manifest) to load into the app's model; "
              "default: the model as the app declares it (built-ins: a fresh one from "
              "--seed). The registry's active version (--registry-url) wins over it; a "
              "checkpoint in --checkpoint-url continues it only if saved from the same "
              "version.")
@click.option("--num-features", type=click.IntRange(min=1),
              help="Classifier feature vector length [default 8].")
@click.option("--seed", type=int, help="Seed of a fresh model [default 0].")
@click.option("--batch-max-records", type=click.IntRange(min=1), help="Upper bound of the "
              "adaptive batch size [default 1000].")
@click.option("--batch-max-wait-ms", type=click.FloatRange(min=0),
              help="How long a batch waits for more records after its first one [default "
              "10]; it closes sooner when no record came for 2 ms. 0 takes only what is "
              "already queued.")
@click.option("--batch-max-bytes", type=click.IntRange(min=1), help="A batch closes at this "
              "many value bytes [default 4 MiB].")
@click.option("--max-record-bytes", type=click.IntRange(min=1), help="An input record over "
              "this many bytes goes to the dead-letter topic undecoded [default 1 MiB].")
@click.option("--latency-target-ms", type=click.FloatRange(min=0, min_open=True),
              help="Batch size adapts so a batch's service time stays under half of this "
              "[default 100].")
@click.option("--device", help="Torch device: auto (cuda if present), cpu, cuda:0 ...")
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]),
              help="Mixed precision for inference on GPU [default off].")
@click.option("--redis-ttl", "redis_ttl_s", type=click.IntRange(min=0),
              help="Expire prediction keys after this many seconds (0 = never).")
@click.option("--top-n", type=click.IntRange(min=0),
              help="Recommender: items kept per user in recs:{user} (0 = off) [default 10].")
@click.option("--learn/--no-learn", default=None, help="Learn online from feedback (classifier)"
              " or from the ratings themselves (recommender) [default: learn].")
@click.option("--feedback-topic", help="Classifier labels, joined to events by event_id; "
              "must have the events topic's partition count [default feedback].")
@click.option("--optimizer", type=click.Choice(["sgd", "adagrad", "adam"]),
              help="Online optimiser [default: adagrad (lr 0.3 classifier, 0.1 "
              "recommender)].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Learning rate.")
@click.option("--l2", type=click.FloatRange(min=0), help="L2 penalty (weight decay).")
@click.option("--learn-batch-size", type=click.IntRange(min=1),
              help="Examples per optimiser step; more labels than this times "
              "--learn-max-steps in a micro-batch merge into larger steps [default: 8 "
              "classifier, 32 recommender].")
@click.option("--learn-max-steps", type=click.IntRange(min=0),
              help="Optimiser steps per micro-batch at most; 0: no bound [default: 8 "
              "classifier, 0 recommender].")
@click.option("--learn-one-step-labels", type=click.IntRange(min=0),
              help="Labels in one micro-batch from which it takes a single optimiser step (they "
              "arrive faster than steps can run); with fewer, above --learn-batch-size times "
              "--learn-max-steps, it takes this // labels steps; 0: off [default: 1024 "
              "classifier, 0 recommender].")
@click.option("--join-window-s", type=click.FloatRange(min=0, min_open=True),
              help="Event-time window for joining feedback to its event [default 600].")
@click.option("--join-max-entries", type=click.IntRange(min=1),
              help="Events and waiting labels the join holds per worker at most; the oldest "
              "are evicted: the join's memory bound [default 250000].")
@click.option("--sync-mode", type=click.Choice(["off", "async", "sync"]),
              help="Parameter sync between workers of the group (docs/sync.md) "
              "[default async].")
@click.option("--checkpoint-url", help="Where checkpoints go: a directory, file:///dir or "
              "redis://...; the newest is restored at start [default: none].")
@click.option("--checkpoint-every-s", type=click.FloatRange(min=0, min_open=True),
              help="Seconds between periodic checkpoints (one is also taken at shutdown) "
              "[default 30].")
@click.option("--registry-url", help="Model registry (directory, redis://, s3://bucket/prefix): "
              "serve its active version and follow promote / rollback live [default: none].")
@click.option("--canary-share", type=click.FloatRange(0, 1),
              help="Share of keys the registry's 'canary' version serves, picked by a stable "
              "hash of the key (the same in every process), so one key always sees one "
              "version [default 0.05].")
@click.option("--auto-guard/--no-auto-guard", default=None,
              help="Promote a shadow or canary that beats the active version by "
              "--auto-guard-margin over --auto-guard-min-labels labels; remove a canary "
              "whose error or NaN rate passes --auto-guard-max-error-rate [default: off].")
@click.option("--auto-guard-min-labels", type=click.IntRange(min=1),
              help="Labels scored by both versions before the guard compares them "
              "[default 2000].")
@click.option("--auto-guard-margin", type=click.FloatRange(min=0),
              help="How much better the candidate must be: AUC (classifier), RMSE "
              "(recommender) or accuracy, in the metric's units [default 0.01].")
@click.option("--auto-guard-max-error-rate", type=click.FloatRange(0, 1),
              help="A canary whose share of failed or non-finite rows passes this loses its "
              "label [default 0.01].")
@click.option("--quantize", type=click.Choice(["off", "int8"]),
              help="int8: serve a dynamically quantized copy (Linear layers, CPU), rebuilt "
              "from the fp32 master at most every --quantize-refresh-s [default off].")
@click.option("--quantize-refresh-s", type=click.FloatRange(min=0),
              help="Seconds between rebuilds of the int8 copy while learning [default 1].")
@click.option("--tensorboard-dir", type=click.Path(file_okay=False),
              help="Write progressive metrics (AUC, log-loss / MAE, RMSE) as TensorBoard "
              "scalars here.")
@click.option("--metrics-port", type=click.IntRange(min=-1, max=65_535),
              help="HTTP port of Prometheus /metrics, /healthz and /readyz (0 = a free port, "
              "-1 = off) [default 9464].")
@click.option("--replication-factor", "topic_replication_factor", type=click.IntRange(1, 32),
              help="Replication factor of every topic the worker creates (inputs, outputs, "
              "dead letters, owners, changelogs, sync) [default 1; production: 3].")
@click.option("--min-insync-replicas", "topic_min_insync_replicas",
              type=click.IntRange(1, 32), help="min.insync.replicas of the topics the worker "
              "creates [default 1; production: 2].")
@click.option("--stall-after-s", type=click.FloatRange(min=0, min_open=True),
              help="/healthz fails when a lane with work made no progress for this long; a "
              "lane retrying a sink write still counts as alive [default 30].")
@click.option("--processing-guarantee", type=click.Choice(["at-least-once", "exactly-once"]),
              help="exactly-once: a batch's predictions-topic records and its input offsets "
              "commit as one Kafka transaction (read them with isolation.level="
              "read_committed) [default at-least-once].")
@click.option("--model-timeout-s", type=click.FloatRange(min=0),
              help="Abandon a batch's forward pass after this long and serve the batch from "
              "fallbacks (previous version, stored prediction, default); 0: never [default 30].")
@click.option("--breaker-failure-rate", type=click.FloatRange(0, 1, min_open=True),
              help="Share of failed or slow batches that opens the model's circuit breaker "
              "[default 0.5].")
@click.option("--breaker-open-s", type=click.FloatRange(min=0),
              help="Seconds the breaker stays open before a trial batch [default 10].")
@click.option("--identity-model", is_flag=True, hidden=True,
              help="Benchmarks: score with a no-op model (bare I/O path).")
@click.option("--web-port", type=int, help="Serve Faust's web/metrics endpoint on this port.")
@click.option("--log-format", type=click.Choice(["text", "json"]),
              help="Log lines as text, or as JSON objects (logger, level, app, worker, "
              "partition, event_id...) for log shippers [default text]. Secrets (passwords "
              "in URLs, -X *password*) are masked either way.")
@click.option("--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.pass_context
def worker(ctx: click.Context, lanes: int, model_path: Path | None,
           identity_model: bool, web_port: int | None, loglevel: str, **overrides: object) -> None:
    """Consume events, score them in micro-batches, write predictions to Redis and Kafka.

    Start several processes with the same app and group to split the input partitions;
    a crashed process's partitions move to the others within ~10 s (session timeout).
    Offsets are committed only after Redis and the predictions topic confirmed a batch.
    Stop with Ctrl-C or SIGTERM: the current batch is finished and committed.
    """
    from streaminfer.errors import StreaminferError
    from streaminfer.streams.app import load_app
    from streaminfer.streams.worker import Worker, WorkerOptions

    settings = settings_from(ctx, **overrides)
    options = WorkerOptions(lanes=lanes, model_path=model_path,
                            identity_model=identity_model, web_port=web_port)
    try:
        Worker(load_app(settings.app, settings), settings, options).run(loglevel)
    except StreaminferError as exc:
        raise click.ClickException(str(exc)) from None
