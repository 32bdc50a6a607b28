"""``napari-medai evaluate-classifier``: score a classifier on examples the user picks.

The examples are one scan's slices labelled by a label map (``--labels`` and
``--label-values``, as ``train-classifier`` reads them) or its boxes from a
file whose class numbers are the model's classes (``--boxes``), optionally
only those on ``--slices`` (e.g. the slices training left out). Prints the
figures as JSON, saying what they were computed on; ``--out BASE`` also
writes ``BASE.json`` and ``BASE.csv``. The same core job as the Classify
dock's "Evaluate".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medai.cli.options import add_device, add_trust_bundle
from napari_medai.core.errors import MedaiError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate-classifier`` sub-command."""
    parser = subparsers.add_parser(
        "evaluate-classifier",
        help="score a classifier on labelled slices or classed boxes of a scan; prints JSON",
    )
    parser.add_argument("image", metavar="IMAGE", help="the scan")
    parser.add_argument("--model", required=True, help="a classifier: model package or name")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", type=Path, metavar="LABELS", help="a label map of the scan")
    source.add_argument(
        "--boxes", type=Path, metavar="FILE", help="boxes with the model's class numbers"
    )
    parser.add_argument(
        "--label-values", nargs="+", type=int, metavar="V", help="with --labels: label value(s)"
    )
    parser.add_argument("--axis", default="z", help="with --labels: slice axis z, y or x")
    parser.add_argument("--slices", default="", help="only these slices, e.g. 15-29 or '3, 7-9'")
    parser.add_argument("--out", type=Path, metavar="BASE", help="also write BASE.json, BASE.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace existing metric files")
    add_device(parser)
    add_trust_bundle(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the scan and the picked examples, score the model, print the figures."""
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.classification.boxes import read_boxes
    from napari_medai.core.classification.config import parse_axis
    from napari_medai.core.classification.evaluation import evaluate_job
    from napari_medai.core.classification.heldout import HeldOutSet, parse_slices
    from napari_medai.core.classification.metrics import save_metrics
    from napari_medai.core.classification.model import class_names
    from napari_medai.core.files import check_can_write
    from napari_medai.core.io.reading import read_label_map, read_volume_job
    from napari_medai.core.models.sources import load_model

    if args.labels and not args.label_values:
        raise MedaiError("say which label value(s) classify a slice with --label-values")
    slices = parse_slices(args.slices)
    paths = []
    if args.out is not None:
        paths = [args.out.with_name(args.out.name + suffix) for suffix in (".json", ".csv")]
        for path in paths:
            check_can_write(path, args.overwrite)
    model = load_model(args.model, trusted=args.trust_bundle)
    image = run_with_bar(read_volume_job(Path(args.image)), "reading the scan", sys.stderr)
    name = Path(args.image).name
    if args.labels:
        labels = read_label_map(args.labels, reference=image)
        axis = parse_axis(args.axis)
        picked = HeldOutSet(name, args.labels.name, labels, args.label_values, axis)
    else:
        regions, numbers = read_boxes(args.boxes)
        names = class_names(model.card)
        unknown = [k for k in numbers if k not in names]
        if unknown:
            raise MedaiError(
                f"{args.boxes}: box class {unknown[0]} is not one of the model's classes "
                f"0-{len(names) - 1}; every box needs one"
            )
        classes = [names[k] for k in numbers]
        picked = HeldOutSet(name, args.boxes.name, regions=regions, classes=classes)
    picked.slices, picked.source_noun = slices, "file"
    job = evaluate_job(model, image, picked, args.device)
    metrics = run_with_bar(job, "scoring", sys.stderr)
    if args.out is not None:
        save_metrics(metrics, args.out, args.overwrite)
    report = {key: value for key, value in metrics.items() if key != "roc_curves"}
    report["files"] = [str(p) for p in paths]
    print(json.dumps(report, indent=2))
    return 0
