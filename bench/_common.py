"""Helpers shared by the Kafka benchmarks: fresh topics, synthetic publishing, rates, docs.

Benchmarks report rates measured side by side in one run (the dev machine is small and shared,
so absolute numbers drift between runs while ratios hold), and each script rewrites only its
own section of ``docs/benchmarks.md``, between ``<!-- bench:NAME -->`` markers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shlex
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streaminfer.connectors.admin import AdminError, ensure_topics  # noqa: E402
from streaminfer.connectors.avro import RecordCodec  # noqa: E402
from streaminfer.connectors.avro_fast import encode_long  # noqa: E402
from streaminfer.connectors.kafka import DeliveryFailures, make_producer  # noqa: E402
from streaminfer.connectors.publish import PublishReport, publish_chunks  # noqa: E402
from streaminfer.connectors.records import now_ms  # noqa: E402
from streaminfer.connectors.sources.synthetic import SyntheticClassifier  # noqa: E402

DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_HEADER = """# Benchmarks

Measured with the scripts in `bench/`. Each section is rewritten by its script with
`--write-docs`; the machine is small and shared, so compare the ratios measured side by side in
one run rather than absolute numbers across runs.
"""


def unique_name(prefix: str) -> str:
    """A topic/group name no earlier run used, so every run starts from an empty log."""
    return f"{prefix}-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"


def create_topics(bootstrap: str, names: Sequence[str], partitions: int) -> None:
    """Create ``names`` (fresh, uniquely named) and wait until the broker's metadata shows them."""
    statuses = ensure_topics({"bootstrap.servers": bootstrap}, dict.fromkeys(names, partitions))
    existing = [s.describe() for s in statuses if not s.created]
    if existing:  # the old AdminClient call raised TOPIC_ALREADY_EXISTS here
        raise AdminError(f"bench topics must be new: {existing}")


def delete_topics(bootstrap: str, names: Sequence[str]) -> None:
    """Best effort: bench topics hold hundreds of thousands of records each."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for name, future in admin.delete_topics(list(names), operation_timeout=30).items():
        try:
            future.result(timeout=30)
        except Exception as exc:  # leave it; the broker's retention will clean up
            print(f"  (could not delete topic {name}: {exc})", file=sys.stderr)


def synthetic_chunks(
    count: int, seed: int, num_features: int, keys: int, chunk: int = 5000
) -> Iterator[list[dict[str, Any]]]:
    """Event dicts from :class:`SyntheticClassifier`; ids ``c{seed}-{i}`` (distinct per seed)."""
    gen = SyntheticClassifier(seed=seed, num_features=num_features, keys=keys)
    for events, _labels in gen.chunks(count, chunk):
        yield events


def publish_synthetic(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    seed: int = 0,
    num_features: int = 8,
    keys: int = 1000,
    rate: float = 0.0,
    **producer_overrides: Any,
) -> PublishReport:
    """The project's own producer path: generator -> ``encode_many`` -> ``publish_chunks``."""
    codec = RecordCodec("event", "single-object", topic=topic)
    producer = make_producer({"bootstrap.servers": bootstrap}, **producer_overrides)
    return publish_chunks(producer, topic, codec,
                          synthetic_chunks(count, seed, num_features, keys),
                          key_field="key", rate=rate)


def publish_live(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    rate: float,
    seed: int = 0,
    num_features: int = 8,
    keys: int = 1000,
    every_s: float = 0.02,
    ready: Any = None,
    go: Any = None,
) -> PublishReport:
    """A cheap load generator for live-latency runs: events are encoded up front, and only
    their ``ts`` (the send time) is patched in as they go out, ``every_s`` worth at a time.

    ``publish_synthetic`` at 20k events/s costs ~18 us of CPU per event (generate + encode);
    on a 2-core machine that is a third of a core taken from the system under test. This
    costs a few us per event, like a producer running on another machine would (to us).
    The broker sharing these cores spends most of its time per produce request (~1 ms), not
    per record: sending every 20 ms instead of every 10 ms halves what it takes from the
    pipeline, and adds no latency (records are stamped as they are sent).
    ``ready``/``go`` (multiprocessing events, optional): set ``ready`` once the records are
    encoded, then wait for ``go`` before sending, so the caller can overlap the encoding with
    its own set-up.
    """
    codec = RecordCodec("event", "single-object", topic=topic)
    placeholder = now_ms()
    width = len(encode_long(placeholder))
    records: list[tuple[bytes, bytes, bytes]] = []  # (key, before ts, after ts)
    for chunk in synthetic_chunks(count, seed, num_features, keys):
        for record in chunk:
            record["ts"] = placeholder
        for record, value in zip(chunk, codec.encode_many(chunk), strict=True):
            at = _ts_offset(record)
            assert value[at:at + width] == encode_long(placeholder), "unexpected layout"
            records.append((record["key"].encode(), value[:at], value[at + width:]))
    producer = make_producer({"bootstrap.servers": bootstrap})
    failures = DeliveryFailures()
    report = PublishReport()
    step = max(1, int(rate * every_s))

    def send(chunk: list[tuple[bytes, bytes, bytes]]) -> None:
        ts = encode_long(now_ms())
        assert len(ts) == width, "timestamp varint changed width"
        # librdkafka's batch call loops in C: ~1.5 us less Python per event than a produce()
        # each. It takes no timestamps; the records' CreateTime is their send time anyway.
        pending = [{"key": key, "value": head + ts + tail} for key, head, tail in chunk]
        while pending:
            with contextlib.suppress(BufferError):  # queue full: the ones left are retried
                report.queued += producer.produce_batch(topic, pending, on_delivery=failures)
            pending = [{"key": m["key"], "value": m["value"]} for m in pending if "_error" in m]
            producer.poll(0.05 if pending else 0)

    # The first chunk goes out and is acknowledged before the clock starts: connecting,
    # fetching metadata and the idempotent producer's id take a few hundred ms, and records
    # stamped meanwhile would reach the pipeline as a burst of late events (a start-up
    # backlog that a pipeline near capacity then carries into the measured window).
    if ready is not None:
        ready.set()
    if go is not None:
        go.wait()
    send(records[:step])
    producer.flush(60)
    started = time.perf_counter()
    for lo in range(step, len(records), step):
        send(records[lo:lo + step])
        ahead = (lo + step) / rate - (time.perf_counter() - started)
        if ahead > 0:
            time.sleep(ahead)
    report.failed = failures.count + producer.flush(60)
    report.seconds = time.perf_counter() - started
    return report


