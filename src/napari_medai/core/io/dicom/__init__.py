"""Read a DICOM series (folder, zip, or one file and its siblings) as a :class:`Volume`.

The geometry comes from the headers (ImageOrientationPatient,
ImagePositionPatient, PixelSpacing), with slices sorted along the slice
normal. A regular stack keeps its slices; a tilted, unevenly spaced or gappy
one is resampled onto a regular grid on the slice axes, with a warning in
``volume.metadata["warnings"]``. Pixels are decoded once, by SimpleITK where it
can (pydicom otherwise), with the rescale applied (CT in Hounsfield units).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.dicom.headers import (
    DicomFile,
    looks_like_dicom,
    read_header,
    scan_headers_job,
)
from napari_medai.core.io.dicom.pixels import decode_job
from napari_medai.core.io.dicom.regrid import describe_irregularity, plan_grid, resample_job
from napari_medai.core.io.dicom.series import Series, SeriesInfo, group_series, select_series
from napari_medai.core.io.dicom.sources import (
    INDEX_FILE_NAMES,
    extract_zip_job,
    folder_files,
    is_zip,
)
from napari_medai.core.io.dicom.stack import Stack, build_stack
from napari_medai.core.jobs import Job, Progress, run_job, scaled
from napari_medai.core.volume import Volume

__all__ = ["SeriesInfo", "list_dicom_series", "looks_like_dicom", "read_dicom_job"]

log = logging.getLogger(__name__)


#: Temporary zip folders are named with this prefix and the owning process id.
_TEMP_PREFIX = "napari-medai-dicom-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_folders(parent: Path | None = None) -> None:
    """Delete zip folders left by killed runs (their owning process is gone).

    A ``finally`` cannot run when a process is killed, so each new extraction
    sweeps what dead processes left behind.
    """
    parent = Path(parent or tempfile.gettempdir())
    for folder in parent.glob(f"{_TEMP_PREFIX}*"):
        owner = folder.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


class _Source:
    """The files of a DICOM source, with a zip extracted to a temporary folder."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        if not path.exists():
            raise UnreadableFileError(f"{path.name} does not exist")
        if path.is_file() and path.name.lower() in INDEX_FILE_NAMES:
            path = path.parent  # a DICOMDIR stands for the folder it indexes
        self.path = path
        self.preferred: str | None = None
        self._temporary: tempfile.TemporaryDirectory | None = None
        self.is_zip = is_zip(path)

    @property
    def label(self) -> str:
        """How messages name the source."""
        if self.is_zip:
            return f"the zip file {self.path.name}"
        if self.path.is_file():
            return f"the file {self.path.name} and its folder {self.path.parent.name}"
        folder = self.path if self.path.is_dir() else self.path.parent
        return f"the folder {folder.name}"

    def headers_job(self) -> Job[list[DicomFile]]:
        """Find the candidate files and read their headers."""
        path = self.path
        if path.is_dir():
            candidates = folder_files(path)
        elif self.is_zip:
            remove_stale_folders()
            self._temporary = tempfile.TemporaryDirectory(prefix=f"{_TEMP_PREFIX}{os.getpid()}-")
            extracted = extract_zip_job(path, Path(self._temporary.name))
            candidates = yield from scaled(extracted, 0.0, 0.4)
        else:
            header = read_header(path)
            if header is None:
                raise UnreadableFileError(f"the file {path.name} is not a DICOM file")
            if header.problem:
                raise UnreadableFileError(f"the file {path.name} {header.problem}")
            self.preferred = header.series_key
            candidates = folder_files(path.parent, recursive=False)
            if path not in candidates:
                candidates.append(path)
        headers = yield from scaled(scan_headers_job(candidates), 0.4, 1.0)
        return headers

    def series_job(self) -> Job[list[Series]]:
        """The image series of the source, largest first; refuses a source with none."""
        headers = yield from self.headers_job()
        series = group_series(headers)
        if not series:
            problems = [header for header in headers if header.problem]
            detail = ""
            if problems:
                detail = (
                    f" ({len(problems)} DICOM file(s) hold no usable image; for example "
                    f"{problems[0].path.name} {problems[0].problem})"
                )
            raise UnreadableFileError(f"{self.label} holds no DICOM images{detail}")
        return series

    def close(self) -> None:
        """Delete the temporary folder of an extracted zip."""
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None


def list_dicom_series(path: Path) -> list[SeriesInfo]:
    """The image series in a folder, a zip, or beside a DICOM file, largest first."""
    source = _Source(path)
    try:
        return [series.info for series in run_job(source.series_job())]
    finally:
        source.close()


#: ITK's series reader prints a warning on stderr when slice steps vary by more
#: than this fraction; such stacks (still regular to us) are read file by file.
_ITK_STEP_TOLERANCE = 1e-4


def _pixels_job(stack: Stack) -> Job[tuple[np.ndarray, Geometry, list[str]]]:
    """Decode (and if needed resample) every phase: array, geometry and warnings."""
    step = stack.regular_step()
    grid = None if step is not None else plan_grid(stack)
    series_reads = grid is None and stack.step_variation() <= _ITK_STEP_TOLERANCE
    share = 1.0 / len(stack.phases)
    decode_share = share if grid is None else 0.85 * share
    phases = []
    for number, phase in enumerate(stack.phases):
        start = number * share
        decoding = decode_job(phase, series_reads=series_reads)
        decoded = yield from scaled(decoding, start, start + decode_share)
        if grid is not None:
            channels = []
            for channel in decoded:
                resampled = resample_job(channel, stack.depth, grid)
                begin = start + decode_share
                channels.append((yield from scaled(resampled, begin, start + share)))
            decoded = np.stack(channels)
        phases.append(decoded)
    array = np.concatenate(phases) if len(phases) > 1 else phases[0]
    if array.shape[0] == 1:
        array = array[0]
    if grid is None:
        return array, stack.geometry(step), []
    return array, grid.geometry, [describe_irregularity(stack, grid)]


def read_dicom_job(path: Path, series_uid: str | None = None) -> Job[Volume]:
    """Read one DICOM series as a :class:`Volume` (z, y, x), or (c, z, y, x) for 4D/colour.

    ``path`` is a folder (searched recursively), a ``.zip``, or one DICOM file,
    which means its whole series when siblings of that series lie beside it.
    Without ``series_uid`` the largest series is read and the others are
    listed in ``metadata["other_series"]`` with a warning.
    """
    path = Path(path)
    source = _Source(path)
    try:
        series_list = yield from scaled(source.series_job(), 0.0, 0.15)
        series, warnings = select_series(series_list, source.label, series_uid, source.preferred)
        name = f"'{series.info.description or series.info.uid}' in {source.label}"
        stack = build_stack(series.slices, name)
        pixels = _pixels_job(stack)
        array, geometry, resample_warnings = yield from scaled(pixels, 0.15, 1.0)
    finally:
        source.close()
    warnings = [*warnings, *stack.warnings, *resample_warnings]
    for warning in warnings:
        log.info("%s: %s", path.name, warning)
    first = stack.phases[0][0]
    header = next(file for file in series.files if file.path == first.path)
    metadata: dict[str, Any] = {
        "modality": series.info.modality,
        "name": series.info.description or path.stem,
        "series_uid": series.info.uid,
        "source": path.name,
        "warnings": warnings,
        "other_series": [s.info.to_dict() for s in series_list if s is not series],
    }
    if header.window is not None:
        metadata["window"] = list(header.window)
    yield Progress(1.0, f"read {series.info.n_slices} DICOM slice(s)")
    return Volume(array, geometry, metadata)
