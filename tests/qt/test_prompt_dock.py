"""The Prompt dock: prompts as layers, a live preview, undo/reset, commit, fill, keys, Train."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from heartbeat import EventLoopMonitor
from qtpy.QtWidgets import QScrollArea

from napari_medai._napari.label_edits import Overwrite
from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._napari.prompting import layers_prompts
from napari_medai._napari.training import training_pair
from napari_medai._qt.prompt_widget import SHORTCUTS
from napari_medai.core.phantom import make_phantom
from napari_medai.core.prompt import nninteractive_engine
from napari_medai.core.training.annotations import annotation_mask
from napari_medai.core.training.config import check_training_pairs

LIVER, SPLEEN = 1, 2


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture
def phantom():
    return make_phantom()


@pytest.fixture
def dock(make_napari_viewer, phantom, qtbot):
    volume, labels = phantom
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    data, kwargs, _ = image_layer_data(volume)
    viewer.add_image(data, **kwargs)
    dock_widget, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Prompt")
    qtbot.waitUntil(lambda: bool(widget._watched))  # the scan's prompt layers are ready
    return viewer, dock_widget, widget


def organ_centre(labels, value: int) -> tuple[int, int, int]:
    """A voxel deep inside the organ (its centroid, which for an ellipsoid is inside)."""
    return tuple(int(round(c)) for c in np.argwhere(labels.array == value).mean(axis=0))


def wait_for_preview(qtbot, widget) -> np.ndarray:
    qtbot.waitUntil(lambda: not widget.runner.running and not widget._pending, timeout=20000)
    assert widget.target is not None and widget.target.mask is not None
    return widget.target.mask


def click(widget, zyx, positive=True) -> None:
    widget.positive.value = positive
    widget.tool.value = "Point"
    points, _ = widget._layers()
    points.add(np.asarray([zyx], float))


def box_around(widget, labels, value: int) -> None:
    """A 2D box around the organ on its middle slice, with a small margin."""
    z = organ_centre(labels, value)[0]
    ys, xs = np.nonzero(labels.array[z] == value)
    widget.tool.value = "Box"
    _, shapes = widget._layers()
    corners = [[z, ys.min() - 2, xs.min() - 2], [z, ys.max() + 2, xs.max() + 2]]
    (z0, y0, x0), (_, y1, x1) = corners
    rectangle = np.array([[z0, y0, x0], [z0, y0, x1], [z0, y1, x1], [z0, y1, x0]], float)
    shapes.add_rectangles(rectangle)


def test_a_click_previews_the_organ_and_undo_and_reset_clear_it(dock, phantom, qtbot):
    viewer, _, widget = dock
    _, labels = phantom
    click(widget, organ_centre(labels, LIVER))
    mask = wait_for_preview(qtbot, widget)
    # A click grows through the phantom's uniform liver (within the engine's reach from the
    # click) and not beyond it: the preview is the engine's answer, shown as it is.
    liver = labels.array == LIVER
    assert mask.sum() > 1000 and np.count_nonzero(mask & liver) / mask.sum() > 0.95
    preview = next(la for la in viewer.layers if la.name.endswith("prompt preview"))
    assert np.array_equal(preview.data != 0, mask)
    widget.undo()
    assert not wait_for_preview(qtbot, widget).any()
    click(widget, organ_centre(labels, LIVER))
    wait_for_preview(qtbot, widget)
    widget.reset()
    assert widget.target is None
    assert all(len(layer.data) == 0 for layer in widget._watched)
    assert not preview.data.any()


def test_a_box_then_a_negative_click_previews_the_organ(dock, phantom, qtbot):
    _, _, widget = dock
    _, labels = phantom
    box_around(widget, labels, SPLEEN)
    mask = wait_for_preview(qtbot, widget)
    assert dice(mask, labels.array == SPLEEN) > 0.7
    points, shapes = widget._layers()
    assert list(shapes.features["positive"]) == [True]
    click(widget, (0, 0, 0), positive=False)
    assert list(points.features["positive"]) == [False]
    wait_for_preview(qtbot, widget)


@pytest.mark.parametrize("policy", [Overwrite.KEEP, Overwrite.OVERWRITE])
def test_commit_writes_a_named_label_once_and_ctrl_z_restores(dock, phantom, qtbot, policy):
    viewer, _, widget = dock
    volume, labels = phantom
    painted = np.zeros(volume.spatial_shape, np.uint8)
    z, y, x = organ_centre(labels, LIVER)
    painted[z, y - 3 : y + 3, x - 3 : x + 3] = 7  # the user's own label inside the liver
    data, kwargs, _ = labels_layer_data(labels.__class__(painted, volume.geometry, {}, {7: "mine"}))
    target = viewer.add_labels(data, **kwargs)
    widget.labels_layer.value = target
    widget.label_value.value = 3
    widget.label_name.value = "liver"
    widget.policy.value = policy
    click(widget, (z, y, x))
    mask = wait_for_preview(qtbot, widget).copy()
    before = np.array(target.data)
    widget.commit()
    after = np.array(target.data)
    mine = before == 7
    assert np.all(after[mine] == (7 if policy is Overwrite.KEEP else 3))
    assert np.all(after[mask & ~mine] == 3) and np.all(after[~mask] == before[~mask])
    assert target.metadata["napari_medai"]["label_names"]["3"] == "liver"
    assert widget.label_value.value == 4 and widget.target is None  # ready for the next object
    target.undo()  # Ctrl+Z: the whole commit is one step
    assert np.array_equal(target.data, before)


def test_commit_with_no_labels_layer_adds_one_on_the_scan_grid(dock, phantom, qtbot):
    viewer, _, widget = dock
    _, labels = phantom
    click(widget, organ_centre(labels, LIVER))
    mask = wait_for_preview(qtbot, widget).copy()
    widget.commit()
    layer = widget.labels_layer.value
    assert layer is not None and np.array_equal(np.asarray(layer.data) == 1, mask)
    scan = widget.image_layer.value
    assert np.allclose(layer.affine.affine_matrix, scan.affine.affine_matrix)


def test_fill_between_slices_is_one_undoable_step(dock, phantom, qtbot):
    viewer, _, widget = dock
    volume, labels = phantom
    liver = labels.array == LIVER
    zs = np.flatnonzero(liver.any(axis=(1, 2)))
    painted = np.zeros_like(labels.array)
    for z in zs[1:-1:4]:
        painted[z][liver[z]] = LIVER
    data, kwargs, _ = labels_layer_data(labels.__class__(painted, volume.geometry, {}, {}))
    layer = viewer.add_labels(data, **kwargs)
    widget.labels_layer.value = layer
    widget.label_value.value = LIVER
    widget.fill()
    filled = np.asarray(layer.data) == LIVER
    between = slice(zs[1], zs[1:-1:4][-1] + 1)
    # Interpolating an ellipsoid from every 4th slice: the goal is Dice >= 0.9.
    assert dice(filled[between], liver[between]) >= 0.9
    assert "filled" in widget.status.value
    layer.undo()
    assert np.array_equal(layer.data, painted)


def test_shortcuts_switch_tool_flip_undo_reset_and_commit(dock, phantom, qtbot):
    viewer, _, widget = dock
    _, labels = phantom
    keymap = {str(key): func for key, func in viewer.keymap.items()}
    assert all(key in keymap for key in SHORTCUTS), keymap.keys()
    keymap["Alt+2"](viewer)
    assert widget.tool.value == "Box" and viewer.layers.selection.active.mode == "add_rectangle"
    keymap["Alt+1"](viewer)
    assert viewer.layers.selection.active.mode == "add"
    keymap["N"](viewer)
    assert widget.positive.value is False
    keymap["N"](viewer)
    click(widget, organ_centre(labels, LIVER))
    wait_for_preview(qtbot, widget)
    keymap["U"](viewer)
    assert len(widget._layers()[0].data) == 0
    click(widget, organ_centre(labels, LIVER))
    wait_for_preview(qtbot, widget)
    keymap["Shift+Enter"](viewer)
    assert widget.labels_layer.value is not None and np.any(widget.labels_layer.value.data == 1)
    click(widget, organ_centre(labels, SPLEEN))
    wait_for_preview(qtbot, widget)
    keymap["Shift+R"](viewer)
    assert widget.target is None


def bound_keys(viewer) -> set[str]:
    """The dock's shortcuts the viewer has bound now."""
    return {str(key) for key in viewer.keymap} & set(SHORTCUTS)


