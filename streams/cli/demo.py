"""``streaminfer demo``: the whole pipeline on one machine, with live numbers, in one command."""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streaminfer.connectors.admin import AdminError, ensure_topics
from streaminfer.connectors.redis_client import connect as connect_redis
from streaminfer.streams.cli._common import settings_from
from streaminfer.streams.demo import (
    DemoError,
    FleetStats,
    LocalServices,
    Publisher,
    WorkerFleet,
    input_topic,
    learns_from_feedback,
    read_predictions,
    unpredicted,
    worker_args,
)
from streaminfer.streams.logs import redact
from streaminfer.streams.settings import Settings

__all__ = ["demo"]

REFRESH_S = 0.5
#: after the workers reported: how long to wait for the group to own every partition.
ASSIGN_TIMEOUT_S = 30.0
#: after the drain, how long the workers get to exchange their last parameter deltas
CONVERGE_TIMEOUT_S = 15.0


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """``kill <demo>`` cleans up like Ctrl-C does."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _uninterruptible() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C must not leave workers behind (it is bounded by
    the SIGKILL timeout anyway)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _LiveLine:
    """One status line: redrawn in place on a terminal, printed every few seconds otherwise."""

    def __init__(self, console: Console, every_s: float = 2.0) -> None:
        self.console = console
        self.every_s = every_s
        self._live: Live | None = None
        self._last = 0.0

    def __enter__(self) -> _LiveLine:
        if self.console.is_terminal:
            self._live = Live(Text(""), console=self.console, auto_refresh=False,
                              transient=False)
            self._live.__enter__()
        return self

    def update(self, text: str) -> None:
        if self._live is not None:
            self._live.update(Text(text), refresh=True)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.console.print(text)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)


def _status(stats: FleetStats, workers: int, phase: str) -> str:
    return (f"{phase:<22} {stats.rate:>8,.0f} ev/s | batch {stats.batch_avg:6.1f} | "
            f"p50 {stats.p50_ms:7.1f} ms  p99 {stats.p99_ms:7.1f} ms | "
            f"rejected {stats.rejected:,} | workers {stats.alive}/{workers} | "
            f"model {stats.model_version or '-'}"
            + (f" learned {stats.learned:,}" if stats.learned else ""))


def _versions(stats: FleetStats, settings: Settings) -> str:
    """The summary's last words: one shared version, or the versions and why they differ."""
    served = stats.model_version or "-"
    if stats.alive < 2 or "," not in served:
        return f"model {served}" + (" on every worker" if stats.alive > 1 else "")
    why = ("sync off: each worker learns alone" if settings.sync_mode == "off"
           else f"sync {settings.sync_mode}: deltas still in flight")
    return f"models {served} ({why})"


@click.command()
@click.option("--app", type=click.Choice(["classifier", "recommender"]), default="classifier",
              show_default=True, help="Stream app to run: classifier scores synthetic feature "
              "vectors and learns from their labels (sent to the feedback topic a moment "
              "later); recommender predicts and learns from synthetic ratings.")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Worker processes in the consumer group (they split the partitions).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to publish events for.")
@click.option("--rate", type=click.FloatRange(min=1), default=3000.0, show_default=True,
              help="Events per second to publish.")
