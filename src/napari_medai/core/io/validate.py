"""Check NIfTI-1/2, NRRD and MetaImage headers in Python before SimpleITK sees the file.

Hand-written on purpose: ITK aborts the whole process on some malformed headers
(a MetaImage with ``NDims = 99`` is a double free), follows detached-data paths
anywhere on disk, fills truncated data with zeros and inflates compressed data
without a bound. nibabel/pynrrd would parse these headers too, but they stop at
the same places or read the data; here only the few fields that decide
safety are read: dimensions, element type, spacing, scaling, the detached data
file and how many bytes the data needs. Every refusal names the file and the
problem in words.
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.files import compound_suffix

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
#: qform and sform closer than this (mm) at every grid corner agree.
TRANSFORM_AGREEMENT_MM = 0.1
#: Voxel axes further than this (degrees) from perpendicular are sheared.
SHEAR_TOLERANCE_DEGREES = 0.01

#: NIfTI datatype code -> (numpy dtype or None when unsupported, description).
NIFTI_DATATYPES: dict[int, tuple[str | None, str]] = {
    2: ("u1", "8-bit unsigned"),
    4: ("i2", "16-bit signed"),
    8: ("i4", "32-bit signed"),
    16: ("f4", "32-bit float"),
    32: (None, "complex (64-bit)"),
    64: ("f8", "64-bit float"),
    128: ("u1,u1,u1", "RGB"),
    256: ("i1", "8-bit signed"),
    512: ("u2", "16-bit unsigned"),
    768: ("u4", "32-bit unsigned"),
    1024: ("i8", "64-bit signed"),
    1280: ("u8", "64-bit unsigned"),
    1536: (None, "128-bit float"),
    1792: (None, "complex (128-bit)"),
    2048: (None, "complex (256-bit)"),
    2304: ("u1,u1,u1,u1", "RGBA"),
}

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
    """What the reader needs from a NIfTI header beyond "it is safe"."""

    version: int
    dtype: str
    slope: float
    intercept: float
    shape: tuple[int, ...]
    qform: np.ndarray | None
    sform: np.ndarray | None

    @property
    def ignores_scaling(self) -> bool:
        """NIfTI: a zero or non-finite ``scl_slope`` means "no scaling" (inter ignored)."""
        return self.slope == 0 or not math.isfinite(self.slope)

    @property
    def affine(self) -> np.ndarray | None:
        """The voxel -> RAS mm affine a NIfTI reader should use: sform first, as nibabel."""
        return self.sform if self.sform is not None else self.qform

    @property
    def sheared(self) -> bool:
        """Whether the sform's voxel axes are not perpendicular (ITK reads no such NIfTI-1)."""
        return self.sform is not None and shear_degrees(self.sform) > SHEAR_TOLERANCE_DEGREES


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
        raise _refuse(
            header,
            f"the file is damaged: its compressed data fails the {codec} integrity check "
            "(corrupted on disk or in a copy?); open an intact copy",
        ) from error
    if length < expected:
        raise _truncated(header)
    if length > most:
        raise _refuse(
            header,
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


# --- NIfTI -------------------------------------------------------------------------------


def _nifti_head(path: Path) -> bytes:
    """The first 540 bytes (enough for NIfTI-2), inflating at most that for ``.gz``."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                return stream.read(540)
        with path.open("rb") as handle:
            return handle.read(540)
    except EOFError as error:
        raise _truncated(path) from error
    except (OSError, zlib.error) as error:
        raise _refuse(
            path, f"not a valid NIfTI file: the gzip compression is damaged ({error})"
        ) from error


def _quaternion_affine(b: float, c: float, d: float, pixdim, offset) -> np.ndarray:
    """The NIfTI qform (method 2) as a 4x4 voxel -> RAS affine."""
    a2 = 1.0 - (b * b + c * c + d * d)
    if a2 < 1e-7:
        norm = math.sqrt(b * b + c * c + d * d)
        a, b, c, d = 0.0, b / norm, c / norm, d / norm
    else:
        a = math.sqrt(a2)
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if pixdim[0] < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([pixdim[1], pixdim[2], pixdim[3] * qfac])
    affine[:3, 3] = offset
    return affine


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


def check_nifti(path: Path) -> HeaderCheck:
    """Check a NIfTI-1/NIfTI-2/Analyze header and the size of its data."""
    head = _nifti_head(path)
    version = 0
    for order in "<>":
        if len(head) >= 4:
            size = struct.unpack(order + "i", head[:4])[0]
            if size in (348, 540):
                version = 1 if size == 348 else 2
                break
    if version == 0 or len(head) < (348 if version == 1 else 540):
        raise _refuse(path, "not a valid NIfTI file (its header is missing or cut short)")
    if version == 1:
        magic = head[344:348]
        if magic not in (b"n+1\0", b"ni1\0") and compound_suffix(path) in (".nii", ".nii.gz"):
            raise _refuse(path, "not a valid NIfTI file (the NIfTI-1 magic is missing)")
        dims = list(struct.unpack(order + "8h", head[40:56]))
        datatype, bitpix = struct.unpack(order + "2h", head[70:74])
        pixdim = list(struct.unpack(order + "8f", head[76:108]))
        vox_offset = struct.unpack(order + "f", head[108:112])[0]
        slope, intercept = struct.unpack(order + "2f", head[112:120])
        qform_code, sform_code = struct.unpack(order + "2h", head[252:256])
        quatern = struct.unpack(order + "6f", head[256:280])
        srows = struct.unpack(order + "12f", head[280:328])
    else:
        datatype, bitpix = struct.unpack(order + "2h", head[12:16])
        dims = list(struct.unpack(order + "8q", head[16:80]))
        pixdim = list(struct.unpack(order + "8d", head[104:168]))
        vox_offset = struct.unpack(order + "q", head[168:176])[0]
        slope, intercept = struct.unpack(order + "2d", head[176:192])
        qform_code, sform_code = struct.unpack(order + "2i", head[344:352])
        quatern = struct.unpack(order + "6d", head[352:400])
        srows = struct.unpack(order + "12d", head[400:496])
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _refuse(
            path, f"not a valid NIfTI file (its header declares {ndim} dimensions; 1 to 7 exist)"
        )
    shape = tuple(dims[1 : ndim + 1])
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    _check_dimensions(path, list(shape))
    if datatype not in NIFTI_DATATYPES:
        raise _refuse(path, f"its header gives an unknown NIfTI datatype code ({datatype})")
    dtype, description = NIFTI_DATATYPES[datatype]
    if dtype is None:
        raise _refuse(
            path,
            f"it holds {description} voxels, which napari-medai does not open; save the "
            "magnitude (or real part) as a real-valued image first",
        )
    _check_spacing(path, pixdim[1 : min(ndim, 3) + 1])
    itemsize = np.dtype(dtype).itemsize
    if not math.isfinite(vox_offset) or vox_offset < 0:
        raise _refuse(path, f"not a valid NIfTI file (data offset {vox_offset})")
    if not math.isfinite(intercept) and not (slope == 0 or not math.isfinite(slope)):
        raise _refuse(path, f"its intensity scaling is not a number (scl_inter {intercept})")
    _check_values_per_voxel(path, dims[1 : ndim + 1], slope, intercept)
    voxels = math.prod(shape)
    data_bytes = voxels * itemsize
    check_memory(path, data_bytes)
    _check_nifti_data(path, int(vox_offset), data_bytes)

    warnings = []
    facts = NiftiFacts(version, dtype, float(slope), float(intercept), shape, None, None)
    if facts.ignores_scaling and intercept not in (0, 0.0) and math.isfinite(intercept):
        warnings.append(
            f'"{path.name}": its scl_slope is {slope}, which NIfTI defines as "no scaling"; '
            f"the stored values are shown unscaled (scl_inter {intercept:g} ignored)"
        )
    if qform_code > 0 and all(math.isfinite(v) for v in quatern):
        facts.qform = _quaternion_affine(*quatern[:3], pixdim, quatern[3:])
    if sform_code > 0:
        sform = np.vstack([np.reshape(srows, (3, 4)), [0, 0, 0, 1]])
        if np.all(np.isfinite(sform)) and abs(np.linalg.det(sform[:3, :3])) > 1e-12:
            facts.sform = sform
        else:
            warnings.append(
                f'"{path.name}": its sform is unusable (not finite or flat); the qform is used'
            )
    warnings.extend(_transform_warnings(path, facts))
    file_type = "NIfTI-2" if version == 2 else "NIfTI"
    return HeaderCheck(file_type, warnings, facts)


def _check_values_per_voxel(path: Path, dims: list[int], slope: float, intercept: float) -> None:
    """Refuse several values per voxel (``dim[5]``) with intensity scaling.

    ITK's NIfTI reader corrupts its memory and kills the process when it scales a
    vector image (heap corruption in ITK 5.4), so such a file never reaches it.
    """
    scaled = (math.isfinite(slope) and slope not in (0, 1)) or (
        math.isfinite(intercept) and intercept != 0
    )
    if len(dims) >= 5 and dims[4] > 1 and scaled:
        raise _refuse(
            path,
            f"it stores {dims[4]} values per voxel (dimensions {'x'.join(map(str, dims))}) "
            f"with intensity scaling (scl_slope {slope:g}, scl_inter {intercept:g}), which "
            "napari-medai cannot open safely; save it without scaling",
        )


def _transform_warnings(path: Path, facts: NiftiFacts) -> list[str]:
    """Say when qform and sform disagree (the sform wins) and when the grid is sheared."""
    warnings = []
    if facts.sform is not None and facts.qform is not None:
        corners = _corners(facts.shape)
        distance = float(
            np.linalg.norm((corners @ facts.sform.T - corners @ facts.qform.T)[:, :3], axis=1).max()
        )
        if distance > TRANSFORM_AGREEMENT_MM:
            warnings.append(
                f'"{path.name}": its two orientation transforms (NIfTI qform and sform) disagree '
                f"by up to {distance:.1f} mm; the sform is used, as nibabel, FSL and niivue do"
            )
    if facts.sheared:
        warnings.append(
            f'"{path.name}": its sform is sheared (voxel axes {shear_degrees(facts.sform):.1f} '
            "degrees from perpendicular); it is shown exactly, but a mask drawn on it cannot be "
            "saved on this grid until the scan is resampled"
        )
    return warnings


def _nifti_data_file(path: Path) -> Path | None:
    """The file holding the voxels: the file itself, or the ``.img`` of a header/image pair."""
    suffix = compound_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return path
    base = path.name[: -len(suffix)]
    order = (".img.gz", ".img") if suffix.endswith(".gz") else (".img", ".img.gz")
    return next(
        (path.with_name(base + ext) for ext in order if path.with_name(base + ext).exists()), None
    )


def _check_nifti_data(path: Path, offset: int, data_bytes: int) -> None:
    """Refuse data that ends early or, compressed, fails its checksum."""
    data_file = _nifti_data_file(path)
    if data_file is None:
        raise _refuse(path, "the image file (.img) that belongs to this header is missing")
    expected = offset + data_bytes
    if data_file.name.lower().endswith(".gz"):
        _check_compressed(path, data_file, 0, expected, "gzip")
    elif data_file.stat().st_size < expected:
        raise _truncated(path)


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
    """Check the header of a NIfTI, NRRD or MetaImage file before any native code reads it."""
    suffix = compound_suffix(path)
    if suffix in (".nii", ".nii.gz", ".hdr", ".hdr.gz"):
        return check_nifti(path)
    if suffix in (".nrrd", ".nhdr"):
        return check_nrrd(path)
    if suffix in (".mha", ".mhd"):
        return check_metaimage(path)
    return HeaderCheck(suffix)