def _ts_offset(record: dict[str, Any]) -> int:
    """Where ``ts`` starts in an encoded event: after the single-object header (10 bytes) and
    the two strings before it (``event_id``, ``key``: length varint + UTF-8 bytes)."""
    at = 10
    for name in ("event_id", "key"):
        raw = record[name].encode()
        at += len(encode_long(len(raw))) + len(raw)
    return at


def split_count(count: int, parts: int) -> list[int]:
    """``count`` split into ``parts`` near-equal shares that add up exactly."""
    return [count // parts + (1 if i < count % parts else 0) for i in range(parts)]


def machine() -> str:
    """``nproc`` and the CPU model, as the docs tables print them."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores (nproc), {model}, Python {platform.python_version()}"


def load_note() -> str:
    """The 1-minute load average: how busy the shared machine was during the run."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"


def machine_busy_s() -> float:
    """CPU seconds all processes of this machine used so far (``/proc/stat``, Linux)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # less idle and iowait


def busy_cores() -> Callable[[], float | None]:
    """Start a stopwatch on the whole machine's CPU; calling the result gives how many cores
    were busy on average since, all processes together (``None`` without ``/proc/stat``)."""

    def sample() -> tuple[float, float] | None:
        try:
            return machine_busy_s(), time.monotonic()
        except (OSError, ValueError, IndexError):
            return None

    start = sample()

    def since() -> float | None:
        end = sample()
        if start is None or end is None or end[1] == start[1]:
            return None
        return (end[0] - start[0]) / (end[1] - start[1])

    return since


def redis_server_pid(url: str) -> int:
    """The PID of the redis-server behind ``url`` (its ``INFO``), for its CPU clock."""
    return int(redis.Redis.from_url(url).info("server")["process_id"])


class CallClocks:
    """Seconds spent inside wrapped calls, summed by part, on ``clock``: ``time.thread_time``
    (the calling thread's CPU) or ``time.perf_counter`` (wall, waits included)."""

    def __init__(self, clock: Callable[[], float] = time.thread_time) -> None:
        self.clock = clock
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, name: str, part: str) -> None:
        """Replace ``owner.name`` by a version that adds its time to ``part``."""
        inner, clock, seconds = getattr(owner, name), self.clock, self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[part] += clock() - start

        setattr(owner, name, timed)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:13]) / CLK_TCK  # utime, stime


def start_run() -> str:
    """Print the command line, the machine and its load; returns the load note for the docs."""
    load = load_note()
    print(f"$ {command_line()}\n{machine()}, {load}", flush=True)
    return load


def command_line() -> str:
    """The exact command that produced the figures, for the output and the docs."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Goal:
    """An acceptance ratio of an issue, judged where it is measured, so a run says itself
    whether the goal holds instead of leaving the reader to compare figures."""

    what: str
    ratio: float
    target: float

    @property
    def met(self) -> bool:
        return self.ratio >= self.target

    def line(self) -> str:
        verdict = "met" if self.met else "missed"
        return f"goal: {self.what}: {self.ratio:.2f}x (target >= {self.target:g}x): {verdict}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_docs_section(name: str, body: str, path: Path = DOCS) -> None:
    """Replace the ``<!-- bench:name -->`` section of ``path`` (appended if missing)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else DOCS_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def docs_footer(load: str = "") -> str:
    """Machine, date and command lines shared by every section (``load``: see load_note)."""
    during = f" ({load} at the start of the run)" if load else ""
    return (f"Machine: {machine()}{during}. Date: {dt.date.today().isoformat()}.\n\n"
            f"Command:\n\n```\n{command_line()}\n```")


class TopicEnd:
    """Records written to ``topic`` so far: the sum of its partitions' end offsets (a
    worker's progress read at any moment, not at its once-a-second metrics report)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("w")})
        self.parts = [TopicPartition(topic, p) for p in range(partitions)]

    def __call__(self) -> int:
        return sum(self.consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1]
                   for tp in self.parts)

    def close(self) -> None:
        self.consumer.close()
