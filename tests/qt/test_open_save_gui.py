"""File > Open and Save in a real napari window: the right reader, no dialog, geometry kept."""

from __future__ import annotations

import json

import dicom_factory
import npe2
import numpy as np
import pytest
import SimpleITK as sitk
from napari.layers import Image, Labels
from napari.settings import get_settings

from napari_medai._napari import reader, reader_choice, scan_grid
from napari_medai.core.volume import Volume, volume_to_sitk


@pytest.fixture
def first_session(monkeypatch, napari_plugins):
    """napari-medai never used with these settings: not activated, no preferences yet."""
    monkeypatch.setattr(reader_choice, "_offered_in_memory", set())
    npe2.PluginManager.instance().deactivate("napari-medai")
    notes: list[str] = []
    monkeypatch.setattr(reader_choice, "show_info", notes.append)
    return notes


@pytest.fixture
def reader_dialogs(monkeypatch):
    """napari's "Choose reader" dialog, answered as a user would: napari-medai, not remembered."""
    shown: list[list[str]] = []

    def choose(paths, qt_viewer, stack, *args, **kwargs):
        shown.append(list(paths))
        qt_viewer.viewer.open(paths, stack=stack, plugin="napari-medai")

    monkeypatch.setattr("napari._qt.qt_viewer.handle_gui_reading", choose)
    return shown


def _has_geometry(layer) -> bool:
    return "geometry" in layer.metadata.get("napari_medai", {})


def test_file_open_needs_no_reader_choice_after_first_use(
    make_napari_viewer, first_session, reader_dialogs, phantom, tmp_path
):
    volume, labels = phantom
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(ct))
    seg = tmp_path / "ct_seg.nii.gz"
    sitk.WriteImage(volume_to_sitk(labels), str(seg))
    series = tmp_path / "series"
    pixels = np.random.default_rng(0).integers(0, 400, (4, 16, 12)).astype(np.int16)
    dicom_factory.write_series(series, pixels)
    viewer = make_napari_viewer()
    qt_viewer = viewer.window._qt_viewer

    # The very first File > Open, before napari has run any napari-medai code: napari
    # asks (napari-side limit, see reader_choice); reading activates the plugin.
    qt_viewer._qt_open([str(ct)], stack=False)
    assert reader_dialogs == [[str(ct)]]
    assert get_settings().plugins.extension2reader["*.nii.gz"] == "napari-medai"
    assert len(first_session) == 1 and "Preferences > Plugins" in first_session[0]

    # From then on: DICOM folders and medical files open with napari-medai, unasked.
    qt_viewer._qt_open([str(series)], stack=False)
    qt_viewer._qt_open([str(seg)], stack=False)
    viewer.open(str(seg), plugin=None)  # what drag and drop does
    assert reader_dialogs == [[str(ct)]]
    assert len(first_session) == 1
    ct_layer, series_layer, seg_layer, again = viewer.layers
    assert isinstance(ct_layer, Image) and isinstance(series_layer, Image)
    assert isinstance(seg_layer, Labels) and isinstance(again, Labels)
    assert all(_has_geometry(layer) for layer in viewer.layers)
    np.testing.assert_allclose(seg_layer.affine.affine_matrix, ct_layer.affine.affine_matrix)
    assert series_layer.data.shape == (4, 16, 12)
    np.testing.assert_allclose(series_layer.data_to_world((0, 0, 0)), (40.0, -30.0, -20.0))


