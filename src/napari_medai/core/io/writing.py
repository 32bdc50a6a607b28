"""Write label maps to NIfTI, NRRD or MetaImage with the grid they were drawn on.

The label map goes through :func:`volume_to_sitk` (the one conversion) and is
written atomically (:func:`atomic_write`), never over an existing file unless
asked. NIfTI stores origin and spacing as 32-bit floats: geometry read from a
NIfTI file round-trips exactly, but a DICOM-derived origin can move by up to
about 1e-5 mm; NRRD and MetaImage keep full precision. Such a loss is logged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from napari_medai.core.errors import MedaiError
from napari_medai.core.files import atomic_write, compound_suffix
from napari_medai.core.geometry import GEOMETRY_TOLERANCE
from napari_medai.core.volume import LabelMap, volume_to_sitk

logger = logging.getLogger(__name__)

#: Writable label formats; all but plain ``.nii`` are stored compressed.
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

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
    """
    path = Path(path)
    suffix = compound_suffix(path)
    if suffix not in LABEL_SUFFIXES:
        raise MedaiError(
            f'Cannot save "{path.name}": label maps are saved as {", ".join(LABEL_SUFFIXES)}'
        )
    array = label_map.array
    dtype = smallest_label_dtype(array)
    image = volume_to_sitk(label_map.with_array(array.astype(dtype, copy=False)))

    def write(tmp: Path) -> None:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=suffix != ".nii")
        except RuntimeError as error:
            raise MedaiError(
                f'Cannot save "{path.name}": the file could not be written (is the disk full '
                "or the folder read-only?)"
            ) from error
        _log_geometry_loss(image, tmp, path.name)

    return atomic_write(path, write, overwrite=overwrite)


def _log_geometry_loss(written: sitk.Image, tmp: Path, name: str) -> None:
    """Re-read the header just written and log if the format rounded the geometry."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp))
    reader.ReadImageInformation()
    error = max(
        float(np.max(np.abs(np.subtract(stored, wanted))))
        for stored, wanted in (
            (reader.GetOrigin(), written.GetOrigin()),
            (reader.GetSpacing(), written.GetSpacing()),
            (reader.GetDirection(), written.GetDirection()),
        )
    )
    if error > GEOMETRY_TOLERANCE:
        logger.warning(
            "%s: the file format rounded origin, spacing or direction by up to %.2g "
            "(NIfTI stores 32-bit floats); save as .nrrd or .mha for an exact copy",
            name,
            error,
        )
