"""Write small synthetic DICOM series with pydicom, and compute their truth from headers.

Truth helpers read the written files back with pydicom only, so tests compare
the reader against the headers, never against the reader's own arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

IDENTITY_IOP = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ds_values(values: Sequence[float]) -> list[str]:
    """Floats as DICOM decimal strings (at most 16 characters each)."""
    return [format_number_as_ds(float(v)) for v in values]


def rotation_iop(angles_deg: Sequence[float]) -> tuple[float, ...]:
    """An oblique ImageOrientationPatient: the identity axes turned about x, y then z."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rotation = rz @ ry @ rx
    return (*rotation[:, 0], *rotation[:, 1])


def normal_of(iop: Sequence[float]) -> np.ndarray:
    """The slice normal (row x column cosines)."""
    iop = np.asarray(iop, dtype=float)
    return np.cross(iop[:3], iop[3:])


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid or "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _pixel_module(ds: Dataset, pixels: np.ndarray) -> None:
    signed = pixels.dtype.kind == "i"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()


def write_series(
    folder: Path,
    pixels: np.ndarray,
    *,
    positions: np.ndarray | None = None,
    iop: Sequence[float] = IDENTITY_IOP,
    spacing: Sequence[float] = (0.7, 0.8),
    origin: Sequence[float] = (-20.0, -30.0, 40.0),
    step: float = 2.5,
    slope: float | Sequence[float] = 1.0,
    intercept: float | Sequence[float] = 0.0,
    series_uid: str | None = None,
    study_uid: str | None = None,
    blank_uids: bool = False,
    description: str = "synthetic",
    modality: str = "CT",
    names: Sequence[str] | None = None,
    instances: Sequence[int] | None = None,
    thickness: float | None = 2.5,
    window: tuple[float, float] | None = (40.0, 400.0),
    temporal: int | None = None,
    with_pixels: bool = True,
) -> list[Path]:
    """Write one file per slice of ``pixels`` (n, rows, columns) of stored values.

    Positions default to ``origin`` plus ``step`` mm per slice along the normal;
    ``slope`` and ``intercept`` may differ per slice.
    """
    folder.mkdir(parents=True, exist_ok=True)
    n = len(pixels)
    if positions is None:
        positions = np.asarray(origin) + np.outer(np.arange(n) * step, normal_of(iop))
    series_uid = "" if blank_uids else (series_uid or generate_uid())
    study_uid = "" if blank_uids else (study_uid or generate_uid())
    frame_uid = generate_uid()
    names = names or [f"IM{k:04d}.dcm" for k in range(n)]
    instances = instances or list(range(1, n + 1))
    paths = []
    for k in range(n):
        sop_uid = "" if blank_uids else generate_uid()
        ds = Dataset()
        ds.file_meta = _meta(CTImageStorage, sop_uid)
        ds.SOPClassUID = "" if blank_uids else CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "SECRET-ID-42"
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 3
        ds.InstanceNumber = instances[k]
        if temporal is not None:
            ds.TemporalPositionIdentifier = temporal
        ds.ImageOrientationPatient = ds_values(iop)
        ds.ImagePositionPatient = ds_values(positions[k])
        ds.PixelSpacing = ds_values(spacing)
        if thickness is not None:
            ds.SliceThickness = format_number_as_ds(float(thickness))
        ds.RescaleSlope = format_number_as_ds(float(np.broadcast_to(slope, n)[k]))
        ds.RescaleIntercept = format_number_as_ds(float(np.broadcast_to(intercept, n)[k]))
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = ds_values(window)
        _pixel_module(ds, pixels[k])
        if not with_pixels:
            del ds.PixelData
        path = folder / names[k]
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def write_structured_report(path: Path) -> Path:
    """A DICOM Basic Text SR: a valid DICOM object that holds no image."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta("1.2.840.10008.5.1.4.1.1.88.11", uid)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesDescription = "report"
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_enhanced(
    path: Path,
    pixels: np.ndarray,
    positions: np.ndarray,
    *,
    iop: Sequence[float] = IDENTITY_IOP,
    spacing: Sequence[float] = (0.9, 0.6),
    slopes: Sequence[float] | None = None,
) -> Path:
    """An Enhanced MR multi-frame file with per-frame positions and rescale."""
    uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(EnhancedMRImageStorage, uid)
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.SeriesDescription = "enhanced"
    ds.NumberOfFrames = len(pixels)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = ds_values(iop)
    measures = Dataset()
    measures.PixelSpacing = ds_values(spacing)
    measures.SliceThickness = "1.5"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k, position in enumerate(positions):
        frame = Dataset()
        plane = Dataset()
        plane.ImagePositionPatient = ds_values(position)
        frame.PlanePositionSequence = DicomSequence([plane])
        transform = Dataset()
        transform.RescaleSlope = format_number_as_ds(float(slopes[k] if slopes else 1.0))
        transform.RescaleIntercept = "0"
        frame.PixelValueTransformationSequence = DicomSequence([transform])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    _pixel_module(ds, pixels)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def header_world(path: Path, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """World (x, y, z) LPS of pixels (row, column) of a classic file, from its header alone."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    return (
        ipp
        + np.outer(np.asarray(columns) * column_spacing, iop[:3])
        + np.outer(np.asarray(rows) * row_spacing, iop[3:])
    )


def modality_values(path: Path) -> np.ndarray:
    """A classic file's pixels with its rescale applied, computed with pydicom."""
    ds = pydicom.dcmread(path)
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
