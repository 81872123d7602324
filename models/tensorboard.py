"""Scalars (progressive AUC, log-loss, RMSE...) to TensorBoard, or nowhere when not asked for.

The worker calls :meth:`ScalarLogger.log` after every batch; writing an event per batch would
bloat the event file and cost time on the hot path, so it writes at most every ``every_s``
seconds and keeps the last skipped values for :meth:`ScalarLogger.close` to write, so the final
numbers always reach the chart. With ``log_dir=None`` every call is a no-op, and the
``tensorboard`` package is not even imported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ScalarLogger"]


class ScalarLogger:
    """Rate-limited ``SummaryWriter.add_scalar``; tags are ``<prefix>/<name>`` (or ``<name>``)."""

    def __init__(
        self,
        log_dir: str | Path | None,
        *,
        every_s: float = 10.0,
        prefix: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError(f"every_s must be >= 0, got {every_s}")
        self.log_dir = None if log_dir is None else Path(log_dir)
        self.every_s, self.prefix, self._clock = every_s, prefix, clock
        self._last_at: float | None = None
        self._pending: tuple[int, dict[str, float]] | None = None
        self._writer: Any = None
        if self.log_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # torch's module needs the tensorboard package
                raise ImportError(
                    f"TensorBoard logging to {self.log_dir} needs `pip install tensorboard`: {exc}"
                ) from exc
            self._writer = SummaryWriter(log_dir=str(self.log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def log(self, step: int, scalars: Mapping[str, float], *, force: bool = False) -> bool:
        """Record ``scalars`` at ``step`` if ``every_s`` has passed (or ``force``); True if written.

        Non-finite values (e.g. AUC before both classes were seen) are left out, not drawn.
        """
        if self._writer is None:
            return False
        now = self._clock()
        if not force and self._last_at is not None and now - self._last_at < self.every_s:
            self._pending = (step, dict(scalars))
            return False
        self._write(step, scalars)
        self._last_at = now
        return True

    def _write(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            value = float(value)
            if math.isfinite(value):
                tag = f"{self.prefix}/{name}" if self.prefix else name
                self._writer.add_scalar(tag, value, global_step=step)
        self._pending = None

    def flush(self) -> None:
        """Write the values held back by the rate limit, and push events to disk."""
        if self._writer is None:
            return
        if self._pending is not None:
            self._write(*self._pending)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; further calls to :meth:`log` do nothing."""
        if self._writer is None:
            return
        self.flush()
        self._writer.close()
        self._writer = None

    def __enter__(self) -> ScalarLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ScalarLogger(log_dir={self.log_dir}, every_s={self.every_s})"
