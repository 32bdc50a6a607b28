"""``napari-medai stats``: per label voxel count, volume in mL and the image values under it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stats`` sub-command."""
    parser = subparsers.add_parser(
        "stats", help="label volumes in mL and image statistics (HU for CT) per label"
    )
    parser.add_argument(
        "labels", type=Path, help="label map (NIfTI, NRRD, MHA), or a DICOM-SEG/RTSTRUCT"
    )
    parser.add_argument("--image", type=Path, help="scan for mean/std/min/max under each label")
    parser.add_argument("--csv", action="store_true", help="print CSV instead of JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one JSON object (or CSV) with a row per label."""
    from napari_medai.cli.labels_input import read_labels
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.evaluation.statistics import (
        label_statistics,
        statistics_csv,
        voxel_volume_mm3,
    )
    from napari_medai.core.io.reading import read_volume_job

    image = run_with_bar(read_volume_job(args.image), "reading") if args.image else None
    labels = read_labels(args.labels, reference=image)
    rows, warnings = label_statistics(labels, image)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.csv:
        sys.stdout.write(statistics_csv(rows))
        return 0
    summary = {
        "labels": args.labels.name,
        "image": args.image.name if args.image else None,
        "modality": image.modality if image is not None else None,
        "voxel_volume_mm3": voxel_volume_mm3(labels),
        "rows": [row.to_dict() for row in rows],
        "warnings": warnings,
    }
    print(json.dumps(summary, indent=2))
    return 0
