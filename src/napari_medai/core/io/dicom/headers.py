"""DICOM header scan: which files hold images, which series they belong to, where each slice is.

Only headers are read (pydicom with ``stop_before_pixels`` and ``specific_tags``),
never pixel data, and never a patient identifier.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
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
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "ImageType",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

#: The same as tag numbers, so pydicom need not look each keyword up per file.
_HEADER_TAG_NUMBERS = [tag_for_keyword(keyword) for keyword in HEADER_TAGS]

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose pixel data is stored uncompressed (length is checkable).
NATIVE_SYNTAXES = {
    "1.2.840.10008.1.2": False,  # implicit VR little endian
    "1.2.840.10008.1.2.1": True,  # explicit VR little endian
    "1.2.840.10008.1.2.2": True,  # explicit VR big endian
}
#: Larger rescale factors are damaged headers, not physics (and overflow any pixel type).
MAX_RESCALE_SLOPE = 1e6
MAX_RESCALE_INTERCEPT = 1e7
#: ImageOrientationPatient cosines whose lengths or dot product are off by more are invalid.
ORIENTATION_TOLERANCE = 0.01
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.7"


@dataclass(frozen=True)
class StoredPixels:
    """Where an uncompressed grey-level image keeps its stored values, to read them directly.

    ``dtype`` carries the byte order; ``bits`` is BitsStored (values must fit in it).
    """

    offset: int
    dtype: np.dtype
    bits: int


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
    orientation_problem: str = ""
    #: Pixel data in a compressed transfer syntax (decoding costs CPU, not only copying).
    compressed: bool = False
    #: Where the stored values lie when they can be read without a decoder, else None.
    stored: StoredPixels | None = None


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


def _orientation(value: Any) -> tuple[np.ndarray | None, str]:
    """ImageOrientationPatient, or None and why it is unusable (zero or parallel cosines)."""
    orientation = _numbers(value, 6)
    if orientation is None:
        return None, ""
    row, column = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row) - 1) > ORIENTATION_TOLERANCE
        or abs(np.linalg.norm(column) - 1) > ORIENTATION_TOLERANCE
        or abs(row @ column) > ORIENTATION_TOLERANCE
    ):
        shown = " ".join(f"{v:g}" for v in orientation)
        return None, f"ImageOrientationPatient ({shown}) is not two perpendicular unit vectors"
    return orientation, ""


def _slices(
    dataset: Header, path: Path, compressed: bool, stored: StoredPixels | None = None
) -> tuple[tuple[SliceRef, ...], str]:
    """The slices of a file (one per frame) and a problem ("" when usable).

    ``stored`` says where a single-frame file's values lie (see :class:`StoredPixels`).
    """
    frames = int(_number(_get(dataset, "NumberOfFrames"), 1) or 1)
    image_type = _get(dataset, "ImageType") or []
    image_type = [image_type] if isinstance(image_type, str) else list(image_type)
    if "MOSAIC" in [str(value).upper() for value in image_type]:
        return (), (
            "is a Siemens mosaic (many slices tiled in one image), which napari-medai does not "
            "unpack; convert the series with dcm2niix first"
        )
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
        orientation, orientation_problem = _orientation(raw("ImageOrientationPatient"))
        slope = _number(raw("RescaleSlope"), 1.0)
        intercept = _number(raw("RescaleIntercept"), 0.0)
        if (
            slope is None
            or intercept is None
            or slope == 0
            or abs(slope) > MAX_RESCALE_SLOPE
            or abs(intercept) > MAX_RESCALE_INTERCEPT
        ):
            return (), (
                f"has an implausible rescale (RescaleSlope {raw('RescaleSlope')}"
                f", RescaleIntercept {raw('RescaleIntercept')}): its pixel "
                "values cannot be turned into real units (a damaged header?)"
            )
        slices.append(
            SliceRef(
                path=path,
                frame=frame if per_frame else None,
                position=_numbers(raw("ImagePositionPatient"), 3),
                orientation=orientation,
                pixel_spacing=spacing if spacing is not None and np.all(spacing > 0) else None,
                thickness=thickness if thickness and thickness > 0 else None,
                slope=slope,
                intercept=intercept,
                rows=int(_number(_get(dataset, "Rows"), 0) or 0),
                columns=int(_number(_get(dataset, "Columns"), 0) or 0),
                samples=int(_number(_get(dataset, "SamplesPerPixel"), 1) or 1),
                order=(
                    (_number(raw("TemporalPositionIndex"), 0.0) or 0.0,)
                    if per_frame
                    else classic_order
                ),
                instance=int(_number(_get(dataset, "InstanceNumber"), 0) or 0),
                sop_instance=_text(dataset, "SOPInstanceUID"),
                orientation_problem=orientation_problem,
                compressed=compressed,
                stored=None if per_frame else stored,
            )
        )
    return tuple(slices), ""


def starts_like_dicom(head: bytes) -> bool:
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
    return starts_like_dicom(head) and read_header(Path(path)) is not None


def _native_pixel_data(
    handle: Any, start: int, size: int, explicit: bool, big: bool
) -> tuple[int, int] | None:
    """Where uncompressed PixelData starts and how many of its bytes the file holds, or None.

    ``start`` is where pydicom stopped: the PixelData element's tag. Read by hand
    because pydicom's ``stop_before_pixels`` leaves exactly this element unread.
    None when not checkable (another element, or encapsulated frames).
    """
    order = ">" if big else "<"
    handle.seek(start)
    head = handle.read(12)
    if len(head) < 8 or struct.unpack(order + "HH", head[:4]) != (0x7FE0, 0x0010):
        return None
    if explicit and head[4:6] in (b"OB", b"OW", b"OF", b"OD", b"UN", b"OV"):
        if len(head) < 12:
            return start + len(head), 0
        length, header = struct.unpack(order + "I", head[8:12])[0], 12
    elif explicit:
        length, header = struct.unpack(order + "H", head[6:8])[0], 8
    else:
        length, header = struct.unpack(order + "I", head[4:8])[0], 8
    if length == 0xFFFFFFFF:
        return None  # encapsulated (compressed) frames: the decoder checks them
    return start + header, max(min(length, size - start - header), 0)


def _stored_pixels(header: dict[str, Any], offset: int, big: bool) -> StoredPixels | None:
    """How to read a single-frame grey-level image's stored values directly, or None.

    Only the plain case: one sample, MONOCHROME2, 8 or 16 bits allocated with
    the high bit where BitsStored puts it. Anything else goes to a decoder.
    """
    allocated = int(_number(_get(header, "BitsAllocated"), 0) or 0)
    bits = int(_number(_get(header, "BitsStored"), allocated) or 0)
    high = int(_number(_get(header, "HighBit"), bits - 1) or 0)
    signed = _number(_get(header, "PixelRepresentation"), 0)
    if (
        allocated not in (8, 16)
        or not 1 <= bits <= allocated
        or high != bits - 1
        or signed not in (0, 1)
        or int(_number(_get(header, "SamplesPerPixel"), 1) or 1) != 1
        or int(_number(_get(header, "NumberOfFrames"), 1) or 1) != 1
        or _text(header, "PhotometricInterpretation") != "MONOCHROME2"
    ):
        return None
    dtype = np.dtype(f"{'>' if big else '<'}{'i' if signed else 'u'}{allocated // 8}")
    return StoredPixels(offset, dtype, bits)


def _pixel_problem(header: dict[str, Any], present: int | None) -> str:
    """Why the stored pixel bytes cannot hold the image the header describes ("" if they can)."""
    if present is None:
        return ""
    rows = int(_number(_get(header, "Rows"), 0) or 0)
    columns = int(_number(_get(header, "Columns"), 0) or 0)
    samples = int(_number(_get(header, "SamplesPerPixel"), 1) or 1)
    frames = int(_number(_get(header, "NumberOfFrames"), 1) or 1)
    bits = int(_number(_get(header, "BitsAllocated"), 0) or 0)
    if bits not in (1, 8, 16, 32, 64):
        shown = _get(header, "BitsAllocated")
        return f"has no valid BitsAllocated ({shown}); its pixels cannot be read"
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if present < expected:
        return (
            f"holds {present} bytes of pixel data, but its header ({rows} rows, {columns} columns, "
            f"{frames} frame(s), {bits} bits) needs {expected}: the file is truncated or its "
            "header is wrong"
        )
    if expected and present >= 2 * expected:
        return (
            f"holds {present} bytes of pixel data, {present // expected} times what its header "
            f"({rows} rows, {columns} columns, {bits} bits) describes: its header is wrong"
        )
    return ""


def read_header(path: Path) -> DicomFile | None:
    """The header facts of ``path``, or None when it is not a DICOM file (or a DICOMDIR)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
            preamble = head[128:132] == b"DICM"
            if not preamble and not starts_like_dicom(head):
                return None
            handle.seek(0)
            dataset = pydicom.dcmread(
                handle,
                stop_before_pixels=True,
                specific_tags=_HEADER_TAG_NUMBERS,
                force=not preamble,
            )
            syntax = str(getattr(dataset, "file_meta", {}).get("TransferSyntaxUID", ""))
            size = os.fstat(handle.fileno()).st_size
            present, offset = None, None
            if syntax == DEFLATED:
                # The whole data set is deflated: pydicom inflates it to find the pixels.
                pixel_data = pydicom.dcmread(path).get("PixelData")
                has_pixels = pixel_data is not None
                present = len(pixel_data) if has_pixels else None
            else:
                # Reading stops at the pixel data element: anything left means pixels.
                has_pixels = handle.tell() < size
                if has_pixels and syntax in NATIVE_SYNTAXES:
                    explicit = NATIVE_SYNTAXES[syntax]
                    big = syntax == "1.2.840.10008.1.2.2"
                    found = _native_pixel_data(handle, handle.tell(), size, explicit, big)
                    if found is not None:
                        offset, present = found
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
    elif problem := _pixel_problem(header, present):
        slices = ()
    else:
        stored = None
        if offset is not None:
            stored = _stored_pixels(header, offset, syntax == "1.2.840.10008.1.2.2")
        slices, problem = _slices(header, Path(path), syntax not in NATIVE_SYNTAXES, stored)
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