@click.option("--partitions", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Partitions of the topics it creates (existing topics are left as they "
              "are); workers beyond the input topic's partitions stay idle.")
@click.option("--keep-services", is_flag=True,
              help="Leave Kafka/Redis running at the end even if the demo started them.")
@click.option("--join-timeout", type=click.FloatRange(min=1), default=90.0, show_default=True,
              help="Seconds to wait for the workers to start and report to Redis.")
@click.option("--drain-timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds to wait, after publishing, until every event is predicted.")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where worker logs go [default: a new temporary directory, kept].")
@click.pass_context
def demo(ctx: click.Context, app: str, workers: int, duration: float, rate: float,
         partitions: int, keep_services: bool, join_timeout: float, drain_timeout: float,
         log_dir: Path | None) -> None:
    """Run the pipeline end to end on this machine and watch it work.

    \b
    1. starts Kafka and Redis with deploy/local/services.sh if they do not answer
    2. creates the input, predictions, feedback and dead-letter topics (idempotent)
    3. starts --workers `streaminfer worker` processes (logs in --log-dir)
    4. publishes --rate synthetic events/s for --duration seconds and shows, live:
       events/s over all workers, mean batch size, p50/p99 latency from event time
       to the Redis write (worst worker), rejected records, workers alive, and
       the model versions served (v1+uN: N online updates so far; with parameter
       sync, on by default, N counts every worker's updates, so the workers' versions
       meet once their deltas are exchanged)
    5. waits until every event is predicted and the workers serve one version, reads
       a few predictions back from Redis (pred:APP:KEY), then stops the workers and
       the services it started

    \b
    Examples:
      streaminfer demo
      streaminfer demo --workers 4 --partitions 8 --rate 20000 --duration 60
      streaminfer --bootstrap kafka:9092 --redis-url redis://cache:6379/0 demo

    Ctrl-C stops everything the demo started. Exit code 0 when every published event was
    predicted, 1 on a failure, 130 when interrupted.
    """
    run = _DemoRun(ctx, app, workers, keep_services)
    code = 0
    with _sigterm_as_interrupt():
        try:
            run.services_up()
            partitions = run.create_topics(partitions)
            run.start_workers(log_dir, join_timeout, partitions)
            run.publish(rate, duration)
            run.drain(drain_timeout)
            run.converge()
            run.show_results()
        except DemoError as exc:
            run.console.print(Text.assemble(("error: ", "bold red"), str(exc)))
            code = 1
        except KeyboardInterrupt:
            run.say("interrupted: stopping what the demo started ...")
            code = 130
        finally:
            with _uninterruptible():
                run.cleanup()
    sys.exit(code)


class _DemoRun:
    """The demo's steps, in order, and everything they started (for :meth:`cleanup`)."""

    def __init__(self, ctx: click.Context, app: str, workers: int, keep_services: bool) -> None:
        self.ctx, self.app, self.workers, self.keep_services = ctx, app, workers, keep_services
        self.console = Console(highlight=False, markup=False, soft_wrap=True)
        self.settings = settings_from(ctx, app=app)
        self.services = LocalServices()
        self.fleet: WorkerFleet | None = None
        self.publisher: Publisher | None = None
        self.client: redis.Redis | None = None
        self.topic = input_topic(self.settings)
        self.log_dir: Path | None = None
        self.started = 0.0

    def say(self, *what: Any) -> None:
        self.console.print(*what)

    def services_up(self) -> None:
        overrides = self.services.ensure(self.settings)
        if self.services.started:
            self.say(f"started local {' and '.join(self.services.started)} "
                     f"({'kept' if self.keep_services else 'stopped'} at the end)")
            self.settings = settings_from(self.ctx, app=self.app, **overrides)
        self.say(redact(f"kafka {self.settings.bootstrap_servers}, redis "
                        f"{self.settings.redis_url}"))

    def create_topics(self, partitions: int) -> int:
        """Returns the input topic's partition count (an existing topic keeps its own)."""
        settings = self.settings
        topic = self.topic
        topics = [topic, settings.predictions_topic, settings.dlq_topic(topic)]
        if learns_from_feedback(settings):
            topics += [settings.feedback_topic, settings.dlq_topic(settings.feedback_topic)]
        try:
            statuses = ensure_topics(settings.kafka_config(), dict.fromkeys(topics, partitions),
                                     **settings.topic_policy())
        except AdminError as exc:
            raise DemoError(str(exc)) from None
        self.say("topics: " + "; ".join(st.describe() for st in statuses))
        count = statuses[0].partitions
        if count < self.workers:
            self.say(f"note: {topic} has {count} partitions, so {self.workers - count} of the "
                     f"{self.workers} workers stay idle")
        return count

    def start_workers(self, log_dir: Path | None, join_timeout: float, partitions: int) -> None:
        log_dir = log_dir or Path(tempfile.mkdtemp(prefix="streaminfer-demo-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.fleet = fleet = WorkerFleet(self.settings, log_dir)
        fleet.start(self.workers, worker_args(self.settings, self.ctx.obj or {}, self.app))
        for w in fleet.workers:
            self.say(f"started worker {w.index} (pid {w.pid}), log {w.log_path}")
        self.client = client = connect_redis(self.settings.redis_url)
        t0 = time.monotonic()
        fleet.wait_joined(client, join_timeout)
        joined, everything = time.monotonic(), frozenset(range(partitions))
        while True:  # events sent before their partition has an owner would wait in Kafka
            stats = FleetStats.of(fleet.snapshots(client))
            if stats.partitions is None or stats.partitions == everything:
                break
            fleet.check_alive()
            if time.monotonic() - joined > ASSIGN_TIMEOUT_S:
                self.say(f"note: the workers own partitions {sorted(stats.partitions)} of "
                         f"{partitions} after {ASSIGN_TIMEOUT_S:.0f}s; publishing anyway")
                break
            time.sleep(0.5)
        self.say(f"{self.workers} workers joined group {self.settings.consumer_group}-{self.app}"
                 f" in {time.monotonic() - t0:.1f}s")

    def watch(self, until: Callable[[], bool], phase: Callable[[], str], limit: float) -> bool:
        """Redraw the live line until ``until()`` (True) or ``limit`` seconds (False)."""
        assert self.fleet is not None and self.client is not None
        deadline = time.monotonic() + limit
        with _LiveLine(self.console) as line:
            while True:
                self.fleet.check_alive()
                stats = FleetStats.of(self.fleet.snapshots(self.client))
                line.update(_status(stats, self.workers, phase()))
                if until():
                    return True
                if time.monotonic() > deadline:
                    return False
                time.sleep(REFRESH_S)

    def publish(self, rate: float, duration: float) -> None:
        self.publisher = publisher = Publisher(self.settings, rate, duration)
        self.say(f"publishing {publisher.total:,} {self.app} events to {self.topic} at "
                 f"{rate:,.0f}/s for {duration:g}s ...")
        self.started = time.monotonic()
        publisher.start()
        self.watch(lambda: not publisher.is_alive(),
                   lambda: f"sent {publisher.sent:,}/{publisher.total:,}", duration + 60)
        publisher.join(timeout=5)
        report = publisher.report
        if publisher.error is not None or report is None:
            raise DemoError(f"publishing failed: {publisher.error!r}")
        if report.failed:
            raise DemoError(f"publishing failed: {report.failed:,} records not acknowledged: "
                            + "; ".join(report.failure_examples[:3]))
        labels = (f" and {publisher.feedback_sent:,} labels to {self.settings.feedback_topic}"
                  if publisher.feedback_sent else "")
        self.say(f"published {report.sent:,} events in {report.seconds:.1f}s "
                 f"({report.rate:,.0f} ev/s){labels}")
        if publisher.feedback_failures.count:
            self.say(f"note: {publisher.feedback_failures.count:,} labels were not delivered: "
                     + "; ".join(publisher.feedback_failures.examples[:3]))

    def drain(self, timeout: float) -> None:
        """Until every published event is predicted: each key's newest event is in Redis, and
        the workers' counters (refreshed every second) account for every event."""
        assert self.publisher is not None and self.publisher.report is not None
        assert self.fleet is not None and self.client is not None
        fleet, client, latest = self.fleet, self.client, self.publisher.latest
        sent = self.publisher.report.sent
        pending = [len(latest)]

        def drained() -> bool:
            pending[0] = unpredicted(client, self.settings.app, latest)
            stats = FleetStats.of(fleet.snapshots(client))
            # rejected events (dead letters) never reach Redis, so their keys may lag
            return (stats.events + stats.rejected >= sent
                    and (pending[0] == 0 or stats.rejected > 0))

        if not self.watch(drained, lambda: f"waiting, {pending[0]:,} keys", timeout):
            raise DemoError(f"{pending[0]:,} of {len(latest):,} keys still have no prediction "
                            f"for their newest event after {timeout:.0f}s; worker logs in "
                            f"{self.log_dir}")

    def converge(self) -> None:
        """With parameter sync on, wait until every worker serves the same version: the last
        deltas go out within ``sync_every_ms`` of the last step and are applied on arrival."""
        settings = self.settings
        if settings.sync_mode == "off" or not settings.learn or self.workers < 2:
            return
        assert self.fleet is not None and self.client is not None
        fleet, client = self.fleet, self.client

        def one_version() -> bool:
            stats = FleetStats.of(fleet.snapshots(client))
            return stats.alive > 1 and "," not in stats.model_version

        self.watch(one_version, lambda: "exchanging deltas", CONVERGE_TIMEOUT_S)

    def show_results(self) -> None:
        assert self.publisher is not None and self.publisher.report is not None
        assert self.fleet is not None and self.client is not None
        elapsed = time.monotonic() - self.started
        stats = FleetStats.of(self.fleet.snapshots(self.client))
        keys = self.publisher.last_keys[-5:]
        rows = read_predictions(self.client, self.settings.app, keys)
        if not rows:
            raise DemoError(f"no predictions found in Redis for keys {keys}")
        table = Table(title=f"predictions read back from Redis (pred:{self.app}:KEY)",
                      title_justify="left")
        for name in ("key", "event_id", "score", "model_version", "event->write ms"):
            table.add_column(name, justify="right" if name[0] in "se" else "left")
        for row in rows:
            latency = int(row["processed_ts"]) - int(row["event_ts"])
            table.add_row(row["key"], row["event_id"], f"{float(row['score']):.4f}",
                          row["model_version"], f"{latency:,}")
        self.say(table)
        what = "labels" if self.app == "classifier" else "ratings"
        learned = f", learned from {stats.learned:,} {what}" if stats.learned else ""
        self.say(f"done: {self.publisher.report.sent:,} events published and predicted in "
                 f"{elapsed:.1f}s by {self.workers} workers ({stats.events:,} scored, "
                 f"{stats.rejected:,} rejected{learned}); mean batch {stats.batch_avg:.1f}, "
                 f"latency p50 {stats.p50_ms:.1f} ms, p99 {stats.p99_ms:.1f} ms; "
                 f"{_versions(stats, self.settings)}")

    def cleanup(self) -> None:
        """Stop the publisher, the workers, and the services this run started."""
        if self.publisher is not None and self.publisher.ident is not None:  # started
            self.publisher.stop()
            self.publisher.join(timeout=5)
        if self.fleet is not None:
            for line in self.fleet.stop():
                self.say(line)
        if self.services.started and self.keep_services:
            names = " ".join(self.services.started)
            self.say(f"left {names} running (--keep-services); stop with: "
                     f"streaminfer dev down {names}")
        elif self.services.started:
            self.say(self.services.stop())
