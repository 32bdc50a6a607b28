"""``napari-medai evaluate``: Dice, IoU, HD95, ASSD and surface Dice per label, in mm (JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate", help="compare a predicted label map with a reference (metrics in mm)"
    )
    parser.add_argument("prediction", type=Path, help="predicted label map")
    parser.add_argument("reference", type=Path, help="reference (ground truth) label map")
    parser.add_argument(
        "--tolerance", type=float, default=2.0, help="surface Dice tolerance in mm (default 2)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the scores as one JSON object."""
    from napari_medai.cli.labels_input import read_labels
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job
    from napari_medai.core.files import atomic_write

    reference = read_labels(args.reference)
    prediction = read_labels(args.prediction)
    job = evaluate_job(prediction, reference, EvaluationConfig(args.tolerance))
    result = run_with_bar(job, "evaluating")
    summary = {
        "prediction": args.prediction.name,
        "reference": args.reference.name,
        **result.to_dict(),
    }
    text = json.dumps(summary, indent=2)
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(text, encoding="utf-8"), args.force)
    print(text)
    return 0
