"""Which voxels count as annotated, the network the pattern calls for, and slice ranking."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medai.core.training.annotations import annotation_mask, choose_dimensionality
from napari_medai.core.training.uncertainty import rank_slices_by_uncertainty


@pytest.fixture
def organs(phantom):
    """The phantom's dense organ labels, read-only so any write would fail."""
    labels = phantom[1].array.copy()
    labels.setflags(write=False)
    return labels


def _painted(labels: np.ndarray, axis: int, indices: list[int]) -> np.ndarray:
    """Labels kept only on the given slices along ``axis`` (what a user paints)."""
    sparse = np.zeros_like(labels)
    for index in indices:
        where = [slice(None)] * 3
        where[axis] = index
        sparse[tuple(where)] = labels[tuple(where)]
    return sparse


def _planes(shape: tuple[int, ...], axis: int, indices: list[int]) -> np.ndarray:
    expected = np.zeros(shape, dtype=bool)
    for index in indices:
        where = [slice(None)] * 3
        where[axis] = index
        expected[tuple(where)] = True
    return expected


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_painted_slices_along_any_axis_are_annotated_and_nothing_else(organs, axis):
    holding = np.flatnonzero(np.moveaxis(organs, axis, 0).any(axis=(1, 2)))
    indices = [int(np.percentile(holding, q)) for q in (30, 50, 70)]
    sparse = _painted(organs, axis, indices)
    assert all(sparse.take(i, axis=axis).any() for i in indices)
    mask = annotation_mask(sparse)
    # The planes that cross the painted slices hold labels too (lines), but counting
    # them would make the unpainted organ background there: they must stay open.
    np.testing.assert_array_equal(mask, _planes(organs.shape, axis, indices))


def test_slices_painted_along_two_axes_are_both_annotated(organs):
    sparse = np.maximum(_painted(organs, 0, [12]), _painted(organs, 2, [20]))
    mask = annotation_mask(sparse)
    expected = _planes(organs.shape, 0, [12]) | _planes(organs.shape, 2, [20])
    np.testing.assert_array_equal(mask, expected)


def test_zeros_of_a_painted_slice_are_background_but_empty_slices_are_open(organs):
    sparse = _painted(organs, 0, [12])
    mask = annotation_mask(sparse)
    assert mask[12].all()
    assert (sparse[12] == 0).any()
    assert not mask[11].any() and not mask[13].any()


def test_unlabelled_value_is_never_annotated(organs):
    sparse = _painted(organs, 0, [12]).copy()
    sparse[12, :10, :] = 255
    mask = annotation_mask(sparse, unlabelled_value=255)
    np.testing.assert_array_equal(mask[12], sparse[12] != 255)
    assert mask.sum() == (sparse[12] != 255).sum()
    only_open = np.where(sparse == 255, 255, 0).astype(sparse.dtype)
    assert not annotation_mask(only_open, unlabelled_value=255).any()


def test_dense_label_maps_are_annotated_everywhere(organs):
    assert annotation_mask(organs, dense=True).all()
    mask = annotation_mask(organs, unlabelled_value=3, dense=True)
    np.testing.assert_array_equal(mask, organs != 3)


def test_nothing_painted_means_nothing_annotated(organs):
    assert not annotation_mask(np.zeros_like(organs)).any()


def test_dimensionality_follows_the_annotation_pattern(organs):
    assert choose_dimensionality(_painted(organs, 0, [6, 12, 18])).kind == "2.5d"
    assert choose_dimensionality(_painted(organs, 2, [20, 40])).kind == "3d"
    assert choose_dimensionality(organs, dense=True).kind == "3d"
    half = list(range(0, organs.shape[0], 2))
    assert choose_dimensionality(_painted(organs, 0, half)).kind == "2.5d"
    assert choose_dimensionality(_painted(organs, 0, [*half, 1])).kind == "3d"


def test_slices_rank_by_mean_uncertainty():
    rng = np.random.default_rng(0)
    uncertainty = rng.random((6, 5, 4)) * 0.1
    uncertainty[4] += 0.5
    uncertainty[:, 2] += 0.3
    uncertainty[1, 0, 0] = np.nan
    for axis in range(3):
        order = rank_slices_by_uncertainty(uncertainty, axis=axis)
        means = np.nanmean(
            np.moveaxis(uncertainty, axis, 0).reshape(uncertainty.shape[axis], -1), 1
        )
        assert order == sorted(range(len(means)), key=lambda i: -means[i])
    assert rank_slices_by_uncertainty(uncertainty)[0] == 4
    assert rank_slices_by_uncertainty(uncertainty, axis=1)[0] == 2


def _prompted_ball(shape: tuple[int, int, int], first: int, last: int) -> np.ndarray:
    """A 3D object spanning axial slices ``first`` to ``last``, with one empty slice inside
    (a prompted object may be in two parts), as the Prompt dock commits it."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centre = (first + last) / 2
    radius = (last - first) / 2
    ball = (z - centre) ** 2 + (y - shape[1] / 2) ** 2 + (x - shape[2] / 2) ** 2 <= radius**2
    ball[round(centre)] = False
    return ball.astype(np.uint8) * 2


def test_declared_slices_are_annotated_whole_and_the_rest_stays_open():
    shape, first, last = (40, 32, 32), 10, 22
    labels = _prompted_ball(shape, first, last)
    assert not labels[(first + last) // 2].any()  # an empty slice inside the object's span
    span = _planes(shape, 0, list(range(first, last + 1)))

    # Inferred from the array alone, the ball's cover crosses it along y and x: voxels of
    # slices outside its span (never looked at) would be taken as background.
    assert annotation_mask(labels)[~span].any()

    declared = range(first, last + 1)
    np.testing.assert_array_equal(annotation_mask(labels, declared=declared), span)
    # A label painted on another slice is still inferred as a painted slice.
    labels[30, 5:9, 5:9] = 1
    painted = span | _planes(shape, 0, [30])
    np.testing.assert_array_equal(annotation_mask(labels, declared=declared), painted)
    chosen = choose_dimensionality(labels, declared=declared)
    assert chosen.reason == "14 of 40 axial slices painted"
