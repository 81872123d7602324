"""Save and restore models as safetensors + a JSON manifest; never pickle.

Layout: ``save(model, root)`` writes one directory per checkpoint,
``root/<name>-<UTC time>-u<updates>/`` holding ``<name>.safetensors`` and ``manifest.json``.
It is built under a temporary name in ``root`` and renamed into place, so a reader (or
:func:`latest`) never sees half a checkpoint, even if the writer dies mid-way.

The manifest says what a human or the worker needs without loading tensors: model name,
version, update counter, the config that rebuilds the model, its vocabulary (recommender),
creation time, and ``extra`` (whatever the caller passes, e.g. the input offsets the weights
have seen, so a restarted worker can resume from them), and the sha256 of the tensors file.

Loading never unpickles: tensors are read with safetensors after the checks of
:mod:`streaminfer.models.weights` (size bound, sha256, header sanity).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from streaminfer.errors import CheckpointError, ConfigError
from streaminfer.models.base import Model, ModelVersion
from streaminfer.models.factory import create_model
from streaminfer.models.module import TorchModel, qualified_name
from streaminfer.models.weights import (
    MAX_WEIGHTS_BYTES,
    load_weights,
    load_weights_file,
    sha256_hex,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "build_manifest",
    "check_fits",
    "checkpoints",
    "latest",
    "load",
    "load_bytes",
    "load_into",
    "model_class",
    "prune",
    "read_manifest",
    "read_tensors",
    "save",
    "save_bytes",
]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def build_manifest(
    model: Model, extra_manifest: dict[str, Any] | None = None, *, now: float | None = None
) -> dict[str, Any]:
    """The manifest :func:`save` writes, as a dict; raises ``ValueError`` if it is not JSON-able.

    Shared with the byte-level helpers so a checkpoint kept elsewhere (e.g. in Redis) describes
    the model exactly as a checkpoint directory does.
    """
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, UTC)
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": model.name,
        "model_class": model_class(model),
        "version": str(model.version),
        "base_version": model.version.base,
        "updates": model.version.updates,
        "config": model.config(),
        "created": stamp.isoformat(),
        "created_unix": now,
        "tensors": f"{model.name}.safetensors",
        **model.manifest_extra(),
        "extra": dict(extra_manifest or {}),
    }
    _manifest_text(manifest)
    return manifest


def _manifest_text(manifest: dict[str, Any]) -> str:
    try:
        return json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra_manifest must be JSON-serialisable: {exc}") from None


def _tensors(model: Model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _weights(model: Model, manifest: dict[str, Any]) -> bytes:
    """``model``'s safetensors bytes; records their sha256 in ``manifest``."""
    weights = safetensors_save(_tensors(model), metadata={"name": model.name})
    manifest["sha256"] = sha256_hex(weights)
    return weights


