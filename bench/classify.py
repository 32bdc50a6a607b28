"""Classify organ boxes on a real CT; Grad-CAM localisation; pipeline overhead.

Organs: ``$NAPARI_MEDAI_DATA/totalsegmentator/example_ct_sm.nii.gz`` (122x101x30
CT, 3 mm) with ``example_seg.nii.gz``. On every axial slice, 32x32 boxes are
centred on random voxels of the liver (5), spleen (1), a kidney (2 or 3) and
other body tissue (HU > -500, none of those). A classifier is trained with
``train_classifier_job`` on the boxes of slices 0-14 for a budget of optimizer
steps (default 1300, what a quiet machine trained in the old 60 s budget on
one thread: the same run and the same figures however busy the machine is),
then run with ``classify_job`` on the boxes of slices 15-29, which it never
saw. Nothing is held out of slices 0-14 (``test_fraction=0``): the kept model
is the weights after the last step (a choice among checkpoints validated
every few seconds would depend on the machine's speed again). Holding out
the usual block (slices 10-14, the nearest to the test) only to score it
once would train on a third fewer slices: at seeds 0-4 the macro ROC AUC
was 0.908, 0.942, 0.872, 0.885, 0.909 with it (last weights; 0.910, 0.935,
0.899, 0.924, 0.935 keeping the best validated, which depends on the
machine's speed) and 0.902, 0.947, 0.923, 0.923, 0.950 without. An
exponential moving average of the weights changed none of them by more
than 0.006 (the cosine schedule already ends on settled weights), so it was
not kept.

Grad-CAM: a "kidney present" box classifier (32x32 boxes around the kidneys,
positive when the box holds 40 kidney voxels or more, negative when none),
trained on slices 0-11, is run on every slice with its CAM (box-sized windows
for the verdicts, Grad-CAM of each whole slice at the boxes' scale). On the
held-out kidney slices 12-22 the mean heat inside the kidney mask is compared
with the mean heat in the rest of the body (HU > -500; against the whole
slice, air included, it is higher). Also reported: the same within held-out
positive boxes, each box's CAM computed with the default 16 pixels of
surrounding scan (``ClassifyConfig.cam_context``) and cropped back to the box.
The verdicts on unseen slices 12-29 are reported too: this classifier's
negatives lie next to the kidneys, so anatomy it never saw can pass for kidney.

Overhead: ``classify_job`` with default settings on 100 boxes and on every
slice of a synthetic 512x512x300 CT, against the fastest of the bare
network's forward passes over the same inputs made ready beforehand, in a
few batch sizes; medians of interleaved rounds, wall and CPU time.

The machine may be shared: the load average is recorded with the figures.
Usage: ``python bench/classify.py [--steps 1300] [--seed 0] [--skip-overhead |
--only-overhead] [--reps 15] [--slice-reps 3] [--threads N]``; prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_medai.core.classification import inference
from napari_medai.core.classification.config import ClassifyConfig, Region
from napari_medai.core.classification.examples import examples_from_regions
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.classification.metrics import classification_metrics
from napari_medai.core.classification.training import (
    DEFAULT_ARGS,
    ClassifierTrainConfig,
    train_classifier_job,
)
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network
from napari_medai.core.models.sources import load_model
from napari_medai.core.training.config import training_threads
from napari_medai.core.volume import Volume

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NAPARI_MEDAI_DATA", REPO / ".." / "shared" / "data")).resolve()
CLASSES = {0: "other", 1: "liver", 2: "spleen", 3: "kidney"}
ORGANS = {1: (5,), 2: (1,), 3: (2, 3)}
BOX = 32
PER_SLICE = 4


def organ_boxes(ct: Volume, seg: np.ndarray, slices: range, rng) -> tuple[list[Region], list[int]]:
    """``PER_SLICE`` boxes per class and slice, centred on random voxels of the class."""
    body = np.asarray(ct.array) > -500
    regions, labels = [], []
    for z in slices:
        masks = {k: np.isin(seg[z], values) for k, values in ORGANS.items()}
        masks[0] = body[z] & ~np.isin(seg[z], [5, 1, 2, 3])
        for k in sorted(masks):
            ys, xs = np.nonzero(masks[k])
            if len(ys) == 0:
                continue
            for i in rng.choice(len(ys), size=min(PER_SLICE, len(ys)), replace=False):
                regions.append(Region.around((z, ys[i], xs[i]), (1, BOX, BOX)))
                labels.append(k)
    return regions, labels


def organs(ct: Volume, seg: np.ndarray, steps: int, seed: int, scratch: Path) -> dict:
    rng = np.random.default_rng(seed)
    train_regions, train_labels = organ_boxes(ct, seg, range(0, 15), rng)
    test_regions, test_labels = organ_boxes(ct, seg, range(15, 30), rng)
    examples = examples_from_regions(ct, train_regions, train_labels, CLASSES)
    load = os.getloadavg()[0]
    config = ClassifierTrainConfig(
        scratch / "organs",
        max_time_s=None,
        max_iters=steps,
        test_fraction=0.0,
        seed=seed,
        device="cpu",
    )
    trained = run_job(train_classifier_job(examples, config))
    model = load_model(trained.best_path)
    result = run_job(
        classify_job(ct, model, ClassifyConfig(scope="regions", device="cpu"), test_regions)
    )
    probabilities = np.array([p.probabilities for p in result.predictions])
    metrics = classification_metrics(
        test_labels, probabilities, CLASSES, "boxes on axial slices 15-29 (training used 0-14)"
    )
    last = trained.history[-1]
    return {
        "train_boxes": examples.counts(),
        "budget_steps": steps,
        "training_time_s": round(last["elapsed_s"], 2),
        "iterations": last["iteration"],
        "kept": trained.kept,
        "test": {k: metrics[k] for k in ("computed_on", "accuracy", "macro", "per_class")},
        "confusion_matrix": metrics["confusion_matrix"],
        "torch_threads": training_threads(),
        "load_avg_1min_before": round(load, 2),
    }


def kidney_boxes(ct: Volume, kidney: np.ndarray, slices: range, rng, per_class: int = 12):
    """32x32 boxes around the kidneys: positives hold >= 40 kidney voxels, negatives none.

    Negatives are centred 16-40 voxels from a kidney voxel, so they show the
    same neighbourhood (spine, muscles, bowel) and only the kidney tells the
    classes apart; a classifier cannot get by on where the box is.
    """
    regions, labels = [], []
    for z in slices:
        ys, xs = np.nonzero(kidney[z])
        if len(ys) == 0:
            continue
        found = {0: 0, 1: 0}
        for _ in range(4000):
            if min(found.values()) >= per_class:
                break
            i = int(rng.integers(len(ys)))
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, 40)
            y, x = ys[i] + distance * np.sin(angle), xs[i] + distance * np.cos(angle)
            region = Region.around((z, y, x), (1, BOX, BOX))
            if min(region.start[1:]) < 0 or any(
                b > n for b, n in zip(region.stop[1:], ct.spatial_shape[1:])
            ):
                continue
            inside = int(
                kidney[tuple(slice(a, b) for a, b in zip(region.start, region.stop))].sum()
            )
            label = 1 if inside >= 40 else 0 if inside == 0 else None
            if label is not None and found[label] < per_class:
                found[label] += 1
                regions.append(region)
                labels.append(label)
    return regions, labels


def cam_ratio(model, ct: Volume, kidney: np.ndarray, regions: list[Region]) -> dict:
    """Mean heat inside / outside the kidney mask within held-out positive boxes."""
    config = ClassifyConfig(scope="regions", device="cpu", cam=True, cam_class=1)
    ratios, inside_all, outside_all = [], [], []
    for region in regions:
        result = run_job(classify_job(ct, model, config, [region]))
        where = tuple(slice(a, b) for a, b in zip(region.start, region.stop))
        heat, mask = result.cam.array[where], kidney[where]
        inside_all.append(heat[mask].mean())
        outside_all.append(heat[~mask].mean())
        ratios.append(heat[mask].mean() / max(heat[~mask].mean(), 1e-6))
    return {
        "boxes": len(regions),
        "mean_heat_inside": round(float(np.mean(inside_all)), 4),
        "mean_heat_outside": round(float(np.mean(outside_all)), 4),
        "ratio_of_means": round(float(np.mean(inside_all) / np.mean(outside_all)), 3),
        "median_ratio_per_box": round(float(np.median(ratios)), 3),
    }


def kidney_cam(
    ct: Volume,
    seg: np.ndarray,
    budget: float | None,
    seed: int,
    scratch: Path,
    iterations: int | None = None,
) -> dict:
    rng = np.random.default_rng(seed)
    kidney = np.isin(seg, (2, 3))
    regions, labels = kidney_boxes(ct, kidney, range(0, 12), rng)
    names = {0: "no kidney", 1: "kidney"}
    examples = examples_from_regions(ct, regions, labels, names)
    config = ClassifierTrainConfig(
        scratch / "kidney", max_time_s=budget, max_iters=iterations, seed=seed, device="cpu"
    )
    trained = run_job(train_classifier_job(examples, config))
    # The last weights, not the best validated: which validation wins depends on timing,
    # the last weights after a fixed step count do not.
    model = load_model(trained.last_path)
    test, test_labels = kidney_boxes(ct, kidney, range(12, 23), rng, per_class=5)
    positives = [r for r, k in zip(test, test_labels) if k == 1]
    return {
        "train_boxes": examples.counts(),
        "iterations": trained.history[-1]["iteration"],
        "held_out_macro": trained.metrics["macro"] if trained.metrics else None,
        "slices": slice_cam(model, ct, kidney, range(12, 23)),
        "boxes": cam_ratio(model, ct, kidney, positives),
    }


def slice_cam(model, ct: Volume, kidney: np.ndarray, held_out: range) -> dict:
    """Every slice classified with its CAM; heat inside / outside the kidneys on ``held_out``.

    Outside is the rest of the body (HU > -500), not the air around it, which
    would flatter the ratio. The slice verdicts are scored on the slices the
    classifier never saw (``held_out`` and beyond).
    """
    config = ClassifyConfig(scope="slices", device="cpu", cam=True, cam_class=1)
    result = run_job(classify_job(ct, model, config))
    where = slice(held_out.start, held_out.stop)
    heat, inside = result.cam.array[where], kidney[where]
    rest = (np.asarray(ct.array)[where] > -500) & ~inside
    unseen = range(held_out.start, ct.spatial_shape[0])
    truth = kidney[held_out.start :].any(axis=(1, 2))
    verdicts = np.array([result.predictions[z].label for z in unseen]) == 1
    right = f"verdicts_right_on_slices_{unseen.start}-{unseen.stop - 1}"
    return {
        "held_out_slices": f"{held_out.start}-{held_out.stop - 1}",
        "ratio_of_means": round(float(heat[inside].mean() / heat[rest].mean()), 3),
        "ratio_against_whole_slice": round(float(heat[inside].mean() / heat[~inside].mean()), 3),
        "kidney_probability_per_slice": [round(v, 3) for v in result.curve(1)],
        right: int((verdicts == truth).sum()),
    }


def _bare(network: torch.nn.Module, inputs: torch.Tensor, size: int) -> Callable[[], None]:
    """Forward passes alone over ready-made ``inputs`` (N, C, ...), ``size`` at a time.

    The inputs are those our job feeds the network, read and normalised with
    plain numpy before timing: the network's speed depends on the values (on
    uniform noise it ran 5% faster than on these boxes).
    """
    batches = list(torch.split(inputs, size))

    def run() -> None:
        with torch.no_grad():
            for batch in batches:
                network(batch)

    return run


def _windowed(crops: np.ndarray) -> torch.Tensor:
    """(N, *spatial) HU crops as the bench model's (N, 1, *spatial) inputs: window -160..240."""
    return torch.from_numpy(np.clip((crops.astype(np.float32) + 160) / 400, 0, 1))[:, None]


