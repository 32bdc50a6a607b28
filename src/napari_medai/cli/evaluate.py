"""``napari-medai evaluate``: Dice, IoU, HD95, ASSD and surface Dice per label, in mm (JSON).

Labels are matched by name when both maps name them, else by value; stderr says which, and
the JSON records it with the pairs and the labels left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from napari_medai.core.volume import LabelMap, Volume


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
    parser.add_argument(
        "--image", type=Path, help="the scan a DICOM-SEG or RTSTRUCT given above was drawn on"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the scores as one JSON object; the matching and warnings go to stderr."""
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.evaluation.metrics import EvaluationConfig, evaluate_job
    from napari_medai.core.files import atomic_write
    from napari_medai.core.io.reading import read_volume_job

    config = EvaluationConfig(args.tolerance)  # refuses a bad tolerance before any reading
    image = run_with_bar(read_volume_job(args.image), "reading") if args.image else None
    reference = _read(args.reference, image)
    prediction = _read(args.prediction, image)
    result = run_with_bar(evaluate_job(prediction, reference, config), "evaluating")
    for line in [result.matching.summary(), *(f"warning: {w}" for w in result.warnings)]:
        print(line, file=sys.stderr)
    summary = {
        "prediction": args.prediction.name,
        "reference": args.reference.name,
        **result.to_dict(),
    }
    text = json.dumps(summary, indent=2, allow_nan=False)
    if args.out is not None:
        atomic_write(args.out, lambda tmp: tmp.write_text(text, encoding="utf-8"), args.force)
    print(text)
    return 0


def _read(path: Path, image: Volume | None) -> LabelMap:
    """A label file; ``image`` places a DICOM-SEG or RTSTRUCT (other files keep their grid)."""
    from napari_medai.cli.labels_input import read_labels
    from napari_medai.core.io.dicom_derived import derived_kind

    return read_labels(path, reference=image if derived_kind(path) else None)
