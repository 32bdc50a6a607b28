"""Segmentation results as napari layers: grid, names, provenance, update in place."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from napari.layers import Image, Labels, Layer

from napari_medai._napari.layers import METADATA_KEY, image_layer_data, layer_geometry
from napari_medai._napari.segmentation import (
    SegmentationTarget,
    result_layer_data,
    segmentation_input,
    show_segmentation,
)
from napari_medai.core.errors import MedaiError, ModelLoadError
from napari_medai.core.jobs import run_job
from napari_medai.core.segmentation.inference import SegmentConfig, SegmentResult
from napari_medai.core.segmentation.jobs import load_and_segment_job
from napari_medai.core.volume import LabelMap, Volume

LABEL_NAMES = {0: "background", 1: "organ", 2: "lesion"}


@pytest.fixture
def viewer_with_image(phantom):
    viewer = ViewerModel()
    image = viewer.add_layer(Layer.create(*image_layer_data(phantom[0])))
    image.name = "ct"
    return viewer, image


def fake_result(volume: Volume, seed: int, maps: bool = True) -> SegmentResult:
    """A result on ``volume``'s grid with random labels and maps (layer code under test only)."""
    rng = np.random.default_rng(seed)
    shape = volume.spatial_shape
    labels = LabelMap(
        rng.integers(0, 3, size=shape).astype(np.uint8), volume.geometry, {}, dict(LABEL_NAMES)
    )
    provenance = {"model": "tiny", "sha256": f"{seed:064x}", "config": {"tta": False}, "time": "t"}
    probability = Volume(rng.random(shape, dtype=np.float32), volume.geometry) if maps else None
    uncertainty = Volume(rng.random(shape, dtype=np.float32), volume.geometry) if maps else None
    return SegmentResult(labels, probability, uncertainty, provenance)


def test_outputs_lie_on_the_image_grid_with_names_and_provenance(viewer_with_image, phantom):
    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    result = fake_result(volume, seed=1)
    target = SegmentationTarget.of(image, "/models/tiny")

    labels, probability, uncertainty = show_segmentation(
        viewer, result_layer_data(result, target, "tiny")
    )

    assert isinstance(labels, Labels) and labels.name == "ct – tiny"
    assert isinstance(probability, Image) and probability.name == "ct – tiny probability"
    assert isinstance(uncertainty, Image) and uncertainty.name == "ct – tiny uncertainty"
    rng = np.random.default_rng(3)
    for layer, expected in (
        (labels, result.labels.array),
        (probability, result.probability.array),
        (uncertainty, result.uncertainty.array),
    ):
        np.testing.assert_array_equal(layer.data, expected)
        assert layer_geometry(layer) == phantom[0].geometry
        for index in rng.integers(0, image.data.shape, size=(20, 3)):
            np.testing.assert_allclose(
                layer.data_to_world(index), image.data_to_world(index), atol=1e-9
            )
    assert list(labels.features["name"]) == ["background", "organ", "lesion"]
    info = labels.metadata[METADATA_KEY]
    assert info["label_names"] == {"0": "background", "1": "organ", "2": "lesion"}
    assert info["provenance"] == {**result.provenance, "image": "ct"}
    assert probability.contrast_limits == [0.0, 1.0]


def test_input_is_the_image_volume_and_bad_layers_are_refused(viewer_with_image, phantom):
    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    assert volume.geometry == phantom[0].geometry
    np.testing.assert_array_equal(volume.array, phantom[0].array)
    assert volume.metadata["name"] == "ct"
    rgb = viewer.add_image(np.zeros((4, 8, 8, 3), dtype=np.uint8), rgb=True, name="photo")
    flat = viewer.add_image(np.zeros((8, 8)), name="slice")
    for layer in (rgb, flat):
        with pytest.raises(MedaiError, match=layer.name):
            segmentation_input(layer)


def test_a_second_run_updates_the_layers_and_keeps_the_display(viewer_with_image):
    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    target = SegmentationTarget.of(image, "/models/tiny")
    first = show_segmentation(viewer, result_layer_data(fake_result(volume, 1), target, "tiny"))
    first[0].opacity = 0.25
    first[1].colormap = "gray"
    image.name = "renamed ct"  # the image is the same layer, so its results still match
    count = len(viewer.layers)

    second_result = fake_result(volume, 2)
    second = show_segmentation(viewer, result_layer_data(second_result, target, "tiny"))

    assert len(viewer.layers) == count
    assert all(a is b for a, b in zip(first, second))
    np.testing.assert_array_equal(second[0].data, second_result.labels.array)
    np.testing.assert_array_equal(second[2].data, second_result.uncertainty.array)
    assert second[0].metadata[METADATA_KEY]["provenance"]["sha256"] == f"{2:064x}"
    assert second[0].opacity == 0.25 and second[1].colormap.name == "gray"


