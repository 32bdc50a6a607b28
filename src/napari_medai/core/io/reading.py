"""Open CT/MRI files as :class:`Volume` / :class:`LabelMap`, dispatching on the file type.

Folders, ``.zip`` files and DICOM files go to :mod:`napari_medai.core.io.dicom`; NIfTI-1/2,
NIfTI/Analyze pairs and FreeSurfer ``.mgz``/``.mgh`` are read by nibabel, their grid taken from
nibabel's RAS affine through :meth:`Geometry.from_ras_affine`; NRRD and MetaImage by SimpleITK,
whose images become volumes through :func:`volume_from_sitk`, the one conversion.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any
from zipfile import is_zipfile

import numpy as np
import SimpleITK as sitk

from napari_medai.core.errors import SeriesSelectionError, UnreadableFileError
from napari_medai.core.files import compound_stem, compound_suffix
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.validate import (
    NiftiFacts,
    check_image_header,
    gzip_ends_after,
    read_nibabel_voxels,
)
from napari_medai.core.io.writing import smallest_label_dtype
from napari_medai.core.jobs import Job, Progress, run_job
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap, Volume, volume_from_sitk

logger = logging.getLogger(__name__)

#: File types SimpleITK reads, by (compound) suffix, with a name for messages.
SITK_FORMATS = {
    ".nrrd": "NRRD",
    ".nhdr": "NRRD header",
    ".mha": "MetaImage",
    ".mhd": "MetaImage header",
}
#: File types nibabel reads: NIfTI-1/2 and Analyze (one rule for every NIfTI), FreeSurfer.
NIBABEL_FORMATS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".hdr": "NIfTI/Analyze header",
    ".hdr.gz": "NIfTI/Analyze header",
    ".mgz": "FreeSurfer MGH",
    ".mgh": "FreeSurfer MGH",
}

#: Air is -1000 HU; MR magnitudes are never negative. A minimum at or below this marks CT.
CT_AIR_THRESHOLD = -900
#: MetaImage ``Modality`` values and the DICOM modality they stand for.
_METAIMAGE_MODALITIES = {
    "MET_MOD_CT": "CT",
    "MET_MOD_MR": "MR",
    "MET_MOD_NM": "NM",
    "MET_MOD_US": "US",
}
#: SimpleITK's NIfTI reader holds two copies of the voxels at its peak (it reads,
#: then copies into the image); above this size (a 512x512x512 int16 CT) a .nii.gz
#: is inflated in Python instead, about 3x slower but with one copy: big scans
#: open in bounded memory.
SITK_INFLATE_MAX_BYTES = 256 << 20
#: A .nii.gz at least this large next to its uncompressed size barely compresses
#: (noise, or data deflate stored raw): inflating it is copying, as quick in
#: Python as in SimpleITK, and Python's gzip checks the CRC-32 on each piece as
#: it goes, where SimpleITK's voxels need a second pass over the image to check it.
INCOMPRESSIBLE_FRACTION = 0.9
#: Grids closer than this (mm) are one grid: above NIfTI's float32 rounding of a
#: DICOM-derived origin (about 1e-5 mm), far below any voxel size.
SAME_GRID_TOLERANCE = 1e-4

_SUPPORTED = (
    "NIfTI (.nii, .nii.gz, .hdr), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
    "FreeSurfer (.mgz, .mgh), a DICOM file, or a folder or .zip of DICOM files"
)


def read_volume_job(path: str | Path, series_uid: str | None = None) -> Job[Volume]:
    """Read an image file, DICOM folder, ``.zip`` or DICOM file, yielding progress.

    ``series_uid`` picks one DICOM series; it is refused for single-image formats.
    Raises :class:`UnreadableFileError` naming the file and the problem.
    """
    path = Path(path)
    kind = _kind_of(path)
    if kind == "dicom":
        from napari_medai.core.io.dicom import read_dicom_job

        return (yield from read_dicom_job(path, series_uid))
    if series_uid is not None:
        raise SeriesSelectionError(
            f'"{path.name}" is a single image file, not DICOM: there is no series to choose'
        )
    yield Progress(0.0, f"Reading {path.name}")
    volume = _read_file(path)
    yield Progress(1.0, f"Read {path.name}")
    return volume


def read_volume(path: str | Path, series_uid: str | None = None) -> Volume:
    """Blocking form of :func:`read_volume_job`."""
    return run_job(read_volume_job(path, series_uid))


def read_label_map(path: str | Path, reference: Volume | None = None) -> LabelMap:
    """Read an integer label map from a NIfTI/NRRD/MetaImage/MGH file.

    Floating-point files whose values are all whole numbers are converted to the
    smallest integer type; others are refused. With ``reference``, a label map on
    the reference grid (within :data:`SAME_GRID_TOLERANCE`) takes its geometry
    exactly; one on another grid is resampled onto it with nearest neighbour, so
    label values never mix; labels that fall outside are reported in
    ``metadata["warnings"]``.
    """
    path = Path(path)
    if _kind_of(path) == "dicom":
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: label maps are read from NIfTI, NRRD, '
            "MetaImage or FreeSurfer files"
        )
    volume = _read_file(path)
    if volume.array.ndim != 3:
        size = "x".join(map(str, volume.array.shape))
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: it has a '
            f"{volume.metadata['channel_axis_name']} axis ({size}); "
            "a label map is a single 3D grid of integers"
        )
    label_map = LabelMap(_as_integer_labels(volume.array, path), volume.geometry)
    warnings = list(volume.metadata["warnings"])
    if reference is not None:
        on_grid = label_map.spatial_shape == reference.spatial_shape and (
            label_map.geometry.is_close(reference.geometry, SAME_GRID_TOLERANCE)
        )
        if not on_grid:
            before = _label_values(label_map.array)
            label_map = resample_label_map(label_map, reference.geometry, reference.spatial_shape)
            warnings.append(
                f'"{path.name}" was on a different grid; it was resampled onto the image grid '
                "(nearest neighbour, label values unchanged)"
            )
            dropped = before - _label_values(label_map.array) - {0}
            if dropped:
                warnings.append(
                    f"labels {sorted(dropped)} lie outside the image grid and were dropped"
                )
        # On the reference grid up to file rounding, or resampled onto it: take it exactly.
        label_map.geometry = reference.geometry
    label_map.metadata.update(name=compound_stem(path), source=path.name, warnings=warnings)
    return label_map


def check_readable(path: str | Path) -> None:
    """Raise :class:`UnreadableFileError` naming the problem unless ``path`` looks readable.

    Cheap (no pixels): lets a batch refuse a bad input before any work starts.
    """
    path = Path(path)
    _kind_of(path)
    if path.is_dir() and not _folder_may_hold_dicom(path):
        raise UnreadableFileError(f'Cannot open "{path.name}": the folder holds no DICOM files')


def can_read(path: str | Path) -> bool:
    """Whether napari-medai should claim ``path``; never raises.

    Claims every path its reader patterns are meant for, readable or not, so
    that a bad file gets napari-medai's specific error instead of napari's
    generic refusal: folders (except Zarr stores), the suffixes it reads,
    files without a suffix, anything that is not a regular file (broken
    links, pipes), and files that look like DICOM whatever their name.
    """
    try:
        path = Path(path)
        if "\0" in str(path):
            return False
        if path.is_dir():
            return not _is_zarr(path)
        suffix = compound_suffix(path)
        if suffix in SITK_FORMATS or suffix in NIBABEL_FORMATS or suffix in (".zip", ".dcm"):
            return True
        if not path.suffix or not path.is_file():
            return True
        return _looks_like_dicom(path)
    except Exception:  # the contract is "never raises": napari calls this on any dropped path
        logger.debug("can_read(%s) failed", path, exc_info=True)
        return False


def distinct_sources(paths: list[str | Path]) -> list[Path]:
    """``paths`` with every DICOM file after the first of its series left out.

    Selecting all the files of one series in a file dialog means "open this
    series" once, not once per file.
    """
    seen: set[tuple[Path, str]] = set()
    kept = []
    for path in map(Path, paths):
        series = dicom_series_key(path)
        if series is not None:
            if (path.parent, series) in seen:
                continue
            seen.add((path.parent, series))
        kept.append(path)
    return kept


def dicom_series_key(path: str | Path) -> str | None:
    """The series a single DICOM file belongs to (its SeriesInstanceUID or stand-in), or None."""
    path = Path(path)
    try:
        if not path.is_file() or _kind_of(path) != "dicom" or is_zipfile(path):
            return None
    except UnreadableFileError:
        return None
    from napari_medai.core.io.dicom import read_header

    header = read_header(path)
    return None if header is None else header.series_key


def _is_zarr(folder: Path) -> bool:
    """Zarr stores are folders other readers open."""
    markers = (".zarray", ".zgroup", "zarr.json")
    return folder.suffix.lower() == ".zarr" or any((folder / m).exists() for m in markers)


def _looks_like_dicom(path: Path) -> bool:
    # Imported here so that importing this module (napari's reader lookup, the CLI)
    # does not pay for pydicom.
    from napari_medai.core.io.dicom import looks_like_dicom

    return looks_like_dicom(path)


def _folder_may_hold_dicom(folder: Path) -> bool:
    return any(entry.is_file() and _looks_like_dicom(entry) for entry in folder.rglob("*"))


def _kind_of(path: Path) -> str:
    """Which reader: "dicom", "sitk" or "nibabel"; raises for unopenable and unknown paths."""
    try:
        status = path.stat()
    except ValueError as error:
        raise UnreadableFileError(f"Cannot open {str(path)!r}: not a valid path") from error
    except OSError as error:
        raise UnreadableFileError(_unopenable(path, error)) from error
    if stat.S_ISDIR(status.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise UnreadableFileError(
                f'Cannot open "{path.name}": permission denied (you may not read this folder)'
            )
        if compound_suffix(path) in SITK_FORMATS or compound_suffix(path) in NIBABEL_FORMATS:
            raise UnreadableFileError(
                f'Cannot open "{path.name}": it is a folder, not a file, despite its name'
            )
        if next(path.iterdir(), None) is None:
            raise UnreadableFileError(f'Cannot open "{path.name}": the folder is empty')
        return "dicom"
    if not stat.S_ISREG(status.st_mode):
        raise UnreadableFileError(
            f'Cannot open "{path.name}": it is not a regular file (a pipe, socket or device)'
        )
    if status.st_size == 0:
        raise UnreadableFileError(f'Cannot open "{path.name}": the file is empty (0 bytes)')
    if not os.access(path, os.R_OK):
        raise UnreadableFileError(
            f'Cannot open "{path.name}": permission denied (you may not read this file)'
        )
    suffix = compound_suffix(path)
    if suffix in (".zip", ".dcm"):
        return "dicom"
    if suffix in SITK_FORMATS:
        return "sitk"
    if suffix in NIBABEL_FORMATS:
        return "nibabel"
    if _looks_like_dicom(path):
        return "dicom"
    raise UnreadableFileError(
        f'Cannot open "{path.name}": not a scan napari-medai reads; it opens {_SUPPORTED}'
    )


def _unopenable(path: Path, error: OSError) -> str:
    """Why ``stat`` failed, in words."""
    if error.errno == errno.ELOOP:
        return f'Cannot open "{path.name}": it is a symbolic link that points to itself (a loop)'
    if error.errno == errno.EACCES:
        return f'Cannot open "{path.name}": permission denied (you may not read its folder)'
    if path.is_symlink():
        return f'Cannot open "{path.name}": it is a broken symbolic link (its target is missing)'
    return f'Cannot open "{path}": no such file or folder'


def _read_file(path: Path) -> Volume:
    """An image file as a volume whose metadata holds its name, source, modality and warnings.

    The header is checked in Python first (:mod:`napari_medai.core.io.validate`):
    SimpleITK never sees a header that could crash it or a truncated file, and
    nibabel reads only the voxels a checked header describes.
    """
    checked = check_image_header(path)
    if checked.nifti is not None:
        volume, modality = _volume_from_nibabel(path, checked.nifti), ""
    else:
        image, modality = _read_with_sitk(path)
        volume = _volume_from_image(image, path)
    volume.metadata.update(
        name=compound_stem(path),
        source=path.name,
        modality=modality or _modality_from_intensities(volume.array),
        warnings=list(checked.warnings),
    )
    return volume


def _read_with_sitk(path: Path) -> tuple[sitk.Image, str]:
    """A checked NRRD or MetaImage file as a SimpleITK image, and the modality its header states."""
    file_type = SITK_FORMATS[compound_suffix(path)]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": not a valid {file_type} file (damaged, truncated '
            "or another format under this name)"
        ) from error
    modality = _modality_from_header(reader)
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": the image data is incomplete or damaged '
            "(truncated file, or a missing data file beside the header?)"
        ) from error
    return image, modality


def _volume_from_nibabel(path: Path, facts: NiftiFacts) -> Volume:
    """A checked NIfTI or MGH file as a volume: nibabel's voxels on its RAS affine's grid.

    Scaled values are float32 where that holds them (nibabel widens only to avoid
    overflow), as ITK gave them; the array is nibabel's transposed, not copied.
    """
    from nibabel.volumeutils import apply_read_scaling

    voxels = _inflated_by_sitk(path, facts)
    if voxels is None:
        voxels = read_nibabel_voxels(path, facts)
    array, axis_name = _volume_axes(voxels, path)
    if facts.scaling is not None:
        array = apply_read_scaling(array, *facts.scaling)
    array = array.astype(array.dtype.newbyteorder("="), copy=False).T
    metadata = {} if axis_name is None else {"channel_axis_name": axis_name}
    return Volume(array, Geometry.from_ras_affine(facts.ras_affine), metadata)


def _inflated_by_sitk(path: Path, facts: NiftiFacts) -> np.ndarray | None:
    """The voxels of a checked 3D ``.nii.gz`` inflated by SimpleITK, or None to read them in Python.

    SimpleITK's zlib-ng inflates about three times as fast as Python's zlib. It
    gets only files the checks passed, and only its voxels are kept (the grid
    is nibabel's); they count only if the gzip trailer's length and CRC-32 match
    the header bytes and these voxels (:func:`gzip_ends_after`). Scaled,
    byte-swapped, vector and 4D files, and any file SimpleITK refuses or reads
    otherwise, are read by nibabel; so are images above
    :data:`SITK_INFLATE_MAX_BYTES`, to hold one copy of their voxels, not two,
    and streams that barely compress (:data:`INCOMPRESSIBLE_FRACTION`).
    """
    nbytes = math.prod(facts.shape) * facts.dtype.itemsize
    if not (
        facts.compressed
        and nbytes <= SITK_INFLATE_MAX_BYTES
        and path.stat().st_size < INCOMPRESSIBLE_FRACTION * (facts.offset + nbytes)
        and facts.data_file == path
        and len(facts.shape) == 3
        and facts.scaling is None
        and facts.dtype.isnative
        and facts.dtype.names is None
    ):
        return None
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if reader.GetSize() != facts.shape or reader.GetNumberOfComponents() != 1:
            return None
        voxels = volume_from_sitk(reader.Execute()).array  # (z, y, x), the image's own memory
    except RuntimeError:
        return None
    if voxels.dtype != facts.dtype or not gzip_ends_after(path, voxels, facts.offset):
        return None
    return voxels.T


def _volume_axes(voxels: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    """nibabel's (x, y, z, t, values per voxel) voxels as (x, y, z[, t or c]), and that axis' name.

    As ITK reads NIfTI: trailing axes of size 1 go, a 2D image is one slice, and
    values per voxel (``dim[5]`` of one time point, or RGB) become a channel axis.
    """
    array, axis_name = voxels, None
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 5 and array.shape[3] == 1:
        array, axis_name = array[:, :, :, 0], "channel"
    if array.ndim == 2:
        array = array[..., None]
    if array.dtype.names and array.ndim == 3:  # RGB(A): one field per channel
        from numpy.lib.recfunctions import structured_to_unstructured

        array, axis_name = structured_to_unstructured(array), "channel"
    if array.ndim not in (3, 4) or array.dtype.names:
        size = "x".join(map(str, array.shape))
        raise UnreadableFileError(
            f'Cannot open "{path.name}": it has {array.ndim} dimensions ({size}); napari-medai '
            "opens 2D, 3D and 4D (time or channel) images"
        )
    return array, axis_name or ("time" if array.ndim == 4 else None)


def _volume_from_image(image: sitk.Image, path: Path) -> Volume:
    """2D -> one slice, 3D scalar or vector -> (z, y, x) or (c, z, y, x), 4D -> (t, z, y, x)."""
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dimension == 2:
        # A one-slice volume: z spacing 1 mm, direction extended with the identity.
        image = sitk.JoinSeries(image)
        dimension = 3
    if dimension == 3:
        volume = volume_from_sitk(image)
        if components > 1:
            volume.metadata["channel_axis_name"] = "channel"
        return volume
    if dimension == 4 and components == 1:
        return _volume_from_4d(image, {})
    raise UnreadableFileError(
        f'Cannot open "{path.name}": it has {_describe_shape(image)}; napari-medai opens '
        "2D, 3D and 4D (time or channel) images"
    )


def _volume_from_4d(image: sitk.Image, metadata: dict[str, Any]) -> Volume:
    """A 4D image as (t, z, y, x); a single time point becomes a 3D volume."""
    array = sitk.GetArrayFromImage(image)
    # The spatial grid comes from a one-voxel 3D extract, converted the one way.
    extract = sitk.ExtractImageFilter()
    extract.SetSize([1, 1, 1, 0])
    extract.SetIndex([0, 0, 0, 0])
    extract.SetDirectionCollapseToStrategy(extract.DIRECTIONCOLLAPSETOSUBMATRIX)
    geometry = volume_from_sitk(extract.Execute(image)).geometry
    if array.shape[0] == 1:
        return Volume(array[0], geometry, metadata)
    return Volume(array, geometry, {**metadata, "channel_axis_name": "time"})


def _modality_from_header(reader: sitk.ImageFileReader) -> str:
    """The modality a MetaImage or dcm2niix NRRD header states, or "".

    Only the two fields that can state it are asked for: SimpleITK cannot hand
    back a field whose name is not UTF-8 text (a damaged header), and raises.
    """
    keys = reader.GetMetaDataKeys()
    stated = ""
    if "Modality" in keys:
        stated = _METAIMAGE_MODALITIES.get(reader.GetMetaData("Modality"), "")
    for key in keys:
        if key.endswith("0008_0060_Modality"):
            stated = reader.GetMetaData(key).strip()
    return stated


def _modality_from_intensities(array: np.ndarray) -> str:
    """Modality guess: "CT" for a signed 3D image reaching air (<= -900), else "" (unknown).

    Looks at every 4th voxel along each axis: cheap on big volumes, and air or the
    scanner's padding value fills whole regions, so the sample finds it.
    """
    if array.ndim != 3 or array.dtype.kind not in "if":
        return ""
    sample = array[::4, ::4, ::4]
    return "CT" if sample.size and float(sample.min()) <= CT_AIR_THRESHOLD else ""


def _as_integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Integer arrays pass; whole-number float arrays are cast; others are refused."""
    if array.dtype.kind in "iu":
        return array
    if not (np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: it holds fractional values '
            "(a probability or intensity image, not labels)"
        )
    return array.astype(smallest_label_dtype(array))


def _label_values(array: np.ndarray) -> set[int]:
    """The distinct values of an integer array (bincount for small unsigned types: fast)."""
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        return {int(v) for v in np.flatnonzero(np.bincount(array.ravel()))}
    return {int(v) for v in np.unique(array)}


def _describe_shape(image: sitk.Image) -> str:
    size = "x".join(str(n) for n in image.GetSize())
    components = image.GetNumberOfComponentsPerPixel()
    extra = f" with {components} values per voxel" if components > 1 else ""
    return f"{image.GetDimension()} dimensions ({size}){extra}"
