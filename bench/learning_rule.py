"""How many labels per optimiser step: the adaptive rule's trade-off, offline (no Kafka).

A worker scores a micro-batch with the current model, then learns from the labels the
micro-batch brought (``streams.learning.step_size`` decides the steps). So two things matter:
how many events are served between model changes (the micro-batch, set by the input rate and
the batch cycle) and how many steps the labels are cut into. This replays river's Phishing
stream (1,250 rows) in micro-batches of fixed sizes (20 events is what a worker sees at
2,000 ev/s on an idle machine; 60-130 on this loaded 2-core one; 500 is saturation) and, for
each setting tried, reports:

* the progressive ROC AUC of the served scores at each micro-batch size;
* the learning cost per event at saturation: the time of the steps for a micro-batch of 500
  labels, divided by 1,000 records (events + labels), best of 5.

``--write-docs`` rewrites the ``<!-- bench:learning-rule -->`` section of docs/benchmarks.md
and the same table in docs/learning.md.

Usage: ``python bench/learning_rule.py --write-docs``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, docs_footer, load_note, markdown_table, write_docs_section
from learning import phishing

from streaminfer.models.classifier import OnlineClassifier
from streaminfer.streams.learning import step_size

LEARNING_DOC = ROOT / "docs" / "learning.md"
MICRO_BATCHES = (20, 60, 100, 130, 500, 1000)
#: labels of a saturated micro-batch (what ``bench/sync.py`` sees with learning on)
SATURATED = 1000
#: (optimizer, lr, batch_size, max_steps, one_step_labels); the first row is the old default,
#: the marked one the default.
SETTINGS = [
    ("adam", 0.05, 128, 0, 0),
    ("adam", 0.05, 8, 8, 0),
    ("sgd", 0.5, 8, 8, 0),
    ("adagrad", 0.3, 1, 0, 0),
    ("adagrad", 0.3, 8, 4, 0),
    ("adagrad", 0.3, 8, 8, 0),
    ("adagrad", 0.3, 4, 16, 0),
    ("adagrad", 0.3, 8, 8, 512),
    ("adagrad", 0.3, 8, 8, 1024),
    ("adagrad", 0.3, 8, 8, 2048),
]
DEFAULT = ("adagrad", 0.3, 8, 8, 1024)


def replay(x: np.ndarray, y: np.ndarray, micro_batch: int, optimizer: str, lr: float,
           batch_size: int, max_steps: int, one_step_labels: int) -> tuple[float, int]:
    """Progressive AUC and step count for the stream served in ``micro_batch`` events."""
    model = OnlineClassifier(x.shape[1], optimizer=optimizer, lr=lr, seed=7, device="cpu")
    served = np.zeros(len(y))
    steps = 0
    for start in range(0, len(y), micro_batch):
        end = min(start + micro_batch, len(y))
        served[start:end] = model.predict(x[start:end]).numpy()
        size = step_size(end - start, batch_size, max_steps, one_step_labels)
        for lo in range(start, end, size):
            model.learn(x[lo:min(lo + size, end)], y[lo:min(lo + size, end)])
            steps += 1
    return float(roc_auc_score(y, served)), steps


def saturation_us_per_record(x: np.ndarray, y: np.ndarray, optimizer: str, lr: float,
                             batch_size: int, max_steps: int, one_step_labels: int,
                             labels: int = SATURATED) -> float:
    """Learning time per record of a saturated micro-batch (``labels`` events + labels)."""
    model = OnlineClassifier(x.shape[1], optimizer=optimizer, lr=lr, seed=7, device="cpu")
    xs, ys = x[:labels], y[:labels]
    size = step_size(labels, batch_size, max_steps, one_step_labels)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for lo in range(0, labels, size):
            model.learn(xs[lo:lo + size], ys[lo:lo + size])
        best = min(best, time.perf_counter() - started)
    return best / (2 * labels) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = load_note()
    _, x, y = phishing()
    rows = []
    for setting in SETTINGS:
        aucs = [replay(x, y, mb, *setting) for mb in MICRO_BATCHES]
        cost = saturation_us_per_record(x, y, *setting)
        optimizer, lr, batch_size, max_steps, one_step = setting
        name = (f"{optimizer} lr {lr}, batch_size {batch_size}, max_steps {max_steps or 'none'}"
                f", one_step_labels {one_step or 'off'}")
        if setting == DEFAULT:
            name = f"**{name} (default)**"
        elif setting == SETTINGS[0]:
            name += " (old default rule and optimiser; zero-initialised output layer)"
        rows.append([name, *(f"{a:.4f} ({s})" for a, s in aucs), f"{cost:.2f}"])
        print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(
        ["setting", *(f"AUC (steps), {mb} ev/micro-batch" for mb in MICRO_BATCHES),
         "learning us/record at saturation"], rows)
    body = (
        "Adaptive learning rule, offline (no Kafka): river's Phishing stream (1,250 rows) "
        "scored in micro-batches of the given number of events, each followed by optimiser "
        "steps on its labels as `streams.learning.step_size` cuts them (steps of "
        "`batch_size`; more than `batch_size * max_steps` labels merge into `max_steps` "
        "larger steps, and into `one_step_labels // labels` steps past that). Model: logistic "
        "regression, output layer initialised to zero, seed 7. 20 events per micro-batch is "
        "what a worker sees at 2,000 ev/s on an idle machine; 30-130 on this loaded machine; "
        "500-1,000 at saturation (`bench/sync.py`), where the 1,250-row stream is only 2-3 "
        "micro-batches, so those AUC columns show little more than how far the first steps "
        "got. The last column is the steps' time for a "
        f"saturated micro-batch ({SATURATED:,} labels) per record (events + labels), best of "
        "5, one torch thread.\n\n" + table + "\n\n" + docs_footer(load))
    if args.write_docs:
        write_docs_section("learning-rule", body)
        write_docs_section("learning-rule", body, LEARNING_DOC)
    print(body)


if __name__ == "__main__":
    main()