def _interleaved(arms: dict[str, Callable[[], object]], reps: int) -> dict[str, dict]:
    """Median wall and CPU (all threads) seconds of each arm over ``reps`` rounds.

    One warm-up round first; every round runs each arm once, in an order that
    reverses from round to round, so that a change in the machine's load
    falls on every arm alike. CPU time counts only this process's work, so it
    varies less than wall time when other processes share the cores.
    """
    for run in arms.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            started, started_cpu = time.perf_counter(), time.process_time()
            arms[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - started_cpu)
    return {
        name: {
            "wall_s": round(float(np.median(wall[name])), 4),
            "cpu_s": round(float(np.median(cpu[name])), 4),
        }
        for name in arms
    }


def _percent(timings: dict[str, dict], ours: str, bare: str, clock: str) -> float:
    return round(100 * (timings[ours][clock] / timings[bare][clock] - 1), 1)


def _compared(timings: dict[str, dict], pairs: dict[str, str] | None = None) -> dict:
    """``timings`` with the overhead of "ours" against the fastest bare arm, by wall and CPU time.

    ``pairs`` adds like-for-like figures: our arm against the bare arm of the same batches.
    """
    out: dict = {"timings": timings}
    for clock in ("wall_s", "cpu_s"):
        bare = min((n for n in timings if n.startswith("bare")), key=lambda n: timings[n][clock])
        out[f"overhead_percent_{clock[:-2]}"] = _percent(timings, "ours", bare, clock)
        out[f"fastest_bare_{clock[:-2]}"] = bare
        for ours, same in (pairs or {}).items():
            out[f"overhead_percent_{clock[:-2]}, {ours}"] = _percent(timings, ours, same, clock)
    return out


