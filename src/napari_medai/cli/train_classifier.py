"""``napari-medai train-classifier``: train a classifier on boxes or labelled slices.

Examples come from box files (one per scan, each box with a class number,
names given by ``--classes``) or from label maps (one per scan): every slice
along ``--axis`` is an example, positive for a label when it holds it. Part
of the slices is held out as one block of neighbouring slices (they stay on
the same side), one that holds every class where one exists; the held-out
figures are printed and saved as ``<out>_metrics.json`` and ``.csv`` beside
the model package, with which weights were kept and why. Ctrl+C stops
training and keeps the model so far; ``--resume`` continues.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medai.cli.options import add_device
from napari_medai.core.errors import MedaiError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train-classifier`` sub-command."""
    parser = subparsers.add_parser(
        "train-classifier", help="train a classifier on boxes or labelled slices of scans"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="the scans")
    parser.add_argument("--out", required=True, type=Path, help="model package folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--boxes", nargs="+", type=Path, metavar="FILE", help="one box file per scan, with classes"
    )
    source.add_argument(
        "--labels", nargs="+", type=Path, metavar="LABELS", help="one label map per scan"
    )
    parser.add_argument(
        "--classes", nargs="+", metavar="NAME", help="class names for box classes 0, 1, ..."
    )
    parser.add_argument(
        "--label-values",
        nargs="+",
        type=int,
        metavar="V",
        help="with --labels: the label value(s) a slice is classified by",
    )
    parser.add_argument("--axis", default="z", help="with --labels: slice axis z, y or x")
    parser.add_argument(
        "--max-time", type=float, metavar="SECONDS", help="training time budget (default 60 s)"
    )
    parser.add_argument("--max-iters", type=int, metavar="N", help="optimizer step budget")
    parser.add_argument("--seed", type=int, help="fix the random seeds (repeatable training)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.3,
        help="share of slices held out to choose the weights; 0 holds nothing out and keeps "
        "the last weights (0 up to below 1)",
    )
    add_device(parser)
    parser.add_argument("--resume", action="store_true", help="continue the last checkpoint")
    parser.add_argument("--name", help="model name for the card (default: the class names)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model")
    parser.set_defaults(func=run)


def _examples(args: argparse.Namespace, run_with_bar):
    from napari_medai.core.classification.boxes import read_boxes
    from napari_medai.core.classification.config import parse_axis
    from napari_medai.core.classification.examples import (
        combine,
        examples_from_label_slices,
        examples_from_regions,
    )
    from napari_medai.core.io.reading import read_label_map, read_volume_job

    annotations = args.boxes or args.labels
    if len(annotations) != len(args.images):
        raise MedaiError(
            f"give one {'box file' if args.boxes else 'label map'} per scan: "
            f"{len(args.images)} scans, {len(annotations)} annotations"
        )
    if args.boxes and not args.classes:
        raise MedaiError("name the box classes with --classes (class 0 first)")
    if args.labels and not args.label_values:
        raise MedaiError("say which label value(s) classify a slice with --label-values")
    parts, intensity, patch = [], None, None
    for scan, (image_path, annotation) in enumerate(zip(args.images, annotations)):
        image = run_with_bar(read_volume_job(Path(image_path)), f"reading {image_path}", sys.stderr)
        if args.boxes:
            regions, classes = read_boxes(annotation)
            if any(c is None for c in classes):
                raise MedaiError(f"{annotation}: every training box needs a class")
            names = dict(enumerate(args.classes))
            part = examples_from_regions(image, regions, classes, names, intensity, patch, scan)
        else:
            labels = read_label_map(annotation, reference=image)
            axis = parse_axis(args.axis)
            part = examples_from_label_slices(
                image, labels, args.label_values, axis, intensity, patch, scan
            )
        intensity, patch = part.intensity, part.patch_size
        parts.append(part)
    return combine(parts)


def run(args: argparse.Namespace) -> int:
    """Build the examples, train, print the model's place and its held-out figures."""
    from napari_medai.cli.progress import run_with_bar
    from napari_medai.core.classification.config import ClassifierTrainConfig
    from napari_medai.core.classification.metrics import save_metrics
    from napari_medai.core.classification.training import train_classifier_job

    max_time = args.max_time
    if max_time is None and args.max_iters is None:
        max_time = 60.0
    config = ClassifierTrainConfig(
        out_dir=args.out,
        max_time_s=max_time,
        max_iters=args.max_iters,
        seed=args.seed,
        test_fraction=args.test_fraction,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        name=args.name,
    )
    examples = _examples(args, run_with_bar)
    job = train_classifier_job(examples, config)
    try:
        result = run_with_bar(job, "training", sys.stderr)
    except KeyboardInterrupt:
        job.close()
        print(f"stopped; the best model so far is in {config.out_dir}", file=sys.stderr)
        return 130
    report = {
        "model": str(result.best_path),
        "last_checkpoint": str(result.last_path),
        "iterations": result.card.training["iterations"],
        "training_time_s": result.card.training["training_time_s"],
        "kept": result.kept,
        "examples": examples.counts(),
    }
    if result.metrics is not None:
        base = Path(args.out).with_name(Path(args.out).name + "_metrics")
        report["metrics_files"] = [str(p) for p in save_metrics(result.metrics, base, True)]
        report["held_out"] = {k: result.metrics[k] for k in ("computed_on", "accuracy", "macro")}
    print(json.dumps(report, indent=2))
    return 0
