"""What a handler hands the sinks, for any app's declared outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from torch import nn

import streaminfer as si
from streaminfer.streams.batch import Batch
from streaminfer.streams.worker import build_handler


def _handler(outputs: si.Outputs) -> object:
    settings = si.Settings()
    app = si.App("two", input=si.Input("events", schema="event"),
                 features=si.Features(si.array("features", 8)), model=nn.Linear(8, 2),
                 outputs=outputs)
    return build_handler(app, settings, app.build_model(settings))


def test_a_batch_without_events_writes_no_predictions() -> None:
    """A micro-batch can hold only labels: its (empty) outputs must not fail the lane."""
    handler = _handler(si.Outputs(["p_a", "p_b"]))
    written = handler.outputs(Batch.empty(), np.zeros(0, np.float32), 0)  # type: ignore[attr-defined]
    assert len(written.predictions) == 0
    assert written.predictions.outputs == {"p_a": [], "p_b": []}


def test_named_outputs_become_columns_in_order() -> None:
    handler = _handler(si.Outputs(["p_a", "p_b"]))
    batch = Batch([None, None], ["e1", "e2"], ["k1", "k2"], np.array([1, 2]))  # type: ignore[list-item]
    scores = np.array([[0.1, 0.9], [0.7, 0.3]], np.float32)
    written = handler.outputs(batch, scores, 5)  # type: ignore[attr-defined]
    assert written.predictions.outputs == {"p_a": [np.float32(0.1), np.float32(0.7)],
                                           "p_b": [np.float32(0.9), np.float32(0.3)]}


def test_a_built_in_apps_model_leaves_a_core_to_the_io_threads() -> None:
    """torch's default (a thread per core) made each tiny learning step fork a thread pool:
    5-7x the CPU per step. Every app's model gets the worker's thread policy instead."""
    code = ("import torch; from streaminfer.streams.app import load_app; "
            "from streaminfer.streams.settings import load_settings; "
            "s = load_settings(app='classifier', device='cpu'); "
            "load_app('classifier', s).build_model(s); print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert int(out.split()[-1]) == max(1, min(4, len(os.sched_getaffinity(0)) - 1))
