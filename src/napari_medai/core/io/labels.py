"""Which opened files are label maps, and the label names a file stores.

A segmentation saved as NIfTI or NRRD is just an integer image; viewers
(3D Slicer, ITK-SNAP) tell it from a scan by its few distinct values and its
name. :func:`looks_like_labels` makes that call; :func:`header_label_names`
reads the segment names 3D Slicer writes into ``.seg.nrrd`` headers.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medai.core.files import compound_suffix
from napari_medai.core.io.reading import read_label_map
from napari_medai.core.io.writing import label_counts, smallest_label_dtype
from napari_medai.core.volume import LabelMap, Volume

#: A file name saying "this is a segmentation".
LABEL_NAME_HINT = re.compile(r"seg|label|mask", re.IGNORECASE)
#: Most distinct values (background included) of a label map whose name says so:
#: room for TotalSegmentator's 117 classes, below the ~256 grey levels of an 8-bit scan.
MAX_VALUES_NAMED = 200
#: Most distinct values of an integer image opened as labels without a name hint.
MAX_VALUES_UNNAMED = 16
#: Samples along each axis looked at before counting every voxel (about 200,000 in all).
_SAMPLE_STEPS = 60
_NRRD_SUFFIXES = (".nrrd", ".nhdr")
_SEGMENT_KEY = re.compile(r"Segment(\d+)_LabelValue")


def looks_like_labels(volume: Volume) -> bool:
    """Whether ``volume`` is a label map: 3D, non-negative whole numbers, few distinct values.

    Few means at most :data:`MAX_VALUES_NAMED` when the file name holds "seg",
    "label" or "mask", else at most :data:`MAX_VALUES_UNNAMED` (a CT or MR
    has hundreds or thousands). Floating-point files (MONAI saves float32 masks
    by default) count only with such a name and whole values.
    """
    array = volume.array
    name = str(volume.metadata.get("source") or volume.metadata.get("name", ""))
    hinted = LABEL_NAME_HINT.search(name) is not None
    integer = np.issubdtype(array.dtype, np.integer)
    if array.ndim != 3 or array.size == 0 or not (integer or _is_float(array) and hinted):
        return False
    limit = MAX_VALUES_NAMED if hinted else MAX_VALUES_UNNAMED
    # A strided view (no copy, even of a non-contiguous array) rejects a scan in milliseconds.
    sample = array[tuple(slice(None, None, max(1, n // _SAMPLE_STEPS)) for n in array.shape)]
    for values in (sample, array):
        if values.min() < 0 or not integer and not np.all(np.mod(values, 1) == 0):
            return False  # also NaN and infinity
        if len(label_counts(values if integer else values.astype(np.int64))[0]) > limit:
            return False
    return True


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def header_label_names(path: str | Path) -> dict[int, str]:
    """Label value -> name from a 3D Slicer segmentation NRRD header, else {}.

    Slicer writes ``Segment<i>_Name`` and ``Segment<i>_LabelValue`` for each
    segment; ITK exposes them in the image's metadata dictionary. Only the
    header is read.
    """
    path = Path(path)
    if compound_suffix(path) not in _NRRD_SUFFIXES:
        return {}
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    keys = set(reader.GetMetaDataKeys())
    names = {}
    for key in keys:
        match = _SEGMENT_KEY.fullmatch(key)
        name_key = f"Segment{match.group(1)}_Name" if match else ""
        if match and name_key in keys:
            try:
                names[int(reader.GetMetaData(key))] = reader.GetMetaData(name_key).strip()
            except ValueError:
                continue
    return dict(sorted(names.items()))


def as_label_map(volume: Volume, label_names: dict[int, str] | None = None) -> LabelMap:
    """``volume`` (which :func:`looks_like_labels`) as a :class:`LabelMap` on its grid.

    Whole-number floats become the smallest integer type holding them.
    """
    array = volume.array
    if _is_float(array):
        array = array.astype(smallest_label_dtype(array))
    return LabelMap(array, volume.geometry, dict(volume.metadata), dict(label_names or {}))


def read_segmentation(path: str | Path) -> LabelMap:
    """Read ``path`` as a label map whatever its values, with the names its header stores."""
    label_map = read_label_map(path)
    label_map.label_names = header_label_names(path)
    return label_map
