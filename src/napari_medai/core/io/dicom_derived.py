"""Open DICOM-SEG and RTSTRUCT objects on the grid of the scan they reference.

A SEG or RTSTRUCT file opened alone is placed on its series when that series
lies in the same folder; otherwise the error names the series it needs (by
SeriesInstanceUID, never by patient). A folder is read as usual and every SEG or
RTSTRUCT in it (or in a zip of it) that references the opened series comes back
as label maps. An object exported against a series whose UIDs were blanked
references the replacement UIDs derived from that series
(:func:`~napari_medai.core.io.dicom_source.replacement_uid`); the same
derivation finds the series again.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom

from napari_medai.core.errors import SeriesSelectionError, UnreadableFileError
from napari_medai.core.io.dicom.headers import LABEL_MAP_SEGMENTATION, SEGMENTATION
from napari_medai.core.io.dicom.sources import MACOS_FOLDER, folder_files, is_zip
from napari_medai.core.io.dicom_seg import read_dicom_seg
from napari_medai.core.io.dicom_seg import referenced_series_uid as seg_reference
from napari_medai.core.io.dicom_source import replacement_uid
from napari_medai.core.io.rtstruct import RT_STRUCTURE_SET_STORAGE, read_rtstruct
from napari_medai.core.io.rtstruct import referenced_series_uid as rtstruct_reference
from napari_medai.core.jobs import Job, Progress, scaled
from napari_medai.core.volume import LabelMap, Volume

_KINDS = {
    SEGMENTATION: "DICOM-SEG",
    LABEL_MAP_SEGMENTATION: "DICOM-SEG",
    RT_STRUCTURE_SET_STORAGE: "RTSTRUCT",
}
#: The file meta group (with the SOP class) sits in the first few hundred bytes.
_SNIFF_BYTES = 1024


def derived_kind(path: Path) -> str | None:
    """Which object the file is: "DICOM-SEG", "RTSTRUCT" or None (cheap: one small read)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return None
    if not _may_be_derived(head):
        return None
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # a damaged or foreign file: not one of ours to place
        return None
    return _KINDS.get(str(dataset.get("SOPClassUID", "")))


def _may_be_derived(head: bytes) -> bool:
    """Whether the first bytes of a file name a SEG or RTSTRUCT SOP class."""
    return any(uid.encode() in head for uid in _KINDS)


@contextmanager
def _candidates(path: Path) -> Iterator[list[tuple[Path, str]]]:
    """Files (and their names) that may be SEG or RTSTRUCT objects in a folder or a zip."""
    if path.is_dir():
        yield [(file, file.stem) for file in folder_files(path)]
        return
    with tempfile.TemporaryDirectory(prefix="napari-medai-derived-") as temporary:
        found = []
        with zipfile.ZipFile(path) as archive:
            for number, info in enumerate(archive.infolist()):
                parts = info.filename.replace("\\", "/").split("/")
                if info.is_dir() or MACOS_FOLDER in parts or parts[-1].startswith("."):
                    continue
                with archive.open(info) as entry:
                    if not _may_be_derived(entry.read(_SNIFF_BYTES)):
                        continue
                # Our own file name, never the entry's path: nothing can escape the folder.
                target = Path(temporary) / f"{number}.dcm"
                with archive.open(info) as entry, open(target, "wb") as copy:
                    copy.write(entry.read())
                found.append((target, Path(parts[-1]).stem))
        yield found


def _reference_of(path: Path, kind: str) -> str:
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return seg_reference(dataset) if kind == "DICOM-SEG" else rtstruct_reference(dataset)


def _references(reference: str, key: str) -> bool:
    """Whether an object referencing ``reference`` lies on the series the reader calls ``key``."""
    return reference in (key, replacement_uid(key, "series"))


def _series_key(folder: Path, reference: str) -> str | None:
    """The reader's key of the series in ``folder`` an object references, or None."""
    from napari_medai.core.io.dicom import list_dicom_series

    try:
        keys = [info.uid for info in list_dicom_series(folder)]
    except (SeriesSelectionError, UnreadableFileError):
        return None
    return next((key for key in keys if _references(reference, key)), None)


def _referenced_scan_job(folder: Path, uid: str) -> Job[Volume]:
    """The series ``uid`` names in ``folder``; a blank-UID one is found by its replacement UID."""
    from napari_medai.core.io.dicom import read_dicom_job

    try:
        return (yield from read_dicom_job(folder, uid or None))
    except SeriesSelectionError:
        key = _series_key(folder, uid) if uid else None
        if key is None:
            raise
    return (yield from read_dicom_job(folder, key))


def _read_derived(path: Path, kind: str, scan: Volume, stem: str) -> LabelMap:
    labels = read_dicom_seg(path, scan) if kind == "DICOM-SEG" else read_rtstruct(path, scan)
    labels.metadata["name"] = f"{scan.metadata.get('name', 'scan')} {kind} {stem}"
    labels.metadata["source"] = f"{stem}{path.suffix}"
    return labels


def read_scan_and_labels_job(path: Path) -> Job[tuple[Volume, list[LabelMap]]]:
    """The scan at ``path`` and the SEG/RTSTRUCT label maps that reference it.

    ``path`` is a SEG or RTSTRUCT file (its series must lie beside it), or any
    source :func:`read_volume_job` reads (a DICOM folder also yields the SEG and
    RTSTRUCT objects in it that reference the opened series).
    """
    from napari_medai.core.io.reading import read_volume_job

    path = Path(path)
    kind = derived_kind(path)
    if kind is not None:
        uid = _reference_of(path, kind)
        try:
            scan = yield from scaled(_referenced_scan_job(path.parent, uid), 0.0, 0.8)
        except (SeriesSelectionError, UnreadableFileError) as error:
            raise UnreadableFileError(
                f'"{path.name}" is a {kind} drawn on the series with SeriesInstanceUID '
                f"{uid or '(not stated)'}, which is not in its folder: put the {kind} beside "
                "that series (or in its folder) and open it again"
            ) from error
        labels = [_read_derived(path, kind, scan, path.stem)]
        yield Progress(1.0, f"placed {path.name} on its scan")
        return scan, labels
    scan = yield from scaled(read_volume_job(path), 0.0, 0.9)
    labels = []
    uid = str(scan.metadata.get("series_uid", ""))
    if uid and (path.is_dir() or is_zip(path)):
        with _candidates(path) as candidates:
            for candidate, stem in candidates:
                found = derived_kind(candidate)
                if found is not None and _references(_reference_of(candidate, found), uid):
                    labels.append(_read_derived(candidate, found, scan, stem))
    yield Progress(1.0, f"read {path.name}")
    return scan, labels
