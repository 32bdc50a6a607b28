"""DICOM RT Structure Sets: label maps as planar contours, and contours back as labels.

Written by hand with pydicom and scikit-image (``find_contours`` /
``polygon2mask``): rt-utils needs the full ``opencv-python``, whose bundled Qt
plugins clash with napari's Qt, and highdicom has no RTSTRUCT writer. Each label
is one ROI (ROI number = label value), each connected outline on a slice one
CLOSED_PLANAR contour on the pixel-centre iso-line at 0.5, so rasterising it
again gives the same pixels. Holes are separate contours; reading combines the
contours of a slice by even-odd (XOR), as most planning systems do.

Files from elsewhere are read defensively: a contour that is damaged or encloses
nothing on the scan is left out, an ROI number that cannot be a label value gets
a free one, and each such change is reported in ``metadata["warnings"]``, naming
the ROI.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from napari_medai import __version__
from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.files import atomic_write
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom_export import DicomExportConfig, algorithm_of
from napari_medai.core.io.dicom_seg import LARGEST_ROI_NUMBER, labels_to_export
from napari_medai.core.io.dicom_source import SourceSeries, deidentify
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.volume import LabelMap, Volume

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
_DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"
_CONTOUR_DATA = 0x30060050
#: Copied from the source so the structure set joins its patient and study.
_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
#: Contour slices further than this from a grid slice (in slices) are not on the grid.
_PLANE_TOLERANCE = 0.05
_UNDEFINED_LENGTH = 0xFFFFFFFF
_CLOSED = "CLOSED_PLANAR"
_NO_AREA = ("POINT", "OPEN_PLANAR", "OPEN_NONPLANAR")


def write_rtstruct_job(
    label_map: LabelMap,
    source: SourceSeries,
    path: Path,
    config: DicomExportConfig,
    provenance: Mapping[str, Any],
    colors: Mapping[int, Sequence[float]] | None = None,
    overwrite: bool = False,
) -> Job[Path]:
    """Write ``label_map`` (on ``source``'s grid) as an RTSTRUCT file at ``path``."""
    from skimage.measure import find_contours

    yield Progress(0.0, "matching the labels to the source slices")
    values = labels_to_export(label_map, source)
    kind, model_name = algorithm_of(provenance, config.algorithm)
    first = source.datasets[0]
    by_slice = dict(zip(source.slice_index, source.datasets))
    ds = _structure_set(first, source, label_map)
    rois, contours, observations = [], [], []
    for number, value in enumerate(values):
        name = label_map.label_names.get(value, f"label {value}")
        roi = Dataset()
        roi.ROINumber = value
        roi.ReferencedFrameOfReferenceUID = first.FrameOfReferenceUID
        roi.ROIName = name[:64]
        roi.ROIGenerationAlgorithm = kind
        if model_name:
            roi.ROIGenerationDescription = model_name[:64]
        rois.append(roi)
        item = Dataset()
        item.ReferencedROINumber = value
        item.ROIDisplayColor = _rgb255((colors or {}).get(value, (1.0, 1.0, 0.0)))
        item.ContourSequence = []
        for z in np.flatnonzero(np.any(label_map.array == value, axis=(1, 2))):
            if int(z) not in by_slice:
                continue
            padded = np.pad(label_map.array[z] == value, 1).astype(np.float32)
            for outline in find_contours(padded, 0.5):
                points = _world_points(label_map, int(z), outline[:-1] - 1.0)
                item.ContourSequence.append(_contour(points, by_slice[int(z)]))
        contours.append(item)
        observation = Dataset()
        observation.ObservationNumber = value
        observation.ReferencedROINumber = value
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
        yield Progress(0.1 + 0.8 * (number + 1) / len(values), f"contoured {name}")
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    if config.deidentify:
        deidentify(ds)
    written = atomic_write(
        Path(path),
        lambda tmp: pydicom.dcmwrite(tmp, ds, enforce_file_format=True),
        overwrite=overwrite,
    )
    yield Progress(1.0, f"wrote {Path(path).name}")
    return written


def _structure_set(first: Dataset, source: SourceSeries, label_map: LabelMap) -> Dataset:
    """The RT Series, Structure Set and SOP Common modules, referencing every source image."""
    uid = generate_uid()
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = uid
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.SeriesDescription = str(label_map.metadata.get("name", "structures"))[:64]
    ds.InstanceNumber = 1
    ds.Manufacturer = "napari-medai"
    ds.ManufacturerModelName = "napari-medai"
    ds.SoftwareVersions = __version__
    ds.OperatorsName = ""
    ds.StructureSetLabel = "napari-medai"
    ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.StructureSetTime = now.strftime("%H%M%S")
    images = []
    for image in source.datasets:
        reference = Dataset()
        reference.ReferencedSOPClassUID = image.SOPClassUID
        reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
        images.append(reference)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = _DETACHED_STUDY
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    return ds


def _world_points(label_map: LabelMap, z: int, outline: np.ndarray) -> np.ndarray:
    """(row, column) points of slice ``z`` as DICOM (x, y, z) world points in mm."""
    index = np.column_stack([np.full(len(outline), z, dtype=float), outline])
    return label_map.geometry.index_to_world(index)[:, ::-1]


def _contour(points: np.ndarray, image: Dataset) -> Dataset:
    contour = Dataset()
    reference = Dataset()
    reference.ReferencedSOPClassUID = image.SOPClassUID
    reference.ReferencedSOPInstanceUID = image.SOPInstanceUID
    contour.ContourImageSequence = [reference]
    contour.ContourGeometricType = "CLOSED_PLANAR"
    contour.NumberOfContourPoints = len(points)
    # Three decimals (1 micrometre) keep each value within the 16 characters of a DS.
    # Stored raw: pydicom parses and validates every DS value with a regex, which
    # took 25 of 38 s for a 20-slice CT with 31 labels.
    text = "\\".join(f"{v:.3f}" for v in points.ravel())
    encoded = (text + " " * (len(text) % 2)).encode("ascii")
    contour[_CONTOUR_DATA] = RawDataElement(
        Tag(_CONTOUR_DATA), "DS", len(encoded), encoded, 0, False, True
    )
    # Raw elements are written as they are only into a file of the same encoding.
    contour.set_original_encoding(False, True, contour._character_set)
    return contour


def _rgb255(color: Sequence[float]) -> list[int]:
    scale = 255.0 if max(color[:3]) <= 1.0 else 1.0
    return [int(round(float(c) * scale)) for c in color[:3]]


def referenced_series_uid(dataset: Any) -> str:
    """The SeriesInstanceUID an RTSTRUCT's contours were drawn on ("" if it names none)."""
    for frame in dataset.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                if series.get("SeriesInstanceUID"):
                    return str(series.SeriesInstanceUID)
    return ""


def read_rtstruct(path: Path, reference: Volume) -> LabelMap:
    """Rasterise every ROI of an RTSTRUCT onto ``reference``'s grid (label = ROI number).

    Contours that are damaged, enclose no area or miss the scan are left out, and
    ROIs whose number cannot be a label (0, negative, not an integer, repeated)
    get a free label value: each is named in ``metadata["warnings"]``. A file
    whose contours all fail to land on the scan is refused.
    """
    path = Path(path)
    ds = _open_structure_set(path)
    notes: list[str] = []
    rois = [
        _Roi(_number(roi, "ROINumber"), _text(roi, "ROIName")) for roi in ds.StructureSetROISequence
    ]
    pairs = _pair_with_rois(ds.ROIContourSequence, rois, notes)
    _assign_labels(rois, notes)
    shape = reference.spatial_shape
    labels = np.zeros(shape, dtype=_label_dtype(max((roi.label for roi in rois), default=0)))
    to_index = _world_to_index(reference.geometry)
    contours = 0
    for roi, item in pairs:
        planes: dict[int, np.ndarray] = {}
        sequence = _contour_sequence(item)
        if sequence is None:
            contours += 1
            notes.append(f"{roi.title}: its contour sequence is damaged; the ROI was left out")
            continue
        for contour in sequence:
            contours += 1
            drawn = _rasterise(contour, to_index, shape)
            if isinstance(drawn, str):
                roi.left_out[drawn] += 1
                continue
            z, inside = drawn
            planes[z] = planes.get(z, np.zeros(shape[1:], dtype=bool)) ^ inside
        _paint(labels, roi, planes, notes)
    notes.extend(roi.left_out_note() for roi in rois if roi.left_out)
    if contours and not labels.any():
        raise UnreadableFileError(
            f'The RTSTRUCT "{path.name}" has no contour that can be drawn on this scan: '
            + "; ".join(notes)
        )
    if not contours:
        notes.append("the structure set holds no contours")
    return LabelMap(
        labels,
        reference.geometry,
        {"name": path.stem, "source": path.name, "warnings": notes},
        {roi.label: roi.name for roi in rois if roi.name},
    )


@dataclass
class _Roi:
    """An ROI as read: its number as written (an int when it is one), name and label value."""

    number: int | str | None
    name: str
    label: int = 0
    left_out: Counter[str] = field(default_factory=Counter)

    @property
    def title(self) -> str:
        number = "no number" if self.number is None else f"number {self.number}"
        return f'ROI "{self.name}" ({number})' if self.name else f"the ROI with {number}"

    def left_out_note(self) -> str:
        reasons = "; ".join(f"{count} {reason}" for reason, count in self.left_out.items())
        return f"{self.title}: {self.left_out.total()} contour(s) left out ({reasons})"


def _open_structure_set(path: Path) -> Dataset:
    """The file as a dataset, refused in words when it is not a readable structure set."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as error:  # pydicom raises many types for damaged files
        raise UnreadableFileError(
            f'Cannot open the RTSTRUCT "{path.name}": it is not a readable DICOM file'
        ) from error
    if _cut_short(ds, path):
        raise UnreadableFileError(
            f'Cannot open the RTSTRUCT "{path.name}": the file is truncated (it ends inside '
            "its contents); copy it again from its source"
        )
    for keyword, what in (
        ("StructureSetROISequence", "list of ROIs"),
        ("ROIContourSequence", "contours"),
    ):
        try:
            present = keyword in ds and ds[keyword].VR == "SQ" and ds[keyword].value is not None
        except Exception:  # an element too damaged to parse
            present = False
        if not present:
            raise UnreadableFileError(
                f'Cannot open the RTSTRUCT "{path.name}": it has no readable {keyword} ({what})'
            )
    return ds


def _cut_short(ds: Dataset, path: Path) -> bool:
    """Whether an element of known length ends past the end of the file.

    pydicom reads a truncated file without a word, stopping where the bytes run
    out, so a cut file would otherwise lose ROIs or contours silently.
    """
    size = path.stat().st_size
    # Iterating a Dataset parses every element; its keys and get_item keep them raw.
    for tag in ds.keys():  # noqa: SIM118
        element = ds.get_item(tag)
        if (
            isinstance(element, RawDataElement)
            and element.length != _UNDEFINED_LENGTH
            and element.value_tell + element.length > size
        ):
            return True
    return False


def _text(dataset: Dataset, keyword: str) -> str:
    """An element's value as written, without parsing it (pydicom raises on malformed numbers)."""
    element = dataset.get_item(keyword)
    value = None if element is None else element.value
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    return "" if value is None else str(value).strip()


def _number(dataset: Dataset, keyword: str) -> int | str | None:
    """An ROI number as an int when it is an integer, its text when not, None when absent."""
    text = _text(dataset, keyword)
    try:
        number = float(text)
    except ValueError:
        return text or None
    return int(number) if number.is_integer() else text


def _pair_with_rois(
    items: Sequence[Dataset], rois: list[_Roi], notes: list[str]
) -> list[tuple[_Roi, Dataset]]:
    """Each contour item with the ROI it names; ROIs sharing a number pair in file order.

    An item naming an ROI that the list of ROIs lacks becomes an unnamed ROI; an
    item naming none is left out.
    """
    waiting: dict[int | str, list[_Roi]] = {}
    for roi in rois:
        if roi.number is not None:
            waiting.setdefault(roi.number, []).append(roi)
    last: dict[int | str, _Roi] = {}
    pairs = []
    for position, item in enumerate(items, start=1):
        number = _number(item, "ReferencedROINumber")
        if number is None:
            count = len(item.get("ContourSequence") or [])
            notes.append(
                f"contour set {position} of the file names no ROI: its {count} contour(s) "
                "were left out"
            )
            continue
        if waiting.get(number):
            roi = waiting[number].pop(0)
        elif number in last:
            roi = last[number]
        else:
            roi = _Roi(number, "")
            rois.append(roi)
        last[number] = roi
        pairs.append((roi, item))
    return pairs


def _assign_labels(rois: list[_Roi], notes: list[str]) -> None:
    """Label value = ROI number where it can be one; otherwise the lowest free value, said."""
    usable = {roi.number for roi in rois if _can_be_label(roi.number)}
    taken: set[int] = set()
    free = 1
    for roi in rois:
        if _can_be_label(roi.number) and roi.number not in taken:
            roi.label = int(roi.number)
        else:
            while free in usable or free in taken:
                free += 1
            roi.label = free
            notes.append(f"{roi.title} is read as label {free}: {_why_relabelled(roi, rois)}")
        taken.add(roi.label)


def _can_be_label(number: int | str | None) -> bool:
    return isinstance(number, int) and 0 < number <= LARGEST_ROI_NUMBER


def _why_relabelled(roi: _Roi, rois: list[_Roi]) -> str:
    if roi.number is None:
        return "it has no ROI number"
    if roi.number == 0:
        return "ROI number 0 would draw into the background"
    if _can_be_label(roi.number):
        first = next(other for other in rois if other.number == roi.number)
        return f"{first.title} has the same number (their contours were paired in file order)"
    return f"an ROI number must be a whole number from 1 to {LARGEST_ROI_NUMBER}"


def _label_dtype(largest: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds ``largest``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return dtype
    raise ValueError(f"label {largest} exceeds the ROI number range")


def _world_to_index(geometry: Geometry) -> Callable[[np.ndarray], np.ndarray]:
    """Maps DICOM (x, y, z) world points in mm to continuous (z, y, x) voxel indices."""
    inverse = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    return lambda xyz: (xyz[:, ::-1] - geometry.origin) @ inverse.T


def _contour_sequence(item: Dataset) -> list[Dataset] | None:
    """An ROI's contours, or None when its sequence is too damaged to parse."""
    try:
        return list(item.get("ContourSequence") or [])
    except Exception:  # pydicom raises many types for damaged sequences
        return None


def _rasterise(
    contour: Dataset, to_index: Callable[[np.ndarray], np.ndarray], shape: tuple[int, ...]
) -> tuple[int, np.ndarray] | str:
    """The slice and in-plane mask a contour encloses, or why it encloses nothing there."""
    from skimage.draw import polygon2mask

    kind = _text(contour, "ContourGeometricType") or _CLOSED
    if kind in _NO_AREA:
        return f"of type {kind}, which encloses no area"
    if kind != _CLOSED:
        return f'of unknown type "{kind[:16]}"'
    try:
        values = _contour_values(contour)
    except ValueError:
        return "with coordinates that are not numbers"
    if values.size == 0:
        return "with no points"
    if values.size % 3:
        return "with a coordinate count that is not a multiple of 3"
    if not np.isfinite(values).all():
        return "with NaN or infinite coordinates"
    if _stated_points(contour) not in (None, values.size // 3):
        return "whose Number of Contour Points disagrees with its coordinates"
    if values.size < 9:
        return "with fewer than 3 points, which enclose no area"
    with np.errstate(over="ignore", invalid="ignore"):
        index = to_index(values.reshape(-1, 3))
    if not np.isfinite(index).all():
        return "outside the scan"
    z = float(np.median(index[:, 0]))
    if not 0 <= round(z) < shape[0]:
        return "outside the scan"
    if np.ptp(index[:, 0]) > _PLANE_TOLERANCE or abs(z - round(z)) > _PLANE_TOLERANCE:
        return "between or across the slices of the scan"
    if not _overlaps(index[:, 1:], shape[1:]):
        return "outside the scan"
    inside = polygon2mask(shape[1:], index[:, 1:])
    if not inside.any():
        return "too small to cover the centre of a voxel"
    return round(z), inside


def _stated_points(contour: Dataset) -> int | None:
    """NumberOfContourPoints when it is a whole number (None when absent or unreadable)."""
    number = _number(contour, "NumberOfContourPoints")
    return number if isinstance(number, int) else None


def _overlaps(points: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether the bounding box of (row, column) points meets the slice's voxels."""
    return bool(
        np.all(points.max(axis=0) >= -0.5) and np.all(points.min(axis=0) <= np.array(shape) - 0.5)
    )


def _contour_values(contour: Dataset) -> np.ndarray:
    """ContourData as a flat float array, parsed from the raw bytes when pydicom has not yet.

    Raises ValueError when a value is not a number.
    """
    element = contour.get_item(_CONTOUR_DATA)
    value = None if element is None else element.value
    if isinstance(value, bytes):
        text = value.strip(b" \x00")
        return np.array(text.split(b"\\") if text else [], dtype=float)
    if value is None or value == "":
        return np.zeros(0)
    return np.atleast_1d(np.asarray(value, dtype=float)).ravel()


def _paint(labels: np.ndarray, roi: _Roi, planes: dict[int, np.ndarray], notes: list[str]) -> None:
    """Draw an ROI's planes; say how many voxels it takes from ROIs drawn before it."""
    taken = 0
    for z, plane in planes.items():
        before = labels[z][plane]
        taken += int(np.count_nonzero((before != 0) & (before != roi.label)))
        labels[z][plane] = roi.label
    if taken:
        notes.append(
            f"{roi.title} overlaps ROIs drawn before it in {taken} voxel(s), which now carry "
            "its label (a label map holds one label per voxel)"
        )
