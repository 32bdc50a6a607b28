"""A classifier's figures written to files (torch-free, so napari's process can save them).

The figures come from :func:`~napari_medai.core.classification.metrics.classification_metrics`;
JSON keeps all of them, CSV the per-class table, the macro row, the notes on what
could not be computed and the confusion matrix.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from napari_medai.core.files import atomic_write


def metrics_csv(metrics: dict[str, Any]) -> str:
    """The per-class table, the macro row and the confusion matrix as CSV text."""
    out = io.StringIO()
    writer = csv.writer(out)
    on = metrics["computed_on"]
    writer.writerow(["computed on", on["description"], "cases", on["cases"]])
    writer.writerow(["accuracy", metrics["accuracy"]])
    for note in metrics.get("notes", []):
        writer.writerow(["note", note])
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
