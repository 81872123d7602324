"""Progressive (test-then-train) ROC AUC on river's Phishing stream: streaminfer vs river, sklearn.

Every learner sees the 1250 rows of ``river.datasets.Phishing`` once, in order, and for each
row first scores it, then learns its label. The AUC over all served scores is the streaming
equivalent of a held-out score. Rows:

* streaminfer ``OnlineClassifier`` in-process, with the configuration of
  ``tests/test_online_learning.py`` (logistic regression, sgd, lr 0.1, seed 7, one row per step),
  and with the model's own defaults (adam, lr 0.05);
* river ``StandardScaler | LogisticRegression``, ``HoeffdingTreeClassifier``, ``GaussianNB``;
* scikit-learn ``SGDClassifier(loss="log_loss")`` with ``partial_fit`` one row at a time, behind
  a ``StandardScaler`` updated with ``partial_fit`` (scores use the scaler as it was before the
  row, so nothing is learned from a row before it is scored);
* optionally (``--pipeline``) the full pipeline through Kafka, as measured by
  ``tests/test_online_learning.py`` (run with pytest ``-s``; its printed line is parsed).

``--write-docs`` rewrites the ``<!-- bench:learning -->`` section of docs/benchmarks.md and the
same table in docs/learning.md.

Usage: ``python bench/learning.py --pipeline --write-docs``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    ROOT,
    docs_footer,
    load_note,
    markdown_table,
    write_docs_section,
)

LEARNING_DOC = ROOT / "docs" / "learning.md"
PIPELINE_TEST = "tests/test_online_learning.py"
PIPELINE_COMMAND = f"python3 -m pytest -q -s {PIPELINE_TEST}"
_PIPELINE_LINE = re.compile(
    r"phishing progressive AUC: pipeline (?P<pipeline>[0-9.]+), in-process same timing "
    r"(?P<same>[0-9.]+), sequential (?P<sequential>[0-9.]+)"
)

Rows = list[dict[str, float]]


@dataclass
class Result:
    """One learner's progressive score over the stream."""

    name: str
    auc: float
    us_per_event: float | None
    note: str = ""


def phishing() -> tuple[Rows, np.ndarray, np.ndarray]:
    """The stream as river dicts, and as a matrix with columns in sorted name order (the order
    ``tests/test_online_learning.py`` publishes them in)."""
    from river import datasets

    pairs = list(datasets.Phishing())
    dicts = [{k: float(v) for k, v in x.items()} for x, _ in pairs]
    names = sorted(dicts[0])
    x = np.array([[d[n] for n in names] for d in dicts], np.float32)
    y = np.array([float(label) for _, label in pairs], np.float32)
    return dicts, x, y


def timed(name: str, run: Callable[[], list[float]], y: np.ndarray, note: str = "") -> Result:
    started = time.perf_counter()
    scores = run()
    seconds = time.perf_counter() - started
    return Result(name, float(roc_auc_score(y, scores)), seconds / len(y) * 1e6, note)


def streaminfer_scores(x: np.ndarray, y: np.ndarray, **config: Any) -> list[float]:
    from streaminfer.models.factory import create_model

    model = create_model("classifier", num_features=x.shape[1], device="cpu", **config)
    scores = []
    for i in range(len(y)):
        scores.append(float(model.predict(x[i : i + 1])[0]))
        model.learn(x[i : i + 1], y[i : i + 1])
    return scores


def river_scores(model: Any, rows: Rows, y: np.ndarray) -> list[float]:
    scores = []
    for features, label in zip(rows, y.tolist(), strict=True):
        proba = model.predict_proba_one(features)
        scores.append(float(proba.get(True, proba.get(1, 0.5))) if proba else 0.5)
        model.learn_one(features, bool(label))
    return scores


def sklearn_scores(x: np.ndarray, y: np.ndarray, seed: int) -> list[float]:
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    scaler, clf = StandardScaler(), SGDClassifier(loss="log_loss", random_state=seed)
    scores, fitted = [], False
    for i in range(len(y)):
        row = x[i : i + 1].astype(np.float64)
        if fitted:
            scores.append(float(clf.predict_proba(scaler.transform(row))[0, 1]))
        else:
            scores.append(0.5)
        scaler.partial_fit(row)
        clf.partial_fit(scaler.transform(row), y[i : i + 1].astype(int), classes=[0, 1])
        fitted = True
    return scores