def test_shortcuts_leave_the_viewer_when_the_dock_is_removed(dock, qtbot):
    viewer, dock_widget, widget = dock
    assert bound_keys(viewer) == set(SHORTCUTS)
    dock_widget.destroyOnClose()  # the dock's close button
    qtbot.waitUntil(lambda: not bound_keys(viewer))
    assert widget.tool.value == "Point"  # still alive here, yet the keys no longer reach it


def test_shortcuts_follow_the_dock_being_hidden_and_shown_again(dock, qtbot):
    viewer, dock_widget, _ = dock
    dock_widget.close()  # the dock's hide button, or its entry unticked in the Window menu
    qtbot.waitUntil(lambda: not bound_keys(viewer))
    dock_widget.show()
    qtbot.waitUntil(lambda: bound_keys(viewer) == set(SHORTCUTS))

    def mine(_viewer):
        """A binding the user made on "U" since the dock bound it."""

    viewer.bind_key("U", mine, overwrite=True)
    dock_widget.close()
    qtbot.waitUntil(lambda: bound_keys(viewer) == {"U"})
    assert {str(key): f for key, f in viewer.keymap.items()}["U"] is mine  # stays the user's


def test_train_takes_a_prompted_layer_with_every_slice_of_the_object(dock, phantom, qtbot):
    viewer, _, widget = dock
    _, labels = phantom
    widget.label_name.value = "spleen"
    box_around(widget, labels, SPLEEN)
    mask = wait_for_preview(qtbot, widget).copy()
    widget.commit()
    scan, layer = widget.image_layer.value, widget.labels_layer.value
    pair = training_pair(scan, layer)
    check_training_pairs([pair])  # Train's own refusal would raise
    assert pair[1].label_names[1] == "spleen"
    annotated = annotation_mask(pair[1].array).any(axis=(1, 2))
    object_slices = mask.any(axis=(1, 2))
    assert np.all(annotated[object_slices])
    first, last = np.flatnonzero(object_slices)[[0, -1]]
    assert layer.metadata["napari_medai"]["prompted"]["1"]["slices"] == [first, last]


