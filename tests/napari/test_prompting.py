"""Prompt layers -> Prompts: points, boxes (2D and joined 3D), scribbles, lassos; commit names."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel
from skimage.draw import polygon

from napari_medai._napari.label_edits import Overwrite
from napari_medai._napari.layers import image_layer_data, label_map_from_layer
from napari_medai._napari.prompting import (
    commit_object,
    layers_prompts,
    prompt_layers,
    set_polarity,
)
from napari_medai.core.phantom import make_phantom
from napari_medai.core.prompt.prompts import Box, Point, PromptError, Scribble

SHAPE = (40, 128, 128)


@pytest.fixture
def layers():
    volume, _ = make_phantom(SHAPE)
    viewer = ViewerModel()
    data, kwargs, _ = image_layer_data(volume)
    scan = viewer.add_image(data, **kwargs)
    return viewer, scan, *prompt_layers(viewer, scan)


def rectangle(z: float, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
    return np.array([[z, y0, x0], [z, y0, x1], [z, y1, x1], [z, y1, x0]], float)


def test_clicks_keep_their_polarity_and_round_to_voxels(layers):
    _, _, points, shapes = layers
    points.add([[10.2, 50.6, 60.0]])
    set_polarity(points, shapes, False)
    points.add([[11.0, 20.0, 30.4]])
    prompts = layers_prompts(points, shapes, SHAPE)
    assert prompts.items == (Point((10, 51, 60), True), Point((11, 20, 30), False))


def test_the_prompt_layers_lie_on_the_scan_grid(layers):
    _, scan, points, shapes = layers
    for layer in (points, shapes):
        assert np.allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)


def test_a_rectangle_is_a_2d_box_and_one_on_another_slice_over_it_makes_a_3d_box(layers):
    _, _, points, shapes = layers
    shapes.add_rectangles(rectangle(12, 30, 40, 60, 80))
    assert layers_prompts(points, shapes, SHAPE).items == (Box((12, 30, 40), (12, 60, 80)),)
    shapes.add_rectangles(rectangle(20, 35, 45, 70, 75))
    assert layers_prompts(points, shapes, SHAPE).items == (Box((12, 30, 40), (20, 70, 80)),)
    shapes.add_rectangles(rectangle(20, 100, 100, 110, 110))  # apart in-plane: its own box
    assert len(layers_prompts(points, shapes, SHAPE).boxes) == 2


def test_a_path_is_a_scribble_with_the_current_polarity(layers):
    _, _, points, shapes = layers
    set_polarity(points, shapes, False)
    shapes.add_paths(np.array([[5, 10, 10], [5, 20, 30], [5, 25, 35]], float))
    [scribble] = layers_prompts(points, shapes, SHAPE).items
    assert scribble == Scribble(((5, 10, 10), (5, 20, 30), (5, 25, 35)), False)


def test_a_lasso_marks_its_filled_inside_on_its_slice(layers):
    _, _, points, shapes = layers
    vertices = np.array([[7, 20, 20], [7, 20, 60], [7, 40, 40], [7, 60, 60], [7, 60, 20]], float)
    shapes.add_polygons(vertices)
    prompts = layers_prompts(points, shapes, SHAPE)
    seeds = prompts.seeds(True)
    expected = np.zeros(SHAPE[1:], bool)
    expected[polygon(vertices[:, 1], vertices[:, 2], SHAPE[1:])] = True  # independent fill
    got = np.zeros(SHAPE[1:], bool)
    got[seeds[:, 1], seeds[:, 2]] = True
    assert set(seeds[:, 0]) == {7} and np.array_equal(got, expected)
    assert not prompts.seeds(False).size


def test_an_ellipse_or_a_prompt_outside_the_scan_is_refused_by_name(layers):
    _, _, points, shapes = layers
    points.add([[45.0, 10.0, 10.0]])
    with pytest.raises(PromptError, match="outside the scan"):
        layers_prompts(points, shapes, SHAPE)
    points.data = np.empty((0, 3))
    shapes.add_ellipses(rectangle(3, 10, 10, 20, 20))
    with pytest.raises(PromptError, match="an ellipse: draw a rectangle"):
        layers_prompts(points, shapes, SHAPE)


def test_commit_names_the_label_for_train_and_export(layers):
    viewer, scan, *_ = layers
    target = viewer.add_labels(np.zeros(SHAPE, np.uint8), affine=scan.affine.affine_matrix)
    mask = np.zeros(SHAPE, bool)
    mask[10:14, 30:40, 30:40] = True
    edit = commit_object(target, mask, 5, "spleen", Overwrite.KEEP)
    assert edit.changed == mask.sum()
    label_map = label_map_from_layer(target)  # what Train and Export read
    assert label_map.label_names[5] == "spleen"
    assert label_map.geometry.is_close(label_map_from_layer(scan).geometry)
    assert target.metadata["napari_medai"]["prompted"]["5"]["slices"] == [10, 13]
    with pytest.raises(PromptError, match="empty"):
        commit_object(target, np.zeros(SHAPE, bool), 6, "x", Overwrite.KEEP)
