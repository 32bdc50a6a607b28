"""The figures clinicians ask for, always with what they were computed on.

Accuracy, precision, recall and F1 per class and macro-averaged, one-vs-rest
ROC AUC per class (and macro) with the ROC curve points, and the confusion
matrix. Per-class counts come from MONAI's ``get_confusion_matrix`` and
``compute_confusion_matrix_metric``, AUC from ``compute_roc_auc``. The K x K
matrix and the ROC curve points are computed here: MONAI gives one-vs-rest
counts and the area only, and scikit-learn is not a dependency.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix

from napari_medai.core.classification.config import ClassificationError
from napari_medai.core.files import atomic_write


def spatial_split(
    positions: Sequence[float], test_fraction: float = 0.3
) -> tuple[list[int], list[int]]:
    """Indices of training and test examples, the test ones one contiguous block.

    ``positions`` is each example's slice position (e.g. its z index; add a
    large offset per scan to keep scans apart). The highest positions form the
    test block, so neighbouring, nearly identical slices fall on the same side
    and cannot leak from training into the test.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ClassificationError(f"the test fraction must be between 0 and 1, not {test_fraction}")
    values = np.asarray(positions, dtype=np.float64)
    distinct = np.unique(values)
    if len(distinct) < 2:
        raise ClassificationError(
            "every example comes from the same slice; a spatially separate split needs examples "
            "from at least two slices"
        )
    count = min(max(1, int(round(test_fraction * len(distinct)))), len(distinct) - 1)
    cutoff = distinct[-count]
    train = [i for i, v in enumerate(values) if v < cutoff]
    test = [i for i, v in enumerate(values) if v >= cutoff]
    return train, test


def roc_curve(truth: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """False and true positive rates at every distinct score threshold (one-vs-rest)."""
    order = np.argsort(-scores, kind="stable")
    truth, scores = truth[order].astype(bool), scores[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tp, fp = np.cumsum(truth)[last], np.cumsum(~truth)[last]
    positives, negatives = max(int(truth.sum()), 1), max(int((~truth).sum()), 1)
    return {
        "fpr": [0.0, *(fp / negatives).round(6).tolist()],
        "tpr": [0.0, *(tp / positives).round(6).tolist()],
        "thresholds": [1.0, *scores[last].round(6).tolist()],
    }


def classification_metrics(
    truth: Sequence[int],
    probabilities: np.ndarray,
    class_names: dict[int, str],
    computed_on: str,
) -> dict[str, Any]:
    """Every figure for true classes ``truth`` and (N, K) predicted ``probabilities``.

    ``computed_on`` says which examples these are (e.g. "boxes on slices
    15-29, spatially separate from training"); it is reported with the counts.
    A class without positives (or without negatives) has no ROC AUC (None).
    """
    truth = np.asarray(truth, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = sorted(class_names)
    k = len(classes)
    if len(truth) == 0:
        raise ClassificationError("no examples to compute metrics on")
    if probabilities.shape != (len(truth), k):
        raise ClassificationError(
            f"{probabilities.shape[-1]} probabilities per example for {k} classes"
        )
    predicted = probabilities.argmax(1)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (truth, predicted), 1)
    one_hot = lambda values: torch.nn.functional.one_hot(torch.from_numpy(values), k).float()  # noqa: E731
    counts = get_confusion_matrix(one_hot(predicted), one_hot(truth)).sum(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figures = {
            name: compute_confusion_matrix_metric(metric, counts).nan_to_num(0.0).numpy()
            for name, metric in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1 score"),
            )
        }
    per_class: dict[str, dict[str, Any]] = {}
    aucs: list[float] = []
    curves: dict[str, dict[str, list[float]]] = {}
    for column, label in enumerate(classes):
        positives = truth == label
        auc = None
        if 0 < positives.sum() < len(truth):
            auc = float(
                compute_roc_auc(
                    torch.from_numpy(probabilities[:, column]), torch.from_numpy(positives * 1)
                )
            )
            aucs.append(auc)
            curves[class_names[label]] = roc_curve(positives, probabilities[:, column])
        per_class[class_names[label]] = {
            "precision": round(float(figures["precision"][column]), 4),
            "recall": round(float(figures["recall"][column]), 4),
            "f1": round(float(figures["f1"][column]), 4),
            "roc_auc": None if auc is None else round(auc, 4),
            "support": int(positives.sum()),
        }
    present = [c for c, label in enumerate(classes) if (truth == label).any()]
    macro = {
        key: round(float(np.mean([figures[key][c] for c in present])), 4)
        for key in ("precision", "recall", "f1")
    }
    macro["roc_auc"] = round(float(np.mean(aucs)), 4) if aucs else None
    return {
        "computed_on": {
            "description": computed_on,
            "cases": int(len(truth)),
            "per_class": {class_names[c]: int((truth == c).sum()) for c in classes},
        },
        "accuracy": round(float(np.trace(matrix) / len(truth)), 4),
        "macro": macro,
        "per_class": per_class,
        "confusion_matrix": {
            "classes": [class_names[c] for c in classes],
            "rows_true_columns_predicted": matrix.tolist(),
        },
        "roc_curves": curves,
    }


def metrics_csv(metrics: dict[str, Any]) -> str:
    """The per-class table, the macro row and the confusion matrix as CSV text."""
    out = io.StringIO()
    writer = csv.writer(out)
    on = metrics["computed_on"]
    writer.writerow(["computed on", on["description"], "cases", on["cases"]])
    writer.writerow(["accuracy", metrics["accuracy"]])
    columns = ["precision", "recall", "f1", "roc_auc"]
    writer.writerow(["class", *columns, "support"])
    for name, row in metrics["per_class"].items():
        writer.writerow([name, *(row[c] for c in columns), row["support"]])
    writer.writerow(["macro", *(metrics["macro"][c] for c in columns), on["cases"]])
    matrix = metrics["confusion_matrix"]
    writer.writerow([])
    writer.writerow(["true \\ predicted", *matrix["classes"]])
    for name, row in zip(matrix["classes"], matrix["rows_true_columns_predicted"]):
        writer.writerow([name, *row])
    return out.getvalue()


def save_metrics(metrics: dict[str, Any], base: Path, overwrite: bool = False) -> list[Path]:
    """Write ``<base>.json`` and ``<base>.csv`` atomically; returns both paths."""
    base = Path(base)
    paths = [base.with_name(base.name + ".json"), base.with_name(base.name + ".csv")]
    texts = [json.dumps(metrics, indent=2), metrics_csv(metrics)]
    for path, text in zip(paths, texts):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8"), overwrite)
    return paths
