"""Dice versus training time, learning the liver from three painted axial slices.

Data: ``$NAPARI_MEDAI_DATA/totalsegmentator/example_ct_sm.nii.gz`` (122x101x30
CT, 3 mm) with the liver (label 5 of ``example_seg.nii.gz``) kept on three
axial slices only, at 25/50/75% of the liver's z-extent; every other voxel is
left unpainted. For each time budget a fresh model is trained on the CPU with
``train_job`` (seed 0, everything else default: the engine picks the network,
threads and window), the best model it kept is run on the whole scan with
``segment_job``, and Dice against the liver is measured on the 27 slices that
were not painted. Training time is the engine's own clock (data preparation,
steps, validation and checkpoint writes; not the final segmentation).

The machine may be shared: the 1-minute load average is recorded before each
run, and the lead reruns this on a quiet machine for the published numbers.

Usage: ``python bench/train_sparse.py [--budgets 5 10 20 40 60 90] [--seed 0]``;
prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.sources import load_model
from napari_medai.core.segmentation.inference import SegmentConfig, segment_job
from napari_medai.core.training.config import training_threads
from napari_medai.core.training.trainer import TrainConfig, train_job
from napari_medai.core.volume import LabelMap

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDAI_DATA", REPO / ".." / "shared" / "data")).resolve()
LIVER = 5
FRACTIONS = (0.25, 0.5, 0.75)


def three_slice_liver(data: Path):
    """The CT, the full liver mask, the painted slices and the sparse label map."""
    folder = data / "totalsegmentator"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    organs = read_label_map(folder / "example_seg.nii.gz", reference=ct)
    liver = organs.array == LIVER
    extent = np.flatnonzero(liver.any(axis=(1, 2)))
    low, high = int(extent.min()), int(extent.max())
    painted = sorted({int(round(low + f * (high - low))) for f in FRACTIONS})
    sparse = np.zeros_like(organs.array)
    for z in painted:
        sparse[z] = np.where(liver[z], LIVER, 0)
    return ct, liver, painted, LabelMap(sparse, ct.geometry, {}, {LIVER: "liver"})


def dice_off_painted(ct, liver: np.ndarray, painted: list[int], model_dir: Path) -> float:
    """Dice of the model's liver against the truth on the slices nobody painted."""
    result = run_job(segment_job(ct, load_model(model_dir), SegmentConfig(device="cpu")))
    others = [z for z in range(ct.spatial_shape[0]) if z not in painted]
    predicted, truth = result.labels.array[others] == LIVER, liver[others]
    return float(2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


def run(budget: float, seed: int, ct, liver, painted, labels, scratch: Path) -> dict:
    """Train for ``budget`` seconds from scratch and score the best model kept."""
    out = scratch / f"liver_{budget:g}s"
    load = os.getloadavg()[0]
    threads = training_threads()
    started = time.perf_counter()
    config = TrainConfig(out_dir=out, max_time_s=budget, seed=seed, device="cpu")
    result = run_job(train_job([(ct, labels)], config))
    wall = time.perf_counter() - started
    last = result.history[-1]
    return {
        "budget_s": budget,
        "training_time_s": round(last["elapsed_s"], 2),
        "wall_s": round(wall, 2),
        "iterations": last["iteration"],
        "seconds_per_iteration": round(last["elapsed_s"] / last["iteration"], 4),
        "best_iteration": result.card.training["iterations"],
        "best_val_dice": result.card.training["val_dice"],
        "dice_unpainted_best": round(dice_off_painted(ct, liver, painted, result.best_path), 4),
        "dice_unpainted_last": round(dice_off_painted(ct, liver, painted, result.last_path), 4),
        "torch_threads": threads,
        "load_avg_1min_before": round(load, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[5, 10, 20, 40, 60, 90])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ct, liver, painted, labels = three_slice_liver(DATA)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        curve = [
            run(budget, args.seed, ct, liver, painted, labels, Path(scratch))
            for budget in args.budgets
        ]
    report = {
        "benchmark": "train_sparse",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": "totalsegmentator/example_ct_sm.nii.gz, liver (label 5) painted on 3 axial slices",
        "shape_zyx": list(ct.spatial_shape),
        "painted_slices": painted,
        "scored_slices": ct.spatial_shape[0] - len(painted),
        "seed": args.seed,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "curve": curve,
        "goals": {"dice_at_20s": 0.90, "dice_at_90s": 0.95},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
