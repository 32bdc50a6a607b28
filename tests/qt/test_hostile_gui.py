"""The GUI survives bad files while a Labels layer holds unsaved edits, and leaves it untouched."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from napari_medai.core.errors import MedaiError
from napari_medai.core.phantom import make_phantom
from napari_medai.core.volume import volume_to_sitk


def _bad_files(folder):
    """The issue's crashers and refusals: ITK abort, truncation, path escape, bomb, empty."""
    folder.mkdir()
    crash = folder / "ndims99.mha"
    crash.write_bytes(
        b"ObjectType = Image\nNDims = 99\nDimSize = 2 2 2\nElementType = MET_UCHAR\n"
        b"ElementDataFile = LOCAL\n" + bytes(8)
    )
    good = folder / "good.nii.gz"
    volume, _ = make_phantom(shape=(4, 16, 16), spacing=(4.0, 2.0, 2.0))
    sitk.WriteImage(volume_to_sitk(volume), str(good))
    truncated = folder / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:600]))
    escape = folder / "escape.nhdr"
    escape.write_text(
        "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 4 4\nencoding: raw\n"
        "data file: ../../../../etc/hostname\n"
    )
    empty = folder / "empty_folder"
    empty.mkdir()
    return [crash, truncated, escape, empty], good


def test_bad_files_leave_unsaved_labels_untouched(
    make_napari_viewer, tmp_path, phantom, notifications
):
    viewer = make_napari_viewer()
    volume, organs = phantom
    viewer.add_image(volume.array, name="ct")
    labels = viewer.add_labels(organs.array.copy(), name="my edits")
    labels.paint((12, 30, 30), 7)  # an edit that exists nowhere on disk
    before = labels.data.copy()
    assert (before == 7).any()
    bad, good = _bad_files(tmp_path / "bad")

    for path in bad:
        # plugin given: napari would otherwise ask in a modal dialog which reader to try next
        with pytest.raises(MedaiError) as raised:
            viewer.window._qt_viewer._qt_open([str(path)], stack=False, plugin="napari-medai")
        assert path.name in str(raised.value)
        assert str(notifications[-1].message) == str(raised.value)  # the specific words
        assert [layer.name for layer in viewer.layers] == ["ct", "my edits"]
        np.testing.assert_array_equal(labels.data, before)

    viewer.window._qt_viewer._qt_open([str(good)], stack=False, plugin="napari-medai")
    assert [layer.name for layer in viewer.layers] == ["ct", "my edits", "good"]
    np.testing.assert_array_equal(labels.data, before)
    assert viewer.screenshot(canvas_only=True).ndim == 3  # the canvas still draws


def test_open_files_with_a_whole_series_selected_opens_it_once(make_napari_viewer, tmp_path):
    """Case 6: napari's Open Files hands the files over one by one; the series opens once."""
    import dicom_factory as factory

    pixels = np.random.default_rng(0).integers(0, 500, (6, 12, 10)).astype(np.int16)
    paths = factory.write_series(tmp_path / "series", pixels)
    viewer = make_napari_viewer()
    viewer.window._qt_viewer._qt_open([str(p) for p in paths], stack=False, plugin="napari-medai")
    assert len(viewer.layers) == 1
    assert viewer.layers[0].data.shape == (6, 12, 10)
