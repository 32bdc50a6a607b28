"""The Segment and Train docks fit a laptop screen, refuse at once, and keep torch out of napari."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from napari.layers import Layer
from qtpy.QtWidgets import QApplication, QScrollArea

from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._qt.segment_widget import SegmentWidget
from napari_medai._qt.train_widget import PLOT_HEIGHT_PX, TrainWidget

#: Minimum heights were Segment 488 px and Train 794 px before the docks scrolled. On a
#: 1366x768 screen napari's window has about 650 px below its menus for docks; a third of
#: that leaves room for two more docks stacked beside the canvas. The forms scroll, so only
#: the scroll area's own minimum, the progress row and the status line count (about 170 px
#: measured under Xvfb with napari's theme; the bound leaves room for other styles).
MAX_MIN_HEIGHT_PX = 220
LONG = "a long message that names a layer " * 20


@pytest.fixture
def scene(make_napari_viewer, phantom, tmp_path, monkeypatch):
    """A napari window with the phantom CT and its organ labels as a hidden reference."""
    monkeypatch.setenv("NAPARI_MEDAI_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    volume, truth = phantom
    image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
    reference = viewer.add_layer(Layer.create(*labels_layer_data(truth, "reference")))
    reference.visible = False
    return viewer, image, reference


def docked(viewer, widget, name: str):
    dock = viewer.window.add_dock_widget(widget, name=name)
    QApplication.processEvents()
    return dock


@pytest.mark.parametrize("kind", [SegmentWidget, TrainWidget])
def test_the_docks_scroll_inside_themselves_with_a_compact_minimum_height(scene, kind):
    viewer, *_ = scene
    widget = kind(viewer)
    dock = docked(viewer, widget, kind.__name__)
    scroll = widget.form.root_native_widget
    assert isinstance(scroll, QScrollArea)
    # napari docks ``widget.native``: the scroll area must be inside it, not left behind.
    assert dock.widget().findChild(QScrollArea) is scroll
    assert dock.minimumSizeHint().height() <= MAX_MIN_HEIGHT_PX
    assert scroll.widget().minimumSizeHint().height() > MAX_MIN_HEIGHT_PX  # what scrolls
    # It scrolls up and down only: no row is cut off at the dock's right edge, however
    # narrow the dock is made (napari's stylesheet widened the rows once docked).
    bar = scroll.verticalScrollBar().sizeHint().width()
    assert scroll.widget().minimumSizeHint().width() + bar <= scroll.minimumWidth()


@pytest.mark.parametrize("kind", [SegmentWidget, TrainWidget])
def test_details_and_long_messages_never_grow_the_docks(scene, kind):
    viewer, *_ = scene
    widget = kind(viewer)
    dock = docked(viewer, widget, kind.__name__)
    before = dock.minimumSizeHint()
    widget.details.show_rows([(f"row {n}", LONG) for n in range(30)])
    widget.details.expand(animate=False)
    widget.status.setText(LONG)
    if kind is SegmentWidget:
        widget.reason.setText(LONG)
    QApplication.processEvents()
    after = dock.minimumSizeHint()
    # The status line wraps (its height counts for a few lines, never its width).
    assert after.height() <= MAX_MIN_HEIGHT_PX + 4 * widget.status.fontMetrics().height()
    assert after.width() <= before.width()
    if kind is TrainWidget:
        assert widget.plot.height() == PLOT_HEIGHT_PX


def test_train_with_nothing_painted_is_refused_at_once(qtbot, scene, notifications):
    viewer, image, _reference = scene
    empty = viewer.add_labels(
        np.zeros(image.data.shape, np.uint8), name="empty", affine=image.affine.affine_matrix
    )
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    row = train.pair_rows[0]
    assert row.pair() == (image, empty)
    started = time.perf_counter()
    train.train_button.changed.emit(True)
    took = time.perf_counter() - started
    assert train.runner.outcome is None and not train.runner.running  # no worker started
    says = "no annotations: paint at least one label on a slice before training"
    assert any(says in str(n.message) for n in notifications)
    assert train.status.text() == f"Train failed: {says}"
    # The bound for a quick refusal; the check reads one small label array.
    assert took < 0.1, f"the refusal took {took * 1000:.0f} ms"


def test_the_labels_picker_takes_the_labels_being_painted(qtbot, scene):
    viewer, image, reference = scene
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    row = train.pair_rows[0]
    # Only the hidden reference exists: it is the one offered, as before.
    assert row.pair() == (image, reference)

    mine = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mine")
    other = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="other")
    viewer.layers.selection.active = image
    mine.data_setitem((np.array([5]), np.array([30]), np.array([30])), 1)
    assert row.labels_combo.value is mine  # the labels just painted
    assert train.train_button.enabled

    # A second pair: painting for it leaves the first pair's labels alone.
    second = train.add_pair(image)
    other.data_setitem((np.array([6]), np.array([30]), np.array([30])), 1)
    assert row.labels_combo.value is mine and second.labels_combo.value is other

    # A pick of the user's own is kept whatever is painted next.
    second.labels_combo.value = reference
    other.data_setitem((np.array([7]), np.array([30]), np.array([30])), 1)
    assert second.labels_combo.value is reference


def test_a_new_train_dock_offers_the_selected_labels(qtbot, scene):
    viewer, image, reference = scene
    mine = viewer.add_labels(np.zeros(image.data.shape, np.uint8), name="mine")
    viewer.layers.move(viewer.layers.index(mine), 0)  # below the reference in the list
    viewer.layers.selection.active = mine
    train = TrainWidget(viewer)
    qtbot.addWidget(train.native)
    assert train.pair_rows[0].pair() == (image, mine)
    assert reference in train.pair_rows[0].labels_combo.choices


TORCH_CHECK = """
import json, sys, time
import numpy as np
from qtpy.QtWidgets import QApplication
from napari.components import ViewerModel
from napari.layers import Layer
from napari_medai._napari.layers import image_layer_data, labels_layer_data
from napari_medai._qt.segment_widget import SegmentWidget
from napari_medai._qt.train_widget import TrainWidget
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import LabelMap

app = QApplication([])
volume, truth = make_phantom(shape=(24, 64, 64), spacing=(6.0, 5.0, 5.0), seed=0)
viewer = ViewerModel()
image = viewer.add_layer(Layer.create(*image_layer_data(volume)))
painted = np.zeros(truth.array.shape, np.uint8)
for z in (8, 12, 16):
    painted[z] = truth.array[z] == 1
viewer.add_layer(Layer.create(*labels_layer_data(LabelMap(painted, volume.geometry), "liver")))
train = TrainWidget(viewer)
segment = SegmentWidget(viewer)

def click(widget, button):
    button.changed.emit(True)
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.02)
    return widget.runner.outcome.name, "torch" in sys.modules or "monai" in sys.modules

seen = {}
train.time_spin.value = 0
train.iterations_spin.value = 3
seen["train"] = click(train, train.train_button)
seen["predict"] = click(train, train.predict_button)
segment.add_model_source(train.last_model)
seen["segment"] = click(segment, segment.run_button)
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def torch_in_napari(tmp_path_factory):
    """Which of the docks' jobs imported torch or MONAI into napari's process (a fresh one)."""
    env = {**os.environ, "NAPARI_MEDAI_MODELS": str(tmp_path_factory.mktemp("models"))}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TORCH_CHECK)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return {job: tuple(value) for job, value in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("job", ["train", "predict", "segment"])
def test_train_predict_and_segment_keep_torch_out_of_napari(torch_in_napari, job):
    assert torch_in_napari[job] == ("DONE", False)