def save(model: Model, root: str | Path, extra_manifest: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint of ``model`` under ``root``; returns the checkpoint directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(model, extra_manifest)
    weights = _weights(model, manifest)
    manifest_text = _manifest_text(manifest)
    stamp = datetime.fromtimestamp(manifest["created_unix"], UTC)
    final = root / f"{model.name}-{stamp:%Y%m%dT%H%M%S%fZ}-u{model.version.updates}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}-", suffix=".tmp", dir=root))
    try:
        _write_synced(tmp / manifest["tensors"], weights)
        _write_synced(tmp / MANIFEST, manifest_text.encode("utf-8"))
        _fsync_dir(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    return final


def _checkpoint_dir(path: Path) -> Path:
    if path.is_file():
        path = path.parent
    if not (path / MANIFEST).is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: it has no {MANIFEST}")
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path`` (its directory or any file in it)."""
    ckpt = _checkpoint_dir(Path(path))
    manifest = json.loads((ckpt / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{ckpt}: checkpoint format {manifest.get('format')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    return manifest


def read_tensors(path: str | Path, *, max_bytes: int = MAX_WEIGHTS_BYTES
                 ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(manifest, tensors)`` of the checkpoint at ``path``, after the checks of
    :func:`~streaminfer.models.weights.load_weights_file`; raises :class:`CheckpointError`."""
    ckpt = _checkpoint_dir(Path(path))
    manifest = read_manifest(ckpt)
    name = manifest.get("tensors")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
        raise CheckpointError(f"{ckpt}: manifest names tensors file {name!r}; only a "
                              "*.safetensors file inside the checkpoint is read")
    return manifest, load_weights_file(ckpt / name, sha256=manifest.get("sha256"),
                                       max_bytes=max_bytes, error=CheckpointError)


def load(
    path: str | Path, *, device: str | torch.device = "auto", amp: str | None = None,
    into: Model | None = None, max_bytes: int = MAX_WEIGHTS_BYTES,
) -> tuple[Model, dict[str, Any]]:
    """Rebuild the model saved at ``path`` on ``device``; returns ``(model, manifest)``.

    ``amp`` overrides the saved AMP mode (e.g. a GPU checkpoint with fp16 loaded on CPU).
    ``into``: load the weights into this model (an app's own) instead of building a built-in
    model from the manifest's config.
    """
    manifest, tensors = read_tensors(path, max_bytes=max_bytes)
    return _rebuild(manifest, tensors, device=device, amp=amp, into=into), manifest


def model_class(model: Model) -> str:
    """What a checkpoint of ``model`` holds: the user's ``nn.Module`` class for a wrapped
    module, else the model's own class (``package.module.Class``)."""
    return qualified_name(model.module if isinstance(model, TorchModel) else model)


def check_fits(manifest: dict[str, Any], model: Model, where: str | Path) -> None:
    """Refuse a checkpoint of another model class than ``model`` (raises ``ConfigError``)."""
    saved = manifest.get("model_class")
    if saved is not None and saved != model_class(model):
        raise ConfigError(f"{where} holds a {saved} model, but the app's model is "
                          f"{model_class(model)}")


def load_into(model: Model, path: str | Path, *, max_bytes: int = MAX_WEIGHTS_BYTES
              ) -> dict[str, Any]:
    """Load the checkpoint at ``path`` into ``model`` (the app's freshly built model);
    returns the manifest. Only tensors are read (safetensors), nothing is unpickled."""
    manifest = read_manifest(path)
    check_fits(manifest, model, path)
    _, tensors = read_tensors(path, max_bytes=max_bytes)
    _restore(model, manifest, tensors)
    return manifest


def _restore(model: Model, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Model:
    model.load_state_dict(tensors)
    model.version = ModelVersion.parse(manifest["version"])
    return model


def _rebuild(
    manifest: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    *,
    device: str | torch.device,
    amp: str | None,
    into: Model | None = None,
) -> Model:
    if into is not None:
        check_fits(manifest, into, "checkpoint")
        return _restore(into, manifest, tensors)
    config = dict(manifest["config"])
    if amp is not None:
        config["amp"] = amp
    model = create_model(manifest["name"], device=device, **config)
    return _restore(model, manifest, tensors)


def save_bytes(
    model: Model, extra_manifest: dict[str, Any] | None = None
) -> tuple[dict[str, Any], bytes]:
    """``(manifest, safetensors bytes)`` of ``model``: a checkpoint for a store without files."""
    manifest = build_manifest(model, extra_manifest)
    return manifest, _weights(model, manifest)


def load_bytes(
    manifest: dict[str, Any],
    data: bytes,
    *,
    device: str | torch.device = "auto",
    amp: str | None = None,
    into: Model | None = None,
    max_bytes: int = MAX_WEIGHTS_BYTES,
) -> Model:
    """Inverse of :func:`save_bytes`: rebuild the model from its manifest and tensor bytes
    (or load them ``into`` a given model) after the size, sha256 and header checks."""
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format {manifest.get('format')!r} is not supported "
            f"(expected {FORMAT_VERSION})"
        )
    tensors = load_weights(data, where=f"checkpoint of {manifest.get('name')!r}",
                           sha256=manifest.get("sha256"), max_bytes=max_bytes,
                           error=CheckpointError)
    return _rebuild(manifest, tensors, device=device, amp=amp, into=into)


def _checkpoints(root: Path, name: str | None) -> list[tuple[float, str, Path]]:
    found = []
    if not root.is_dir():
        return found
    for child in root.iterdir():
        if child.name.startswith(".") or not (child / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(child)
        except (ValueError, OSError):
            continue  # unreadable or foreign format: never "latest"
        if name is None or manifest.get("name") == name:
            found.append((float(manifest.get("created_unix", 0.0)), child.name, child))
    return sorted(found)


def checkpoints(root: str | Path, name: str | None = None) -> list[Path]:
    """Complete checkpoint directories under ``root`` (optionally of ``name``), oldest first."""
    return [path for _, _, path in _checkpoints(Path(root), name)]


def latest(root: str | Path, name: str | None = None) -> Path | None:
    """Newest complete checkpoint directory under ``root`` (optionally of model ``name``)."""
    found = _checkpoints(Path(root), name)
    return found[-1][2] if found else None


def prune(root: str | Path, keep: int, name: str | None = None) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns what was removed."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    doomed = [path for _, _, path in _checkpoints(Path(root), name)[:-keep]]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
