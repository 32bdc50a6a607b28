"""DICOM header scan: which files hold images, which series they belong to, where each slice is.

Only headers are read (pydicom with ``stop_before_pixels`` and ``specific_tags``),
never pixel data, and never a patient identifier.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID

from napari_medai.core.jobs import Job, Progress

log = logging.getLogger(__name__)

#: The only header elements read; patient identifiers are never among them.
HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "InstanceNumber",
    "AcquisitionNumber",
    "TemporalPositionIdentifier",
    "TriggerTime",
    "EchoNumbers",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "SliceThickness",
    "RescaleSlope",
    "RescaleIntercept",
    "WindowCenter",
    "WindowWidth",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

#: The same as tag numbers, so pydicom need not look each keyword up per file.
_HEADER_TAG_NUMBERS = [tag_for_keyword(keyword) for keyword in HEADER_TAGS]

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"


@dataclass(frozen=True, eq=False)
class SliceRef:
    """One 2D image: a classic file, or one frame of a multi-frame file.

    Vectors are DICOM (x, y, z) LPS; ``pixel_spacing`` is (between rows,
    between columns) as in the header. ``None`` when the header lacks it.
    """

    path: Path
    frame: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: np.ndarray | None
    thickness: float | None
    slope: float
    intercept: float
    rows: int
    columns: int
    samples: int
    order: tuple[float, ...]
    instance: int
    sop_instance: str


@dataclass(frozen=True, eq=False)
class DicomFile:
    """The header facts of one DICOM file.

    ``series_key`` is the SeriesInstanceUID, or for a series whose UIDs were
    blanked (anonymisation) a stable stand-in derived from other fields.
    ``problem`` says why the file cannot be used as an image ("" when it can).
    """

    path: Path
    series_key: str
    series_uid: str
    description: str
    modality: str
    window: tuple[float, float] | None
    slices: tuple[SliceRef, ...]
    problem: str


#: A header as read: a dict of keyword -> value at the top level, pydicom
#: Datasets inside functional-group sequences. Both answer ``get(keyword)``.
Header = dict[str, Any] | Dataset


def _values(dataset: Dataset) -> dict[str, Any]:
    """Convert every element read once (pydicom converts on access); skip malformed ones."""
    values = {}
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]
        except (ValueError, TypeError, KeyError):
            continue
        values[element.keyword] = element.value
    return values


def _text(dataset: Header, keyword: str) -> str:
    try:
        return str(dataset.get(keyword, "") or "").strip()
    except (ValueError, TypeError):
        return ""


def _numbers(value: Any, count: int) -> np.ndarray | None:
    """``count`` floats from a (multi-valued) DS/IS value (the first for 1), or None."""
    if value is None or value == "":
        return None
    items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    try:
        values = np.array([float(v) for v in items[: 1 if count == 1 else None]], dtype=float)
    except (ValueError, TypeError):
        return None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        return None
    return values


def _number(value: Any, default: float | None) -> float | None:
    values = _numbers(value, 1)
    return default if values is None else float(values[0])


def _get(dataset: Header, keyword: str) -> Any:
    """A value, or None when absent or malformed."""
    try:
        return dataset.get(keyword)
    except (ValueError, TypeError):
        return None


#: Where enhanced multi-frame files keep the per-slice elements.
FUNCTIONAL_GROUPS = {
    "ImagePositionPatient": "PlanePositionSequence",
    "ImageOrientationPatient": "PlaneOrientationSequence",
    "PixelSpacing": "PixelMeasuresSequence",
    "SliceThickness": "PixelMeasuresSequence",
    "RescaleSlope": "PixelValueTransformationSequence",
    "RescaleIntercept": "PixelValueTransformationSequence",
    "TemporalPositionIndex": "FrameContentSequence",
}


def _per_slice(dataset: Header, groups: list[Dataset], keyword: str) -> Any:
    """An element from a frame's functional groups (per-frame, then shared), else the top level."""
    for group in groups:
        items = _get(group, FUNCTIONAL_GROUPS[keyword])
        if items and keyword in items[0]:
            return _get(items[0], keyword)
    return _get(dataset, keyword)


def _series_key(dataset: Header, uid: str) -> str:
    """The SeriesInstanceUID, or a stand-in when it was blanked."""
    if uid:
        return uid
    fields = [
        _text(dataset, k)
        for k in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber", "SeriesDescription")
    ]
    fields.append(_text(dataset, "Modality"))
    digest = hashlib.sha1("\\".join(fields).encode()).hexdigest()[:12]
    return f"blank-uid-{digest}"


def _not_an_image(sop_class: str) -> str:
    """Why a DICOM object without pixels is not an image, in words."""
    name = UID(sop_class).name if sop_class else ""
    if "SR Storage" in name:
        return "is a DICOM structured report, not an image"
    if name and name != sop_class and "Image" not in name:
        return f"is a DICOM {name.removesuffix(' Storage')} object, not an image"
    return "holds no image (no pixel data)"


