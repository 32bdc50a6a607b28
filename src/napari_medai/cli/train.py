"""``napari-medai train``: train a model on annotated scans, save it as a model package.

The labels may be sparse: only slices holding a label count as annotated (see
``core.training.annotations``). The result in ``--out`` is a model package that
``napari-medai segment --model`` runs; the last checkpoint and the training
state go to ``<out>.checkpoints`` beside it, from where ``--resume`` continues.
Ctrl+C stops training and keeps the best model so far. Under ``torchrun``
every process trains on its share of each batch (PyTorch DDP) and rank 0
alone writes the model and prints (see docs/scale.md).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from napari_medai.cli.options import add_device
from napari_medai.cli.progress import run_with_bar
from napari_medai.core.errors import MedaiError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train", help="train a segmentation model on scans with (sparse) label maps"
    )
    parser.add_argument(
        "files",
        nargs="*",
        metavar="IMAGE LABELS",
        help="pairs of scan and label map (labels on the scan's grid, or resampled onto it)",
    )
    parser.add_argument(
        "--manifest", type=Path, help="CSV with 'image' and 'labels' columns: more training pairs"
    )
    parser.add_argument("--out", required=True, type=Path, help="model package folder to write")
    parser.add_argument("--init", help="model to fine-tune (package, file or name); default: new")
    parser.add_argument(
        "--max-time", type=float, metavar="SECONDS", help="training time budget (default 60 s)"
    )
    parser.add_argument(
        "--budget-clock",
        default="wall",
        choices=("wall", "cpu"),
        help="what --max-time counts: wall seconds (default) or this process's CPU seconds "
        "summed over its threads, which buys the same training however busy the machine is",
    )
    parser.add_argument("--max-iters", type=int, metavar="N", help="optimizer step budget")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="torch threads (default: the free cores)"
    )
    parser.add_argument("--seed", type=int, help="fix the random seeds (repeatable training)")
    parser.add_argument(
        "--dims",
        default="auto",
        choices=("auto", "2d", "2.5d", "3d"),
        help="network type (default: chosen from the annotation pattern)",
    )
    add_device(parser)
    parser.add_argument(
        "--unlabelled", type=int, metavar="VALUE", help="label value marking unannotated voxels"
    )
    parser.add_argument(
        "--dense", action="store_true", help="every voxel is annotated (a complete label map)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the last checkpoint")
    parser.add_argument("--name", help="model name for the card (default: from the labels)")
    parser.add_argument("--batch-size", type=int, help="patches per step (per process)")
    parser.add_argument(
        "--no-augment", action="store_true", help="train on patches as sampled (repeatable)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing model")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the pairs, train, and print where the model is."""
    from napari_medai.core.cohort.manifest import read_training_manifest
    from napari_medai.core.distributed import ddp
    from napari_medai.core.io.reading import read_label_map, read_volume_job
    from napari_medai.core.training.trainer import TrainConfig, train_job

    if len(args.files) % 2:
        raise MedaiError(
            f"give scans and label maps in pairs (IMAGE LABELS ...); got {len(args.files)} files"
        )
    max_time = args.max_time
    if max_time is None and args.max_iters is None:
        max_time = 60.0
    config = TrainConfig(
        out_dir=args.out,
        dimensionality=args.dims,
        max_time_s=max_time,
        max_iters=args.max_iters,
        budget_clock=args.budget_clock,
        seed=args.seed,
        init=args.init,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        unlabelled_value=args.unlabelled,
        dense=args.dense,
        name=args.name,
        batch_size=args.batch_size,
        augment=not args.no_augment,
        num_threads=args.threads,
    )
    context = ddp.from_environment()
    if context.active:
        config.num_threads = ddp.threads_per_rank(context)
    paths = [Path(p) for p in args.files]
    listed = list(zip(paths[::2], paths[1::2]))
    if args.manifest is not None:
        listed += read_training_manifest(args.manifest)
    if not listed:
        raise MedaiError("give scans and label maps (IMAGE LABELS ...) or a --manifest")
    # Only rank 0 talks; sys.stderr looked up now (run_with_bar's default is bound at import).
    stream = sys.stderr if context.is_main else io.StringIO()
    pairs = []
    for image_path, labels_path in listed:
        image = run_with_bar(read_volume_job(image_path), f"reading {image_path.name}", stream)
        pairs.append((image, read_label_map(labels_path, reference=image)))
    job = train_job(pairs, config)
    try:
        result = run_with_bar(job, "training", stream)
    except KeyboardInterrupt:
        job.close()
        if context.is_main:
            print(f"stopped; the best model so far is in {config.out_dir}", file=sys.stderr)
        return 130
    if not context.is_main:
        return 0
    info = result.card.training
    dice = info.get("val_dice")
    scored = f", validation Dice {dice:.3f}" if dice is not None else ""
    unit = "CPU-s" if info.get("budget_clock") == "cpu" else "s"
    print(
        f"{result.best_path} ({info['iterations']} iterations in "
        f"{info['training_time_s']:.0f} {unit}{scored}); last checkpoint: {result.last_path}"
    )
    return 0
