"""Check image headers in Python before any reader trusts them, and read NIfTI/MGH voxels.

NIfTI-1/2, Analyze and FreeSurfer MGH headers are parsed by nibabel, which also
reads their voxels (:func:`read_nibabel_voxels`): the checks here decide whether
that is safe (dimensions, voxel type, spacing, scaling, memory, data length) and
where the grid lies. NRRD and MetaImage headers are parsed by hand on purpose:
ITK aborts the whole process on some malformed ones (a MetaImage with
``NDims = 99`` is a double free), follows detached-data paths anywhere on disk,
fills truncated data with zeros and inflates compressed data without a bound;
only the few fields that decide safety are read. Every refusal names the file
and the problem in words.
"""

from __future__ import annotations

import bz2
import gzip
import math
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from isal import igzip, isal_zlib

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.files import compound_suffix
from napari_medai.core.geometry import lps_from_ras

#: The most dimensions napari-medai opens (x, y, z, time or channel).
MAX_DIMENSIONS = 4
#: Headers longer than this are not headers (text NRRD/MetaImage).
MAX_TEXT_HEADER = 1 << 20
#: Opening a file holds about this many copies of its voxels (SimpleITK image + array).
COPIES_WHILE_READING = 2
#: Inflate compressed data in pieces of at most this many bytes.
_CHUNK = 1 << 22
#: Compressed data may run this far past the image (padding) and still be checked to its end.
MAX_TRAILING_BYTES = 64 << 20
#: deflate (gzip, zlib) inflates at most this many bytes per compressed byte.
DEFLATE_MAX_RATIO = 1032
#: qform and sform closer than this (mm) at every grid corner agree.
TRANSFORM_AGREEMENT_MM = 0.1
#: Voxel axes further than this (degrees) from perpendicular are sheared.
SHEAR_TOLERANCE_DEGREES = 0.01
#: Axes this close (degrees) to perpendicular differ by float32 rounding alone (about 1e-7 rad).
FLOAT32_SHEAR_DEGREES = 1e-4

#: NRRD type names (every spelling the NRRD format allows) and their sizes in bytes.
_NRRD_TYPE_NAMES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: (
        "short",
        "short int",
        "signed short",
        "signed short int",
        "int16",
        "int16_t",
        "ushort",
        "unsigned short",
        "unsigned short int",
        "uint16",
        "uint16_t",
    ),
    4: (
        "int",
        "signed int",
        "int32",
        "int32_t",
        "uint",
        "unsigned int",
        "uint32",
        "uint32_t",
        "float",
    ),
    8: (
        "longlong",
        "long long",
        "long long int",
        "signed long long",
        "signed long long int",
        "int64",
        "int64_t",
        "ulonglong",
        "unsigned long long",
        "unsigned long long int",
        "uint64",
        "uint64_t",
        "double",
    ),
}
NRRD_TYPE_SIZES = {name: size for size, names in _NRRD_TYPE_NAMES.items() for name in names}
_NRRD_ENCODINGS = {
    "raw": "raw",
    "gz": "gzip",
    "gzip": "gzip",
    "bz2": "bzip2",
    "bzip2": "bzip2",
    "txt": "text",
    "text": "text",
    "ascii": "text",
    "hex": "hex",
}
METAIMAGE_TYPE_SIZES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}


@dataclass
class NiftiFacts:
    """Where a checked NIfTI or MGH file keeps its voxels and how to place them (by nibabel)."""

    #: The stored shape, (x, y, z, t, values per voxel...) as nibabel gives it.
    shape: tuple[int, ...]
    #: The stored voxel type, byte order included.
    dtype: np.dtype
    #: Where the voxels start in ``data_file``.
    offset: int
    #: ``(scl_slope, scl_inter)`` to apply, or None when the values are shown as stored.
    scaling: tuple[Any, Any] | None
    #: Voxel (i, j, k) -> RAS mm: the sform, else the qform, else identity LPS (said so).
    ras_affine: np.ndarray
    data_file: Path
    compressed: bool


@dataclass
class HeaderCheck:
    """The result of a passed check: the format, warnings, and NIfTI facts if any."""

    file_type: str
    warnings: list[str] = field(default_factory=list)
    nifti: NiftiFacts | None = None


def _refuse(path: Path, problem: str) -> UnreadableFileError:
    return UnreadableFileError(f'Cannot open "{path.name}": {problem}')


