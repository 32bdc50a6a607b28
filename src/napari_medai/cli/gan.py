"""``napari-medai gan``: train a GAN on a scan, or sample a trained generator.

``gan train IMAGE [--labels LABELS] --out DIR`` trains an unconditional GAN
(noise -> 2D patch; with ``--labels``, patches inside the labelled region) or,
with ``--conditional``, a label-conditioned one (label map -> patch), saves the
generator as a model package and prints its quality against held-out slices.
``gan sample DIR -n N --out FILE`` writes N samples as a stack (one per slice,
on its own grid, never the patient's) plus a JSON sidecar saying they are
synthetic; a conditional generator takes ``--labels MASKS`` and writes the
paired masks beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_medai.cli.options import add_device
from napari_medai.cli.progress import run_with_bar


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``gan`` sub-command with ``train`` and ``sample``."""
    parser = subparsers.add_parser("gan", help="train a GAN on a scan, or sample one")
    actions = parser.add_subparsers(dest="action", required=True)
    train = actions.add_parser("train", help="train a GAN on 2D axial patches of a scan")
    train.add_argument("image", type=Path, help="the scan to learn from")
    train.add_argument("--labels", type=Path, help="label map on the scan's grid")
    train.add_argument(
        "--conditional", action="store_true", help="learn label map -> image (needs --labels)"
    )
    train.add_argument("--out", required=True, type=Path, help="generator package folder")
    train.add_argument("--max-time", type=float, default=60.0, metavar="SECONDS")
    train.add_argument("--max-iters", type=int, metavar="N", help="step budget")
    train.add_argument("--patch", type=int, default=64, help="patch edge in pixels (default 64)")
    train.add_argument("--seed", type=int, help="fix the random seeds")
    add_device(train)
    train.add_argument("--overwrite", action="store_true", help="replace an existing package")
    train.set_defaults(func=run_train)
    sample = actions.add_parser("sample", help="write samples of a generator package")
    sample.add_argument("generator", help="generator package folder (or model name)")
    sample.add_argument("-n", type=int, default=16, help="number of samples (default 16)")
    sample.add_argument(
        "--labels", type=Path, help="label map to cut (randomly deformed) masks from"
    )
    sample.add_argument("--no-deform", action="store_true", help="use the label crops as they are")
    sample.add_argument("--out", required=True, type=Path, help="stack file (.nii.gz, .nrrd, .mha)")
    sample.add_argument("--seed", type=int, help="fix the random seed")
    sample.add_argument("--overwrite", action="store_true", help="replace existing files")
    sample.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    """Read the scan (and labels), train, print the package and its quality."""
    from napari_medai.core.generative.config import GanConfig
    from napari_medai.core.generative.train import train_gan_job
    from napari_medai.core.io.reading import read_label_map, read_volume_job

    config = GanConfig(
        out_dir=args.out,
        kind="conditional" if args.conditional else "unconditional",
        patch_size=args.patch,
        max_time_s=args.max_time,
        max_iters=args.max_iters,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
    )
    image = run_with_bar(read_volume_job(args.image), f"reading {args.image.name}", sys.stderr)
    labels = read_label_map(args.labels, reference=image) if args.labels else None
    job = train_gan_job(image, labels, config)
    try:
        result = run_with_bar(job, "training", sys.stderr)
    except KeyboardInterrupt:
        job.close()
        print(f"stopped; the generator so far is in {config.out_dir}", file=sys.stderr)
        return 130
    info = result.card.training
    print(
        f"{result.path} ({info['iterations']} steps in {info['training_time_s']:.0f} s); "
        "quality against held-out real patches:"
    )
    print(json.dumps(result.quality, indent=1))
    return 0


def run_sample(args: argparse.Namespace) -> int:
    """Load the generator, cut masks if it needs them, sample and write the stack."""
    from napari_medai.core.generative.sample import (
        is_conditional,
        load_generator,
        masks_from_labels,
        sample_job,
        write_samples,
    )
    from napari_medai.core.io.reading import read_label_map

    model = load_generator(args.generator)
    masks = None
    if args.labels is not None and is_conditional(model):
        patch = int(model.card.patch_size[-1])
        label_map = read_label_map(args.labels)
        masks = masks_from_labels(label_map, args.n, patch, args.seed, not args.no_deform)
    samples = run_with_bar(sample_job(model, args.n, masks, args.seed), "sampling", sys.stderr)
    for path in write_samples(samples, args.out, args.overwrite):
        print(path)
    return 0
