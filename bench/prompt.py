"""Prompt bench: a simulated user on real CT organs and MR lesions, against offline baselines.

The user draws a 3D box with a 10% margin, then clicks deepest inside the largest error region
(positive in a missed region, negative in a false one), four times. The default engine is
timed on every update; SimpleITK's seeded watershed, scikit-image's random walker (the
grow-from-seeds-like baseline installed here; itk-growcut is not) and a graph cut with
histogram likelihood (MONAI Label's scribble method, on PyMaxflow when it is installed) run
on the whole scan with the same prompts as seeds, after the box and after the last click.
``liver_512`` is the CT resampled (linear; labels nearest) to 512x512x300 over the same extent,
to time an organ-sized object on a full-size scan; the baselines are not run there (the issue
measured 87 s to 280 s per run for them at that size).
``held_out`` runs the engine alone on structures the engine was not tuned on (other organs of
the same CT, the example MR's abdomen) with the same simulated user, so a change that only
fits the six cases above shows there.
Prints one JSON object. Needs ../shared/data. Usage: python bench/prompt.py [--margin 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from skimage.segmentation import random_walker

from napari_medai.core.io.reading import read_volume
from napari_medai.core.prompt.engine import DEFAULT_ENGINE, engine_named
from napari_medai.core.prompt.prompts import Box, Prompts
from napari_medai.core.volume import volume_from_sitk, volume_to_sitk

# The simulated user's clicks are shared with the prompt tests (tests/helpers).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))
from simulated_user import corrective_click  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CT = ("totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz")
CASES = {
    "liver": (*CT, 5),
    "spleen": (*CT, 1),
    "kidney_2": (*CT, 2),
    "kidney_3": (*CT, 3),
    "brain2_lesion": ("pyradiomics/brain2_image.nrrd", "pyradiomics/brain2_label.nrrd", 1),
    "breast1_lesion": ("pyradiomics/breast1_image.nrrd", "pyradiomics/breast1_label.nrrd", 1),
    "liver_512": (*CT, 5, True),
}
MR = ("totalsegmentator/example_mr_sm.nii.gz", "totalsegmentator/example_seg_mr.nii.gz")
HELD_OUT = {
    "ct_gallbladder": (*CT, 4),
    "ct_stomach": (*CT, 6),
    "ct_pancreas": (*CT, 7),
    "ct_aorta": (*CT, 52),
    "ct_vena_cava": (*CT, 63),
    "ct_back_muscle": (*CT, 86),
    "mr_liver": (*MR, 5),
    "mr_spleen": (*MR, 1),
    "mr_kidney_2": (*MR, 2),
    "mr_kidney_3": (*MR, 3),
}
CLICKS = 4


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return round(
        2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1), 3
    )


def box_around(truth: np.ndarray, margin: float = 0.1) -> Box:
    inside = np.argwhere(truth)
    low, high = inside.min(axis=0), inside.max(axis=0)
    pad = np.round((high - low + 1) * margin).astype(int)
    start, stop = np.maximum(low - pad, 0), np.minimum(high + pad, np.asarray(truth.shape) - 1)
    return Box(tuple(start.tolist()), tuple(stop.tolist()))


def markers(prompts: Prompts, shape: tuple[int, ...]) -> np.ndarray:
    """Baseline seeds from the same prompts: 1 = object (box centre, positive clicks),
    2 = background (outside the box, negative clicks)."""
    out = np.full(shape, 2, np.uint8)
    box = prompts.boxes[0]
    out[tuple(slice(a, b + 1) for a, b in zip(box.low, box.high))] = 0
    out[tuple(((box.low + box.high) // 2).tolist())] = 1
    for point in prompts.points:
        out[point.zyx] = 1 if point.positive else 2
    for value in (1, 2):  # seeds as the engine's: a voxel and its neighbours, not one voxel
        out[ndi.binary_dilation(out == value) & (out == 0)] = value
    return out


def watershed(volume, prompts: Prompts) -> np.ndarray:
    image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
    gradient = sitk.GradientMagnitudeRecursiveGaussian(image, 1.0)
    seeds = sitk.GetImageFromArray(markers(prompts, volume.spatial_shape))
    seeds.CopyInformation(image)
    result = sitk.MorphologicalWatershedFromMarkers(gradient, seeds, markWatershedLine=False)
    return sitk.GetArrayFromImage(result) == 1


def walker(volume, prompts: Prompts) -> np.ndarray:
    image = volume.array.astype(np.float32)
    image = (image - image.mean()) / (image.std() + 1e-6)
    seeds = markers(prompts, volume.spatial_shape).astype(np.int32)
    spacing = np.asarray(volume.geometry.spacing)
    labels = random_walker(image, seeds, beta=130, mode="cg_j", tol=1e-3, spacing=spacing)
    return labels == 1


def graph_cut(volume, prompts: Prompts) -> np.ndarray:
    """Max-flow with a histogram likelihood learned from the seeds and a contrast term."""
    import maxflow

    image = volume.array.astype(np.float32)
    seeds = markers(prompts, volume.spatial_shape)
    edges = np.linspace(*np.percentile(image, [0.5, 99.5]), 65)
    bins = np.clip(np.digitize(image, edges) - 1, 0, 63)
    fg, bg = (np.bincount(bins[seeds == v], minlength=64) + 1.0 for v in (1, 2))
    unary = (np.log(bg / bg.sum()) - np.log(fg / fg.sum()))[bins]
    spacing = np.asarray(volume.geometry.spacing)
    graph = maxflow.Graph[float]()
    nodes = graph.add_grid_nodes(image.shape)
    steps = [np.diff(image, axis=axis) for axis in range(3)]
    beta = 1.0 / (2.0 * np.mean([np.mean(step**2) for step in steps]) + 1e-9)
    for axis, step in enumerate(steps):
        weight = np.zeros(image.shape, np.float32)
        weight[(slice(None),) * axis + (slice(0, -1),)] = np.exp(-beta * step**2) / spacing[axis]
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        graph.add_grid_edges(nodes, weights=weight, structure=structure, symmetric=True)
    hard = 1e6
    graph.add_grid_tedges(
        nodes,
        np.maximum(-unary, 0) + hard * (seeds == 1),
        np.maximum(unary, 0) + hard * (seeds == 2),
    )
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)


def baselines_installed() -> list[tuple[str, object]]:
    """The baselines this environment can run (graph cut needs PyMaxflow)."""
    methods = [("sitk_seeded_watershed", watershed), ("random_walker", walker)]
    try:
        import maxflow  # noqa: F401
    except ImportError:
        return methods
    return [*methods, ("graph_cut_maxflow", graph_cut)]


def large(volume, truth: np.ndarray, shape_zyx=(300, 512, 512)):
    """``volume`` and ``truth`` resampled onto ``shape_zyx`` voxels over the same extent."""
    image = volume_to_sitk(volume)
    size = np.asarray(image.GetSize(), float)
    reference = sitk.Image([int(n) for n in shape_zyx[::-1]], image.GetPixelID())
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    spacing = np.asarray(image.GetSpacing()) * size / np.asarray(shape_zyx[::-1])
    reference.SetSpacing(spacing.tolist())
    labels = sitk.GetImageFromArray(truth.astype(np.uint8))
    labels.CopyInformation(image)
    big = sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear)
    big_truth = sitk.Resample(labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor)
    return volume_from_sitk(big), sitk.GetArrayFromImage(big_truth) > 0


def timed(function, *args):
    began = time.perf_counter()
    result = function(*args)
    return result, round(time.perf_counter() - began, 3)


def run_case(
    image_path: str,
    label_path: str,
    value: int,
    enlarge: bool = False,
    margin: float = 0.1,
    baselines_too: bool = True,
) -> dict:
    volume = read_volume(DATA / image_path)
    truth = read_volume(DATA / label_path).array == value
    if enlarge:
        volume, truth = large(volume, truth)
    spacing = np.asarray(volume.geometry.spacing)
    session, start_s = timed(engine_named(DEFAULT_ENGINE).start, volume)
    prompts = Prompts((box_around(truth, margin),))
    history, mask, box_prompts = [], np.zeros(truth.shape, bool), prompts
    for step in range(CLICKS + 1):
        if step:
            prompts = prompts.plus(corrective_click(truth, mask, spacing))
        mask, seconds = timed(session.update, prompts)
        history.append({"dice": dice(mask, truth), "seconds": seconds})
        if step == 0:
            box_prompts = prompts
    baselines = {}
    for name, method in baselines_installed() if baselines_too and not enlarge else []:
        box_mask, box_s = timed(method, volume, box_prompts)
        last_mask, last_s = timed(method, volume, prompts)
        baselines[name] = {
            "box": {"dice": dice(box_mask, truth), "seconds": box_s},
            f"box+{CLICKS}": {"dice": dice(last_mask, truth), "seconds": last_s},
        }
    inside = np.argwhere(truth)
    fill = np.count_nonzero(truth) / np.prod(inside.max(0) - inside.min(0) + 1)
    return {
        "shape_zyx": list(volume.spatial_shape),
        "object_voxels": int(np.count_nonzero(truth)),
        "object_fills_tight_box": round(float(fill), 3),
        "engine": {"start_s": start_s, "per_interaction": history},
        "baselines": baselines,
    }


def last_dice(cases: dict) -> float:
    """Mean Dice after the last click over ``cases``."""
    return round(
        float(np.mean([c["engine"]["per_interaction"][-1]["dice"] for c in cases.values()])), 3
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--margin", type=float, default=0.1, help="box margin, of the extent")
    margin = parser.parse_args().margin
    if not DATA.is_dir():
        print(json.dumps({"skipped": f"no shared data at {DATA}"}))
        return 0
    cases = {name: run_case(*spec, margin=margin) for name, spec in CASES.items()}
    held_out = {
        name: run_case(*spec, margin=margin, baselines_too=False) for name, spec in HELD_OUT.items()
    }
    print(
        json.dumps(
            {
                "engine": DEFAULT_ENGINE,
                "clicks": CLICKS,
                "margin": margin,
                "cases": cases,
                "held_out": held_out,
                "mean_last_dice": {"cases": last_dice(cases), "held_out": last_dice(held_out)},
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