def test_gui_save_of_bare_labels_uses_the_scan_grid_and_writes_the_sidecar(
    make_napari_viewer, phantom, tmp_path, monkeypatch
):
    volume, _ = phantom
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(ct))
    viewer = make_napari_viewer()
    viewer.open(str(ct), plugin="napari-medai")
    painted = viewer.add_labels(np.zeros(volume.array.shape, np.uint8), name="painted")
    painted.data[3:5, 20:30, 20:30] = 1
    notes: list[str] = []
    monkeypatch.setattr(scan_grid, "show_info", notes.append)
    out = tmp_path / "painted.nrrd"
    monkeypatch.setattr(
        "napari._qt.qt_viewer.QFileDialog.getSaveFileName",
        lambda *args, **kwargs: (str(out), ""),
    )
    viewer.layers.selection = {painted}

    viewer.window._qt_viewer._save_layers_dialog(selected=True)

    saved = sitk.ReadImage(str(out))
    np.testing.assert_allclose(saved.GetOrigin(), sitk.ReadImage(str(ct)).GetOrigin(), atol=1e-6)
    assert notes == ["Saved \"painted\" on the grid of 'ct' (same shape)."]
    sidecar = json.loads((tmp_path / "painted.json").read_text())
    assert sidecar["outputs"] == {"labels": "painted.nrrd"}
    assert sidecar["volumes_ml"]["1"] == pytest.approx(2 * 10 * 10 * 6 * 5 * 5 / 1000)


def test_open_segmentation_menu_entry(make_napari_viewer, phantom, tmp_path, monkeypatch):
    """File > IO Utilities > Open segmentation... runs through napari's own menu machinery."""
    from napari._app_model import get_app_model

    _, labels = phantom
    path = tmp_path / "organs.mha"
    as_float = Volume(labels.array.astype(np.float32), labels.geometry)
    sitk.WriteImage(volume_to_sitk(as_float), str(path))
    viewer = make_napari_viewer()
    monkeypatch.setattr(reader, "choose_segmentation_files", lambda: [str(path)])

    get_app_model().commands.execute_command("napari-medai.open_segmentation").result()

    [layer] = viewer.layers
    assert isinstance(layer, Labels) and _has_geometry(layer)
    np.testing.assert_array_equal(layer.data, labels.array)


def test_demo_launcher_claims_the_readers_so_the_first_file_open_asks_nothing(
    make_napari_viewer, first_session, reader_dialogs, monkeypatch, phantom, tmp_path
):
    """A brand-new napari (fresh in-memory settings, plugin never used): the demo's start
    makes the very first File > Open of a scan and of a mask go to napari-medai, unasked."""
    import launch_demo as launch

    volume, labels = phantom
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume_to_sitk(volume), str(ct))
    seg = tmp_path / "ct_seg.nii.gz"
    sitk.WriteImage(volume_to_sitk(labels), str(seg))
    assert "*.nii.gz" not in get_settings().plugins.extension2reader
    claimed_when_docking: list[bool] = []

    def viewer_recording_docks(**kwargs):
        viewer = make_napari_viewer(**kwargs)
        dock = viewer.window.add_plugin_dock_widget

        def add_dock(*args, **dock_kwargs):
            preferences = get_settings().plugins.extension2reader
            claimed_when_docking.append("*.nii.gz" in preferences)
            return dock(*args, **dock_kwargs)

        monkeypatch.setattr(viewer.window, "add_plugin_dock_widget", add_dock)
        return viewer

    monkeypatch.setattr(launch, "Viewer", viewer_recording_docks)

    viewer, _ = launch.open_viewer()
    # Claimed at start, not as a side effect of docking (which activates the plugin too).
    assert claimed_when_docking and all(claimed_when_docking)
    sample = len(viewer.layers)
    viewer.window._qt_viewer._qt_open([str(ct), str(seg)], stack=False)

    assert reader_dialogs == []
    assert get_settings().plugins.extension2reader["*.nii.gz"] == "napari-medai"
    assert len(first_session) == 1 and "Preferences > Plugins" in first_session[0]
    scan, mask = viewer.layers[sample:]
    assert isinstance(scan, Image) and isinstance(mask, Labels)
    assert _has_geometry(scan) and _has_geometry(mask)
    assert scan.source.reader_plugin == mask.source.reader_plugin == "napari-medai"
