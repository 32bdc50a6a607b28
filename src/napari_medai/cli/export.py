"""``napari-medai export``: a label file out as NIfTI, NRRD, MHA, DICOM-SEG or RTSTRUCT.

The labels are placed on the grid of ``--like IMAGE`` (resampled, nearest
neighbour, when they are on another grid). DICOM outputs reference the series
IMAGE points at. A JSON provenance sidecar is written beside the output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_medai.core.io import exporters
from napari_medai.core.io.dicom_export import ALGORITHM_TYPES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export", help="save a label file on its scan's grid as NIfTI, NRRD, MHA, SEG or RTSTRUCT"
    )
    parser.add_argument(
        "labels", type=Path, help="label map (NIfTI, NRRD, MHA), or a DICOM-SEG/RTSTRUCT"
    )
    parser.add_argument(
        "--like", required=True, type=Path, help="the scan the labels belong to (DICOM for SEG)"
    )
    parser.add_argument("--out", required=True, type=Path, help="output file")
    parser.add_argument(
        "--format",
        choices=[exporter.name for exporter in exporters.EXPORTERS],
        help="default: from the suffix (.dcm: SEG)",
    )
    parser.add_argument(
        "--algorithm",
        choices=ALGORITHM_TYPES,
        default="auto",
        help="DICOM segment algorithm type (auto: AUTOMATIC if a model made it, else MANUAL)",
    )
    parser.add_argument("--model", help="name of the model that made the labels (DICOM outputs)")
    parser.add_argument(
        "--deidentify", action="store_true", help="PS3.15 basic profile on DICOM outputs"
    )
    parser.add_argument(
        "--new-uids",
        action="store_true",
        help="reference new UIDs when the source series has blank (anonymised) UIDs",
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help="DICOM-SEG as one JPEG-LS LABELMAP frame per slice (small; recent viewers only)",
    )
    parser.add_argument("--no-sidecar", action="store_true", help="skip the JSON sidecar")
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read, export, print the written paths and any warnings."""
    from napari_medai.cli.labels_input import read_labels
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.io.dicom_export import DicomExportConfig
    from napari_medai.core.io.export import ExportConfig, export_job
    from napari_medai.core.io.exporters import exporter_for
    from napari_medai.core.io.reading import read_volume_job

    kind = exporter_for(args.out, args.format).name
    image = run_with_bar(read_volume_job(args.like), f"reading {args.like.name}")
    labels = read_labels(args.labels, reference=image)
    config = ExportConfig(
        format=kind,
        dicom=DicomExportConfig(args.algorithm, args.deidentify, args.new_uids, args.compact),
        sidecar=not args.no_sidecar,
    )
    provenance = {"model": args.model} if args.model else {}
    job = export_job(
        labels,
        args.out,
        config,
        provenance,
        source=args.like,
        series_uid=image.metadata.get("series_uid"),
        overwrite=args.force,
    )
    result = run_with_bar(job, f"exporting {args.out.name}")
    for warning in [*labels.metadata.get("warnings", []), *result.warnings]:
        print(f"warning: {warning}")
    for path in result.paths:
        print(path)
    return 0
