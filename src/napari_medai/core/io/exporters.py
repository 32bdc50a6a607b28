"""The export formats: one class per kind of writer, and the list everything reads.

An exporter names its format, labels it for people, gives the suffix of its
files and writes a label map as a job. The export job, the Export dock's
choices and the CLI's ``--format`` all come from :data:`EXPORTERS`, so a new
format is one class here and its entry in the list (nnU-Net keeps its image
readers and writers the same way: a base class plus a list).

The writers' modules (and the volume types) are imported when a file is
written, not here: the CLI builds its ``--format`` choices from this list at
start-up, and the writers pull in SimpleITK, pydicom, highdicom and scikit-image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from napari_medai.core.errors import ExportError
from napari_medai.core.files import compound_suffix
from napari_medai.core.io.dicom_export import DicomExportConfig
from napari_medai.core.jobs import Job, Progress

if TYPE_CHECKING:
    from napari_medai.core.io.dicom_source import SourceSeries
    from napari_medai.core.volume import LabelMap

#: The :class:`DicomExportConfig` choices every DICOM writer honours.
DICOM_CHOICES = ("algorithm", "deidentify", "new_uids")


@dataclass(frozen=True)
class ExportRequest:
    """What a writer gets besides the label map and the path.

    ``series`` is the DICOM series the labels lie on; it is read (and its UIDs
    checked) before the writer runs when the exporter asks for it.
    """

    dicom: DicomExportConfig
    provenance: Mapping[str, Any]
    colors: Mapping[int, Sequence[float]] | None
    overwrite: bool
    series: SourceSeries | None = None


@runtime_checkable
class Exporter(Protocol):
    """One export format.

    ``name`` is the format's key (``ExportConfig.format``, the CLI's
    ``--format``); ``label`` what the dock shows; ``suffix`` is added to a file
    named without it; ``guessed_from`` the suffixes that pick this format when
    none is given; ``choices`` the :class:`DicomExportConfig` fields it honours;
    ``needs_series``: whether it writes against the source DICOM series.
    """

    name: str
    label: str
    suffix: str
    guessed_from: tuple[str, ...]
    choices: tuple[str, ...]
    needs_series: bool

    def write_job(self, label_map: LabelMap, path: Path, request: ExportRequest) -> Job[Path]:
        """Write ``label_map`` to ``path`` atomically; return the path written."""


@dataclass(frozen=True)
class LabelFileExporter:
    """A label map as an image file (NIfTI, NRRD, MetaImage) through the label writer."""

    name: str
    label: str
    suffix: str
    guessed_from: tuple[str, ...]
    choices: tuple[str, ...] = ()
    needs_series: bool = False

    def write_job(self, label_map: LabelMap, path: Path, request: ExportRequest) -> Job[Path]:
        from napari_medai.core.io.writing import write_label_map

        yield Progress(0.0, f"writing {path.name}")
        return write_label_map(label_map, path, overwrite=request.overwrite)


@dataclass(frozen=True)
class DicomSegExporter:
    """A DICOM Segmentation object referencing the source series (highdicom)."""

    name: str = "dicom-seg"
    label: str = "DICOM-SEG (.dcm)"
    suffix: str = ".dcm"
    guessed_from: tuple[str, ...] = (".dcm",)
    choices: tuple[str, ...] = (*DICOM_CHOICES, "compact")
    needs_series: bool = True

    def write_job(self, label_map: LabelMap, path: Path, request: ExportRequest) -> Job[Path]:
        from napari_medai.core.io.dicom_seg import write_dicom_seg_job

        return (yield from _on_series(write_dicom_seg_job, label_map, path, request))


@dataclass(frozen=True)
class RtstructExporter:
    """A DICOM RT Structure Set: one ROI of contours per label, on the source series."""

    name: str = "rtstruct"
    label: str = "DICOM RTSTRUCT (.dcm)"
    suffix: str = ".dcm"
    guessed_from: tuple[str, ...] = ()
    choices: tuple[str, ...] = DICOM_CHOICES
    needs_series: bool = True

    def write_job(self, label_map: LabelMap, path: Path, request: ExportRequest) -> Job[Path]:
        from napari_medai.core.io.rtstruct import write_rtstruct_job

        return (yield from _on_series(write_rtstruct_job, label_map, path, request))


#: Every export format, in the order the dock and the CLI offer them.


def _on_series(writer: Any, label_map: LabelMap, path: Path, request: ExportRequest) -> Job[Path]:
    """A DICOM writer's job: the mask on the request's source series, with its settings."""
    return writer(
        label_map,
        request.series,
        path,
        request.dicom,
        request.provenance,
        request.colors,
        request.overwrite,
    )


EXPORTERS: tuple[Exporter, ...] = (
    LabelFileExporter("nifti", "NIfTI (.nii.gz)", ".nii.gz", (".nii.gz", ".nii")),
    LabelFileExporter("nrrd", "NRRD (.nrrd)", ".nrrd", (".nrrd",)),
    LabelFileExporter("mha", "MetaImage (.mha)", ".mha", (".mha",)),
    DicomSegExporter(),
    RtstructExporter(),
)


def exporter_named(name: str) -> Exporter:
    """The exporter of format ``name``; an ExportError naming the formats otherwise."""
    for exporter in EXPORTERS:
        if exporter.name == name:
            return exporter
    raise ExportError(
        f"unknown format {name!r}; choose {', '.join(exporter.name for exporter in EXPORTERS)}"
    )


def exporter_for(path: Path, requested: str | None = None) -> Exporter:
    """The exporter ``requested``, else the one ``path``'s suffix names (.dcm means SEG)."""
    if requested:
        return exporter_named(requested)
    suffix = compound_suffix(Path(path))
    for exporter in EXPORTERS:
        if suffix in exporter.guessed_from:
            return exporter
    known = [s for exporter in EXPORTERS for s in exporter.guessed_from if s != ".nii"]
    raise ExportError(
        f'cannot tell the format of "{Path(path).name}": name it '
        f"{', '.join(known[:-1])} or {known[-1]}, or give the format"
    )