def available_memory() -> int | None:
    """Bytes this process may still allocate: free RAM, capped by an address-space limit."""
    limits = []
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as handle:
                used = next(int(line.split()[1]) * 1024 for line in handle if "VmSize" in line)
            limits.append(max(soft - used, 0))
    except (ImportError, OSError, StopIteration, ValueError):
        pass
    return min(limits) if limits else None


def _gigabytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def check_memory(path: Path, nbytes: int) -> None:
    """Refuse a file whose voxels cannot fit in the memory that is free."""
    free = available_memory()
    if free is not None and nbytes * COPIES_WHILE_READING > free:
        raise _refuse(
            path,
            f"its header describes {_gigabytes(nbytes)} of voxels, more than this computer can "
            f"hold now ({_gigabytes(free)} free); a damaged header, or a scan too big to open here",
        )


def _dimension_count(path: Path, count: int, most: int = MAX_DIMENSIONS + 1) -> None:
    if not 1 <= count <= most:
        raise _refuse(
            path,
            f"its header declares {count} dimensions; napari-medai opens 2D, 3D and 4D "
            "images (a damaged header?)",
        )


def _check_dimensions(path: Path, sizes: list[int]) -> None:
    _dimension_count(path, len(sizes))
    for axis, size in enumerate(sizes):
        if size < 1:
            raise _refuse(
                path,
                f"its header gives axis {axis + 1} a size of {size}; every axis needs at least "
                "one voxel (a damaged header?)",
            )


def _check_spacing(path: Path, spacings: list[float]) -> None:
    for axis, value in enumerate(spacings):
        if not math.isfinite(value) or value == 0:
            raise _refuse(
                path,
                f"its header gives axis {axis + 1} a voxel spacing of {value} mm; spacing must "
                "be a positive number (a damaged header?)",
            )


def _inflated_length(path: Path, offset: int, most: int, codec: str) -> int:
    """How many bytes the gzip/bzip2/zlib stream from ``offset`` inflates to, at most ``most`` + 1.

    Reads to the end of the stream (nothing is kept), so that the checksum in its
    trailer is checked: bit rot inside the stream otherwise inflates to garbage
    voxels, and a reader that stops at the size the header promises never sees it.
    Raises EOFError when the stream ends early, OSError/zlib.error when it is damaged.
    """
    with path.open("rb") as raw:
        raw.seek(offset)
        if codec == "zlib":
            return _zlib_length(raw, most)
        stream_type = gzip.GzipFile if codec == "gzip" else bz2.BZ2File
        with stream_type(fileobj=raw) if codec == "gzip" else stream_type(raw) as stream:
            total = 0
            while total <= most and (chunk := stream.read(_CHUNK)):
                total += len(chunk)
    return total


def _zlib_length(raw, most: int) -> int:
    """:func:`_inflated_length` for a zlib stream (MetaImage), whose end holds an Adler-32."""
    inflater = zlib.decompressobj()
    total = 0
    pending = b""
    while total <= most and not inflater.eof:
        if not pending:
            pending = raw.read(_CHUNK)
            if not pending:
                raise EOFError("the zlib stream ends before its end marker")
        total += len(inflater.decompress(pending, _CHUNK))
        pending = inflater.unconsumed_tail
    return total


def _check_compressed(header: Path, data: Path, offset: int, expected: int, codec: str) -> None:
    """Refuse compressed data that ends early, fails its checksum or runs on far past the image."""
    most = expected + MAX_TRAILING_BYTES
    try:
        length = _inflated_length(data, offset, most, codec)
    except EOFError as error:
        raise _truncated(header) from error
    except (OSError, zlib.error, ValueError) as error:
        raise _damaged(header, codec) from error
    if length < expected:
        raise _truncated(header)
    if length > most:
        raise _runs_on(header)


def _damaged(path: Path, codec: str) -> UnreadableFileError:
    return _refuse(
        path,
        f"the file is damaged: its compressed data fails the {codec} integrity check "
        "(corrupted on disk or in a copy?); open an intact copy",
    )


def _runs_on(path: Path) -> UnreadableFileError:
    return _refuse(
        path,
        f"its compressed data runs on more than {_gigabytes(MAX_TRAILING_BYTES)} past the "
        "image its header describes, so it cannot be checked (a damaged header?)",
    )


