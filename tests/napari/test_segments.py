"""The segment list's state on a Labels layer: names, colours, visibility, locks, volumes."""

from __future__ import annotations

import numpy as np
import pytest
from napari.layers import Labels

from napari_medai._napari import segments as seg
from napari_medai._napari.label_edits import Overwrite, write_result
from napari_medai._napari.layers import label_map_from_layer, labels_layer_data, stored_geometry
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.labels import read_segmentation
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.volume import LabelMap

SPACING = (2.5, 0.8, 0.5)  # mm: one voxel is 1 mm3 = 0.001 mL


def _layer() -> Labels:
    array = np.zeros((6, 20, 30), np.uint8)
    array[1:4, 2:8, 2:10] = 1  # 144 voxels
    array[2:5, 10:16, 12:20] = 2  # 144 voxels
    label_map = LabelMap(array, Geometry(spacing=np.array(SPACING)), {}, {1: "liver"})
    data, kwargs, _ = labels_layer_data(label_map)
    return Labels(data, **kwargs)


def _stroke(layer: Labels, coord, value: int) -> None:
    """One brush stroke as napari's mouse binding makes it: one undo step, one paint event."""
    layer._begin_stroke()
    layer.paint(coord, value)
    layer._commit_stroke()


def test_the_list_names_every_label_present_or_named():
    layer = _layer()
    rows = seg.segments(layer, set(seg.label_voxels(layer)))
    assert [(s.value, s.name, s.status) for s in rows] == [
        (1, "liver", "not started"),
        (2, "label 2", "not started"),
    ]


def test_volume_in_ml_comes_from_the_scans_spacing():
    layer = _layer()
    assert seg.voxel_ml(layer) == pytest.approx(np.prod(SPACING) / 1000)
    assert seg.label_voxels(layer) == {1: 144, 2: 144}


@pytest.mark.parametrize(
    ("ml", "shown"),
    [
        (0.00096, "0.00096"),  # one 0.8 x 0.8 x 1.5 mm voxel: a lesion must never read 0
        (0.0304, "0.0304"),
        (12.345, "12.3"),
        (580.66, "581"),
        (1534.26, "1534"),  # every whole mL of a big organ stays
        (0.0, "0"),
    ],
)
def test_volumes_show_three_significant_figures_and_never_zero_when_painted(ml, shown):
    assert seg.format_ml(ml) == shown


def test_colour_and_visibility_are_napari_colours():
    layer = _layer()
    seg.adopt(layer, {1, 2})
    seg.set_color(layer, 2, (1.0, 0.0, 0.0))
    np.testing.assert_allclose(layer.get_color(2), (1, 0, 0, 1))
    seg.set_visible(layer, 2, False)
    assert layer.get_color(2)[3] == 0  # drawn transparent; the voxels stay
    assert np.count_nonzero(layer.data == 2) == 144
    seg.set_visible(layer, 2, True)
    np.testing.assert_allclose(layer.get_color(2), (1, 0, 0, 1))


def test_a_label_painted_first_with_the_spinner_gets_a_colour():
    layer = _layer()
    seg.adopt(layer, {1, 2})
    _stroke(layer, (0, 10, 5), 9)
    assert layer.get_color(9)[3] == 1
    assert not np.allclose(layer.get_color(9), layer.colormap.color_dict[None])


def test_rename_keeps_names_where_the_plugin_keeps_them():
    layer = _layer()
    seg.rename(layer, 2, "spleen")
    assert label_map_from_layer(layer).label_names == {1: "liver", 2: "spleen"}
    features = layer.features
    assert features.loc[features["index"] == 2, "name"].tolist() == ["spleen"]


def test_add_selects_a_new_value_and_delete_is_one_undo_step():
    layer = _layer()
    value = seg.add_segment(layer, {1, 2})
    assert value == 3 and layer.selected_label == 3
    before = layer.data.copy()
    assert seg.delete_segment(layer, 2) == 144
    assert not np.any(layer.data == 2)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_a_locked_segment_is_not_deleted():
    layer = _layer()
    seg.set_locked(layer, 1, True)
    with pytest.raises(ValueError, match="locked"):
        seg.delete_segment(layer, 1)


@pytest.mark.parametrize("tool", ["brush", "fill", "eraser"])
def test_brush_fill_and_eraser_leave_locked_labels_alone(tool):
    layer = _layer()
    seg.set_locked(layer, 1, True)
    before = layer.data.copy()
    layer.brush_size = 40  # covers the whole slice: liver and background
    if tool == "fill":
        with layer.block_history():  # as napari's mouse binding fills
            layer.fill((2, 4, 4), 2)  # the liver's connected region
    else:
        _stroke(layer, (2, 5, 5), 0 if tool == "eraser" else 2)
    assert np.array_equal(layer.data == 1, before == 1)
    if tool == "brush":  # background around the liver was painted
        assert np.count_nonzero(layer.data[2] == 2) > np.count_nonzero(before[2] == 2)


