"""Write label maps to NIfTI, NRRD or MetaImage with the grid they were drawn on.

The label map goes through :func:`volume_to_sitk` (the one conversion) and is
written atomically (:func:`atomic_write`), never over an existing file unless
asked, and every file is read back and compared before it replaces anything
(:func:`write_label_map`). NIfTI stores origin and spacing as 32-bit floats:
geometry read from a NIfTI file round-trips exactly, but a DICOM-derived origin
can move by up to about 1e-5 mm; NRRD and MetaImage keep full precision. Such a
loss is logged. :func:`label_sidecar` builds the JSON sidecar the CLI and the
napari writer save beside a mask.

A label map's segments (``metadata["segments"]``: label value -> colour, lock,
status, as the segment list keeps them) are written with it: as 3D Slicer's
``Segment<i>_Color`` and ``Segment<i>_Tags`` fields in NRRD, and as a
``segments`` table in the sidecar.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write, compound_suffix
from napari_medai.core.geometry import GEOMETRY_TOLERANCE, Geometry
from napari_medai.core.volume import LabelMap, Volume, volume_to_sitk

logger = logging.getLogger(__name__)

#: Writable label formats; all but plain ``.nii`` are stored compressed.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

#: Voxels counted at a time by :func:`label_counts`.
_COUNT_CHUNK = 1 << 20

_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)
_SIGNED = (np.int8, np.int16, np.int32, np.int64)


def smallest_label_dtype(values: np.ndarray) -> np.dtype:
    """The smallest integer dtype holding every value: unsigned unless one is negative."""
    low = int(values.min()) if values.size else 0
    high = int(values.max()) if values.size else 0
    for candidate in _UNSIGNED if low >= 0 else _SIGNED:
        info = np.iinfo(candidate)
        if info.min <= low and high <= info.max:
            return np.dtype(candidate)
    raise ValueError(f"labels from {low} to {high} fit no 64-bit integer type")


def write_label_map(label_map: LabelMap, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``label_map`` to ``path`` (.nii.gz, .nii, .nrrd or .mha) and return the path.

    Label values are unchanged, stored in the smallest integer type that holds
    them; origin, spacing and direction are the label map's. Refuses to replace
    an existing file unless ``overwrite`` is set (:class:`OutputExistsError`).
    The written file is read back and compared before it replaces ``path``: a
    full disk or a file-size limit raises :class:`MedaiError` and leaves an
    earlier file at ``path`` byte for byte as it was.
    """
    path = Path(path)
    suffix = compound_suffix(path)
    if suffix not in LABEL_SUFFIXES:
        raise MedaiError(
            f'Cannot save "{path.name}": label maps are saved as {", ".join(LABEL_SUFFIXES)}'
        )
    array = label_map.array
    dtype = smallest_label_dtype(array)
    stored = array.astype(dtype, copy=False)
    image = volume_to_sitk(label_map.with_array(stored))
    if suffix == ".nrrd":
        _set_segment_fields(image, label_map.label_names, segments_of(label_map))
    return write_image_verified(image, stored, path, overwrite)


def write_volume(volume: Volume, path: str | Path, overwrite: bool = False) -> Path:
    """Write a 3D image (a probability map, ...) with the same read-back check as labels."""
    path = Path(path)
    return write_image_verified(volume_to_sitk(volume), volume.array, path, overwrite)


def write_image_verified(
    image: sitk.Image, array: np.ndarray, path: Path, overwrite: bool = False
) -> Path:
    """Write ``image`` (holding ``array``) atomically; compressed unless plain ``.nii``.

    The file is read back before it replaces ``path`` (:func:`_check_written`);
    any writer error or short file raises :class:`MedaiError` and keeps an
    earlier file byte for byte.
    """
    suffix = compound_suffix(path)
    kept = " The earlier file was kept unchanged." if path.is_file() else ""

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=suffix != ".nii")
        except RuntimeError as error:
            raise MedaiError(
                f'Cannot save "{path.name}": the file could not be written (is the disk full '
                f"or the folder read-only?).{kept}"
            ) from error
        problem = _check_written(tmp, suffix, image, array, path.name)
        if problem:
            raise MedaiError(
                f'Cannot save "{path.name}": the file written {problem} (is the disk full, or '
                f"a file-size limit reached?).{kept}"
            )

    return atomic_write(path, write, overwrite=overwrite)


