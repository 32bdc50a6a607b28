"""The figures clinicians ask for, always with what they were computed on.

Accuracy, precision, recall and F1 per class and macro-averaged, one-vs-rest
ROC AUC per class (and macro) with the ROC curve points, and the confusion
matrix. Per-class counts come from MONAI's ``get_confusion_matrix`` and
``compute_confusion_matrix_metric``, AUC from ``compute_roc_auc``. The K x K
matrix and the ROC curve points are computed here: MONAI gives one-vs-rest
counts and the area only, and scikit-learn is not a dependency.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_roc_auc, get_confusion_matrix

from napari_medai.core.classification.config import ClassificationError

# Saving needs no torch; it lives in ``report`` so the dock can save without it.
from napari_medai.core.classification.report import metrics_csv, save_metrics  # noqa: F401


def spatial_split(
    positions: Sequence[float],
    test_fraction: float = 0.3,
    labels: Sequence[int] | None = None,
) -> tuple[list[int], list[int]]:
    """Indices of training and test examples, the test ones a block of neighbouring slices.

    ``positions`` is each example's slice position (e.g. its z index; add a
    large offset per scan to keep scans apart). The block covers
    ``test_fraction`` of the distinct positions, so neighbouring, nearly
    identical slices fall on the same side and cannot leak from training into
    the test. Without ``labels`` it is the highest positions; with them, the
    highest block whose examples hold every class while the rest still holds
    every class to train on. When no block does, it is the highest positions
    again, and the caller finds (and says) which classes the test lacks.
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
    starts = range(len(distinct) - count, -1, -1)  # the highest block first
    blocks = [_block(values, distinct[s], distinct[s + count - 1]) for s in starts]
    chosen = next((b for b in blocks if _holds_every_class(b, labels)), blocks[0])
    return np.flatnonzero(~chosen).tolist(), np.flatnonzero(chosen).tolist()


def _block(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Which examples lie on the positions ``low`` to ``high`` (inclusive)."""
    return (values >= low) & (values <= high)


def _holds_every_class(block: np.ndarray, labels: Sequence[int] | None) -> bool:
    """Whether both the ``block`` and the examples outside it hold every class (True unlabelled)."""
    if labels is None:
        return True
    classes = np.asarray(labels)
    every = set(np.unique(classes).tolist())
    return set(classes[block].tolist()) == every == set(classes[~block].tolist())


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
    A figure that cannot be computed is None, never 0: a class without
    positives (or without negatives) has no ROC AUC and no recall, a class
    never predicted no precision. ``missing_classes`` names the classes
    without a case and ``notes`` says in words what that leaves out.
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
        warnings.simplefilter("ignore")  # MONAI warns of 0/0; those figures become None below
        figures = {
            name: compute_confusion_matrix_metric(metric, counts).numpy()
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
            **{key: _figure(figures[key][column]) for key in ("precision", "recall", "f1")},
            "roc_auc": None if auc is None else round(auc, 4),
            "support": int(positives.sum()),
        }
    # Macro over the classes with cases; a 0/0 precision counts as 0 there, as scikit-learn does.
    present = [c for c, label in enumerate(classes) if (truth == label).any()]
    macro: dict[str, float | None] = {
        key: round(float(np.mean(np.nan_to_num(figures[key][present]))), 4)
        for key in ("precision", "recall", "f1")
    }
    macro["roc_auc"] = round(float(np.mean(aucs)), 4) if aucs else None
    missing = [class_names[c] for c in classes if not (truth == c).any()]
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
        "missing_classes": missing,
        "notes": _notes(missing, per_class),
    }


def _figure(value: float) -> float | None:
    """A figure rounded for reports; None where it is 0/0 (e.g. recall of an absent class)."""
    return None if np.isnan(value) else round(float(value), 4)


def _notes(missing: list[str], per_class: dict[str, dict[str, Any]]) -> list[str]:
    """Why some figures are absent or cannot judge the classifier, in words."""
    notes = []
    if missing:
        names = " or ".join(repr(n) for n in missing)
        notes.append(
            f"these cases hold no {names} example, so ROC AUC and the recall of {names} cannot "
            "be computed, and accuracy only counts the other class(es): the figures cannot "
            "judge the classifier; score it on cases that hold every class"
        )
    unpredicted = [name for name, row in per_class.items() if row["precision"] is None]
    unpredicted = [name for name in unpredicted if name not in missing]
    if unpredicted:
        names = " or ".join(repr(n) for n in unpredicted)
        notes.append(
            f"no case was called {names}, so its precision cannot be computed "
            "(it counts as 0 in the macro average)"
        )
    return notes