def test_undo_and_redo_of_a_stroke_over_a_lock_never_touch_the_locked_label():
    layer = _layer()
    seg.set_locked(layer, 1, True)
    before = layer.data.copy()
    layer.brush_size = 40
    _stroke(layer, (2, 5, 5), 2)
    painted = layer.data.copy()
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)
    layer.redo()
    np.testing.assert_array_equal(layer.data, painted)
    assert np.array_equal(layer.data == 1, before == 1)


def test_locked_labels_is_what_write_result_keeps():
    layer = _layer()
    seg.set_locked(layer, 1, True)
    assert seg.locked_labels(layer) == {1}
    result = np.full(layer.data.shape, 2, np.uint8)
    with pytest.warns(UserWarning, match="locked"):
        write_result(layer, result, Overwrite.OVERWRITE, locked=seg.locked_labels(layer))
    assert np.count_nonzero(layer.data == 1) == 144


def test_painting_with_a_locked_label_paints_nothing():
    layer = _layer()
    seg.set_locked(layer, 1, True)
    before = layer.data.copy()
    _stroke(layer, (0, 10, 15), 1)
    np.testing.assert_array_equal(layer.data, before)


def test_segments_round_trip_through_a_file(tmp_path):
    """The layer's names, colours, locks and status, saved as NRRD and opened again."""
    layer = _layer()
    seg.adopt(layer, {1, 2})
    seg.rename(layer, 2, "spleen")
    seg.set_color(layer, 2, (0.2, 0.4, 0.6))
    seg.set_locked(layer, 1, True)
    seg.set_status(layer, 2, "done")
    path = write_label_map(seg.label_map_with_segments(layer), tmp_path / "organs.seg.nrrd")
    data, kwargs, _ = labels_layer_data(read_segmentation(path))
    reopened = Labels(data, **kwargs)
    seg.adopt(reopened)
    rows = {s.value: s for s in seg.segments(reopened)}
    assert rows[2].name == "spleen" and rows[2].status == "done"
    assert rows[2].color == pytest.approx((0.2, 0.4, 0.6))
    assert rows[1].locked and not rows[2].locked
    assert seg.locked_labels(reopened) == {1}


def test_a_polygon_over_a_locked_label_is_corrected_after_napari_writes_it(monkeypatch):
    """napari's polygon tool announces its step before writing it: the fix runs just after."""
    deferred = []
    monkeypatch.setattr(seg, "defer", deferred.append)
    layer = _layer()
    seg.set_locked(layer, 1, True)
    before = layer.data.copy()
    layer.paint_polygon([(2, 0, 0), (2, 0, 29), (2, 19, 29), (2, 19, 0)], 2)
    assert len(deferred) == 1
    deferred.pop()()
    assert np.array_equal(layer.data == 1, before == 1)
    assert np.count_nonzero(layer.data[2] == 2) > np.count_nonzero(before[2] == 2)
    layer.undo()
    np.testing.assert_array_equal(layer.data, before)


def test_a_drawn_layer_keeps_its_segments_without_claiming_a_stored_grid():
    """napari's "new labels" layer has no stored grid; the segment list must not invent one."""
    layer = Labels(np.zeros((4, 8, 8), np.uint8), scale=(2, 1, 1))
    seg.add_segment(layer)
    seg.set_locked(layer, 1, True)
    assert stored_geometry(layer) is None
    assert seg.locked_labels(layer) == {1}
    assert seg.voxel_ml(layer) == pytest.approx(0.002)


def test_the_layer_as_every_writer_sees_it_carries_its_segments(tmp_path):
    """label_map_from_layer feeds File > Save, Export and autosave: segments go with it."""
    layer = _layer()
    seg.set_color(layer, 1, (0.9, 0.1, 0.1))
    seg.set_locked(layer, 2, True)
    seg.set_status(layer, 1, "done")
    label_map = label_map_from_layer(layer)
    assert label_map.metadata["segments"][2]["locked"] is True
    path = write_label_map(label_map, tmp_path / "organs.seg.nrrd")
    back = read_segmentation(path)
    assert back.label_names[1] == "liver"
    assert back.metadata["segments"][2]["locked"] is True
    assert back.metadata["segments"][1]["status"] == "done"
    np.testing.assert_allclose(back.metadata["segments"][1]["color"], (0.9, 0.1, 0.1), atol=1e-3)
