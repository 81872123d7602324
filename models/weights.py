"""Read model weights defensively: safetensors only, sha256 checked, sizes bounded first.

Checkpoints, registry versions and published parameters can come from places an attacker may
write to (a shared disk, a Redis, a bucket). A pickle there would run code on load, so weights
are only ever parsed as safetensors. Before anything is allocated, the file or buffer size is
compared with ``max_bytes``, the sha256 (when the manifest records one) is verified, and the
header is read and checked: every tensor's shape times its dtype's size must equal its byte
range, and the ranges must lie inside the data. A header claiming a ``[2**40, 2**40]`` tensor
is refused with the tensor's name instead of failing an allocation.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load

from streaminfer.errors import ModelError

__all__ = ["MAX_WEIGHTS_BYTES", "check_header", "load_weights", "load_weights_file",
           "sha256_hex"]

#: Default bound on one set of weights (``Settings.max_model_bytes``): 4 GiB.
MAX_WEIGHTS_BYTES = 4 * 1024**3
_MAX_HEADER_BYTES = 16 * 1024 * 1024
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_header(head: bytes, size: int, *, where: str, max_bytes: int = MAX_WEIGHTS_BYTES,
                 error: type[ModelError] = ModelError) -> dict[str, dict[str, Any]]:
    """The tensors ``{name: {"dtype", "shape"}}`` that a safetensors blob of ``size`` bytes
    starting with ``head`` declares; raises ``error`` (naming ``where``) if the blob is over
    ``max_bytes`` or its header is malformed, lies about sizes or points outside the data."""
    if size > max_bytes:
        raise error(f"{where}: weights are {size} bytes, over the limit of {max_bytes} "
                    "(max_model_bytes)")
    if size < 8:
        raise error(f"{where}: not a safetensors file ({size} bytes)")
    (length,) = struct.unpack("<Q", head[:8])
    if length > min(size - 8, _MAX_HEADER_BYTES) or len(head) < 8 + length:
        raise error(f"{where}: not a safetensors file (header length {length} does not fit "
                    f"in {size} bytes)")
    try:
        header = json.loads(head[8:8 + length])
    except ValueError:
        raise error(f"{where}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise error(f"{where}: not a safetensors file (header is not an object)")
    data_size = size - 8 - length
    out: dict[str, dict[str, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        out[name] = _check_entry(name, info, data_size, where, error)
    return out


def _check_entry(name: str, info: Any, data_size: int, where: str,
                 error: type[ModelError]) -> dict[str, Any]:
    try:
        dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        itemsize = _ITEMSIZE[dtype]
        if not all(isinstance(d, int) and d >= 0 for d in [*shape, start, end]):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise error(f"{where}: tensor {name!r} has a malformed header entry") from None
    nbytes = math.prod(shape) * itemsize
    if nbytes != end - start or not 0 <= start <= end <= data_size:
        raise error(f"{where}: tensor {name!r} claims shape {shape} ({nbytes} bytes) but "
                    f"bytes {start}..{end} of {data_size}: refusing it")
    return {"dtype": dtype, "shape": shape}


def _check_sha(actual: str, expected: str | None, where: str, error: type[ModelError]) -> None:
    if expected is not None and actual != expected:
        raise error(f"{where}: sha256 of the weights is {actual}, the manifest says "
                    f"{expected}: refusing corrupt or altered weights")


def load_weights(data: bytes, *, where: str, sha256: str | None = None,
                 max_bytes: int = MAX_WEIGHTS_BYTES,
                 error: type[ModelError] = ModelError) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors buffer, after the size, sha256 and header checks."""
    if len(data) > max_bytes:  # before hashing a huge buffer
        check_header(b"", len(data), where=where, max_bytes=max_bytes, error=error)
    _check_sha(sha256_hex(data), sha256, where, error)
    check_header(data[:8 + _MAX_HEADER_BYTES], len(data), where=where, max_bytes=max_bytes,
                 error=error)
    try:
        return safetensors_load(data)
    except SafetensorError as exc:
        raise error(f"{where}: weights unreadable: {exc}") from None


def load_weights_file(path: str | Path, *, sha256: str | None = None,
                      max_bytes: int = MAX_WEIGHTS_BYTES,
                      error: type[ModelError] = ModelError) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; its size is checked before a byte is read, and it
    is read once, so what was hashed is what is parsed."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            check_header(b"", size, where=str(path), max_bytes=max_bytes, error=error)
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read weights: {exc}") from None
    return load_weights(data, where=str(path), sha256=sha256, max_bytes=max_bytes, error=error)