def test_updates_never_stall_the_gui(dock, phantom, qtbot):
    _, _, widget = dock
    _, labels = phantom
    box_around(widget, labels, LIVER)
    wait_for_preview(qtbot, widget)
    points, _ = widget._layers()
    z, y, x = organ_centre(labels, LIVER)
    with EventLoopMonitor() as monitor:
        for offset in range(4):  # clicks as a user gives them, some while an update runs
            points.add(np.asarray([[z, y + 3 * offset, x]], float))
            qtbot.wait(150)
        wait_for_preview(qtbot, widget)
        qtbot.wait(200)
    # The bound: the GUI never stalls over 100 ms while the object updates.
    assert monitor.worst_stall_ms < 100, monitor.stalls


def test_prompts_given_during_an_update_are_coalesced(dock, phantom, qtbot, monkeypatch):
    _, _, widget = dock
    _, labels = phantom
    points, shapes = widget._layers()
    z, y, x = organ_centre(labels, LIVER)
    starts = []
    start = widget.runner.start
    monkeypatch.setattr(widget.runner, "start", lambda *a, **k: starts.append(1) or start(*a, **k))
    for offset in range(4):  # the first starts an update; the others arrive while it runs
        points.add(np.asarray([[z, y + 3 * offset, x]], float))
    mask = wait_for_preview(qtbot, widget)
    # One update for the first click, one for the latest set of the other three.
    assert len(starts) == 2
    expected = widget.target.session.update(layers_prompts(points, shapes, labels.array.shape))
    assert np.array_equal(mask, expected)


def test_the_dock_scrolls_with_a_compact_minimum_height(dock):
    _, dock_widget, widget = dock
    scroll = dock_widget.widget().findChild(QScrollArea)
    assert scroll is not None and scroll.widget().isAncestorOf(widget.status.native)
    # Same bound as the other docks (tests/qt/test_small_docks_fit.py).
    assert dock_widget.minimumSizeHint().height() <= 220


def test_prompting_never_imports_torch_into_napari():
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import napari
        from qtpy.QtWidgets import QApplication
        from napari_medai._napari.layers import image_layer_data
        from napari_medai.core.phantom import make_phantom

        volume, labels = make_phantom()
        viewer = napari.Viewer(show=False)
        data, kwargs, _ = image_layer_data(volume)
        viewer.add_image(data, **kwargs)
        _, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Prompt")
        centre = np.argwhere(labels.array == 1).mean(axis=0).round()
        widget._layers()[0].add(centre[None])
        while widget.runner.running or widget.target is None or widget.target.mask is None:
            QApplication.processEvents()
        widget.commit()
        widget.labels_layer.value.data[10] = 0
        widget.fill()
        print("torch" in sys.modules, "monai" in sys.modules)
        viewer.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["False", "False"]


