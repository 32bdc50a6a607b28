"""Which opened files are label maps, and the label names a file stores.

A segmentation saved as NIfTI or NRRD is just an integer image; viewers
(3D Slicer, ITK-SNAP) tell it from a scan by its few distinct values and its
name. :func:`looks_like_labels` makes that call; :func:`header_label_names`
reads the segment names 3D Slicer writes into ``.seg.nrrd`` headers, and
:func:`stored_segments` the colours, statuses and locks (NRRD header, else the
JSON sidecar beside the file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from napari_medai.core.files import compound_stem, compound_suffix
from napari_medai.core.io.reading import read_label_map
from napari_medai.core.io.writing import (
    LOCKED_TAG,
    SEGMENT_STATUSES,
    SLICER_STATUS,
    label_counts,
    smallest_label_dtype,
)
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
    fields = _header_segment_fields(path)
    return {value: f["Name"].strip() for value, f in fields.items() if "Name" in f}


def _header_segment_fields(path: str | Path) -> dict[int, dict[str, str]]:
    """Label value -> its ``Segment<i>_*`` fields (``Name``, ``Color``, ``Tags``...) in a NRRD."""
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
    segments = {}
    for key in keys:
        match = _SEGMENT_KEY.fullmatch(key)
        if not match:
            continue
        try:
            value = int(reader.GetMetaData(key))
        except ValueError:
            continue
        prefix = f"Segment{match.group(1)}_"
        segments[value] = {
            k.removeprefix(prefix): reader.GetMetaData(k) for k in keys if k.startswith(prefix)
        }
    return dict(sorted(segments.items()))


def header_segments(path: str | Path) -> dict[int, dict[str, Any]]:
    """Label value -> colour (0..1 RGB), status and lock from a 3D Slicer NRRD header.

    Colours are ``Segment<i>_Color``; status is Slicer's ``Segmentation.Status``
    tag (its "flagged" has no match here and is left out); the lock is
    napari-medai's own tag. Fields that do not parse are left out.
    """
    statuses = {slicer: ours for ours, slicer in SLICER_STATUS.items()}
    segments: dict[int, dict[str, Any]] = {}
    for value, fields in _header_segment_fields(path).items():
        segment: dict[str, Any] = {}
        color = _parse_color(fields.get("Color", ""))
        if color is not None:
            segment["color"] = color
        tags = dict(tag.split(":", 1) for tag in fields.get("Tags", "").split("|") if ":" in tag)
        if tags.get("Segmentation.Status") in statuses:
            segment["status"] = statuses[tags["Segmentation.Status"]]
        if tags.get(LOCKED_TAG) == "1":
            segment["locked"] = True
        if segment and value != 0:
            segments[value] = segment
    return segments


def _parse_color(text: str) -> list[float] | None:
    """Three 0..1 numbers separated by spaces, or None."""
    try:
        color = [float(c) for c in text.split()]
    except ValueError:
        return None
    return color if len(color) == 3 and all(0.0 <= c <= 1.0 for c in color) else None


def sidecar_of(path: str | Path) -> Path:
    """The JSON sidecar the writers save beside the mask at ``path``."""
    path = Path(path)
    return path.with_name(compound_stem(path) + ".json")


def sidecar_segments(path: str | Path) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """Label names and segments from the JSON sidecar beside ``path``; ({}, {}) when none.

    A sidecar that is not ours (no such fields, not JSON) gives nothing; a field
    of the wrong type is left out rather than guessed.
    """
    try:
        sidecar = json.loads(sidecar_of(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}, {}
    if not isinstance(sidecar, dict):
        return {}, {}
    names = _int_keyed(sidecar.get("label_names"))
    segments = {
        value: segment
        for value, fields in _int_keyed(sidecar.get("segments")).items()
        if (segment := _checked_segment(fields))
    }
    return {v: str(n) for v, n in names.items()}, segments


def _int_keyed(table: Any) -> dict[int, Any]:
    """A JSON object keyed by label values (strings of whole numbers) as an int-keyed dict."""
    if not isinstance(table, dict):
        return {}
    return {int(k): v for k, v in table.items() if str(k).isdigit() and int(k) != 0}


def _checked_segment(fields: Any) -> dict[str, Any]:
    """The colour, status and lock of a sidecar segment entry that have the right type."""
    if not isinstance(fields, dict):
        return {}
    segment: dict[str, Any] = {}
    color = fields.get("color")
    if isinstance(color, list) and _parse_color(" ".join(map(str, color[:3]))) is not None:
        segment["color"] = [float(c) for c in color[:3]]
    if fields.get("status") in SEGMENT_STATUSES:
        segment["status"] = fields["status"]
    if isinstance(fields.get("locked"), bool):
        segment["locked"] = fields["locked"]
    return segment


def stored_segments(path: str | Path) -> tuple[dict[int, str], dict[int, dict[str, Any]]]:
    """Label names and segments saved with the mask at ``path``: NRRD header, else sidecar."""
    names, segments = header_label_names(path), header_segments(path)
    if names or segments:
        return names, segments
    return sidecar_segments(path)


def as_label_map(
    volume: Volume,
    label_names: dict[int, str] | None = None,
    segments: dict[int, dict[str, Any]] | None = None,
) -> LabelMap:
    """``volume`` (which :func:`looks_like_labels`) as a :class:`LabelMap` on its grid.

    Whole-number floats become the smallest integer type holding them;
    ``segments`` (from :func:`stored_segments`) go in ``metadata["segments"]``.
    """
    array = volume.array
    if _is_float(array):
        array = array.astype(smallest_label_dtype(array))
    metadata = dict(volume.metadata)
    if segments:
        metadata["segments"] = dict(segments)
    return LabelMap(array, volume.geometry, metadata, dict(label_names or {}))


def read_segmentation(path: str | Path) -> LabelMap:
    """Read ``path`` as a label map whatever its values, with the segments saved with it."""
    label_map = read_label_map(path)
    label_map.label_names, segments = stored_segments(path)
    if segments:
        label_map.metadata["segments"] = segments
    return label_map