#: A segment's work status, as the segment list shows it.
SEGMENT_STATUSES = ("not started", "in progress", "done")
#: The same statuses as 3D Slicer's ``Segmentation.Status`` segment tag spells them.
SLICER_STATUS = {"not started": "notstarted", "in progress": "inprogress", "done": "completed"}
#: Segment tag for a lock: Slicer saves no lock, but keeps (and writes back) tags it does not know.
LOCKED_TAG = "NapariMedai.Locked"


def segments_of(label_map: LabelMap) -> dict[int, dict[str, Any]]:
    """The label map's segment fields (value -> colour, locked, status), or {}."""
    segments = label_map.metadata.get("segments", {})
    return {int(value): dict(fields) for value, fields in segments.items()}


def _set_segment_fields(
    image: sitk.Image, names: dict[int, str], segments: dict[int, dict[str, Any]]
) -> None:
    """Store segments as 3D Slicer's segmentation NRRD fields, which ITK writes as key-values.

    Name and label value for every named or described segment; its colour as
    ``Segment<i>_Color`` (three 0..1 numbers) and its status and lock as
    ``Segment<i>_Tags`` when the segment list set them.
    """
    values = sorted(value for value in set(names) | set(segments) if value != 0)
    for number, value in enumerate(values):
        fields = segments.get(value, {})
        image.SetMetaData(f"Segment{number}_Name", names.get(value, f"label {value}"))
        image.SetMetaData(f"Segment{number}_LabelValue", str(value))
        if fields.get("color") is not None:
            image.SetMetaData(
                f"Segment{number}_Color", " ".join(f"{c:.6g}" for c in fields["color"][:3])
            )
        tags = _slicer_tags(fields)
        if tags:
            image.SetMetaData(f"Segment{number}_Tags", tags)


def _slicer_tags(fields: dict[str, Any]) -> str:
    """Slicer's ``key:value|`` tag list for a segment's status and lock."""
    tags = ""
    if fields.get("status") in SLICER_STATUS:
        tags += f"Segmentation.Status:{SLICER_STATUS[fields['status']]}|"
    if fields.get("locked"):
        tags += f"{LOCKED_TAG}:1|"
    return tags


def _check_written(
    tmp: Path, suffix: str, written: sitk.Image, array: np.ndarray, name: str
) -> str:
    """Why the file at ``tmp`` does not hold ``array`` on ``written``'s grid, or "".

    SimpleITK's NIfTI writer reports a failed write (disk full) only on stderr,
    and its reader fills a short file with zeros; so the length of the data is
    checked against the header's promise and the voxels are read back and
    compared. Hand-written: no library offers this verification.
    """
    if suffix in (".nii", ".nii.gz"):
        expected = _nifti_data_offset(tmp) + array.nbytes
        if _stored_length(tmp, compressed=suffix == ".nii.gz") < expected:
            return "is shorter than its header says"
    try:
        back = sitk.ReadImage(str(tmp))
    except RuntimeError:
        return "cannot be read back"
    floating = np.issubdtype(array.dtype, np.floating)
    if back.GetSize() != written.GetSize() or not np.array_equal(
        sitk.GetArrayViewFromImage(back), array, equal_nan=floating
    ):
        return "does not hold the labels when read back"
    _log_geometry_loss(back, written, name)
    return ""