def test_a_dock_behind_another_tab_adds_no_layers_until_it_is_shown(
    make_napari_viewer, phantom, qtbot
):
    """Opening a scan while Prompt sits behind a tab must leave the layer list to the user."""
    volume, _ = phantom
    viewer = make_napari_viewer(show=True)
    front, _ = viewer.window.add_plugin_dock_widget("napari-medai", "Segment list")
    prompt_dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Prompt")
    viewer.window._qt_window.tabifyDockWidget(front, prompt_dock)
    front.raise_()
    qtbot.waitUntil(lambda: not widget.native.isVisible())
    data, kwargs, _ = image_layer_data(volume)
    scan = viewer.add_image(data, **kwargs)
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == [scan.name]
    assert viewer.layers.selection.active is scan
    prompt_dock.raise_()
    qtbot.waitUntil(lambda: bool(widget._watched))  # now the prompt layers join
    assert len(viewer.layers) > 1


# -- nnInteractive, the optional learned engine (a tiny random network, never downloaded) --

needs_nninteractive = pytest.mark.skipif(
    not nninteractive_engine.installed(),
    reason="nnInteractive is not installed (pip install 'napari-medai[nninteractive]')",
)


def wait_idle(qtbot, widget, timeout_s: float = 120) -> None:
    """Until no update runs: the first one starts a worker and imports torch (slow when busy)."""
    qtbot.waitUntil(
        lambda: not widget.runner.running and not widget._pending, timeout=timeout_s * 1000
    )


def test_without_nninteractive_the_dock_offers_its_own_engine_only(make_napari_viewer, monkeypatch):
    monkeypatch.setattr(nninteractive_engine, "DISTRIBUTION", "not-installed-here")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Prompt")
    assert list(widget.engine.choices) == ["geodesic"]
    assert not widget.weights.visible


@needs_nninteractive
def test_nninteractive_is_offered_once_its_weights_are_chosen(dock, tmp_path):
    from nninteractive_models import save_tiny_nninteractive

    _, _, widget = dock
    assert widget.weights.visible and list(widget.engine.choices) == ["geodesic"]
    broken = save_tiny_nninteractive(tmp_path / "broken")
    (broken / "plans.json").unlink()
    widget.weights.value = broken
    assert list(widget.engine.choices) == ["geodesic"]
    assert "Weights refused:" in widget.status.value and "no plans.json" in widget.status.value
    widget.weights.value = save_tiny_nninteractive(tmp_path / "tiny")
    assert list(widget.engine.choices) == ["geodesic", "nninteractive"]
    assert widget.engine.value == "nninteractive"
    assert widget.engine_note.visible and "CC BY-NC-SA 4.0" in widget.engine_note.value
    widget.engine.value = "geodesic"
    assert not widget.engine_note.visible


@needs_nninteractive
def test_nninteractive_updates_in_its_worker_without_stalling_and_cancels(
    dock, phantom, qtbot, tmp_path
):
    from nninteractive_models import save_tiny_nninteractive

    _, _, widget = dock
    volume, labels = phantom
    widget.weights.value = save_tiny_nninteractive(tmp_path / "tiny")
    click(widget, organ_centre(labels, LIVER))
    qtbot.waitUntil(lambda: widget.runner.running, timeout=5000)
    widget.runner.cancel()  # while its worker starts: nothing is shown, nothing breaks
    wait_idle(qtbot, widget)
    assert widget.target.mask is None
    points, _ = widget._layers()
    z, y, x = organ_centre(labels, SPLEEN)
    points.add(np.asarray([[z, y, x]], float))
    wait_idle(qtbot, widget)  # the worker has loaded the network and holds the scan now
    assert widget.status.value.endswith("on the CPU")
    with EventLoopMonitor() as monitor:
        for offset in range(3):  # clicks as a user gives them, some while an update runs
            points.add(np.asarray([[z, y + 3 * offset, x]], float))
            qtbot.wait(150)
        wait_idle(qtbot, widget)
        qtbot.wait(200)
    # The tiny network's answer is background: what counts is a mask on the scan's grid,
    # computed in the engine's worker, with napari's loop never held 100 ms (the issue's
    # bound, measured after the first update as for the default engine above).
    assert widget.target.mask.shape == volume.spatial_shape
    assert widget.target.session.engine.worker is widget._learned.worker
    assert monitor.worst_stall_ms < 100, monitor.stalls