def in_process(rows: Rows, x: np.ndarray, y: np.ndarray) -> list[Result]:
    from river import linear_model, naive_bayes, preprocessing, tree

    return [
        timed("streaminfer OnlineClassifier (sgd, lr 0.1, seed 7; the test's config)",
              lambda: streaminfer_scores(x, y, optimizer="sgd", lr=0.1, seed=7), y),
        timed("streaminfer OnlineClassifier (model defaults: adam, lr 0.05, seed 7)",
              lambda: streaminfer_scores(x, y, seed=7), y),
        timed("river `StandardScaler() \\| LogisticRegression()`",
              lambda: river_scores(preprocessing.StandardScaler()
                                   | linear_model.LogisticRegression(), rows, y), y),
        timed("river HoeffdingTreeClassifier",
              lambda: river_scores(tree.HoeffdingTreeClassifier(), rows, y), y),
        timed("river GaussianNB", lambda: river_scores(naive_bayes.GaussianNB(), rows, y), y),
        timed('sklearn StandardScaler + SGDClassifier(loss="log_loss"), partial_fit per row',
              lambda: sklearn_scores(x, y, seed=7), y),
    ]


def through_kafka(timeout_s: float) -> list[Result]:
    """Run the pipeline test (needs Kafka and Redis up) and read the AUCs it prints."""
    print(f"running {PIPELINE_COMMAND} (about a minute) ...", flush=True)
    proc = subprocess.run(PIPELINE_COMMAND.split(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    match = _PIPELINE_LINE.search(proc.stdout)
    if proc.returncode != 0 or match is None:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise SystemExit(f"{PIPELINE_COMMAND} failed (exit {proc.returncode}):\n{tail}")
    return [
        Result("streaminfer worker through Kafka (events + feedback topics, join, learn)",
               float(match["pipeline"]), None,
               "served scores read from the predictions topic"),
        Result("streaminfer OnlineClassifier in-process, scoring each row after as many updates "
               "as the worker had made", float(match["same"]), None, "from the same test"),
    ]


def render(results: list[Result], pipeline: bool) -> str:
    rows = [(r.name, f"{r.auc:.4f}",
             f"{r.us_per_event:,.0f}" if r.us_per_event is not None else "", r.note)
            for r in results]
    table = markdown_table(["learner", "progressive ROC AUC", "us/event (predict + learn)",
                            "note"], rows)
    where = (f"The Kafka rows come from `{PIPELINE_COMMAND}` (Kafka and Redis up), run by this "
             "script." if pipeline else
             f"The full pipeline through Kafka was not run this time (`--pipeline` runs "
             f"`{PIPELINE_COMMAND}`).")
    return (f"River's bundled Phishing stream (1250 rows, 9 features, labels in order), "
            f"test-then-train: each row is scored, then learned, before the next. ROC AUC over "
            f"all served scores (scikit-learn `roc_auc_score`). {where} The time column is one "
            f"row per call on a small shared machine: it shows per-call overhead (torch's is "
            f"large), not what a worker pays, since a worker scores whole batches and learns "
            f"`STREAMINFER_LEARN_BATCH_SIZE` rows per step.\n\n{table}")


def write_learning_doc(table_body: str) -> None:
    """The same section in docs/learning.md (it has its own markers)."""
    if not LEARNING_DOC.exists():
        print(f"  ({LEARNING_DOC} missing: only docs/benchmarks.md was written)")
        return
    write_docs_section("learning", table_body, LEARNING_DOC)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Progressive ROC AUC on river's Phishing stream: streaminfer's online "
        "classifier against river and scikit-learn learners (test-then-train).")
    parser.add_argument("--pipeline", action="store_true",
                        help=f"also run {PIPELINE_COMMAND} (needs Kafka and Redis up) and "
                        "report the AUC of the scores the worker served")
    parser.add_argument("--pipeline-timeout", type=float, default=600.0,
                        help="seconds to allow the pipeline test [default 600]")
    parser.add_argument("--write-docs", action="store_true",
                        help="rewrite the bench:learning section of docs/benchmarks.md and "
                        "docs/learning.md")
    args = parser.parse_args()

    load = load_note()
    rows, x, y = phishing()
    streaminfer_scores(x[:50], y[:50])  # warm up: torch import and first-call costs
    results = in_process(rows, x, y)
    if args.pipeline:
        results = through_kafka(args.pipeline_timeout) + results
    body = render(results, args.pipeline)
    print(body)
    if args.write_docs:
        section = f"## Online learning (`bench/learning.py`)\n\n{body}\n\n{docs_footer(load)}"
        write_docs_section("learning", section)
        write_learning_doc(f"{body}\n\n{docs_footer(load)}")
        print("wrote docs/benchmarks.md and docs/learning.md (bench:learning sections)")


if __name__ == "__main__":
    main()
