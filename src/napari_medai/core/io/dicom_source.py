"""The DICOM series a mask was drawn on, as DICOM-SEG and RTSTRUCT writers need it.

Both writers must reference every source instance and copy its patient and
study modules, so the full headers (no pixels) of the series are read here with
pydicom, matched slice by slice to the label map's grid in world space, and
checked for the UIDs a reference needs. A series whose UIDs were blanked gets
replacement UIDs derived from its content, so every export of it references the
same UIDs and the reader can find the series again. Optional de-identification
follows the PS3.15 basic profile with the Retain UIDs option, nested sequences
included.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from napari_medai.core.errors import ExportError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom.headers import scan_headers_job
from napari_medai.core.io.dicom.series import group_series, select_series
from napari_medai.core.io.dicom.sources import extract_zip_job, folder_files, is_zip
from napari_medai.core.jobs import Job, Progress, scaled

#: A source slice lies on a grid slice when its position is this close (in voxels).
_ON_SLICE_TOLERANCE = 0.01
#: Storage classes for sources whose SOP Class UID was blanked, by modality.
_STORAGE_BY_MODALITY = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Patient and study attributes the outputs must carry (empty allowed); some
#: anonymised sources drop them, so they are added empty in memory.
_TYPE_2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


@dataclass
class SourceSeries:
    """The headers of one image series, each with the grid slice it lies on.

    ``datasets[k]`` lies on slice ``slice_index[k]`` of the label map's grid.
    ``key`` is the reader's name for the series: its SeriesInstanceUID, or the
    stand-in for a series whose UIDs were blanked. ``warnings`` says what was
    changed in memory (new UIDs) to make it usable.
    """

    datasets: list[Dataset]
    key: str = ""
    slice_index: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def read_source_series_job(path: Path, series_uid: str | None = None) -> Job[SourceSeries]:
    """Read the headers of the series at ``path`` (folder, zip or one file of it).

    ``series_uid`` picks a series (the reader's UID or blank-UID stand-in);
    without it the largest series is used.
    """
    path = Path(path)
    if not path.exists():
        raise ExportError(f'Cannot use "{path.name}" as the source series: it does not exist')
    with tempfile.TemporaryDirectory(prefix="napari-medai-source-") as temporary:
        if path.is_dir():
            candidates = folder_files(path)
        elif is_zip(path):
            candidates = yield from scaled(extract_zip_job(path, Path(temporary)), 0.0, 0.3)
        else:
            candidates = folder_files(path.parent, recursive=False)
        headers = yield from scaled(scan_headers_job(candidates), 0.3, 0.6)
        series_list = group_series(headers)
        if not series_list:
            raise ExportError(f'"{path.name}" holds no DICOM image series to reference')
        series, _ = select_series(series_list, f'"{path.name}"', series_uid)
        datasets = []
        for number, file in enumerate(series.files):
            datasets.append(pydicom.dcmread(file.path, stop_before_pixels=True))
            if number % 16 == 0:
                yield Progress(0.6 + 0.4 * number / len(series.files), "reading source headers")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise ExportError(
            "the source series is a multi-frame (enhanced) DICOM object; DICOM export "
            "references single-frame series only. Export NIfTI or NRRD instead"
        )
    for ds in datasets:
        for keyword in _TYPE_2:
            if keyword not in ds:
                setattr(ds, keyword, "")
    return SourceSeries(datasets, key=series.info.uid)


def match_slices(source: SourceSeries, geometry: Geometry, shape: tuple[int, int, int]) -> None:
    """Find the grid slice of every source image, in world space; refuse a foreign grid.

    Each image's first pixel (ImagePositionPatient) and its row and column
    directions must land on a slice of ``geometry`` with the same in-plane grid.
    """
    inverse = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    indices = []
    for ds in source.datasets:
        rows, columns = int(ds.Rows), int(ds.Columns)
        position = np.array(ds.ImagePositionPatient, dtype=float)[::-1]
        orientation = np.array(ds.ImageOrientationPatient, dtype=float)
        along_row, along_column = orientation[:3][::-1], orientation[3:][::-1]
        row_step, column_step = (float(v) for v in ds.PixelSpacing)
        index = inverse @ (position - geometry.origin)
        steps = inverse @ np.stack([along_row * column_step, along_column * row_step], axis=1)
        on_grid = (
            (rows, columns) == tuple(shape[1:])
            and np.allclose(index[1:], 0, atol=_ON_SLICE_TOLERANCE)
            and abs(index[0] - round(index[0])) < _ON_SLICE_TOLERANCE
            and 0 <= round(index[0]) < shape[0]
            and np.allclose(steps, [[0, 0], [0, 1], [1, 0]], atol=_ON_SLICE_TOLERANCE)
        )
        if not on_grid:
            raise ExportError(
                "the labels are not on the grid of the source DICOM series (another scan, "
                "or a resampled copy); DICOM outputs must lie on the series' own slices. "
                "Export NIfTI or NRRD instead, or pick the series the labels were drawn on"
            )
        indices.append(round(index[0]))
    if len(set(indices)) != len(indices):
        raise ExportError("two source images lie on the same slice; pick a single series")
    source.slice_index = indices


def replacement_uid(key: str, role: str, *content: str) -> str:
    """A UID for a blanked ``role`` UID of series ``key``, the same at every export.

    Derived from the reader's key for the series (itself derived from its
    headers) and ``content``, so the SEG/RTSTRUCT reader can compute it again
    for a blank-UID series beside the output.
    """
    return generate_uid(entropy_srcs=["napari-medai", role, key, *content])


def check_uids(source: SourceSeries, new_uids: bool) -> None:
    """Refuse a series with blank UIDs, or with ``new_uids`` give it replacements in memory.

    Anonymisation sometimes blanks Study, Series and SOP Instance UIDs; an
    object that references them cannot be linked to its scan by any viewer.
    The replacements come from :func:`replacement_uid`, so exporting the same
    series twice references the same UIDs.
    """
    blank = [
        keyword
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        if any(not str(ds.get(keyword, "") or "").strip() for ds in source.datasets)
    ]
    if not blank:
        return
    if not new_uids:
        raise ExportError(
            f"the source DICOM series has blank {', '.join(blank)} (anonymised), so a "
            "DICOM-SEG or RTSTRUCT cannot reference it. Export NIfTI or NRRD instead, or "
            "allow new UIDs (the output then references UIDs no file holds: a PACS will not "
            "link it to this scan, only its positions place it)"
        )
    key = source.key
    modality = str(source.datasets[0].get("Modality", ""))
    for ds in source.datasets:
        ds.StudyInstanceUID = ds.get("StudyInstanceUID") or replacement_uid(key, "study")
        ds.SeriesInstanceUID = ds.get("SeriesInstanceUID") or replacement_uid(key, "series")
        ds.SOPInstanceUID = ds.get("SOPInstanceUID") or replacement_uid(
            key, "instance", str(ds.get("ImagePositionPatient")), str(ds.get("InstanceNumber"))
        )
        ds.SOPClassUID = ds.get("SOPClassUID") or _STORAGE_BY_MODALITY.get(
            modality, _SECONDARY_CAPTURE
        )
        if not ds.get("FrameOfReferenceUID"):
            ds.FrameOfReferenceUID = replacement_uid(key, "frame of reference")
    source.warnings.append(
        f"the source series had blank {', '.join(blank)}; the output references new UIDs "
        "derived from the series' content, which no file holds: napari-medai opens it on "
        "this series again, other viewers place it by position only"
    )


#: PS3.15 Annex E basic profile, the attributes these outputs copy from their
#: source (highdicom copies the whole Patient and Study modules into a SEG, and
#: the source's acquisition equipment into its ContributingEquipmentSequence):
#: removed (X) or emptied (Z), at every nesting level. Hand-written because
#: pydicom has no de-identifier and the ``deid`` package is heavy; UIDs are kept
#: (Retain UIDs Option) so the output still references its scan.
_REMOVE = frozenset(
    {
        "AcquisitionDate",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "AdditionalPatientHistory",
        "AdmissionID",
        "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription",
        "Allergies",
        "BranchOfService",
        "ConsultingPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "ContributionDateTime",
        "ContributionDescription",
        "CountryOfResidence",
        "EthnicGroup",
        "InstitutionAddress",
        "InstitutionName",
        "InstitutionalDepartmentName",
        "IssuerOfAdmissionIDSequence",
        "IssuerOfPatientID",
        "IssuerOfServiceEpisodeIDSequence",
        "LastMenstrualDate",
        "MedicalAlerts",
        "MedicalRecordLocator",
        "MilitaryRank",
        "NameOfPhysiciansReadingStudy",
        "Occupation",
        "OperatorsName",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientAddress",
        "PatientAge",
        "PatientBirthDateInAlternativeCalendar",
        "PatientBirthName",
        "PatientBirthTime",
        "PatientComments",
        "PatientDeathDateInAlternativeCalendar",
        "PatientInsurancePlanCodeSequence",
        "PatientMotherBirthName",
        "PatientReligiousPreference",
        "PatientSize",
        "PatientState",
        "PatientTelephoneNumbers",
        "PatientWeight",
        "PerformingPhysicianName",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "PhysiciansReadingStudyIdentificationSequence",
        "PregnancyStatus",
        "ReasonForVisit",
        "ReferencedPatientPhotoSequence",
        "ReferencedPatientSequence",
        "ReferencedStudySequence",
        "ReferringPhysicianAddress",
        "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianTelephoneNumbers",
        "RegionOfResidence",
        "RequestingPhysician",
        "RequestingService",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "SeriesDate",
        "SeriesDescription",
        "SeriesTime",
        "ServiceEpisodeDescription",
        "ServiceEpisodeID",
        "SmokingStatus",
        "StationName",
        "StudyDescription",
    }
)
#: Removed from nested items only: at the top level these name the writing
#: software itself (Type 1 in a SEG), in items the source's scanner.
_REMOVE_FROM_ITEMS = frozenset({"DeviceSerialNumber", "DeviceUID"})
_EMPTY = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "ReferringPhysicianName",
        "AccessionNumber",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "ContentCreatorName",
    }
)


def deidentify(dataset: Dataset) -> None:
    """Apply the basic profile (Retain UIDs Option) to ``dataset`` and its nested items.

    Person names (VR PN) are emptied wherever they are, since the profile
    removes or empties every one of them.
    """

    def apply(owner: Dataset, element: DataElement) -> None:
        nested = owner is not dataset
        if (
            element.tag.is_private
            or element.keyword in _REMOVE
            or (nested and element.keyword in _REMOVE_FROM_ITEMS)
        ):
            del owner[element.tag]
        elif element.keyword in _EMPTY or element.VR == "PN":
            element.value = ""

    dataset.walk(apply)
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = "PS3.15 basic profile, Retain UIDs option (napari-medai)"
    codes = []
    for value, meaning in (
        ("113100", "Basic Application Confidentiality Profile"),
        ("113110", "Retain UIDs Option"),
    ):
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
        codes.append(code)
    dataset.DeidentificationMethodCodeSequence = codes