def _slices(dataset: Header, path: Path) -> tuple[tuple[SliceRef, ...], str]:
    """The slices of a file (one per frame) and a problem ("" when usable)."""
    frames = int(_number(_get(dataset, "NumberOfFrames"), 1) or 1)
    shared = _get(dataset, "SharedFunctionalGroupsSequence")
    per_frame = _get(dataset, "PerFrameFunctionalGroupsSequence")
    if frames > 1 and not per_frame:
        return (
            (),
            f"holds {frames} frames without per-frame positions, which cannot be placed in 3D",
        )
    if per_frame and len(per_frame) != frames:
        return (), (
            f"declares {frames} frame(s) but describes {len(per_frame)}; the file is inconsistent"
        )
    classic_order = tuple(
        _number(_get(dataset, k), 0.0) or 0.0
        for k in ("TemporalPositionIdentifier", "TriggerTime", "AcquisitionNumber", "EchoNumbers")
    )
    slices = []
    for frame in range(frames):
        groups = [per_frame[frame], *(shared or [])[:1]] if per_frame else []

        def raw(keyword: str, groups: list[Dataset] = groups) -> Any:
            return _per_slice(dataset, groups, keyword)

        spacing = _numbers(raw("PixelSpacing"), 2)
        thickness = _number(raw("SliceThickness"), None)
        slices.append(
            SliceRef(
                path=path,
                frame=frame if per_frame else None,
                position=_numbers(raw("ImagePositionPatient"), 3),
                orientation=_numbers(raw("ImageOrientationPatient"), 6),
                pixel_spacing=spacing if spacing is not None and np.all(spacing > 0) else None,
                thickness=thickness if thickness and thickness > 0 else None,
                slope=_number(raw("RescaleSlope"), 1.0) or 1.0,
                intercept=_number(raw("RescaleIntercept"), 0.0) or 0.0,
                rows=int(_number(_get(dataset, "Rows"), 0) or 0),
                columns=int(_number(_get(dataset, "Columns"), 0) or 0),
                samples=int(_number(_get(dataset, "SamplesPerPixel"), 1) or 1),
                order=(
                    (_number(raw("TemporalPositionIndex"), 0.0) or 0.0, float(frame))
                    if per_frame
                    else classic_order
                ),
                instance=int(_number(_get(dataset, "InstanceNumber"), 0) or 0),
                sop_instance=_text(dataset, "SOPInstanceUID"),
            )
        )
    return tuple(slices), ""


def _starts_like_dicom(head: bytes) -> bool:
    """No preamble: does the file begin with a group 0002/0008 tag (little endian)?"""
    return len(head) >= 8 and int.from_bytes(head[:2], "little") in (0x0002, 0x0008)


def looks_like_dicom(path: Path) -> bool:
    """Cheap check: a DICM preamble at offset 128, or a header pydicom can parse."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM":
        return True
    return _starts_like_dicom(head) and read_header(Path(path)) is not None


def read_header(path: Path) -> DicomFile | None:
    """The header facts of ``path``, or None when it is not a DICOM file (or a DICOMDIR)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            preamble = head[128:132] == b"DICM"
            if not preamble and not _starts_like_dicom(head):
                return None
            handle.seek(0)
            dataset = pydicom.dcmread(
                handle,
                stop_before_pixels=True,
                specific_tags=_HEADER_TAG_NUMBERS,
                force=not preamble,
            )
            # Reading stops at the pixel data element: anything left means pixels.
            has_pixels = handle.tell() < os.fstat(handle.fileno()).st_size
        header = _values(dataset)
    except Exception as error:  # any parse failure: a damaged or foreign file, not DICOM
        log.debug("%s is not a readable DICOM file: %s", Path(path).name, error)
        return None
    sop_class = _text(header, "SOPClassUID")
    if sop_class == MEDIA_DIRECTORY:
        return None
    if not preamble and not (sop_class or _text(header, "Modality") or "Rows" in header):
        return None
    uid = _text(header, "SeriesInstanceUID")
    if sop_class in (SEGMENTATION, LABEL_MAP_SEGMENTATION):
        slices, problem = (), "is a DICOM segmentation (SEG), not an image"
    elif not has_pixels or "Rows" not in header or "Columns" not in header:
        slices, problem = (), _not_an_image(sop_class)
    else:
        slices, problem = _slices(header, Path(path))
    center = _number(_get(header, "WindowCenter"), None)
    width = _number(_get(header, "WindowWidth"), None)
    return DicomFile(
        path=Path(path),
        series_key=_series_key(header, uid),
        series_uid=uid,
        description=_text(header, "SeriesDescription"),
        modality=_text(header, "Modality"),
        window=(center, width) if center is not None and width else None,
        slices=slices,
        problem=problem,
    )


def scan_headers_job(paths: list[Path]) -> Job[list[DicomFile]]:
    """Read the header of every path; non-DICOM files are left out."""
    found = []
    for number, path in enumerate(paths):
        header = read_header(path)
        if header is not None:
            found.append(header)
        yield Progress((number + 1) / max(len(paths), 1), "reading DICOM headers")
    return found
