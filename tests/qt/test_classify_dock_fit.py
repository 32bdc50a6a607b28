"""The Classify dock fits a laptop screen: it scrolls inside itself, and results never grow it."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_medai._qt.classify_results import MAX_TABLE_PX
from napari_medai._qt.classify_widget import ClassifyWidget
from napari_medai.core.classification.metrics import classification_metrics

#: The dock's minimum height was 1210 px before it scrolled. On a 1366x768 screen napari's
#: window has about 650 px below its menus for docks; a third of that leaves room for two
#: more docks stacked beside the canvas. The form scrolls, so only the scroll area's own
#: minimum, the status line and the progress row count (about 150 px under any style).
MAX_MIN_HEIGHT_PX = 220


@pytest.fixture
def docked(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path))
    viewer = make_napari_viewer()
    widget = ClassifyWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Classify")
    QApplication.processEvents()
    return dock, widget


def eight_class_metrics() -> dict:
    rng = np.random.default_rng(0)
    truth = np.arange(40) % 8
    scores = rng.dirichlet(np.ones(8), size=40)
    names = {k: f"organ {k}" for k in range(8)}
    return classification_metrics(truth, scores, names, "eight organs")


def test_the_dock_scrolls_inside_itself_with_a_compact_minimum_height(docked):
    dock, widget = docked
    scroll = widget.form.root_native_widget
    assert isinstance(scroll, QScrollArea)
    # napari docks ``widget.native``: the scroll area must be inside it, not left behind.
    assert dock.widget().findChild(QScrollArea) is scroll
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    assert scroll.widget().minimumSizeHint().height() > MAX_MIN_HEIGHT_PX  # what scrolls


def test_metrics_and_long_messages_never_grow_the_dock(docked):
    dock, widget = docked
    before = dock.minimumSizeHint()
    widget.metrics.show_metrics(eight_class_metrics())
    widget.status.value = "a long message that names a layer " * 20
    QApplication.processEvents()
    after = dock.minimumSizeHint()
    assert after.height() == before.height()
    assert after.width() <= before.width()  # the status line wraps instead of widening
    for table in (widget.metrics.figures, widget.metrics.confusion):
        assert table.height() <= MAX_TABLE_PX  # nine or eight rows: the table scrolls
    assert widget.metrics.figures.rowCount() == 9
    scroll = widget.form.root_native_widget
    # Nothing is cut at the right: the form is no wider than the area it scrolls in.
    assert scroll.widget().minimumSizeHint().width() <= scroll.viewport().width()
