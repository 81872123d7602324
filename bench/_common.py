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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connectors.avro import RecordCodec  # noqa: E402
from connectors.kafka import make_producer  # noqa: E402
from connectors.publish import PublishReport, publish_chunks  # noqa: E402
from connectors.sources.synthetic import SyntheticClassifier  # noqa: E402

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
    """Create ``names`` and wait until the broker confirms them."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=30)


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


def command_line() -> str:
    """The exact command that produced the figures, for the output and the docs."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(ROOT)
    return shlex.join(["python", str(script), *sys.argv[1:]])


def rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else 0.0


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
