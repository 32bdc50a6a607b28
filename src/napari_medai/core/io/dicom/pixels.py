"""Decode the pixels of DICOM slices, with RescaleSlope/Intercept applied (CT in HU).

Classic single-frame files go through SimpleITK (GDCM decodes JPEG, JPEG-LS,
JPEG 2000 and RLE natively, and applies the rescale); what it cannot read, and
the frames of enhanced multi-frame files (whose rescale sits in per-frame
functional groups), go through pydicom. Each file's pixel data is read once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.io.dicom.headers import SliceRef
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.volume import volume_from_sitk

#: Target duration of one decoding step (cancelling waits at most about this long).
CHUNK_SECONDS = 0.5


def needs_float(slices: Sequence[SliceRef]) -> bool:
    """Whether any rescale is fractional, so integer output would lose values."""
    return any(
        not float(ref.slope).is_integer() or not float(ref.intercept).is_integer() for ref in slices
    )


def _rescaled(stored: np.ndarray, ref: SliceRef, as_float: bool) -> np.ndarray:
    """Stored values to modality values (HU for CT), in the smallest fitting type."""
    if as_float:
        return stored.astype(np.float32) * np.float32(ref.slope) + np.float32(ref.intercept)
    if ref.slope == 1 and ref.intercept == 0:
        return stored
    values = stored.astype(np.int64) * int(ref.slope) + int(ref.intercept)
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    return values.astype(np.result_type(np.min_scalar_type(low), np.min_scalar_type(high)))


def _channels_first(array: np.ndarray, samples: int) -> np.ndarray:
    """(rows, columns[, samples]) -> (channels, rows, columns)."""
    return np.moveaxis(array, -1, 0) if samples > 1 else array[np.newaxis]


def _with_pydicom(path: Path) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as error:  # any parse failure is a damaged file
        raise UnreadableFileError(f"cannot read {path.name} ({error})") from error


def _pydicom_pixels(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    try:
        return dataset.pixel_array
    except Exception as error:  # missing decoder or damaged pixel data
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        name = getattr(syntax, "name", syntax)
        raise UnreadableFileError(
            f"cannot decode the pixels of {path.name} ({name}): {error}"
        ) from error


def _pixel_type(samples: int) -> int:
    return sitk.sitkVectorFloat32 if samples > 1 else sitk.sitkFloat32


def _as_block(image: sitk.Image) -> np.ndarray:
    """A SimpleITK stack of slices as (channels, n, rows, columns)."""
    array = volume_from_sitk(image).array
    return array if array.ndim == 4 else array[np.newaxis]


def _classic(ref: SliceRef, as_float: bool) -> np.ndarray:
    """One single-frame file as (channels, 1, rows, columns); pydicom if GDCM fails."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(ref.path))
    if as_float:
        reader.SetOutputPixelType(_pixel_type(ref.samples))
    try:
        return _as_block(reader.Execute())
    except RuntimeError:
        stored = _pydicom_pixels(_with_pydicom(ref.path), ref.path)
        return _channels_first(_rescaled(stored, ref, as_float), ref.samples)[:, np.newaxis]


def _classic_run(run: Sequence[SliceRef], as_float: bool) -> np.ndarray:
    """Consecutive single-frame files sharing one rescale, in one SimpleITK series read.

    A series read parses each header once (a per-file read parses it twice),
    which keeps the reader within a few percent of a bare ImageSeriesReader.
    """
    if len(run) > 1:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(ref.path) for ref in run])
        if as_float:
            reader.SetOutputPixelType(_pixel_type(run[0].samples))
        try:
            return _as_block(reader.Execute())
        except RuntimeError:
            pass  # one file GDCM cannot decode: read them one by one, with pydicom as fallback
    return np.concatenate([_classic(ref, as_float) for ref in run], axis=1)


def _frames(ref: SliceRef, cache: dict[Path, np.ndarray]) -> np.ndarray:
    """Every stored frame of a multi-frame file (decoded once, kept for its siblings)."""
    if ref.path not in cache:
        cache.clear()
        stored = _pydicom_pixels(_with_pydicom(ref.path), ref.path)
        single = stored.ndim == (3 if ref.samples > 1 else 2)
        cache[ref.path] = stored[np.newaxis] if single else stored
    return cache[ref.path]


def _run_length(slices: Sequence[SliceRef], start: int, limit: int) -> int:
    """How many single-frame slices from ``start`` share the first one's rescale."""
    first, length = slices[start], 1
    while (
        length < limit
        and start + length < len(slices)
        and slices[start + length].frame is None
        and (slices[start + length].slope, slices[start + length].intercept)
        == (first.slope, first.intercept)
    ):
        length += 1
    return length


def decode_job(slices: Sequence[SliceRef], series_reads: bool = True) -> Job[np.ndarray]:
    """Decode ``slices`` in order into one (channels, n, rows, columns) array.

    With ``series_reads``, runs of single-frame files are read together, in
    runs sized to take about ``CHUNK_SECONDS`` so cancelling stays quick. Pass
    False for stacks whose slice steps vary: ITK's series reader would print a
    spacing warning on them.
    """
    as_float = needs_float(slices)
    frames: dict[Path, np.ndarray] = {}
    output: np.ndarray | None = None
    index, run_limit = 0, 8 if series_reads else 1
    while index < len(slices):
        ref = slices[index]
        started = time.perf_counter()
        if ref.frame is None:
            run = slices[index : index + _run_length(slices, index, run_limit)]
            block = _classic_run(run, as_float)
        else:
            stored = _frames(ref, frames)[ref.frame]
            block = _channels_first(_rescaled(stored, ref, as_float), ref.samples)[:, np.newaxis]
        count = block.shape[1]
        if block.shape[-2:] != (ref.rows, ref.columns):
            raise UnreadableFileError(
                f"{ref.path.name} holds {block.shape[-2:]} pixels but its header says "
                f"{(ref.rows, ref.columns)}"
            )
        if output is None:
            output = np.empty((block.shape[0], len(slices), *block.shape[2:]), block.dtype)
        elif not np.can_cast(block.dtype, output.dtype, "safe"):
            output = output.astype(np.result_type(output.dtype, block.dtype))
        output[:, index : index + count] = block
        index += count
        if series_reads:
            per_slice = max(time.perf_counter() - started, 1e-4) / count
            run_limit = int(np.clip(CHUNK_SECONDS / per_slice, 1, 256))
        yield Progress(index / len(slices), "decoding DICOM pixels")
    return output