def _truncated(path: Path) -> UnreadableFileError:
    return _refuse(
        path,
        "the file is truncated (it ends before all the image data its header describes; "
        "was a download or copy interrupted?)",
    )


def _confined(header: Path, name: str) -> Path:
    """A detached data file named in ``header``, refused unless it lies beside the header."""
    folder = header.parent.resolve()
    if os.path.isabs(name) or re.match(r"^[A-Za-z]:[\\/]", name):
        raise _refuse(
            header,
            f"its header points to a data file by an absolute path ({name!r}); only data files "
            "in the header's own folder are opened",
        )
    target = (folder / name).resolve()
    if folder != target and folder not in target.parents:
        raise _refuse(
            header,
            f"its header points to a data file outside its folder ({name!r}); only data files "
            "in the header's own folder are opened",
        )
    if not target.is_file():
        raise _refuse(
            header, f"the data file its header names ({name!r}) is missing beside the header"
        )
    return target


# --- NIfTI and FreeSurfer MGH, through nibabel -------------------------------------------


def _nibabel_header(path: Path) -> tuple[Any, str]:
    """nibabel's header of ``path`` as stored, and the file type to name in messages.

    ``nibabel.load`` tells the type (NIfTI-1/2, Analyze, MGH) and reads no voxels.
    A NIfTI/Analyze header is then read again unchecked, because the image's own
    copy resets the data offset and the scaling that the checks below need.
    """
    import nibabel
    from nibabel.imageglobals import LoggingOutputSuppressor
    from nibabel.openers import ImageOpener

    file_type = "FreeSurfer MGH" if compound_suffix(path) in (".mgz", ".mgh") else "NIfTI"
    try:
        with LoggingOutputSuppressor():  # nibabel logs header fixes; the checks below speak
            image = nibabel.load(path)
        header = image.header
        if "vox_offset" in header:
            with ImageOpener(path) as stream:
                header = image.header_class.from_fileobj(stream, check=False)
    except EOFError as error:
        raise _truncated(path) from error
    except (zlib.error, gzip.BadGzipFile) as error:
        raise _damaged(path, "gzip") from error
    except nibabel.spatialimages.HeaderDataError as error:  # names the field, not the file
        raise _refuse(path, f"not a valid {file_type} file ({error})") from error
    except Exception as error:  # nibabel raises many types for damaged headers
        raise _refuse(
            path, f"not a valid {file_type} file (its header is missing, cut short or damaged)"
        ) from error
    if isinstance(header, nibabel.Nifti2Header):
        file_type = "NIfTI-2"
    return header, file_type


def _nibabel_shape(path: Path, header: Any) -> tuple[int, ...]:
    """The data shape (x, y, z, t, values per voxel...), refused unless every axis has voxels."""
    if "dim" in header:  # NIfTI/Analyze: dim[0] says how many of dim[1:] count
        ndim = int(header["dim"][0])
        if not 1 <= ndim <= 7:
            raise _refuse(
                path,
                f"not a valid NIfTI file (its header declares {ndim} dimensions; 1 to 7 exist)",
            )
    shape = tuple(int(size) for size in header.get_data_shape())
    spatial = list(shape)
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial.pop()
    _check_dimensions(path, spatial)
    return shape


def _voxel_type(path: Path, header: Any) -> np.dtype:
    """The stored voxel type; complex and 128-bit voxels are refused."""
    try:
        dtype = np.dtype(header.get_data_dtype())
    except Exception as error:  # nibabel: KeyError or HeaderDataError for unknown codes
        code = header["datatype"] if "datatype" in header else header["type"]
        raise _refuse(path, f"its header gives an unknown voxel datatype code ({code})") from error
    if dtype.names and all(dtype[name] == np.uint8 for name in dtype.names):
        return dtype  # RGB(A)
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        kind = {"c": "complex", "f": "float"}.get(dtype.kind, "non-numeric")
        raise _refuse(
            path,
            f"it holds {kind} ({dtype.itemsize * 8}-bit) voxels, which napari-medai does not "
            "open; save the magnitude (or real part) as a real-valued image first",
        )
    return dtype


def _stored_spacing(header: Any, ndim: int) -> list[float]:
    """The voxel sizes the header stores for its first (up to three) axes."""
    zooms = header["pixdim"][1:4] if "pixdim" in header else header["delta"]
    return [float(value) for value in zooms[: min(ndim, 3)]]


