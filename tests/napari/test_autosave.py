"""Autosave: an edited Labels layer reaches its recovery copy on its scan's grid, in time.

The clock is the test's, and the autosave's tick is called by hand (in napari a
Qt timer calls it every half second); the writes run on the autosave's thread.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from napari.components import ViewerModel

from napari_medai._napari import autosave as autosave_module
from napari_medai._napari.autosave import LATEST_S, QUIET_S, Autosave
from napari_medai._napari.layers import image_layer_data, layer_geometry
from napari_medai.core import recovery


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def root(tmp_path, monkeypatch):
    folder = tmp_path / "recovery"
    monkeypatch.setenv(recovery.RECOVERY_ENV, str(folder))
    return folder


@pytest.fixture
def scene(phantom, root):
    """A viewer with the phantom CT and an empty Labels layer drawn on it, autosaved."""
    volume, _ = phantom
    viewer = ViewerModel()
    data, kwargs, _ = image_layer_data(volume)
    scan = viewer.add_image(data, **kwargs)
    # What napari's "new labels" button makes: the scan's transform, no metadata.
    labels = viewer.add_labels(
        np.zeros(volume.spatial_shape, np.uint8), affine=scan.affine, name="tumour"
    )
    clock = Clock()
    saver = Autosave(viewer, root, clock)
    yield viewer, scan, labels, clock, saver
    saver.wait()


def paint(labels, value: int, z: int) -> np.ndarray:
    """Paint a square on slice ``z`` through napari's edit API; return the voxels after."""
    yy, xx = np.mgrid[10:20, 12:30]
    labels.data_setitem((np.full(yy.size, z), yy.ravel(), xx.ravel()), value)
    return np.array(labels.data)


def settle(saver: Autosave, clock: Clock, seconds: float) -> None:
    """Let ``seconds`` pass in half-second ticks, finishing each save started."""
    for _ in range(int(seconds / 0.5)):
        clock.now += 0.5
        saver.tick()
        saver.wait()


def test_an_edit_is_saved_on_the_scans_grid_after_a_quiet_moment(scene):
    viewer, scan, labels, clock, saver = scene
    painted = paint(labels, 3, z=5)

    settle(saver, clock, QUIET_S - 0.5)
    assert recovery.list_entries() == []  # still painting, perhaps
    settle(saver, clock, 1.0)

    [entry] = recovery.list_entries()
    assert (entry.layer, entry.scan) == ("tumour", scan.name)
    back = recovery.read_copy(entry)
    np.testing.assert_array_equal(back.array, painted)
    assert back.geometry.is_close(layer_geometry(scan))


def test_painting_without_pause_is_saved_within_latest_seconds(scene):
    _, _, labels, clock, saver = scene
    states = []
    while not recovery.list_entries() and len(states) < 40:  # an edit every 0.5 s, no pause
        states.append(paint(labels, 2, z=len(states) % 20))
        settle(saver, clock, 0.5)

    # Saved at the first tick LATEST_S after the first edit, with the voxels of that moment.
    assert len(states) == int(LATEST_S / 0.5)
    [entry] = recovery.list_entries()
    np.testing.assert_array_equal(recovery.read_copy(entry).array, states[-1])


def test_the_copy_follows_later_edits_and_keeps_its_id(scene):
    _, _, labels, clock, saver = scene
    paint(labels, 1, z=2)
    settle(saver, clock, QUIET_S + 0.5)
    [first] = recovery.list_entries()

    painted = paint(labels, 4, z=7)
    settle(saver, clock, QUIET_S + 0.5)

    [entry] = recovery.list_entries()
    assert entry.id == first.id
    np.testing.assert_array_equal(recovery.read_copy(entry).array, painted)


def test_an_undo_reaches_the_copy_and_a_new_slice_alone_does_not_resave(scene):
    viewer, _, labels, clock, saver = scene
    before = paint(labels, 1, z=2)
    paint(labels, 4, z=7)
    settle(saver, clock, QUIET_S + 0.5)
    [saved] = recovery.list_entries()

    viewer.dims.set_current_step(0, 11)  # napari redraws the layer; nothing changed
    settle(saver, clock, QUIET_S + 1.0)
    assert recovery.list_entries()[0].time == saved.time

    labels.undo()  # Ctrl+Z: napari emits no paint event for it
    settle(saver, clock, 2 * QUIET_S + 1.0)
    [entry] = recovery.list_entries()
    assert entry.time > saved.time
    np.testing.assert_array_equal(recovery.read_copy(entry).array, before)


