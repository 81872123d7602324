"""Where a model runs, and how a host batch gets there and back.

Models keep their parameters on one device and take host (CPU) batches. :class:`Runner`
is the single place that copies a batch to the device (pinned memory + ``non_blocking`` on
CUDA, so the copy overlaps with queued kernels), runs under ``torch.inference_mode()`` with
optional autocast, and returns float32 CPU scores.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch

__all__ = ["Amp", "Runner", "autocast", "configure_threads", "resolve_device"]

Amp = Literal["off", "bf16", "fp16"]
_AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_threads_configured = False


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available else ``cpu``; explicit specs are checked, not guessed.

    Asking for CUDA on a machine without it is an error rather than a silent CPU fallback, so a
    misconfigured GPU worker fails at start instead of running 50x slower.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {spec!r}")
    return device


def configure_threads(num_threads: int | None = None) -> int:
    """Cap torch's CPU thread pools so inference does not starve the I/O threads.

    The default leaves one core for the Kafka/Redis clients and the event loop
    (``cpu_count - 1``, at least 1, at most 4: the models are small, more threads only add
    synchronisation). Idempotent; inter-op threads can be set only once per process.
    """
    global _threads_configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    wanted = num_threads if num_threads is not None else max(1, min(4, cores - 1))
    if wanted < 1:
        raise ValueError(f"num_threads must be >= 1, got {wanted}")
    torch.set_num_threads(wanted)
    if not _threads_configured:
        # Fails once any parallel work has run; the intra-op cap above is what matters.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        _threads_configured = True
    return wanted


def _check_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp not in get_args(Amp):
        raise ValueError(f"amp must be one of {list(get_args(Amp))}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; on CPU use amp='bf16' or 'off'")
    return _AMP_DTYPES[amp]


@contextlib.contextmanager
def autocast(device: torch.device, amp: str) -> Iterator[None]:
    """``torch.autocast`` for ``amp`` on ``device``; a no-op for ``"off"``."""
    dtype = _check_amp(amp, device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


class Runner:
    """Moves host batches to one device and runs inference there.

    Holds the device and AMP choice so every model treats them the same way. ``amp`` affects
    inference only; ``learn`` always runs in float32 (online steps are tiny, and fp16 gradients
    would need loss scaling).
    """

    def __init__(self, device: str | torch.device = "auto", amp: str = "off") -> None:
        self.device = resolve_device(device)
        _check_amp(amp, self.device)
        self.amp = amp

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy a host tensor to the device; pinned + non-blocking on CUDA."""
        if tensor.device == self.device:
            return tensor
        if self.is_cuda and tensor.device.type == "cpu":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def infer(self, fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
        """``fn(*inputs on device)`` under inference mode + autocast -> float32 CPU tensor."""
        with torch.inference_mode(), autocast(self.device, self.amp):
            out = fn(*(self.to_device(t) for t in inputs))
        # .cpu() synchronises with the stream, so the caller sees finished scores.
        return out.float().cpu()

    def __repr__(self) -> str:
        return f"Runner(device={str(self.device)!r}, amp={self.amp!r})"
