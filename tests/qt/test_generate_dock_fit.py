"""The Generate dock fits a laptop screen: it scrolls inside itself, and results never grow it."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_medai._qt.generate_widget import PLOT_HEIGHT_PX, PREVIEW_WIDTH_PX, GenerateWidget

#: The dock's minimum height was 937 px before it scrolled. On a 1366x768 screen napari's
#: window has about 650 px below its menus for docks; a third of that leaves room for two
#: more docks stacked beside the canvas. Everything scrolls, so only the scroll area's own
#: minimum and the dock's title count (about 90 px under any style).
MAX_MIN_HEIGHT_PX = 220


@pytest.fixture
def docked(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    viewer = make_napari_viewer()
    widget = GenerateWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Generate")
    QApplication.processEvents()
    return dock, widget


def test_the_dock_scrolls_inside_itself_with_a_compact_minimum_height(docked):
    dock, widget = docked
    scroll = dock.widget().findChild(QScrollArea)
    assert scroll is not None and scroll.widget().isAncestorOf(widget.sample_button.native)
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    assert scroll.widget().minimumSizeHint().height() > MAX_MIN_HEIGHT_PX  # what scrolls


def test_results_and_long_messages_never_grow_the_dock(docked):
    dock, widget = docked
    before = dock.minimumSizeHint()
    for step in range(500):
        widget.plot.append("generator", step, float(np.sin(step)))
    widget._show_preview(np.random.default_rng(0).random((64, 256)))
    widget.status.setText("Saved in /a/very/long/folder/name/" + "without_a_space_" * 30)
    widget.preview.setText("a long message that names a layer " * 20)
    QApplication.processEvents()
    after = dock.minimumSizeHint()
    assert after.height() == before.height()
    assert after.width() <= before.width()  # both lines wrap instead of widening the dock
    assert widget.plot.height() == PLOT_HEIGHT_PX
    assert widget.preview.height() == PREVIEW_WIDTH_PX // 4


def test_field_labels_are_capitalised_like_the_other_docks(docked):
    _, widget = docked
    for form in widget._forms:
        for field in form:
            words = field.label or field.text  # a check box carries its words as text
            assert words[:1].isupper(), words