def test_a_second_run_into_a_corrected_mask_is_one_undo_step(viewer_with_image):
    """Ctrl+Z after a re-run gives back the first result with the user's corrections."""
    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    target = SegmentationTarget.of(image, "/models/tiny")
    [labels, *_] = show_segmentation(
        viewer, result_layer_data(fake_result(volume, 1), target, "tiny")
    )
    labels.paint((2, 10, 10), 2)  # a brush stroke: one step of napari's own history
    corrected = np.array(labels.data, copy=True)

    second = fake_result(volume, 2)
    show_segmentation(viewer, result_layer_data(second, target, "tiny"))
    np.testing.assert_array_equal(labels.data, second.labels.array)

    labels.undo()
    np.testing.assert_array_equal(labels.data, corrected)
    labels.redo()
    np.testing.assert_array_equal(labels.data, second.labels.array)


def test_a_second_run_leaves_locked_labels_as_they_are(viewer_with_image):
    from napari_medai._napari.segments import set_locked

    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    target = SegmentationTarget.of(image, "/models/tiny")
    first = fake_result(volume, 1)
    [labels, *_] = show_segmentation(viewer, result_layer_data(first, target, "tiny"))
    set_locked(labels, 2, True)
    second = fake_result(volume, 2)
    with pytest.warns(UserWarning, match="locked"):
        show_segmentation(viewer, result_layer_data(second, target, "tiny"))
    was_two = first.labels.array == 2
    np.testing.assert_array_equal(labels.data[was_two], 2)  # finished work stays
    free = ~was_two & (second.labels.array != 2)
    np.testing.assert_array_equal(labels.data[free], second.labels.array[free])


def test_new_layer_other_model_or_other_shape_adds_layers(viewer_with_image):
    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    target = SegmentationTarget.of(image, "/models/tiny")
    first = show_segmentation(
        viewer, result_layer_data(fake_result(volume, 1, maps=False), target, "tiny")
    )
    count = len(viewer.layers)

    again = show_segmentation(
        viewer, result_layer_data(fake_result(volume, 2, maps=False), target, "tiny"), True
    )
    other = SegmentationTarget.of(image, "/models/other")
    by_other = show_segmentation(
        viewer, result_layer_data(fake_result(volume, 3, maps=False), other, "other")
    )

    assert len(viewer.layers) == count + 2
    assert again[0] is not first[0] and by_other[0] not in (first[0], again[0])
    np.testing.assert_array_equal(first[0].data, fake_result(volume, 1).labels.array)
    # Without "new layer", the newest matching layer is the one updated.
    latest = show_segmentation(
        viewer, result_layer_data(fake_result(volume, 4, maps=False), target, "tiny")
    )
    assert latest[0] is again[0] and len(viewer.layers) == count + 2


def test_the_job_reports_a_broken_model_before_any_work(viewer_with_image, tmp_path):
    _viewer, image = viewer_with_image
    volume = segmentation_input(image)
    broken = tmp_path / "weights.pt"
    broken.write_bytes(b"not a checkpoint")
    job = load_and_segment_job(str(broken), False, volume, SegmentConfig(device="cpu"))
    with pytest.raises(ModelLoadError, match="weights.pt"):
        run_job(job)


def test_painting_a_models_mask_makes_its_dicom_seg_semiautomatic(viewer_with_image):
    from napari_medai.core.io.dicom_export import algorithm_of

    viewer, image = viewer_with_image
    volume = segmentation_input(image)
    target = SegmentationTarget.of(image, "/models/tiny")
    labels = show_segmentation(viewer, result_layer_data(fake_result(volume, 1), target, "tiny"))[0]
    assert algorithm_of(labels.metadata[METADATA_KEY]["provenance"])[0] == "AUTOMATIC"

    labels.paint((0, 1, 1), 1)

    assert algorithm_of(labels.metadata[METADATA_KEY]["provenance"])[0] == "SEMIAUTOMATIC"
    second = show_segmentation(viewer, result_layer_data(fake_result(volume, 2), target, "tiny"))
    assert algorithm_of(second[0].metadata[METADATA_KEY]["provenance"])[0] == "AUTOMATIC"