def _bench_model(patch: int, seed: int) -> LoadedModel:
    card = ModelCard(
        name="bench",
        architecture="DenseNet",
        architecture_args=dict(DEFAULT_ARGS),
        label_names={0: "a", 1: "b"},
        patch_size=[1, patch, patch],
        task="classification",
        spatial_dims=2,
        intensity={"kind": "window", "low": -160.0, "high": 240.0},
    )
    torch.manual_seed(seed)
    return LoadedModel(card, build_network(card).eval(), "bench", "")


def overhead(seed: int, slice_patch: int, reps: int, slice_reps: int) -> dict:
    """Our job against bare forward passes: 100 32x32 boxes, every slice of 512x512x300.

    Ours runs as a user would (default settings: the job sizes its batches)
    and reads, normalises (and resizes) from the int16 scan; the overhead is
    measured against the fastest of the bare arms, forward passes alone in the
    batch sizes given by their names. A job sizes its first batch from the
    network's pace in earlier jobs; "first job with this network" times one
    box first. "ours, batches of 32" is the like-for-like figure at one fixed
    batch size.
    """
    rng = np.random.default_rng(seed)
    scan = Volume(rng.integers(-1000, 1000, size=(300, 512, 512), dtype=np.int16), metadata={})
    out: dict = {
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min_before": round(os.getloadavg()[0], 2),
    }
    boxes = [Region.around((z, 256, 256), (1, BOX, BOX)) for z in range(100)]
    crops = _windowed(np.stack([scan.array[tuple(map(slice, r.start, r.stop))][0] for r in boxes]))
    model = _bench_model(BOX, seed)

    def ours(config: ClassifyConfig, regions: list[Region] | None, model=model, fresh=False):
        def run() -> None:
            if fresh:  # as the first job with this network: no time per input known yet
                inference._PACES.table(model).clear()
            run_job(classify_job(scan, model, config, regions))

        return run

    box_arms = {
        "ours": ours(ClassifyConfig(scope="regions", device="cpu"), boxes),
        "ours, first job with this network": ours(
            ClassifyConfig(scope="regions", device="cpu"), boxes, fresh=True
        ),
        "ours, batches of 32": ours(
            ClassifyConfig(scope="regions", device="cpu", batch_size=32), boxes
        ),
        "bare, one batch of 100": _bare(model.network, crops, 100),
        "bare, batches of 32": _bare(model.network, crops, 32),
    }
    pairs = {
        "ours, batches of 32": "bare, batches of 32",
        "ours, first job with this network": "bare, one batch of 100",
    }
    out["100_boxes_32x32"] = {"reps": reps, **_compared(_interleaved(box_arms, reps), pairs)}
    model = _bench_model(slice_patch, seed)
    slices = _windowed(scan.array)
    if slice_patch != slices.shape[-1]:
        slices = torch.nn.functional.interpolate(
            slices, size=(slice_patch, slice_patch), mode="bilinear", align_corners=False
        )
    slice_arms = {
        "ours": ours(ClassifyConfig(scope="slices", device="cpu"), None, model),
        "bare, batches of 1": _bare(model.network, slices, 1),
        "bare, batches of 4": _bare(model.network, slices, 4),
    }
    out[f"300_slices_512x512_patch_{slice_patch}"] = {
        "reps": slice_reps,
        **_compared(_interleaved(slice_arms, slice_reps)),
    }
    out["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1300, help="organ classifier steps")
    parser.add_argument("--cam-iterations", type=int, default=150, help="kidney classifier steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--only-overhead", action="store_true")
    parser.add_argument("--slice-patch", type=int, default=512, help="slice model input size")
    parser.add_argument("--reps", type=int, default=15, help="overhead rounds, boxes")
    parser.add_argument("--slice-reps", type=int, default=3, help="overhead rounds, slices")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = DATA / "totalsegmentator"
    report = {
        "benchmark": "classify",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
    }
    if not args.only_overhead:
        ct = read_volume(folder / "example_ct_sm.nii.gz")
        seg = read_label_map(folder / "example_seg.nii.gz", reference=ct).array
        with tempfile.TemporaryDirectory() as scratch:
            report["organs"] = organs(ct, seg, args.steps, args.seed, Path(scratch))
            report["grad_cam_kidney"] = kidney_cam(
                ct, seg, None, args.seed, Path(scratch), args.cam_iterations
            )
    if not args.skip_overhead:
        report["overhead"] = overhead(args.seed, args.slice_patch, args.reps, args.slice_reps)
    report["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    report["goals"] = {
        "organs_macro_roc_auc": 0.90,
        "training_steps": 1300,
        "cam_ratio": 2.0,
        "overhead_percent": 10,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
