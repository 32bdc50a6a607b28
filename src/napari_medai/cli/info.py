"""``napari-medai info``: what a scan is and where it sits in the world."""

from __future__ import annotations

import argparse
import json

from napari_medai.cli.progress import run_with_bar


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``info`` sub-command."""
    parser = subparsers.add_parser("info", help="read a scan and print its grid and warnings")
    parser.add_argument("path", help="NIfTI, NRRD, MHA/MHD, a DICOM file, folder or .zip")
    parser.add_argument("--series", help="SeriesInstanceUID to pick in a multi-series DICOM source")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one JSON object describing the scan."""
    # Imported here, not when the parser is built: ``--help`` stays fast.
    from napari_medai.core.io.reading import read_volume_job

    volume = run_with_bar(read_volume_job(args.path, series_uid=args.series), "reading")
    summary = {
        "name": volume.metadata.get("name"),
        "modality": volume.modality,
        "shape_zyx": list(volume.array.shape),
        "dtype": str(volume.array.dtype),
        "geometry_zyx_lps_mm": volume.geometry.to_dict(),
        "warnings": volume.metadata.get("warnings", []),
        "other_series": volume.metadata.get("other_series", []),
    }
    print(json.dumps(summary, indent=2, default=str))
    return 0