def _data_offset(path: Path, header: Any) -> int:
    stored = float(header["vox_offset"]) if "vox_offset" in header else 0.0
    if not math.isfinite(stored) or stored < 0:
        raise _refuse(path, f"not a valid NIfTI file (data offset {stored})")
    return int(header.get_data_offset())


def _scaling(path: Path, header: Any) -> tuple[tuple[Any, Any] | None, list[str]]:
    """(slope, intercept) to apply (None: none), and a warning when an intercept is ignored.

    NIfTI: a zero or non-finite ``scl_slope`` means "no scaling", ``scl_inter`` ignored.
    """
    if "scl_slope" not in header:
        return None, []
    slope, intercept = header["scl_slope"], header.get("scl_inter", np.float32(0))
    if slope == 0 or not math.isfinite(slope):
        if math.isfinite(intercept) and intercept != 0:
            return None, [
                f'"{path.name}": its scl_slope is {slope}, which NIfTI defines as "no scaling"; '
                f"the stored values are shown unscaled (scl_inter {intercept:g} ignored)"
            ]
        return None, []
    if not math.isfinite(intercept):
        raise _refuse(path, f"its intensity scaling is not a number (scl_inter {intercept})")
    return (None if (slope, intercept) == (1, 0) else (slope, intercept)), []


def _corners(shape: tuple[int, ...]) -> np.ndarray:
    extent = [max(n - 1, 0) for n in (list(shape) + [1, 1, 1])[:3]]
    return np.array(
        [[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])]
    )


def shear_degrees(affine: np.ndarray) -> float:
    """How far the affine's voxel axes are from perpendicular, in degrees."""
    axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    cosines = np.abs(axes.T @ axes - np.eye(3)).max()
    return math.degrees(math.asin(min(float(cosines), 1.0)))


def _usable(affine: np.ndarray, ndim: int) -> np.ndarray | None:
    """``affine`` with the axes a 1-D/2-D file lacks made unit length; None if not invertible."""
    affine = np.array(affine, dtype=np.float64)
    for axis in range(ndim, 3):  # a 2-D file may leave its missing axis without a length
        column = affine[:3, axis]
        if not np.all(np.isfinite(column)) or not np.linalg.norm(column):
            affine[:3, axis] = np.eye(3)[axis]
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) <= 1e-12:
        return None
    return affine


def _without_rounding(sform: np.ndarray, pixdim: np.ndarray) -> np.ndarray:
    """A perpendicular sform without the float32 rounding of its entries, as ITK reads it.

    NIfTI-1 rounds each sform entry to float32, so its axes come out perpendicular,
    and as long as the stored voxel sizes (pixdim), only to about 1e-7: that is
    5e-6 mm across a CT. When they agree that far, the voxel sizes and the nearest
    rotation (polar decomposition) place every voxel where the writer had it.
    """
    lengths = np.linalg.norm(sform[:3, :3], axis=0)
    spacing = np.abs(np.asarray(pixdim, dtype=np.float64))
    if not np.allclose(lengths, spacing, rtol=1e-6, atol=0) or (
        shear_degrees(sform) > FLOAT32_SHEAR_DEGREES
    ):
        return sform
    u, _, vt = np.linalg.svd(sform[:3, :3] / lengths)
    exact = sform.copy()
    exact[:3, :3] = (u @ vt) * spacing
    return exact


def _nifti_transforms(
    path: Path, header: Any, ndim: int
) -> tuple[np.ndarray | None, np.ndarray | None, list[str]]:
    """The usable sform and qform (None when absent or unusable), with a warning for a bad sform."""
    from nibabel.spatialimages import HeaderDataError

    if "sform_code" not in header:  # Analyze: no transform at all
        return None, None, []
    sform = _usable(header.get_sform(), ndim) if header["sform_code"] > 0 else None
    if sform is not None:
        sform = _without_rounding(sform, header["pixdim"][1:4])
    qform = None
    if header["qform_code"] > 0:
        try:
            qform = _usable(header.get_qform(), ndim)
        except (ValueError, HeaderDataError):  # a quaternion longer than 1, a negative pixdim
            qform = None
    warnings = []
    if header["sform_code"] > 0 and sform is None:
        warnings.append(
            f'"{path.name}": its sform is unusable (not finite or flat); the qform is used'
        )
    return sform, qform, warnings


