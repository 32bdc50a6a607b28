"""A result written into the user's Labels layer: one undo step, policies, locks, memory."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
from app_model.types import KeyBinding, KeyCode, KeyMod
from napari.components import ViewerModel
from napari.layers import Labels

from napari_medai._napari.label_edits import Overwrite, write_result
from napari_medai.core.errors import GeometryError, MedaiError

SHAPE = (10, 40, 50)
UNDO = KeyBinding.from_int(KeyMod.CtrlCmd | KeyCode.KeyZ)
REDO = KeyBinding.from_int(KeyMod.CtrlCmd | KeyMod.Shift | KeyCode.KeyZ)


def press(layer: Labels, key: KeyBinding) -> None:
    """What napari runs for ``key`` on a Labels layer (its class key bindings)."""
    Labels.class_keymap[key](layer)


def expected_write(
    user: np.ndarray, result: np.ndarray, policy: Overwrite, locked=()
) -> np.ndarray:
    """The layer after a write, voxel by voxel from the policy's definition."""
    merged = {
        Overwrite.KEEP: np.where(user == 0, result, user),
        Overwrite.OVERWRITE: np.where(result != 0, result, user),
        Overwrite.REPLACE: result,
    }[policy]
    frozen = np.isin(user, list(locked)) | np.isin(merged, list(locked))
    return np.where(frozen, user, merged)


@pytest.fixture
def painted() -> Labels:
    """A Labels layer with three brush strokes of labels 1, 2 and 3 (napari's own paint)."""
    layer = ViewerModel().add_labels(np.zeros(SHAPE, dtype=np.uint8), name="liver mask")
    layer.brush_size = 15
    for label, coord in ((1, (3, 12, 15)), (2, (3, 20, 22)), (3, (6, 25, 30))):
        layer.paint(coord, label)
    assert len(layer._undo_history) == 3
    return layer


@pytest.fixture
def result() -> np.ndarray:
    """A model's labels 0-3 on the layer's grid: blocks, so every policy has work to do."""
    rng = np.random.default_rng(20)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    for _ in range(12):
        z, y, x = (rng.integers(0, n - 4) for n in SHAPE)
        labels[z : z + 4, y : y + 12, x : x + 12] = rng.integers(1, 4)
    return labels


@pytest.mark.parametrize("policy", list(Overwrite))
def test_write_is_one_undo_step_that_restores_the_users_voxels(painted, result, policy):
    user = painted.data.copy()
    expected = expected_write(user, result, policy)
    assert not np.array_equal(expected, user)
    paints = []
    painted.events.paint.connect(paints.append)

    edit = write_result(painted, result, policy)

    np.testing.assert_array_equal(painted.data, expected)
    assert edit.changed == np.count_nonzero(expected != user)
    assert edit.held == 0
    assert len(painted._undo_history) == 4
    assert len(paints) == 1  # listeners (autosave, provenance) hear one edit
    press(painted, UNDO)
    np.testing.assert_array_equal(painted.data, user)
    press(painted, REDO)
    np.testing.assert_array_equal(painted.data, expected)
    press(painted, UNDO)
    press(painted, UNDO)  # the next Ctrl+Z undoes the user's last stroke, not more of the result
    assert np.count_nonzero(painted.data == 3) == 0
    assert np.count_nonzero(painted.data == 2) == np.count_nonzero(user == 2)


@pytest.mark.parametrize("policy", list(Overwrite))
def test_locked_labels_are_neither_overwritten_nor_grown(painted, result, policy):
    user = painted.data.copy()
    expected = expected_write(user, result, policy, locked={2})
    unlocked = expected_write(user, result, policy)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit = write_result(painted, result, policy, locked={2})

    assert edit.held > 0
    assert [str(w.message) for w in caught] == [
        f"'liver mask': {edit.held} voxels kept as they were because label(s) [2] are locked"
    ]
    np.testing.assert_array_equal(painted.data, expected)
    np.testing.assert_array_equal(painted.data == 2, user == 2)
    assert edit.held == np.count_nonzero(expected != unlocked)
    assert edit.changed == np.count_nonzero(expected != user)
    painted.undo()
    np.testing.assert_array_equal(painted.data, user)