def test_closing_the_layer_or_a_clean_save_clears_its_copy(scene):
    viewer, _, labels, clock, saver = scene
    paint(labels, 1, z=2)
    settle(saver, clock, QUIET_S + 0.5)
    assert len(recovery.list_entries()) == 1

    autosave_module._AUTOSAVES[id(viewer)] = saver
    try:
        autosave_module.saved_cleanly(labels.data)  # what the writer calls after a save
    finally:
        del autosave_module._AUTOSAVES[id(viewer)]
    saver.wait()
    assert recovery.list_entries() == []

    paint(labels, 2, z=3)  # edited again after the save: a new copy
    settle(saver, clock, QUIET_S + 0.5)
    assert len(recovery.list_entries()) == 1
    viewer.layers.remove(labels)
    saver.wait()
    assert recovery.list_entries() == []


def test_a_layer_the_writer_would_refuse_is_named_once_and_not_saved(scene, monkeypatch):
    viewer, _, _, clock, saver = scene
    warnings: list[str] = []
    monkeypatch.setattr(autosave_module, "show_warning", warnings.append)
    bare = viewer.add_labels(np.zeros((5, 6, 7), np.uint8), name="loose")  # no grid, no scan

    paint_small = (np.array([1]), np.array([2]), np.array([3]))
    bare.data_setitem(paint_small, 1)
    settle(saver, clock, QUIET_S + 0.5)
    bare.data_setitem(paint_small, 2)
    settle(saver, clock, QUIET_S + 0.5)

    assert recovery.list_entries() == []
    [warning] = warnings
    assert warning.startswith('Autosave cannot keep a recovery copy of "loose"')
    assert "no position in the scanner" in warning


def _orphan_of(saver: Autosave, clock: Clock, labels) -> tuple[recovery.RecoveryEntry, np.ndarray]:
    """Paint and save, then make the copy look left by a napari that was killed."""
    painted = paint(labels, 5, z=9)
    settle(saver, clock, QUIET_S + 0.5)
    [entry] = recovery.list_entries()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    started = recovery._process_started(child.pid)
    child.wait()
    orphan = replace(entry, pid=child.pid, started=started)
    recovery._write_entry(orphan)
    return orphan, painted


def test_the_next_napari_offers_the_copy_back_and_restores_it_on_its_grid(scene, monkeypatch):
    viewer, scan, labels, clock, saver = scene
    orphan, painted = _orphan_of(saver, clock, labels)
    dispatched = []
    monkeypatch.setattr(autosave_module.notification_manager, "dispatch", dispatched.append)

    next_session = Autosave(ViewerModel(), saver.root, clock)
    assert next_session.offer_restore() == [orphan]

    [note] = dispatched
    assert '"tumour"' in note.message and scan.name in note.message
    actions = dict(note.actions)
    assert set(actions) == {"Restore", "Discard"}
    actions["Restore"](None)  # napari passes the notification widget
    [restored] = next_session.viewer.layers
    assert restored.name == "tumour (recovered)"
    np.testing.assert_array_equal(restored.data, painted)
    assert layer_geometry(restored).is_close(layer_geometry(scan))
    # The copy now belongs to this session: not offered again, kept up to date.
    assert recovery.orphaned() == [] and recovery.list_entries()[0].id == orphan.id
    next_session.wait()


def test_declined_copies_are_discarded(scene, monkeypatch):
    _, _, labels, clock, saver = scene
    _orphan_of(saver, clock, labels)
    dispatched = []
    monkeypatch.setattr(autosave_module.notification_manager, "dispatch", dispatched.append)

    Autosave(ViewerModel(), saver.root, clock).offer_restore()
    dict(dispatched[0].actions)["Discard"](None)

    assert recovery.list_entries() == []
