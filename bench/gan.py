"""GAN quality on a real CT, and whether label-conditioned synthetic pairs help sparse training.

Part 1 (unconditional): a GAN is trained on 64x64 axial patches of
``$NAPARI_MEDAI_DATA/totalsegmentator/example_ct_sm.nii.gz`` (every 5th slice
held out) for at most ``--gan-time`` seconds of CPU training. Its samples are
compared with patches of the held-out slices, as are two baselines: Gaussian
noise with the real patches' mean and standard deviation (clipped to the
normalised range), and real held-out patches (a second draw) with their pixels
shuffled. Reported per set: Gaussian-kernel MMD^2 (bandwidth: median heuristic
over the real patches, the same kernel for all three), two-sample classifier
accuracy, histogram distance and MS-SSIM diversity.

Part 2 (the sparse-slice liver question, ``bench/train_sparse.py``'s setting,
where data is scarcest): the liver painted on 3 axial slices; a label-conditioned
GAN is trained on those slices for ``--cond-time`` CPU seconds, then
``--synthetic`` pairs are sampled from randomly deformed crops of the painted
masks. At each of ``--seeds``, two segmentation models are trained for
``--seg-time`` CPU seconds of one torch thread (``--threads``), without and with
the synthetic pairs mixed in at ``--ratio`` of each batch (at least one pair per
batch), interleaved so both see the same load; Dice on the 27 unpainted slices
is printed for both, whatever the answer. The GAN's own training time is
reported apart (it is not part of the segmentation budget).

GAN budgets are CPU seconds of this process (``budget_clock="cpu"``), so the
same work is done however loaded the machine is; wall time, process CPU time
and load averages are recorded. Prints one JSON object.
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

from napari_medai.core.generative.config import GanConfig
from napari_medai.core.generative.quality import (
    histogram_distance,
    median_bandwidth,
    mmd2,
    ms_ssim_diversity,
    two_sample_accuracy_job,
)
from napari_medai.core.generative.sample import load_generator, masks_from_labels, sample_job
from napari_medai.core.generative.train import train_gan_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.training.config import training_threads

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDAI_DATA", REPO / ".." / "shared" / "data")).resolve()
sys.path.insert(0, str(REPO / "bench"))


def timed_gan(image, labels, config: GanConfig) -> tuple:
    """Train; return the result and the wall / CPU / engine seconds."""
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_job(train_gan_job(image, labels, config))
    timing = {
        "budget_s": config.max_time_s,
        "training_time_s": result.card.training["training_time_s"],
        "wall_s_incl_quality": round(time.perf_counter() - wall, 2),
        "process_cpu_s_incl_quality": round(time.process_time() - cpu, 2),
        "iterations": result.card.training["iterations"],
        "torch_threads": result.card.training["threads"],
        "load_avg_1min_before": round(load, 2),
    }
    return result, timing


def measure(name: str, fake: np.ndarray, real: np.ndarray, bandwidth: float) -> dict:
    """Every measure of ``fake`` against the real held-out patches."""
    return {
        "set": name,
        "mmd2": round(mmd2(fake, real, bandwidth), 5),
        "two_sample_accuracy": round(run_job(two_sample_accuracy_job(real, fake, seed=0)), 4),
        "histogram_distance": round(histogram_distance(fake, real), 5),
        "ms_ssim_diversity": round(ms_ssim_diversity(fake), 4),
    }


def unconditional(ct, args, scratch: Path) -> dict:
    config = GanConfig(
        out_dir=scratch / "gan",
        patch_size=64,
        max_time_s=args.gan_time,
        max_iters=None,
        seed=args.seed,
        quality_samples=args.n,
        device="cpu",
        num_threads=args.threads,
        budget_clock="cpu",
    )
    result, timing = timed_gan(ct, None, config)
    # The reference and the shuffled baseline are separate draws of held-out patches.
    from napari_medai.core.generative.patches import PatchSource

    source = PatchSource(ct, None, 64, config.holdout_every, np.random.default_rng(123))
    to01 = lambda t: (t[:, 0].numpy() + 1.0) / 2.0  # noqa: E731
    real = to01(source.batch(args.n, held_out=True)[0])
    other = to01(source.batch(args.n, held_out=True)[0])
    rng = np.random.default_rng(7)
    shuffled = np.stack([rng.permutation(p.ravel()).reshape(p.shape) for p in other])
    noise = np.clip(rng.normal(real.mean(), real.std(), size=real.shape), 0, 1)
    model = load_generator(result.path)
    samples = run_job(sample_job(model, args.n, seed=1)).images
    low, high = result.card.training["intensity_range"]
    generated = np.clip((samples - low) / (high - low), 0, 1)
    bandwidth = median_bandwidth(real)
    sets = [
        measure("gan", generated, real, bandwidth),
        measure("gaussian_noise", noise, real, bandwidth),
        measure("shuffled_real", shuffled, real, bandwidth),
        measure("real_second_draw", other, real, bandwidth),
    ]
    by = {s["set"]: s for s in sets}
    return {
        "timing": timing,
        "patch": 64,
        "patches_per_set": args.n,
        "mmd_bandwidth": round(bandwidth, 4),
        "sets": sets,
        "gan_mmd_below_both_baselines": by["gan"]["mmd2"]
        < min(by["gaussian_noise"]["mmd2"], by["shuffled_real"]["mmd2"]),
        "quality_in_card": result.quality,
    }


def segment_liver(ct, labels, liver, painted, synthetic, seed: int, args, out: Path) -> dict:
    """Train on the painted slices (with ``synthetic`` pairs mixed in, if any); Dice off them."""
    from napari_medai.core.training.trainer import TrainConfig, train_job
    from train_sparse import dice_off_painted

    load = os.getloadavg()[0]
    train = TrainConfig(
        out_dir=out,
        max_time_s=args.seg_time,
        budget_clock="cpu",
        num_threads=args.threads,
        seed=seed,
        device="cpu",
        synthetic=synthetic,
        synthetic_ratio=args.ratio if synthetic is not None else 0.0,
    )
    trained = run_job(train_job([(ct, labels)], train))
    return {
        "seed": seed,
        "dice_unpainted": round(dice_off_painted(ct, liver, painted, trained.best_path), 4),
        "training_time_s": round(trained.history[-1]["elapsed_s"], 2),
        "iterations": trained.history[-1]["iteration"],
        "batch_size": trained.card.training["batch_size"],
        "synthetic_in_card": trained.card.training.get("synthetic"),
        "load_avg_1min_before": round(load, 2),
    }


def sparse_liver(ct, args, scratch: Path) -> dict:
    from napari_medai.core.training.synthetic import SyntheticPairs
    from train_sparse import three_slice_liver

    _, liver, painted, labels = three_slice_liver(DATA, "ct")
    config = GanConfig(
        out_dir=scratch / "cgan",
        kind="conditional",
        patch_size=64,
        max_time_s=args.cond_time,
        max_iters=None,
        seed=args.seed,
        quality_samples=64,
        device="cpu",
        num_threads=args.threads,
        budget_clock="cpu",
    )
    result, timing = timed_gan(ct, labels, config)
    model = load_generator(result.path)
    masks = masks_from_labels(labels, args.synthetic, 64, seed=args.seed)
    samples = run_job(sample_job(model, args.synthetic, masks, seed=args.seed))
    synthetic = SyntheticPairs.from_samples(samples)
    runs: dict[str, list[dict]] = {"without_synthetic": [], "with_synthetic": []}
    for seed in args.seeds:
        # Interleaved, so both arms see the same machine load.
        for name, extra in (("without_synthetic", None), ("with_synthetic", synthetic)):
            out = scratch / f"seg_{name}_{seed}"
            runs[name].append(segment_liver(ct, labels, liver, painted, extra, seed, args, out))
    dice = {name: [r["dice_unpainted"] for r in arm] for name, arm in runs.items()}
    deltas = [w - o for w, o in zip(dice["with_synthetic"], dice["without_synthetic"])]
    return {
        "painted_slices": painted,
        "conditional_gan": timing,
        "conditional_gan_quality": result.quality,
        "synthetic_pairs": args.synthetic,
        "ratio": args.ratio,
        "segmentation_budget": f"{args.seg_time:g} CPU-s, {args.threads} torch thread(s)",
        "runs": runs,
        "mean_dice": {name: round(float(np.mean(d)), 4) for name, d in dice.items()},
        "dice_difference_per_seed": [round(d, 4) for d in deltas],
        "answer": (
            f"Dice on unpainted slices at seeds {args.seeds}: "
            f"{dice['with_synthetic']} with synthetic pairs vs {dice['without_synthetic']} "
            f"without (mean {float(np.mean(deltas)):+.4f}) at {args.seg_time:g} CPU-s each"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gan-time", type=float, default=300.0)
    parser.add_argument("--cond-time", type=float, default=60.0)
    parser.add_argument("--seg-time", type=float, default=5.0, help="segmentation CPU-s")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--synthetic", type=int, default=256)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--n", type=int, default=256, help="patches per compared set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", default=["unconditional", "sparse"])
    args = parser.parse_args()
    ct = read_volume(DATA / "totalsegmentator" / "example_ct_sm.nii.gz")
    report = {
        "benchmark": "gan",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": "totalsegmentator/example_ct_sm.nii.gz",
        "shape_zyx": list(ct.spatial_shape),
        "seed": args.seed,
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "threads_available": training_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory() as scratch:
        if "unconditional" in args.parts:
            report["unconditional"] = unconditional(ct, args, Path(scratch))
        if "sparse" in args.parts:
            report["sparse_liver"] = sparse_liver(ct, args, Path(scratch))
    report["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=1))
    if "sparse" in args.parts:
        print(report["sparse_liver"]["answer"], file=sys.stderr)


if __name__ == "__main__":
    main()
