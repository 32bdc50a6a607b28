"""``napari-medai prompt``: segment one object from points, boxes and scribbles.

The default engine needs no weights; ``--engine nninteractive --model-folder DIR`` runs
nnInteractive from the folder of its weights (in a worker process, on a GPU if there is one).

PROMPTS.json holds ``{"points": [{"zyx": [z, y, x], "positive": true}], "boxes": [{"start":
[z, y, x], "stop": [z, y, x]}], "scribbles": [{"zyx": [[z, y, x], ...], "positive": true}]}``
in voxel indices of the scan. The mask (label 1) is written on the scan's grid and a JSON
summary (voxels, mL, seconds, engine) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prompt`` sub-command."""
    from napari_medai.core.prompt.engine import DEFAULT_ENGINE, ENGINES

    parser = subparsers.add_parser(
        "prompt", help="segment one object from points, boxes and scribbles (offline, CPU)"
    )
    parser.add_argument("scan", type=Path, help="NIfTI/NRRD/MHA file, DICOM file, folder or .zip")
    parser.add_argument("--prompts", required=True, type=Path, help="PROMPTS.json (voxel zyx)")
    parser.add_argument("--out", required=True, type=Path, help="mask to write (.nii.gz, ...)")
    parser.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"one of {', '.join(ENGINES)} (default: {DEFAULT_ENGINE})",
    )
    parser.add_argument(
        "--model-folder",
        type=Path,
        help="nninteractive: the folder of its weights (holds plans.json and fold_0)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the prompts and the output before reading the scan; print the summary."""
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.files import check_can_write
    from napari_medai.core.io.reading import check_readable, read_volume_job
    from napari_medai.core.io.writing import write_label_map
    from napari_medai.core.prompt.engine import engine_named, prompt_job
    from napari_medai.core.prompt.prompts import read_prompts

    prompts = read_prompts(args.prompts)
    engine_named(args.engine, args.model_folder)  # refuses a bad engine or folder before reading
    check_readable(args.scan)
    check_can_write(args.out, args.overwrite)
    volume = run_with_bar(read_volume_job(args.scan), f"reading {args.scan.name}")
    job = prompt_job(volume, prompts, args.engine, model_folder=args.model_folder)
    result = run_with_bar(job, "segmenting")
    write_label_map(result.mask, args.out, overwrite=args.overwrite)
    print(json.dumps({"out": str(args.out), **result.summary()}))
    return 0