def _nifti_data_offset(path: Path) -> int:
    """Where a NIfTI file's voxels start (``vox_offset``), from its header."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        return int(float(reader.GetMetaData("vox_offset")))
    except RuntimeError:
        return 0  # no readable header: the read-back below says so


def _stored_length(path: Path, compressed: bool) -> int:
    """Bytes in the file, after gzip decompression when ``compressed``; short or corrupt -> -1."""
    if not compressed:
        return path.stat().st_size
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        return -1
    return total


def _log_geometry_loss(stored: sitk.Image, written: sitk.Image, name: str) -> None:
    """Log if the file format rounded the geometry of the image written."""
    error = max(
        float(np.max(np.abs(np.subtract(kept, wanted))))
        for kept, wanted in (
            (stored.GetOrigin(), written.GetOrigin()),
            (stored.GetSpacing(), written.GetSpacing()),
            (stored.GetDirection(), written.GetDirection()),
        )
    )
    if error > GEOMETRY_TOLERANCE:
        logger.warning(
            "%s: the file format rounded origin, spacing or direction by up to %.2g "
            "(NIfTI stores 32-bit floats); save as .nrrd or .mha for an exact copy",
            name,
            error,
        )


def labels_outside(label_map: LabelMap, geometry: Geometry, shape: tuple[int, ...]) -> int:
    """How many labelled voxels of ``label_map`` lie outside the grid ``geometry``/``shape``.

    Resampling onto that grid drops them; a writer reports the count.
    """
    to_index = np.linalg.inv(geometry.direction @ np.diag(geometry.spacing))
    high = np.asarray(shape[-3:]) - 0.5
    outside = 0
    indices = np.argwhere(label_map.array != 0)
    for start in range(0, len(indices), 1 << 20):  # bounded memory for large masks
        world = label_map.geometry.index_to_world(indices[start : start + (1 << 20)])
        index = (world - geometry.origin) @ to_index.T
        outside += int(np.count_nonzero(np.any((index < -0.5) | (index > high), axis=1)))
    return outside


def label_volumes_ml(label_map: LabelMap) -> dict[str, float]:
    """Volume in mL of each foreground label present or named, keyed by its name.

    Unnamed labels are keyed by their value.
    """
    values, counts = label_counts(label_map.array)
    present = dict(zip(values.tolist(), counts.tolist()))
    voxel_ml = label_map.geometry.voxel_volume_ml()
    return {
        label_map.label_names.get(value, str(value)): round(present.get(value, 0) * voxel_ml, 3)
        for value in sorted(set(present) | set(label_map.label_names))
        if value != 0
    }


def label_counts(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a label array and how many voxels hold each.

    Non-negative values below 2**24 are counted with a histogram in chunks
    (``np.bincount`` converts its input to int64, 8 bytes a voxel); others with
    ``np.unique``, which sorts.
    """
    flat = array.reshape(-1)
    if not flat.size or flat.min() < 0 or flat.max() >= 1 << 24:
        return np.unique(flat, return_counts=True)
    counts = np.zeros(int(flat.max()) + 1, dtype=np.int64)
    for start in range(0, flat.size, _COUNT_CHUNK):
        chunk = np.bincount(flat[start : start + _COUNT_CHUNK])
        counts[: len(chunk)] += chunk
    values = np.flatnonzero(counts)
    return values, counts[values]


#: Reader provenance keys that could link a sidecar back to a patient's study.
_IDENTIFYING_KEYS = ("series_uid", "other_series")
#: Provenance keys the sidecar writes in fields of their own.
_OWN_FIELDS = ("segments",)


def label_sidecar(
    label_map: LabelMap,
    *,
    input_name: str | None,
    outputs: dict[str, str],
    provenance: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON sidecar saved beside a mask: inputs, model, label names, segments and volumes.

    One builder for the CLI and the napari writer. DICOM UIDs are left out of
    the provenance; nothing here names the patient.
    """
    left_out = (*_IDENTIFYING_KEYS, *_OWN_FIELDS)
    provenance = {k: v for k, v in (provenance or {}).items() if k not in left_out}
    return {
        "input": input_name,
        "outputs": outputs,
        "model": model,
        "settings": settings,
        "time": provenance.get("time"),
        "label_names": {str(k): v for k, v in sorted(label_map.label_names.items())},
        "segments": {str(k): v for k, v in sorted(segments_of(label_map).items())},
        "volumes_ml": label_volumes_ml(label_map),
        "voxel_volume_ml": label_map.geometry.voxel_volume_ml(),
        "geometry_zyx_lps_mm": label_map.geometry.to_dict(),
        "provenance": provenance,
    }


def write_sidecar(sidecar: dict[str, Any], path: Path, overwrite: bool = False) -> Path:
    """Write a sidecar from :func:`label_sidecar` as indented JSON, atomically."""
    text = json.dumps(sidecar, indent=2, default=str)
    return atomic_write(
        Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite
    )
