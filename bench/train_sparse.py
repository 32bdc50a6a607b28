"""Dice after a short training budget, learning the liver from three painted axial slices.

Data (``$NAPARI_MEDAI_DATA``, default ``../shared/data``): the TotalSegmentator
examples ``ct`` (``example_ct_sm.nii.gz``, 122x101x30, 3 mm) and ``mr``
(``example_mr_sm.nii.gz``, 117x91x20, 3 mm), the liver being label 5 of
``example_seg.nii.gz`` / ``example_seg_mr.nii.gz``. The liver is kept on three
axial slices only, at 25/50/75% of its z-extent; every other voxel is left
unpainted. For each case, budget and seed a fresh model is trained on the CPU
with ``train_job`` (what ``napari-medai train`` runs; the engine picks the
network, batch and window), the best model it kept is run on the whole scan
with ``segment_job``, and Dice against the liver is measured on the slices
that were not painted, never on the painted ones.

The budget counts ``--clock`` seconds: "cpu" (default) is this process's CPU
time summed over its threads, so a busy machine buys the same training as a
quiet one; "wall" is elapsed time. ``--threads`` (default 1) fixes the torch
threads, so the thread count does not follow the machine's load either: on a
busy machine two threads spent ten times the CPU per step of one, waiting for
each other. Training time is the engine's own clock (data preparation and the
final segmentation are outside it). The 1-minute load average is recorded
before each run.

Usage: ``python bench/train_sparse.py [--cases ct mr] [--budgets 5] [--seeds 0 1 2]
[--clock cpu|wall] [--threads 1]``; prints one JSON object. Equivalent CLI run:
``napari-medai train CT LABELS --out M --max-time 5 --budget-clock cpu --threads 1 --seed 0``.
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
from napari_medai.core.training.trainer import TrainConfig, train_job
from napari_medai.core.volume import LabelMap

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDAI_DATA", REPO / ".." / "shared" / "data")).resolve()
LIVER = 5
FRACTIONS = (0.25, 0.5, 0.75)
CASES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz"),
}
GOAL_DICE = 0.95


def three_slice_liver(data: Path, case: str):
    """The scan, the full liver mask, the painted slices and the sparse label map."""
    scan_file, organs_file = CASES[case]
    folder = data / "totalsegmentator"
    scan = read_volume(folder / scan_file)
    organs = read_label_map(folder / organs_file, reference=scan)
    liver = organs.array == LIVER
    extent = np.flatnonzero(liver.any(axis=(1, 2)))
    low, high = int(extent.min()), int(extent.max())
    painted = sorted({int(round(low + f * (high - low))) for f in FRACTIONS})
    sparse = np.zeros_like(organs.array)
    for z in painted:
        sparse[z] = np.where(liver[z], LIVER, 0)
    return scan, liver, painted, LabelMap(sparse, scan.geometry, {}, {LIVER: "liver"})


def dice_off_painted(scan, liver: np.ndarray, painted: list[int], model_dir: Path) -> float:
    """Dice of the model's liver against the truth on the slices nobody painted."""
    result = run_job(segment_job(scan, load_model(model_dir), SegmentConfig(device="cpu")))
    others = [z for z in range(scan.spatial_shape[0]) if z not in painted]
    predicted, truth = result.labels.array[others] == LIVER, liver[others]
    return float(2.0 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


def run(budget: float, seed: int, args: argparse.Namespace, case_data, scratch: Path) -> dict:
    """Train for ``budget`` seconds of ``args.clock`` from scratch; score the best model kept."""
    scan, liver, painted, labels = case_data
    out = scratch / f"liver_{budget:g}s_{seed}"
    load = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    config = TrainConfig(
        out_dir=out,
        max_time_s=budget,
        budget_clock=args.clock,
        num_threads=args.threads,
        seed=seed,
        device="cpu",
    )
    result = run_job(train_job([(scan, labels)], config))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    last = result.history[-1]
    return {
        "budget_s": budget,
        "seed": seed,
        "dice_unpainted": round(dice_off_painted(scan, liver, painted, result.best_path), 4),
        "training_time_s": round(last["elapsed_s"], 2),
        "wall_s_with_preparation": round(wall, 2),
        "cpu_s_with_preparation": round(cpu, 2),
        "iterations": last["iteration"],
        "best_iteration": result.card.training["iterations"],
        "batch_size": result.card.training["batch_size"],
        "augmentation_strengths": result.card.training["augmentation_strengths"],
        "torch_threads": result.card.training["threads"],
        "load_avg_1min_before": round(load, 2),
    }


def summary(runs: list[dict]) -> dict:
    """Mean and minimum Dice over the seeds of each budget."""
    budgets = sorted({r["budget_s"] for r in runs})
    out = {}
    for budget in budgets:
        dice = [r["dice_unpainted"] for r in runs if r["budget_s"] == budget]
        out[f"{budget:g}"] = {
            "mean_dice": round(float(np.mean(dice)), 4),
            "min_dice": round(min(dice), 4),
            "goal_met": min(dice) >= GOAL_DICE,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["ct", "mr"])
    parser.add_argument("--budgets", type=float, nargs="+", default=[5.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: the engine's)")
    args = parser.parse_args()
    args.threads = args.threads or None
    load_start = os.getloadavg()
    cases = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in args.cases:
            data = three_slice_liver(DATA, case)
            runs = [
                run(budget, seed, args, data, Path(scratch) / case)
                for budget in args.budgets
                for seed in args.seeds
            ]
            cases[case] = {
                "data": f"totalsegmentator/{CASES[case][0]}, liver (label {LIVER})",
                "shape_zyx": list(data[0].spatial_shape),
                "painted_slices": data[2],
                "scored_slices": data[0].spatial_shape[0] - len(data[2]),
                "by_budget": summary(runs),
                "runs": runs,
            }
    report = {
        "benchmark": "train_sparse",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "budget_clock": args.clock,
        "budget_kind": (
            "CPU seconds of the training process, all threads"
            if args.clock == "cpu"
            else "wall seconds"
        ),
        "threads": args.threads or "engine's choice",
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in load_start],
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "goal": f"min Dice over the seeds >= {GOAL_DICE} at a 5 s budget, CT and MR",
        "cases": cases,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
