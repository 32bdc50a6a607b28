"""Open CT/MRI files as :class:`Volume` / :class:`LabelMap`, dispatching on the file type.

Folders, ``.zip`` files and DICOM files go to :mod:`napari_medai.core.io.dicom`; NIfTI,
NRRD, MetaImage and NIfTI/Analyze pairs are read by SimpleITK; FreeSurfer ``.mgz``/``.mgh``
(which SimpleITK cannot read) by nibabel when it is installed. Every SimpleITK image becomes
a volume through :func:`volume_from_sitk`, the one conversion.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any
from zipfile import is_zipfile

import numpy as np
import SimpleITK as sitk

from napari_medai.core.errors import SeriesSelectionError, UnreadableFileError
from napari_medai.core.files import compound_stem, compound_suffix
from napari_medai.core.io.validate import NiftiFacts, check_image_header
from napari_medai.core.io.writing import smallest_label_dtype
from napari_medai.core.jobs import Job, Progress, run_job
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import (
    LabelMap,
    Volume,
    label_map_from_sitk,
    volume_from_sitk,
)

logger = logging.getLogger(__name__)

#: File types SimpleITK reads, by (compound) suffix, with a name for messages.
SITK_FORMATS = {
    ".nii": "NIfTI",
    ".nii.gz": "NIfTI",
    ".hdr": "NIfTI/Analyze header",
    ".hdr.gz": "NIfTI/Analyze header",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD header",
    ".mha": "MetaImage",
    ".mhd": "MetaImage header",
}
#: FreeSurfer volumes: SimpleITK has no reader for them, nibabel has.
NIBABEL_FORMATS = {".mgz": "FreeSurfer MGH", ".mgh": "FreeSurfer MGH"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz")

#: Air is -1000 HU; MR magnitudes are never negative. A minimum at or below this marks CT.
CT_AIR_THRESHOLD = -900
#: MetaImage ``Modality`` values and the DICOM modality they stand for.
_METAIMAGE_MODALITIES = {
    "MET_MOD_CT": "CT",
    "MET_MOD_MR": "MR",
    "MET_MOD_NM": "NM",
    "MET_MOD_US": "US",
}
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
    image, info = _read_image(path, kind)
    yield Progress(0.9, f"Converting {path.name}")
    volume = _image_to_volume(image, path, info)
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
    kind = _kind_of(path)
    if kind == "dicom":
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: label maps are read from NIfTI, NRRD, '
            "MetaImage or FreeSurfer files"
        )
    image, info = _read_image(path, kind)
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: it has {_describe_shape(image)}; '
            "a label map is a single 3D grid of integers"
        )
    label_map = label_map_from_sitk(_as_integer_labels(image, path))
    warnings = list(info["warnings"])
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


def _read_image(path: Path, kind: str) -> tuple[sitk.Image, dict[str, Any]]:
    """The file as a SimpleITK image plus ``{"modality": ..., "warnings": [...]}``.

    The header is checked in Python first (:mod:`napari_medai.core.io.validate`),
    so SimpleITK never sees a header that could crash it or a truncated file.
    """
    if kind == "nibabel":
        return _read_with_nibabel(path), {"modality": "", "warnings": []}
    suffix = compound_suffix(path)
    file_type = SITK_FORMATS[suffix]
    checked = check_image_header(path)
    warnings = list(checked.warnings)
    if checked.file_type == "NIfTI-2" or (checked.nifti is not None and checked.nifti.sheared):
        # SimpleITK (ITK 5.4) has no NIfTI-2 reader and refuses a sheared NIfTI-1 without a
        # qform; nibabel reads both, by the same affine rules, so every sheared NIfTI opens.
        return _read_with_nibabel(path), {"modality": "", "warnings": warnings}
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": not a valid {file_type} file (damaged, truncated '
            "or another format under this name)"
        ) from error
    header = {key: reader.GetMetaData(key) for key in reader.GetMetaDataKeys()}
    if suffix in _NIFTI_SUFFIXES and checked.nifti is not None and checked.nifti.affine is None:
        warnings.append(
            f'"{path.name}" stores no orientation (NIfTI qform and sform codes are 0): '
            "left/right and position in the scanner are unknown; shown with an identity "
            "direction at the origin"
        )
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": the image data is incomplete or damaged '
            "(truncated file, or a missing data file beside the header?)"
        ) from error
    if checked.nifti is not None:
        image = _nifti_as_nibabel_sees_it(image, path, checked.nifti)
    return image, {"modality": _modality_from_header(header), "warnings": warnings}


def _nifti_as_nibabel_sees_it(image: sitk.Image, path: Path, facts: NiftiFacts) -> sitk.Image:
    """Undo two ITK departures from the NIfTI rules that nibabel, FSL and niivue follow.

    ITK adds ``scl_inter`` when ``scl_slope`` is 0 or NaN (NIfTI: no scaling), and
    prefers the qform when both transforms are set (NIfTI practice: the sform).
    """
    if facts.ignores_scaling and facts.intercept != 0:
        import nibabel

        raw = np.asarray(nibabel.load(path).dataobj.get_unscaled())
        components = image.GetNumberOfComponentsPerPixel()
        unscaled = sitk.GetImageFromArray(_in_itk_layout(raw, image), isVector=components > 1)
        unscaled.CopyInformation(image)
        image = unscaled
    if facts.sform is None or image.GetDimension() not in (3, 4):
        return image
    lps = np.diag([-1.0, -1.0, 1.0]) @ facts.sform[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    itk_affine = np.array(image.GetDirection()).reshape(image.GetDimension(), -1)[:3, :3]
    itk_linear = itk_affine @ np.diag(image.GetSpacing()[:3])
    same = np.allclose(itk_linear, lps[:, :3], atol=1e-4) and np.allclose(
        image.GetOrigin()[:3], lps[:, 3], atol=1e-4
    )
    if same:
        return image
    image.SetSpacing([*spacing, *image.GetSpacing()[3:]])
    image.SetOrigin([*lps[:, 3], *image.GetOrigin()[3:]])
    full = np.eye(image.GetDimension())
    full[:3, :3] = direction
    # ITK accepts a non-orthogonal direction, so a sheared sform is kept exactly.
    image.SetDirection(full.ravel().tolist())
    return image


def _in_itk_layout(raw: np.ndarray, image: sitk.Image) -> np.ndarray:
    """nibabel's (x, y, z, t, c) array of a NIfTI in the axis order of ``image``'s array.

    ITK drops trailing axes of size 1 (a 5-D file of 4x5x6x1x1 is a 3-D image) and
    moves values per voxel (RGB, vectors) last: (t, z, y, x, c).
    """
    if raw.dtype.names:  # RGB(A): one field per channel, made the last (slowest) axis
        from numpy.lib.recfunctions import structured_to_unstructured

        raw = structured_to_unstructured(raw)
    components = image.GetNumberOfComponentsPerPixel()
    size = tuple(reversed(image.GetSize()))
    if components == 1:
        return raw.T.reshape(size)
    return np.moveaxis(raw.T.reshape((components, *size)), 0, -1)


def _read_with_nibabel(path: Path) -> sitk.Image:
    """Read a FreeSurfer MGH/MGZ volume, a NIfTI-2 or a sheared NIfTI with nibabel.

    Hand-written bridge: SimpleITK has no MGH or NIfTI-2 reader. nibabel's affine
    maps (i, j, k) voxel indices to RAS mm; ITK's grid is LPS, so x and y flip sign.
    """
    file_type = NIBABEL_FORMATS.get(compound_suffix(path), "NIfTI")
    try:
        import nibabel
    except ImportError:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": {file_type} files like this one need the nibabel '
            "package (pip install nibabel)"
        ) from None
    try:
        loaded = nibabel.load(path)
        array = np.asarray(loaded.dataobj)
    except Exception as error:  # nibabel raises many types for damaged files
        raise UnreadableFileError(
            f'Cannot open "{path.name}": not a valid {file_type} file ({error})'
        ) from error
    vector = bool(array.dtype.names)
    if vector:  # RGB(A): one field per channel becomes a last axis
        from numpy.lib.recfunctions import structured_to_unstructured

        array = structured_to_unstructured(array)
    spatial = _three_or_four_axes(array[..., 0] if vector else array, path)
    array = array.reshape(spatial.shape + array.shape[array.ndim - vector :])
    array = array.astype(array.dtype.newbyteorder("="), copy=False)
    image = sitk.GetImageFromArray(
        np.moveaxis(array.T, 0, -1) if vector else array.T, isVector=vector
    )
    lps = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(loaded.affine, dtype=np.float64)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    extra = spatial.ndim - 3
    image.SetSpacing([*spacing, *[1.0] * extra])
    image.SetOrigin([*lps[:, 3], *[0.0] * extra])
    full_direction = np.eye(spatial.ndim)
    full_direction[:3, :3] = direction
    try:
        # ITK accepts non-perpendicular axes, so a sheared affine is kept exactly.
        image.SetDirection(full_direction.ravel().tolist())
    except RuntimeError as error:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": its affine is degenerate (voxel axes flat or parallel)'
        ) from error
    return image


def _three_or_four_axes(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as 3D or 4D, as ITK reads it: trailing axes of size 1 dropped, 2D one slice."""
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim not in (3, 4):
        size = "x".join(map(str, array.shape))
        raise UnreadableFileError(
            f'Cannot open "{path.name}": it has {array.ndim} dimensions ({size}); napari-medai '
            "opens 2D, 3D and 4D (time or channel) images"
        )
    return array


