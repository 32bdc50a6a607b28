"""Issue 9 acceptance on real files: SEG and RTSTRUCT on a real MR series, stats, evaluate."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pydicom
import pytest

from napari_medai._napari.reader import read_layers
from napari_medai.cli import main
from napari_medai.core.errors import ExportError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom_derived import read_scan_and_labels_job
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.io.export import ExportConfig, export_job
from napari_medai.core.io.reading import read_label_map, read_volume
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.jobs import run_job
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def mr(shared_data, tmp_path_factory):
    """The i2nii MR series (zip, and extracted), and a two-label mask drawn on it."""
    archive = shared_data / "i2nii" / "DICOM.zip"
    folder = tmp_path_factory.mktemp("mr")
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(folder)
    volume = read_volume(archive)
    grid = np.indices(volume.spatial_shape).astype(float)
    spacing = volume.geometry.spacing
    centre = np.array(volume.spatial_shape) / 2
    distance = np.sqrt(sum(((grid[a] - centre[a]) * spacing[a]) ** 2 for a in range(3)))
    mask = np.zeros(volume.spatial_shape, dtype=np.uint8)
    mask[distance < 45] = 1
    mask[(distance < 20) & (grid[2] < centre[2])] = 2
    labels = LabelMap(mask, volume.geometry, {"name": "painted"}, {1: "brain", 2: "lesion"})
    sources = [
        pydicom.dcmread(path, stop_before_pixels=True)
        for path in sorted((folder / "DICOM").glob("*.dcm"))
    ]
    return archive, folder, volume, labels, sources


def _frame_world_index(seg, frame: int, geometry) -> np.ndarray:
    """(z, y, x) grid index of every pixel of SEG ``frame``, from its own DICOM headers."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    row_step, column_step = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    per_frame = seg.PerFrameFunctionalGroupsSequence[frame]
    position = np.array(per_frame.PlanePositionSequence[0].ImagePositionPatient, float)
    rows, columns = np.indices((int(seg.Rows), int(seg.Columns))).reshape(2, -1)
    xyz = (
        position
        + np.outer(columns * column_step, orientation[:3])
        + np.outer(rows * row_step, orientation[3:])
    )
    inverse = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    return (xyz[:, ::-1] - geometry.origin) @ inverse.T


def test_seg_of_a_real_mr_series_maps_back_frame_by_frame(mr, tmp_path):
    import highdicom

    archive, folder, volume, labels, sources = mr
    out = tmp_path / "painted_seg.dcm"
    config = ExportConfig("dicom-seg", DicomExportConfig())
    job = export_job(labels, out, config, {}, archive, volume.metadata["series_uid"])
    run_job(job)
    seg = pydicom.dcmread(out)
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {ds.SOPInstanceUID for ds in sources} and len(referenced) == 37
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["brain", "lesion"]
    assert {s.SegmentAlgorithmType for s in seg.SegmentSequence} == {"MANUAL"}
    frames = highdicom.seg.segread(out).pixel_array
    for frame in range(int(seg.NumberOfFrames)):
        index = _frame_world_index(seg, frame, volume.geometry)
        np.testing.assert_allclose(index, np.round(index), atol=1e-4)
        z, y, x = np.round(index).astype(int).T
        number = seg.PerFrameFunctionalGroupsSequence[frame].SegmentIdentificationSequence[0]
        value = int(number.ReferencedSegmentNumber)
        expected = labels.array[z, y, x] == value
        np.testing.assert_array_equal(frames[frame].ravel().astype(bool), expected)
    # Beside its series, our reader gives the same label layer on the MR grid.
    (folder / "DICOM" / out.name).write_bytes(out.read_bytes())
    scan, found = run_job(read_scan_and_labels_job(folder / "DICOM" / out.name))
    assert scan.geometry == volume.geometry
    np.testing.assert_array_equal(found[0].array, labels.array)
    assert found[0].label_names == {1: "brain", 2: "lesion"}
    layers = read_layers(str(folder / "DICOM" / out.name))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    data, kwargs, _ = layers[1]
    np.testing.assert_array_equal(data, labels.array)
    np.testing.assert_allclose(kwargs["affine"], volume.geometry.affine())
    assert kwargs["features"]["name"] == ["0", "brain", "lesion"]


def test_rtstruct_of_the_same_mask_rasterises_back(mr, tmp_path):
    archive, folder, volume, labels, _ = mr
    out = tmp_path / "painted_rt.dcm"
    run_job(export_job(labels, out, ExportConfig("rtstruct"), {}, archive))
    target = folder / "DICOM" / out.name
    target.write_bytes(out.read_bytes())
    _, found = run_job(read_scan_and_labels_job(target))
    back = found[0].array
    checked = 0
    for value in (1, 2):
        for z in range(labels.spatial_shape[0]):
            truth, got = labels.array[z] == value, back[z] == value
            if truth.sum() > 50:
                assert 2 * (truth & got).sum() / (truth.sum() + got.sum()) >= 0.95
                checked += 1
    assert checked > 20


def test_seg_of_the_anonymised_ct_series_says_what_to_do(shared_data, tmp_path):
    series = shared_data / "totalsegmentator" / "example_ct_dicom"
    # The UIDs are checked before the grid, so the pixels of the scan are not needed.
    labels = LabelMap(np.ones((20, 8, 8), dtype=np.uint8), Geometry(), {}, {1: "bone"})
    with pytest.raises(ExportError, match="blank StudyInstanceUID.*NIfTI or NRRD"):
        run_job(export_job(labels, tmp_path / "seg.dcm", ExportConfig("dicom-seg"), {}, series))
    assert list(tmp_path.iterdir()) == []


def test_stats_cli_reports_liver_volume_exactly(shared_data, capsys):
    folder = shared_data / "totalsegmentator"
    seg, ct = folder / "example_seg.nii.gz", folder / "example_ct_sm.nii.gz"
    assert main(["stats", str(seg), "--image", str(ct)]) == 0
    rows = {row["value"]: row for row in json.loads(capsys.readouterr().out)["rows"]}
    count = int((read_label_map(seg).array == 5).sum())
    assert rows[5]["voxels"] == count and rows[5]["volume_ml"] == count * 27 / 1000
    image, labels = read_volume(ct), read_label_map(seg)
    assert rows[5]["mean"] == pytest.approx(float(image.array[labels.array == 5].mean()))


def test_evaluate_cli_heart_against_itself_on_another_grid(shared_data, tmp_path, capsys):
    folder = shared_data / "totalsegmentator" / "pulmonary_report"
    heart = folder / "heart.nii.gz"
    ct = read_volume(folder / "ct_cropped.nii.gz")
    moved = resample_label_map(read_label_map(heart), ct.geometry, ct.spatial_shape)
    write_label_map(moved, tmp_path / "heart_on_ct.nii.gz")
    assert main(["evaluate", str(tmp_path / "heart_on_ct.nii.gz"), str(heart)]) == 0
    scores = json.loads(capsys.readouterr().out)["labels"]
    assert scores[0]["dice"] > 0.97
    out = tmp_path / "self.json"
    assert main(["evaluate", str(heart), str(heart), "--out", str(out)]) == 0
    itself = json.loads(out.read_text())["labels"][0]
    assert itself["dice"] == 1.0 and itself["hd95_mm"] == 0.0 and itself["assd_mm"] == 0.0
    assert main(["evaluate", str(heart), str(heart), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
