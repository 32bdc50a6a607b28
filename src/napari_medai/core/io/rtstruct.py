"""DICOM RT Structure Sets: label maps as planar contours, and contours back as labels.

Written by hand with pydicom and scikit-image (``find_contours`` /
``polygon2mask``): rt-utils needs the full ``opencv-python``, whose bundled Qt
plugins clash with napari's Qt, and highdicom has no RTSTRUCT writer. Each label
is one ROI (ROI number = label value), each connected outline on a slice one
CLOSED_PLANAR contour on the pixel-centre iso-line at 0.5, so rasterising it
again gives the same pixels. Holes are separate contours; reading combines the
contours of a slice by even-odd (XOR), as most planning systems do.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
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
from napari_medai.core.io.dicom_seg import labels_to_export
from napari_medai.core.io.dicom_source import SourceSeries, deidentify
from napari_medai.core.io.export import DicomExportConfig, algorithm_of
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


def _contour_points(contour: Dataset) -> np.ndarray:
    """ContourData as an (N, 3) array, parsed from the raw bytes when pydicom has not yet."""
    element = contour.get_item(_CONTOUR_DATA)
    if isinstance(element, RawDataElement) and isinstance(element.value, bytes):
        values = np.array(element.value.split(b"\\"), dtype=float)
    else:
        values = np.asarray(contour.ContourData, dtype=float)
    return values.reshape(-1, 3)


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
    """Rasterise every ROI of an RTSTRUCT onto ``reference``'s grid (label = ROI number)."""
    from skimage.draw import polygon2mask

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in ds.StructureSetROISequence}
        roi_contours = list(ds.ROIContourSequence)
    except Exception as error:  # pydicom raises many types for damaged objects
        raise UnreadableFileError(f'Cannot open the RTSTRUCT "{path.name}": {error}') from error
    geometry = reference.geometry
    shape = reference.spatial_shape
    inverse = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    labels = np.zeros(shape, dtype=np.uint16 if max(names, default=0) > 255 else np.uint8)
    off_grid = 0
    for item in roi_contours:
        value = int(item.ReferencedROINumber)
        planes: dict[int, np.ndarray] = {}
        for contour in item.get("ContourSequence", []):
            xyz = _contour_points(contour)
            if contour.get("ContourGeometricType", "CLOSED_PLANAR") != "CLOSED_PLANAR" or (
                len(xyz) < 3
            ):
                continue  # points and open lines enclose no area
            index = (xyz[:, ::-1] - geometry.origin) @ inverse.T
            z = float(np.median(index[:, 0]))
            if np.ptp(index[:, 0]) > _PLANE_TOLERANCE or abs(z - round(z)) > _PLANE_TOLERANCE:
                off_grid += 1
                continue
            if not 0 <= round(z) < shape[0]:
                continue
            inside = polygon2mask(shape[1:], index[:, 1:])
            plane = planes.setdefault(round(z), np.zeros(shape[1:], dtype=bool))
            plane ^= inside
        for z, plane in planes.items():
            labels[z][plane] = value
    warnings = []
    if off_grid:
        warnings.append(
            f"{off_grid} contour(s) do not lie on the slices of the scan and were left out"
        )
    return LabelMap(
        labels,
        geometry,
        {"name": path.stem, "source": path.name, "warnings": warnings},
        {value: name for value, name in names.items() if name},
    )
