"""``napari-medai classify``: classify scans, every slice, or boxes; print JSON.

Each input gives one JSON entry with its predictions (class, probability,
every class's probability) and the provenance. With ``--cam OUT_DIR`` the
Grad-CAM heat map is saved as ``<name>_<model>_cam.nii.gz`` on the scan's
exact grid. Everything runs through the same core job and ``ClassifyConfig``
as the Classify widget.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medai.cli.options import add_device, add_trust_bundle


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``classify`` sub-command."""
    parser = subparsers.add_parser(
        "classify", help="classify scans, their slices or boxes with a classifier; prints JSON"
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="NIfTI/NRRD/MHA file, DICOM file, folder or .zip"
    )
    parser.add_argument(
        "--model", required=True, help="a classifier: model package, checkpoint, bundle or name"
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--per-slice", metavar="AXIS", help="classify every slice along z, y or x (2D models)"
    )
    scope.add_argument(
        "--boxes", type=Path, metavar="FILE", help="boxes to classify (JSON or CSV, voxel indices)"
    )
    parser.add_argument("--cam", type=Path, metavar="OUT_DIR", help="save Grad-CAM heat maps here")
    parser.add_argument("--cam-method", default="gradcam", choices=("gradcam", "gradcampp"))
    parser.add_argument(
        "--cam-class", type=int, metavar="K", help="class for the heat map (default: predicted)"
    )
    parser.add_argument("--cam-layer", metavar="NAME", help="network layer for the heat map")
    parser.add_argument(
        "--cam-context",
        type=int,
        default=16,
        metavar="PX",
        help="box heat maps see this many network pixels of scan around each box (default 16)",
    )
    add_device(parser)
    add_trust_bundle(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace existing heat maps")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Classify every input; stop at the first bad one (MedaiError, handled by main)."""
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.classification.boxes import read_boxes
    from napari_medai.core.classification.config import ClassifyConfig, parse_axis
    from napari_medai.core.classification.inference import classify_job
    from napari_medai.core.files import check_can_write, compound_stem, file_token
    from napari_medai.core.io.reading import check_readable, read_volume_job
    from napari_medai.core.io.writing import write_volume
    from napari_medai.core.models.sources import load_model

    inputs = [Path(p) for p in args.inputs]
    for path in inputs:
        check_readable(path)
    regions = read_boxes(args.boxes)[0] if args.boxes else None
    scope = "regions" if regions else "slices" if args.per_slice else "volume"
    config = ClassifyConfig(
        scope=scope,
        axis=parse_axis(args.per_slice) if args.per_slice else 0,
        device=args.device,
        cam=args.cam is not None,
        cam_method=args.cam_method,
        cam_class=args.cam_class,
        cam_layer=args.cam_layer,
        cam_context=args.cam_context,
    )
    config.check()
    model = load_model(args.model, trusted=args.trust_bundle)
    cams = {}
    if args.cam is not None:
        for path in inputs:
            name = compound_stem(path) if path.is_file() else path.name
            cams[path] = args.cam / f"{file_token(name)}_{file_token(model.card.name)}_cam.nii.gz"
            check_can_write(cams[path], args.overwrite)
    report = []
    for path in inputs:
        volume = run_with_bar(read_volume_job(path), f"reading {path.name}", sys.stderr)
        job = classify_job(volume, model, config, regions)
        result = run_with_bar(job, f"classifying {path.name}", sys.stderr)
        entry = {"input": path.name, **result.to_dict()}
        if result.cam is not None:
            args.cam.mkdir(parents=True, exist_ok=True)
            write_volume(result.cam, cams[path], args.overwrite)
            entry["cam"] = str(cams[path])
        report.append(entry)
    print(json.dumps(report if len(report) > 1 else report[0], indent=2, default=str))
    return 0
