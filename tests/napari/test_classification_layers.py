"""Boxes from Shapes/Points layers through world coordinates; results onto the box layer."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from napari.layers import Layer, Points, Shapes

from napari_medai._napari.classification import (
    annotate_layer,
    regions_from_points,
    regions_from_shapes,
)
from napari_medai._napari.layers import image_layer_data
from napari_medai.core.classification.config import (
    ClassificationError,
    ClassifyResult,
    Prediction,
    Region,
)


@pytest.fixture
def image(phantom):
    return Layer.create(*image_layer_data(phantom[0]))


def test_points_and_shapes_become_voxel_boxes_of_the_oblique_image(image):
    centre = image.data_to_world([7, 20, 30])
    points = Points([centre])
    assert regions_from_points(points, image, (8, 6)) == [Region((7, 16, 27), (8, 24, 33))]
    corners = [image.data_to_world(v) for v in ([3, 5, 6], [3, 5, 20], [3, 15, 20], [3, 15, 6])]
    shapes = Shapes([np.array(corners)], shape_type="rectangle")
    assert regions_from_shapes(shapes, image) == [Region((3, 5, 6), (4, 15, 20))]
    tilted = [image.data_to_world(v) for v in ([3, 5, 6], [4, 5, 20], [4, 15, 20], [3, 15, 6])]
    with pytest.raises(ClassificationError, match="spans several slices"):
        regions_from_shapes(Shapes([np.array(tilted)], shape_type="polygon"), image)
    with pytest.raises(ClassificationError, match="holds no boxes"):
        regions_from_shapes(Shapes(ndim=3), image)


def test_results_become_features_and_text_unless_the_boxes_changed():
    points = Points([[1, 2, 3], [1, 5, 5]], features={"note": ["a", "b"]})
    result = ClassifyResult(
        "regions",
        [Prediction(0, 1, "liver", 0.9, [0.1, 0.9]), Prediction(1, 0, "other", 0.7, [0.7, 0.3])],
        {0: "other", 1: "liver"},
    )
    annotate_layer(points, result)
    assert points.features["note"].tolist() == ["a", "b"]
    assert points.features["class"].tolist() == ["liver", "other"]
    assert points.features["p(liver)"].tolist() == [0.9, 0.3]
    assert points.text.string.format == "{class} {probability:.2f}"
    points.data = points.data[:1]
    with pytest.raises(ClassificationError, match="run again"):
        annotate_layer(points, result)


def test_a_point_on_a_slice_of_a_flipped_scan_stays_on_that_slice(phantom):
    """The real CT's grid (example_ct_sm: 3 mm, direction diag(1, -1, -1)): a world round
    trip gives 16.9999999 for slice 17 on most slices, which must not become slice 16."""
    volume = phantom[0]
    flipped = replace(
        volume.geometry,
        spacing=(3.0, 3.0, 3.0),
        direction=np.diag([1.0, -1.0, -1.0]),
        origin=(94.3017578125, -11.319000244140625, 177.95632934570312),
    )
    image = Layer.create(*image_layer_data(replace(volume, geometry=flipped)))
    points = Points([image.data_to_world([z, 30, 30]) for z in range(24)])
    starts = [region.start for region in regions_from_points(points, image, (8, 8))]
    assert starts == [(z, 26, 26) for z in range(24)]


def test_a_box_centre_is_snapped_before_rounding():
    assert Region.around((16.9999999, 50.0000001, 49.9999999), (1, 32, 32)).start == (17, 34, 34)