def _nifti_orientation(
    path: Path, header: Any, shape: tuple[int, ...]
) -> tuple[np.ndarray, list[str]]:
    """The voxel -> RAS affine by the rules nibabel, FSL and niivue follow, and what to say.

    The sform first, then the qform; with neither, ITK's choice so far: the stored
    spacing along an identity LPS direction at the origin, said in a warning.
    """
    if compound_suffix(path) in (".mgz", ".mgh"):
        return np.asarray(header.get_affine(), dtype=np.float64), []
    sform, qform, warnings = _nifti_transforms(path, header, len(shape))
    affine = sform if sform is not None else qform
    if affine is None:
        spacing = [abs(v) if math.isfinite(v) and v else 1.0 for v in header["pixdim"][1:4]]
        affine = lps_from_ras(np.diag([*spacing, 1.0]))
        warnings.append(
            f'"{path.name}" stores no orientation (no usable NIfTI qform or sform): left/right '
            "and position in the scanner are unknown; shown with an identity direction at the "
            "origin"
        )
    if sform is not None and qform is not None:
        corners = _corners(shape)
        distance = float(np.linalg.norm((corners @ (sform - qform).T)[:, :3], axis=1).max())
        if distance > TRANSFORM_AGREEMENT_MM:
            warnings.append(
                f'"{path.name}": its two orientation transforms (NIfTI qform and sform) disagree '
                f"by up to {distance:.1f} mm; the sform is used, as nibabel, FSL and niivue do"
            )
    if shear_degrees(affine) > SHEAR_TOLERANCE_DEGREES:
        warnings.append(
            f'"{path.name}": its sform is sheared (voxel axes {shear_degrees(affine):.1f} '
            "degrees from perpendicular); it is shown exactly, but a mask drawn on it cannot be "
            "saved on this grid until the scan is resampled"
        )
    return affine, warnings


def check_nibabel_image(path: Path) -> HeaderCheck:
    """Check a NIfTI-1/NIfTI-2/Analyze or FreeSurfer MGH header, read by nibabel, and its size.

    An uncompressed file must hold all its voxels; compressed data is checked to
    its end while :func:`read_nibabel_voxels` inflates it (one pass, not two).
    """
    header, file_type = _nibabel_header(path)
    shape = _nibabel_shape(path, header)
    dtype = _voxel_type(path, header)
    _check_spacing(path, _stored_spacing(header, len(shape)))
    offset = _data_offset(path, header)
    scaling, warnings = _scaling(path, header)
    voxels = math.prod(shape)
    data_bytes = voxels * dtype.itemsize
    scaled_bytes = 0 if scaling is None else voxels * max(scaling[0].itemsize, dtype.itemsize)
    check_memory(path, data_bytes + scaled_bytes)
    data_file = _nifti_data_file(path)
    if data_file is None:
        raise _refuse(path, "the image file (.img) that belongs to this header is missing")
    compressed = data_file.name.lower().endswith((".gz", ".mgz"))
    stored = data_file.stat().st_size * (DEFLATE_MAX_RATIO if compressed else 1)
    if stored < offset + data_bytes:
        raise _truncated(path)
    affine, orientation_warnings = _nifti_orientation(path, header, shape)
    facts = NiftiFacts(shape, dtype, offset, scaling, affine, data_file, compressed)
    return HeaderCheck(file_type, warnings + orientation_warnings, facts)


def _nifti_data_file(path: Path) -> Path | None:
    """The file holding the voxels: the file itself, or the ``.img`` of a header/image pair."""
    suffix = compound_suffix(path)
    if suffix not in (".hdr", ".hdr.gz"):
        return path
    base = path.name[: -len(suffix)]
    order = (".img.gz", ".img") if suffix.endswith(".gz") else (".img", ".img.gz")
    return next(
        (path.with_name(base + ext) for ext in order if path.with_name(base + ext).exists()), None
    )


