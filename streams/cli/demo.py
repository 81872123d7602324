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
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.cli._common import settings_from

__all__ = ["demo"]

REFRESH_S = 0.5


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
            self.console.print(text, highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)


def _status(stats: Any, workers: int, phase: str) -> str:
    return (f"{phase:<22} {stats.rate:>8,.0f} ev/s | batch {stats.batch_avg:6.1f} | "
            f"p50 {stats.p50_ms:7.1f} ms  p99 {stats.p99_ms:7.1f} ms | "
            f"rejected {stats.rejected:,} | workers {stats.alive}/{workers}")


@click.command()
@click.option("--app", type=click.Choice(["classifier", "recommender"]), default="classifier",
              show_default=True, help="Stream app to run: classifier scores synthetic feature "
              "vectors; recommender learns from synthetic ratings.")
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True,
              help="Worker processes in the consumer group (they split the partitions).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to publish events for.")
@click.option("--rate", type=click.FloatRange(min=1), default=3000.0, show_default=True,
              help="Events per second to publish.")
@click.option("--partitions", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Partitions of the topics it creates (existing topics with fewer grow); "
              "more workers than partitions leaves some idle.")
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
    2. creates the input, predictions and dead-letter topics (idempotent)
    3. starts --workers `streaminfer worker` processes (logs in --log-dir)
    4. publishes --rate synthetic events/s for --duration seconds and shows, live:
       events/s over all workers, mean batch size, p50/p99 latency from event time
       to the Redis write (worst worker), rejected records, workers alive
    5. waits until every event is predicted, reads a few predictions back from
       Redis (pred:APP:KEY), then stops the workers and the services it started

    \b
    Examples:
      streaminfer demo
      streaminfer demo --workers 4 --partitions 8 --rate 20000 --duration 60
      streaminfer --bootstrap kafka:9092 --redis-url redis://cache:6379/0 demo

    Ctrl-C stops everything the demo started. Exit code 0 when every published event was
    predicted, 1 on a failure, 130 when interrupted.
    """
    import redis

    from streams.demo import (
        DemoError,
        FleetStats,
        LocalServices,
        Publisher,
        WorkerFleet,
        end_offsets,
        ensure_topics,
        group_assigned,
        group_lag,
        input_topic,
        read_predictions,
        worker_args,
    )

    console = Console(highlight=False, soft_wrap=True)
    say = console.print
    settings = settings_from(ctx, app=app)
    services = LocalServices()
    fleet: WorkerFleet | None = None
    publisher: Publisher | None = None
    code = 0
    with _sigterm_as_interrupt():
        try:
            overrides = services.ensure(settings)
            if services.started:
                say(f"started local {' and '.join(services.started)} "
                    f"({'kept' if keep_services else 'stopped'} at the end)")
                settings = settings_from(ctx, app=app, **overrides)
            say(f"kafka {settings.bootstrap_servers}, redis {settings.redis_url}")
            topic = input_topic(settings)
            topics = [topic, settings.predictions_topic, settings.dlq_topic(topic)]
            counts = ensure_topics(settings, topics, partitions)
            say("topics " + ", ".join(f"{t} ({n} partitions)" for t, n in counts.items()))

            log_dir = log_dir or Path(tempfile.mkdtemp(prefix="streaminfer-demo-"))
            log_dir.mkdir(parents=True, exist_ok=True)
            fleet = WorkerFleet(settings, log_dir)
            fleet.start(workers, worker_args(settings, ctx.obj or {}, app))
            for w in fleet.workers:
                say(f"started worker {w.index} (pid {w.pid}), log {w.log_path}")
            client = redis.Redis.from_url(settings.redis_url)
            t0 = time.monotonic()
            fleet.wait_joined(client, join_timeout)
            group = f"{settings.consumer_group}-{app}"
            while not group_assigned(settings, topic, workers):
                fleet.check_alive()
                if time.monotonic() - t0 > join_timeout:
                    say(f"group {group} is still rebalancing; publishing anyway")
                    break
                time.sleep(0.5)
            say(f"{workers} workers joined group {group} in {time.monotonic() - t0:.1f}s")

            publisher = Publisher(settings, rate, duration)
            total = publisher.total
            say(f"publishing {total:,} {app} events to {topic} at {rate:,.0f}/s "
                f"for {duration:g}s ...")
            started = time.monotonic()
            publisher.start()

            def watch(until: Callable[[], bool], phase: Callable[[], str], limit: float) -> bool:
                deadline = time.monotonic() + limit
                with _LiveLine(console) as line:
                    while True:
                        assert fleet is not None
                        fleet.check_alive()
                        line.update(_status(FleetStats.of(fleet.snapshots(client)), workers,
                                            phase()))
                        if until():
                            return True
                        if time.monotonic() > deadline:
                            return False
                        time.sleep(REFRESH_S)

            watch(lambda: not publisher.is_alive(),
                  lambda: f"sent {publisher.sent:,}/{total:,}", duration + 60)
            publisher.join(timeout=5)
            if publisher.error is not None:
                raise DemoError(f"publishing failed: {publisher.error!r}")
            report = publisher.report
            if report is None or report.failed:
                examples = "; ".join(report.failure_examples[:3]) if report else ""
                raise DemoError(f"publishing failed: {report.failed if report else '?'} "
                                f"records not acknowledged {examples}")
            say(f"published {report.sent:,} events in {report.seconds:.1f}s "
                f"({report.rate:,.0f} ev/s)")

            ends = end_offsets(settings, topic)
            lag = [group_lag(settings, ends)]
            sent, running = report.sent, fleet

            def drained() -> bool:
                # Lag 0: every event's prediction is in Redis. The counters catch up within
                # a second (workers publish metrics every second).
                lag[0] = group_lag(settings, ends)
                stats = FleetStats.of(running.snapshots(client))
                return lag[0] == 0 and stats.events + stats.rejected >= sent

            if not watch(drained, lambda: f"waiting, {lag[0]:,} left", drain_timeout):
                raise DemoError(f"{lag[0]:,} events of {topic} still not predicted after "
                                f"{drain_timeout:.0f}s; worker logs in {log_dir}")
            elapsed = time.monotonic() - started
            stats = FleetStats.of(fleet.snapshots(client))

            rows = read_predictions(client, settings.app, publisher.last_keys[-5:])
            if not rows:
                raise DemoError(f"no predictions found in Redis for keys {publisher.last_keys}")
            table = Table(title=f"predictions read back from Redis (pred:{app}:KEY)",
                          title_justify="left")
            for name in ("key", "event_id", "score", "model_version", "event->write ms"):
                table.add_column(name, justify="right" if name[0] in "se" else "left")
            for row in rows:
                latency = int(row["processed_ts"]) - int(row["event_ts"])
                table.add_row(row["key"], row["event_id"], f"{float(row['score']):.4f}",
                              row["model_version"], f"{latency:,}")
            say(table)
            say(f"done: {report.sent:,} events published and predicted in {elapsed:.1f}s by "
                f"{workers} workers ({stats.events:,} scored, {stats.rejected:,} rejected); "
                f"mean batch {stats.batch_avg:.1f}, latency p50 {stats.p50_ms:.1f} ms, "
                f"p99 {stats.p99_ms:.1f} ms; model {stats.model_version}")
        except DemoError as exc:
            say(f"[bold red]error:[/] {exc}")
            code = 1
        except KeyboardInterrupt:
            say("interrupted: stopping what the demo started ...")
            code = 130
        finally:
            with _uninterruptible():
                if publisher is not None:
                    publisher.stop()
                    publisher.join(timeout=5)
                if fleet is not None:
                    for line in fleet.stop():
                        say(line)
                if services.started and not keep_services:
                    say(services.stop())
                elif services.started:
                    say(f"left {' and '.join(services.started)} running (--keep-services); "
                        "stop with: streaminfer dev down")
    sys.exit(code)