def _image_to_volume(image: sitk.Image, path: Path, info: dict[str, Any]) -> Volume:
    """2D -> one slice, 3D scalar or vector -> (z, y, x) or (c, z, y, x), 4D -> (t, z, y, x)."""
    metadata: dict[str, Any] = {"name": compound_stem(path), "source": path.name}
    dimension = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dimension == 2:
        # A one-slice volume: z spacing 1 mm, direction extended with the identity.
        image = sitk.JoinSeries(image)
        dimension = 3
    if dimension == 3:
        volume = volume_from_sitk(image, metadata)
        if components > 1:
            volume.metadata["channel_axis_name"] = "channel"
    elif dimension == 4 and components == 1:
        volume = _volume_from_4d(image, metadata)
    else:
        raise UnreadableFileError(
            f'Cannot open "{path.name}": it has {_describe_shape(image)}; napari-medai opens '
            "2D, 3D and 4D (time or channel) images"
        )
    volume.metadata["modality"] = info["modality"] or _modality_from_intensities(volume.array)
    volume.metadata["warnings"] = list(info["warnings"])
    return volume


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


def _modality_from_header(header: dict[str, str]) -> str:
    """The modality a MetaImage or dcm2niix NRRD header states, or ""."""
    stated = _METAIMAGE_MODALITIES.get(header.get("Modality", ""), "")
    for key, value in header.items():
        if key.endswith("0008_0060_Modality"):
            stated = value.strip()
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


def _as_integer_labels(image: sitk.Image, path: Path) -> sitk.Image:
    """Integer images pass; whole-number float images are cast; others are refused."""
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind in "iu":
        return image
    if not (np.all(np.isfinite(values)) and np.array_equal(values, np.round(values))):
        raise UnreadableFileError(
            f'Cannot open "{path.name}" as a label map: it holds fractional values '
            "(a probability or intensity image, not labels)"
        )
    dtype = smallest_label_dtype(values)
    integer = sitk.GetImageFromArray(values.astype(dtype))
    integer.CopyInformation(image)
    return integer


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
