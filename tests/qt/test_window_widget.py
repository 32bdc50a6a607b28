"""Window presets dock widget, driven through the viewer and real button clicks."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_medai._qt.window_widget import NO_IMAGE_MESSAGE, WindowPresetWidget

#: (level, width) in HU as radiology references list them.
STANDARD_WINDOWS = {
    "soft tissue": (40, 400),
    "lung": (-600, 1500),
    "bone": (400, 1800),
    "brain": (40, 80),
    "liver": (60, 160),
}


def ct_like(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(-1024, 1800, size=(6, 32, 32)).astype(np.int16)


@pytest.fixture
def viewer_and_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = WindowPresetWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget


def click(qtbot, button) -> None:
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def test_each_button_sets_its_window_on_the_selected_image(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    data = ct_like(0)
    ct = viewer.add_image(data, contrast_limits=(0, 1))
    other = viewer.add_image(ct_like(1), contrast_limits=(0, 1))
    viewer.layers.selection = {ct}

    for name, (level, width) in STANDARD_WINDOWS.items():
        click(qtbot, widget.buttons[name])

        assert ct.contrast_limits == pytest.approx([level - width / 2, level + width / 2]), name
        low, high = ct.contrast_limits_range
        assert low <= min(data.min(), level - width / 2)
        assert high >= max(data.max(), level + width / 2)
    assert other.contrast_limits == [0, 1]


def test_applies_to_every_selected_image_and_skips_labels(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    first = viewer.add_image(ct_like(0))
    second = viewer.add_image(ct_like(1))
    labels = viewer.add_labels(np.zeros((6, 32, 32), dtype=np.uint8))
    viewer.layers.selection = {first, second, labels}

    click(qtbot, widget.buttons["lung"])

    assert first.contrast_limits == pytest.approx([-1350, 150])
    assert second.contrast_limits == pytest.approx([-1350, 150])
    assert set(widget.target_layers()) == {first, second}


def test_auto_uses_each_images_own_percentiles(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    rng = np.random.default_rng(5)
    mr = viewer.add_image(rng.gamma(2.0, 200.0, size=(6, 32, 32)).astype(np.float32))
    ct = viewer.add_image(ct_like(2))
    viewer.layers.selection = {mr, ct}

    click(qtbot, widget.buttons["auto"])

    for layer in (mr, ct):
        assert layer.contrast_limits == pytest.approx(np.percentile(layer.data, [0.5, 99.5]))


def test_a_single_image_is_used_while_a_labels_layer_is_selected(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    ct = viewer.add_image(ct_like(0), contrast_limits=(0, 1))
    labels = viewer.add_labels(np.zeros((6, 32, 32), dtype=np.uint8))
    viewer.layers.selection = {labels}

    click(qtbot, widget.buttons["bone"])

    assert ct.contrast_limits == pytest.approx([-500, 1300])


def test_no_image_to_act_on_gives_a_notification(viewer_and_widget, qtbot, notifications):
    viewer, widget = viewer_and_widget
    first = viewer.add_image(ct_like(0), contrast_limits=(0, 1))
    second = viewer.add_image(ct_like(1), contrast_limits=(0, 1))
    labels = viewer.add_labels(np.zeros((6, 32, 32), dtype=np.uint8))
    viewer.layers.selection = {labels}

    click(qtbot, widget.buttons["brain"])

    assert [n.message for n in notifications] == [NO_IMAGE_MESSAGE]
    assert first.contrast_limits == [0, 1] and second.contrast_limits == [0, 1]


def test_docks_through_the_plugin_manifest(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    ct = viewer.add_image(ct_like(0))
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-medai", "Window presets")
    click(qtbot, widget.buttons["liver"])
    assert ct.contrast_limits == pytest.approx([-20, 140])


def test_ct_presets_are_disabled_on_mr_with_a_reason(viewer_and_widget, qtbot, notifications):
    viewer, widget = viewer_and_widget
    mr = viewer.add_image(
        np.random.default_rng(0).uniform(0, 800, (6, 32, 32)).astype(np.float32),
        metadata={"napari_medai": {"provenance": {"modality": "MR"}}},
        name="T1",
    )
    viewer.layers.selection = {mr}
    lung = widget.buttons["lung"]
    assert not lung.isEnabled()
    assert "CT window" in lung.toolTip() and "'T1' is MRI" in lung.toolTip()
    assert "use Auto" in widget.note.text()
    assert widget.buttons["auto"].isEnabled()
    before = tuple(mr.contrast_limits)
    assert widget.apply("lung") == []  # also refused when called directly, with a warning
    assert tuple(mr.contrast_limits) == before
    assert any("CT window" in str(n.message) for n in notifications)

    ct = viewer.add_image(ct_like(0), name="CT")
    viewer.layers.selection = {ct}
    assert lung.isEnabled() and widget.note.text() == ""
