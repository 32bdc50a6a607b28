"""Classification on real scans: the Grad-CAM layer lands on the scan in world space,
and Grad-CAM of a "kidney present" classifier lights up the kidneys (issue 7 acceptance).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from napari.layers import Layer

from napari_medai._napari.classification import cam_layer_data, regions_from_shapes
from napari_medai._napari.layers import volume_from_layer
from napari_medai._napari.reader import read_layers
from napari_medai.core.classification.config import ClassifyConfig
from napari_medai.core.classification.inference import classify_job
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.models.card import ModelCard
from napari_medai.core.models.loaded import LoadedModel
from napari_medai.core.models.networks import build_network

pytestmark = [pytest.mark.real, pytest.mark.usefixtures("one_torch_thread")]

#: Optimizer steps of the kidney classifier (a fixed count, not time: CI machines are slow).
ITERATIONS = 150
TINY = {"init_features": 4, "growth_rate": 4, "block_config": [1, 1], "bn_size": 1}


def _model(**changes) -> LoadedModel:
    fields = {
        "name": "tiny",
        "architecture": "DenseNet",
        "architecture_args": TINY,
        "label_names": {0: "a", 1: "b"},
        "patch_size": [1, 32, 32],
        "task": "classification",
        "spatial_dims": 2,
        "intensity": {"kind": "percentile", "low": 1, "high": 99},
    }
    card = ModelCard(**{**fields, **changes})
    torch.manual_seed(0)
    return LoadedModel(card, build_network(card).eval(), "memory", "")


@pytest.mark.parametrize("name", ["niivue/FLAIR.nii.gz", "nifti_nimh/avg152T1_RL_nifti.nii.gz"])
def test_cam_layer_lies_on_the_scan_in_world_space(shared_data, name):
    path = shared_data / name
    scan = Layer.create(*read_layers(str(path))[0])
    volume = volume_from_layer(scan)
    image = sitk.ReadImage(str(path))
    models = [
        (_model(), ClassifyConfig(scope="slices", axis=1, cam=True)),
        (
            _model(
                spatial_dims=3, patch_size=[16, 32, 32], spacing=[4.0, 4.0, 4.0], orientation="RAS"
            ),
            ClassifyConfig(scope="volume", cam=True),
        ),
    ]
    rng = np.random.default_rng(0)
    for model, config in models:
        result = run_job(classify_job(volume, model, config))
        cam = Layer.create(*cam_layer_data(result, scan, "memory", "tiny"))
        assert cam.data.shape == scan.data.shape
        for index in rng.integers(0, scan.data.shape, size=(5, 3)):
            world = np.asarray(cam.data_to_world(index))
            np.testing.assert_allclose(world, scan.data_to_world(index), atol=1e-6)
            sitk_point = image.TransformIndexToPhysicalPoint([int(i) for i in index[::-1]])
            lps = np.asarray(sitk_point)[::-1]
            np.testing.assert_allclose(world, lps, atol=1e-4)
        assert cam.data.max() > 0


def test_boxes_drawn_in_world_space_land_on_the_oblique_scan(shared_data):
    scan = Layer.create(*read_layers(str(shared_data / "niivue/FLAIR.nii.gz"))[0])
    corner_voxels = np.array([[20, 30, 40], [20, 30, 72], [20, 62, 72], [20, 62, 40]])
    world = np.array([scan.data_to_world(v) for v in corner_voxels])
    shapes = Layer.create([world], {"shape_type": "rectangle"}, "shapes")
    (region,) = regions_from_shapes(shapes, scan)
    assert region.start == (20, 30, 40) and region.stop == (21, 62, 72)


def _bench():
    """bench/classify.py, whose box sampling and heat measure this test shares."""
    path = Path(__file__).resolve().parents[2] / "bench" / "classify.py"
    spec = importlib.util.spec_from_file_location("bench_classify", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_grad_cam_of_a_kidney_classifier_lights_up_the_kidneys(shared_data, tmp_path):
    """The issue's measure: on held-out kidney slices, heat inside the kidneys >= 2x outside.

    The "kidney present" classifier learns from 32x32 boxes on slices 0-11 and
    runs on every slice (core/classification/slice_tiles.py: box-sized windows for
    the verdicts, Grad-CAM of the whole slice at the boxes' scale). Outside is
    the rest of the body, not the air around it.
    """
    bench = _bench()
    folder = shared_data / "totalsegmentator"
    ct = read_volume(folder / "example_ct_sm.nii.gz")
    seg = read_label_map(folder / "example_seg.nii.gz", reference=ct).array
    figures = bench.kidney_cam(
        ct, seg, budget=None, iterations=ITERATIONS, seed=0, scratch=tmp_path
    )
    slices, boxes = figures["slices"], figures["boxes"]
    print(  # noqa: T201 (the issue asks the test to print the ratio; shown with pytest -s)
        f"kidney Grad-CAM on held-out slices {slices['held_out_slices']}: mean heat inside / "
        f"outside the kidney mask = {slices['ratio_of_means']} (against the whole slice: "
        f"{slices['ratio_against_whole_slice']}); inside / outside within held-out boxes: "
        f"{boxes['ratio_of_means']}"
    )
    # Seeds 0-9: 2.58-4.25 (seed 0: 2.72; SSE4.1 or AVX2 kernels instead of AVX-512,
    # or 1 or 2 threads, move it by at most 0.06).
    assert slices["ratio_of_means"] >= 2.0
    # Within a 32x32 box around a kidney the map is coarser than the kidney: the last
    # feature map sees about 59 px, so the heat spreads over the box (seeds 0-9: 1.64-2.77;
    # seed 0: 1.81, 1.85 with other kernels; with 16 px of scan around each box).
    assert boxes["ratio_of_means"] >= 1.5
