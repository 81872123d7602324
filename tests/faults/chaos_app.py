"""The built-in classifier with a model that misbehaves on demand (fault tests only).

``STREAMINFER_TEST_CHAOS_FILE`` names a file; its content is read on every forward pass:
``raise N`` raises on the next N passes, ``raise always`` on every pass, ``hang S`` sleeps S
seconds once; ``slow-checkpoint S``: the next checkpoint's ``state_dict`` takes S seconds
(once per worker); each new command (a new mtime) starts again. Empty or missing: a normal
model.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.app import App
from streaminfer.streams.apps import classifier
from streaminfer.streams.settings import Settings


class ChaosClassifier(OnlineClassifier):
    _seen = 0.0
    _left = 0
    _checkpoint_seen = 0.0

    def state_dict(self) -> dict[str, torch.Tensor]:
        path = os.environ.get("STREAMINFER_TEST_CHAOS_FILE", "")
        try:
            stat = os.stat(path)
            words = open(path).read().split()  # noqa: SIM115
        except OSError:
            words = []
        if words[:1] == ["slow-checkpoint"] and stat.st_mtime != self._checkpoint_seen:
            self._checkpoint_seen = stat.st_mtime
            marker = Path(path).with_name(f"checkpointing-{os.getpid()}")
            marker.write_text(str(time.time()))
            time.sleep(float(words[1]))
            marker.unlink()
        return super().state_dict()

    def predict(self, batch: Any) -> torch.Tensor:
        self._misbehave()
        return super().predict(batch)

    def _misbehave(self) -> None:
        path = os.environ.get("STREAMINFER_TEST_CHAOS_FILE", "")
        try:
            stat = os.stat(path)
        except OSError:
            return
        words = open(path).read().split()  # noqa: SIM115
        if stat.st_mtime != self._seen:
            self._seen = stat.st_mtime
            self._left = (1 << 30 if words[1:] == ["always"] else int(words[1])) if words else 0
            if words[:1] == ["hang"]:
                time.sleep(float(words[1]))
                self._left = 0
        if words[:1] == ["raise"] and self._left > 0:
            self._left -= 1
            raise RuntimeError("chaos: the model failed on purpose")


def app(settings: Settings) -> App:
    built = classifier.app(settings)
    built.model = lambda s: ChaosClassifier(s.num_features, seed=s.seed, device=s.device)
    return built