def read_nibabel_voxels(path: Path, facts: NiftiFacts) -> np.ndarray:
    """The stored voxels of a checked file, (x, y, z, ...) in Fortran order, unscaled.

    Read into memory (never a memory map, which dies with the process if the
    file shrinks). Compressed data (``.gz``, ``.mgz``: gzip) is inflated by
    ISA-L's igzip, several times as fast as Python's zlib, to its end, so that
    the checksum in its trailer is checked: bit rot inside the stream otherwise
    opens as garbage voxels.
    """
    opener = igzip.open if facts.compressed else open
    try:
        with opener(facts.data_file, "rb") as stream:
            stream.seek(facts.offset)
            voxels = _read_array(stream, facts.shape, facts.dtype)
            if facts.compressed:
                _read_to_end(path, stream)
    except (gzip.BadGzipFile, zlib.error, isal_zlib.error) as error:
        raise _damaged(path, "gzip") from error
    except (EOFError, OSError, ValueError) as error:  # the stream or file ends early
        raise _truncated(path) from error
    return voxels


def _read_array(stream, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The next ``shape`` voxels of ``stream`` as a Fortran-ordered array, read in place.

    Instead of nibabel's ``array_from_file``: its single ``readinto`` is, on a
    gzip stream, a read of the whole image into a temporary followed by a copy,
    twice the image's memory at the peak. Reading in pieces keeps it at one,
    in :func:`fresh_memory` (nibabel's bytearray is zero-filled first).
    """
    buffer = fresh_memory(math.prod(shape) * dtype.itemsize)
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        count = stream.readinto(view[filled : filled + _CHUNK])
        if not count:
            raise EOFError("the image data ends early")
        filled += count
    return np.ndarray(shape, dtype, buffer=buffer, order="F")


def _read_to_end(path: Path, stream) -> None:
    """Read what follows the voxels up to the stream's end, refusing more than a bounded run."""
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
        if total > MAX_TRAILING_BYTES:
            raise _runs_on(path)


def fresh_memory(nbytes: int) -> mmap.mmap:
    """``nbytes`` of writable memory, its pages mapped up front where the system can.

    Not ``np.empty``: numpy asks the kernel for huge pages for big arrays, and
    their compaction stalled reads for seconds here; not ``bytearray``, which
    writes zeros over all of it first. On Linux the kernel maps every page in
    one call (MAP_POPULATE), which took 0.2 s for 262 MB here where a fault
    per page on first write took 0.4 s.
    """
    if not hasattr(mmap, "MAP_POPULATE"):
        return mmap.mmap(-1, nbytes)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
    return mmap.mmap(-1, nbytes, flags=flags)


def gzip_ends_after(path: Path, voxels: np.ndarray, offset: int) -> bool:
    """Whether the gzip file ``path`` holds exactly ``offset`` header bytes and then ``voxels``.

    For voxels another reader inflated (SimpleITK stops at the size the header
    promises): the gzip trailer's length must be the header's plus the voxels',
    and its CRC-32 that of the header bytes (inflated again, ``offset`` bytes)
    and the voxels' bytes. A checksum over the voxels, not a second inflation:
    bit rot, a truncated file, data running on past the image or a stream of
    several members all fail it (then the careful reader decides what it is).
    """
    if not voxels.flags.c_contiguous or path.stat().st_size < 18:  # the smallest gzip file
        return False
    with path.open("rb") as raw:
        raw.seek(-8, os.SEEK_END)
        stored_crc, stored_length = struct.unpack("<II", raw.read(8))
    if stored_length != (offset + voxels.nbytes) & 0xFFFFFFFF:
        return False
    crc = 0
    try:
        with gzip.open(path) as stream:
            while offset > 0 and (chunk := stream.read(min(offset, _CHUNK))):
                crc = zlib.crc32(chunk, crc)
                offset -= len(chunk)
    except (OSError, EOFError, zlib.error):
        return False
    # ISA-L's CRC-32: the same checksum at about eight times zlib's speed (12 vs 101 ms for 200 MB).
    return offset == 0 and isal_zlib.crc32(voxels, crc) == stored_crc


# --- NRRD and MetaImage ------------------------------------------------------------------


def _text_header(path: Path, end) -> tuple[list[str], int]:
    """Header lines up to and including the line for which ``end(line)`` is true, and its size.

    Reads at most :data:`MAX_TEXT_HEADER` bytes; the rest of the file is data.
    """
    with path.open("rb") as handle:
        head = handle.read(MAX_TEXT_HEADER)
    lines, offset = [], 0
    while offset < len(head):
        newline = head.find(b"\n", offset)
        stop = len(head) if newline < 0 else newline + 1
        line = head[offset:stop].decode("latin-1").rstrip("\r\n")
        offset = stop
        lines.append(line)
        if end(line):
            return lines, offset
        if newline < 0:
            break
    return lines, -1


def _numbers(path: Path, field_name: str, text: str, count: int | None = None) -> list[float]:
    try:
        values = [float(v) for v in re.split(r"[\s,()]+", text.strip()) if v]
    except ValueError:
        raise _refuse(path, f"its header field {field_name} is not a list of numbers") from None
    if count is not None and len(values) != count:
        raise _refuse(
            path, f"its header field {field_name} holds {len(values)} value(s), not {count}"
        )
    return values


def _integers(path: Path, field_name: str, text: str, count: int | None = None) -> list[int]:
    try:
        values = [int(v) for v in text.split()]
    except ValueError:
        raise _refuse(
            path, f"its header field {field_name} is not a list of whole numbers"
        ) from None
    if count is not None and len(values) != count:
        raise _refuse(
            path, f"its header field {field_name} holds {len(values)} value(s), not {count}"
        )
    return values


def _data_files(path: Path, spec: str, after_header: list[str]) -> list[Path]:
    """The detached data files a NRRD ``data file`` or MetaImage ``ElementDataFile`` names."""
    parts = spec.split()
    if parts and parts[0].upper() == "LIST":
        return [_confined(path, name.strip()) for name in after_header if name.strip()]
    if len(parts) >= 4 and "%" in parts[0]:
        try:
            first, last, step = (int(v) for v in parts[1:4])
            numbers = range(first, last + (1 if step > 0 else -1), step)
            names = [parts[0] % number for number in numbers]
        except (ValueError, TypeError):
            raise _refuse(path, f"its data file pattern {spec!r} cannot be expanded") from None
        if len(names) > 100_000:
            raise _refuse(path, f"its data file pattern {spec!r} names too many files")
        return [_confined(path, name) for name in names]
    return [_confined(path, spec.strip())]


def _check_stream(path: Path, files: list[Path], offset: int, expected: int, codec: str) -> None:
    """Check that detached or attached data holds ``expected`` bytes, intact when compressed."""
    per_file = expected // max(len(files), 1)
    for data in files:
        start = offset if data == path else 0
        if codec in ("gzip", "bzip2", "zlib"):
            _check_compressed(path, data, start, per_file, codec)
        elif codec == "raw" and data.stat().st_size - start < per_file:
            raise _truncated(path)
        # text encodings: ITK reports short text itself


def check_nrrd(path: Path) -> HeaderCheck:
    """Check a NRRD header (attached or detached) and the size of its data."""
    with path.open("rb") as handle:
        magic = handle.read(8)
    if not magic.startswith(b"NRRD000"):
        raise _refuse(path, "not a valid NRRD file (it does not start with NRRD000x)")
    lines, end = _text_header(path, lambda line: line == "")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line or line.startswith("#") or ":=" in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.strip()
    detached = "data file" in fields or "datafile" in fields
    if end < 0 and not detached:
        raise _refuse(path, "not a valid NRRD file (its header never ends)")
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise _refuse(path, f"not a valid NRRD file (its header has no {required!r} field)")
    dimension = _integers(path, "dimension", fields["dimension"], 1)[0]
    _dimension_count(path, dimension)
    sizes = _integers(path, "sizes", fields["sizes"], dimension)
    _check_dimensions(path, sizes)
    itemsize = NRRD_TYPE_SIZES.get(fields["type"].lower())
    if itemsize is None:
        raise _refuse(path, f"its NRRD element type {fields['type']!r} is not supported")
    codec = _NRRD_ENCODINGS.get(fields["encoding"].lower())
    if codec is None:
        raise _refuse(path, f"its NRRD encoding {fields['encoding']!r} is not supported")
    if "spacings" in fields:
        spacings = _numbers(path, "spacings", fields["spacings"].replace("nan", ""))
        _check_spacing(path, spacings)
    if "space directions" in fields:
        for number, vector in enumerate(re.findall(r"\(([^)]*)\)", fields["space directions"])):
            values = _numbers(path, "space directions", vector)
            if not all(math.isfinite(v) for v in values) or not any(values):
                _check_spacing(path, [0.0] * number + [float(np.linalg.norm(values))])
    data_bytes = math.prod(sizes) * itemsize
    check_memory(path, data_bytes)
    if detached:
        spec = fields.get("data file", fields.get("datafile", ""))
        files = _data_files(path, spec, lines[lines.index("") + 1 :] if "" in lines else [])
    else:
        files = [path]
    skip = int(fields.get("byte skip", "0") or 0)
    if codec == "raw" and skip >= 0:
        _check_stream(path, files, end + skip, data_bytes, codec)
    elif codec in ("gzip", "bzip2"):
        _check_stream(path, files, end, data_bytes, codec)
    return HeaderCheck("NRRD")


def check_metaimage(path: Path) -> HeaderCheck:
    """Check a MetaImage header (``.mha`` or ``.mhd``) and the size of its data."""
    lines, end = _text_header(path, lambda line: line.split("=")[0].strip() == "ElementDataFile")
    fields: dict[str, str] = {}
    for line in lines:
        key, equals, value = line.partition("=")
        if not equals:
            raise _refuse(path, "not a valid MetaImage file (a header line has no '=')")
        fields[key.strip()] = value.strip()
    if end < 0:
        raise _refuse(path, "not a valid MetaImage file (its header has no ElementDataFile line)")
    if "NDims" not in fields or "DimSize" not in fields:
        raise _refuse(path, "not a valid MetaImage file (its header lacks NDims or DimSize)")
    ndims = _integers(path, "NDims", fields["NDims"], 1)[0]
    _dimension_count(path, ndims, MAX_DIMENSIONS)
    sizes = _integers(path, "DimSize", fields["DimSize"], ndims)
    _check_dimensions(path, sizes)
    element = fields.get("ElementType", "").removesuffix("_ARRAY")
    if element not in METAIMAGE_TYPE_SIZES:
        raise _refuse(path, f"its MetaImage ElementType {fields.get('ElementType')!r} is unknown")
    channels = _integers(
        path, "ElementNumberOfChannels", fields.get("ElementNumberOfChannels", "1")
    )
    if len(channels) != 1 or not 1 <= channels[0] <= 64:
        raise _refuse(path, "its MetaImage ElementNumberOfChannels is not between 1 and 64")
    for key in ("ElementSpacing", "ElementSize"):
        if key in fields:
            _check_spacing(path, _numbers(path, key, fields[key], ndims))
    for key in ("Offset", "Position", "Origin", "CenterOfRotation"):
        if key in fields and not all(
            math.isfinite(v) for v in _numbers(path, key, fields[key], ndims)
        ):
            raise _refuse(path, f"its MetaImage {key} holds a value that is not a number")
    for key in ("TransformMatrix", "Rotation", "Orientation"):
        if key in fields and not all(
            math.isfinite(v) for v in _numbers(path, key, fields[key], ndims * ndims)
        ):
            raise _refuse(path, f"its MetaImage {key} holds a value that is not a number")
    data_bytes = math.prod(sizes) * channels[0] * METAIMAGE_TYPE_SIZES[element]
    check_memory(path, data_bytes)
    spec = fields["ElementDataFile"]
    files = [path] if spec.upper() == "LOCAL" else _data_files(path, spec, [])
    if spec.upper() == "LIST":
        raise _refuse(path, "its MetaImage ElementDataFile = LIST form is not supported")
    compressed = fields.get("CompressedData", "False").lower() == "true"
    header_size = _integers(path, "HeaderSize", fields.get("HeaderSize", "0"), 1)[0]
    if header_size >= 0 and not (compressed and len(files) > 1):
        offset = end if files == [path] else max(header_size, 0)
        _check_stream(path, files, offset, data_bytes, "zlib" if compressed else "raw")
    return HeaderCheck("MetaImage")


def check_image_header(path: Path) -> HeaderCheck:
    """Check the header of a NIfTI, MGH, NRRD or MetaImage file before its voxels are read."""
    suffix = compound_suffix(path)
    if suffix in (".nii", ".nii.gz", ".hdr", ".hdr.gz", ".mgz", ".mgh"):
        return check_nibabel_image(path)
    if suffix in (".nrrd", ".nhdr"):
        return check_nrrd(path)
    if suffix in (".mha", ".mhd"):
        return check_metaimage(path)
    return HeaderCheck(suffix)