def test_a_region_takes_the_result_and_nothing_outside_changes(painted):
    user = painted.data.copy()
    region = (slice(3, 4), slice(None), slice(10, 30))
    replacement = np.zeros((1, SHAPE[1], 20), dtype=np.uint8)
    replacement[0, 5:15, :] = 4

    write_result(painted, replacement, Overwrite.REPLACE, region=region)

    expected = user.copy()
    expected[region] = replacement
    np.testing.assert_array_equal(painted.data, expected)
    painted.undo()
    np.testing.assert_array_equal(painted.data, user)


def test_a_result_equal_to_the_layer_adds_no_undo_step(painted):
    edit = write_result(painted, painted.data.copy(), Overwrite.REPLACE)
    assert edit.changed == 0
    assert len(painted._undo_history) == 3


@pytest.mark.parametrize(
    ("make_result", "error", "words"),
    [
        (lambda: np.ones((10, 40, 49), dtype=np.uint8), GeometryError, "has shape"),
        (lambda: np.ones(SHAPE, dtype=np.float32), MedaiError, "not integer labels"),
        (lambda: np.ones(SHAPE, dtype=bool), MedaiError, "not integer labels"),
        (lambda: np.full(SHAPE, 300, dtype=np.uint16), MedaiError, "cannot hold labels 300"),
        (lambda: np.full(SHAPE, -1, dtype=np.int16), MedaiError, "cannot hold labels -1"),
    ],
)
def test_a_result_the_layer_cannot_hold_is_refused_untouched(painted, make_result, error, words):
    user = painted.data.copy()
    with pytest.raises(error, match=words) as raised:
        write_result(painted, make_result(), Overwrite.REPLACE)
    assert "liver mask" in str(raised.value)
    np.testing.assert_array_equal(painted.data, user)
    assert len(painted._undo_history) == 3


def test_a_multiscale_layer_is_refused():
    pyramid = [np.zeros((8, 16, 16), dtype=np.uint8), np.zeros((4, 8, 8), dtype=np.uint8)]
    layer = ViewerModel().add_labels(pyramid, multiscale=True, name="pyramid")
    with pytest.raises(MedaiError, match="'pyramid' is multiscale"):
        write_result(layer, np.ones((8, 16, 16), dtype=np.uint8))


def history_bytes(layer: Labels) -> int:
    """Bytes of the arrays napari keeps for the newest undo step."""
    [atom] = layer._undo_history[-1]
    indices, old, new = atom
    return sum(axis.nbytes for axis in indices) + np.asarray(old).nbytes + np.asarray(new).nbytes


def test_a_prediction_into_a_ct_sized_layer_is_fast_and_records_only_what_changed():
    """512x512x300: undo restores every voxel; the history holds the changed voxels only."""
    shape = (300, 512, 512)
    user = np.zeros(shape, dtype=np.uint8)
    user[120:140, 200:260, 200:260] = 2
    layer = ViewerModel().add_labels(user.copy(), name="ct labels")
    prediction = np.zeros(shape, dtype=np.uint8)
    prediction[100:160, 180:300, 150:310] = 1  # a liver-sized organ, ~1.2M voxels
    changed = np.count_nonzero(prediction != user)

    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        edit = write_result(layer, prediction, Overwrite.REPLACE)
        seconds.append(time.perf_counter() - start)
        assert edit.changed == changed
        layer.undo()
        assert np.array_equal(layer.data, user)
    layer.redo()
    assert np.array_equal(layer.data, prediction)

    # Per changed voxel napari keeps three indices (int16 fit a 512 axis), the old and the new
    # value: exactly linear in the change, against 78.6 MB for a copy of the volume.
    assert history_bytes(layer) <= changed * (3 * 2 + 2 * user.itemsize)
    # The best of three takes ~0.3 s on a loaded 2-core machine; one second is the claim (the
    # user waits for no more after Predict), and the best run discards another process's burst.
    assert min(seconds) < 1.0
