"""What the SEG and RTSTRUCT readers warn about reaches the napari user, not only the CLI."""

from __future__ import annotations

import numpy as np
import pydicom
from dicom_factory import write_series

from napari_medai._napari import reader
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_volume
from napari_medai.core.jobs import run_job
from napari_medai.core.volume import LabelMap


def test_a_structure_sets_reading_warnings_are_shown(tmp_path, monkeypatch):
    folder = tmp_path / "series"
    scan = np.random.default_rng(0).integers(-1000, 400, (4, 16, 16)).astype(np.int16)
    write_series(folder, scan)
    volume = read_volume(folder)
    mask = np.zeros((4, 16, 16), dtype=np.uint8)
    mask[1:3, 4:10, 4:10] = 1
    path = folder / "rtstruct.dcm"
    config = ExportConfig("rtstruct", DicomExportConfig(), sidecar=False)
    labels = LabelMap(mask, volume.geometry, {}, {1: "liver"})
    run_job(export_job(labels, path, config, {}, folder))
    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ROINumber = 0  # would draw into the background
    ds.ROIContourSequence[0].ReferencedROINumber = 0
    ds.save_as(path)
    shown: list[str] = []
    monkeypatch.setattr(reader, "show_warning", shown.append)

    layers = reader.read_layers(str(path))

    assert [kind for *_, kind in layers] == ["image", "labels"]
    assert any("liver" in message and "0" in message for message in shown), shown
