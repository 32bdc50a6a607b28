"""What Train takes from the layers: prompted objects count whole, previews never."""

from __future__ import annotations

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_medai._napari.label_edits import Overwrite
from napari_medai._napari.layers import image_layer_data
from napari_medai._napari.prompting import commit_object, new_labels_layer, show_preview
from napari_medai._napari.training import is_annotation_layer, training_pair
from napari_medai.core.phantom import make_phantom
from napari_medai.core.training.annotations import annotation_mask, declared_slices

SHAPE = (30, 64, 64)
LIVER = 1


@pytest.fixture
def scene():
    """The phantom CT in a viewer, an empty labels layer on its grid and the liver's mask."""
    volume, truth = make_phantom(SHAPE, seed=0)
    viewer = ViewerModel()
    data, kwargs, _ = image_layer_data(volume)
    scan = viewer.add_image(data, **kwargs)
    return viewer, scan, new_labels_layer(viewer, scan), truth.array == LIVER


def span(mask: np.ndarray) -> list[int]:
    slices = np.flatnonzero(mask.any(axis=(1, 2)))
    return list(range(slices[0], slices[-1] + 1))


def test_a_committed_object_declares_its_whole_span_annotated(scene):
    _viewer, scan, labels, liver = scene
    liver = liver.copy()
    middle = span(liver)[len(span(liver)) // 2]
    liver[middle] = False  # an object in two parts: the slice between was looked at too
    commit_object(labels, liver, 3, "liver", Overwrite.KEEP)
    labels.data[2, 5:9, 5:9] = 4  # a painted slice, outside the object's span
    expected = span(liver)

    _volume, label_map = training_pair(scan, labels)
    assert list(declared_slices(label_map)) == expected and middle in expected
    mask = annotation_mask(label_map.array, declared=declared_slices(label_map))
    annotated = [int(z) for z in np.flatnonzero(mask.all(axis=(1, 2)))]
    assert annotated == [2, *expected]  # every slice whole, nothing across the others
    assert not mask[[z for z in range(SHAPE[0]) if z not in annotated]].any()


def test_an_undone_commit_declares_nothing(scene):
    _viewer, scan, labels, liver = scene
    commit_object(labels, liver, 3, "liver", Overwrite.KEEP)
    labels.undo()
    assert not labels.data.any()
    _volume, label_map = training_pair(scan, labels)
    assert declared_slices(label_map) == ()


def test_the_prompt_preview_is_never_an_annotation(scene):
    viewer, scan, labels, liver = scene
    preview = show_preview(viewer, scan, liver)
    assert is_annotation_layer(labels)
    assert not is_annotation_layer(preview) and not is_annotation_layer(scan)
