"""Decode the pixels of DICOM slices, with RescaleSlope/Intercept applied (CT in HU).

Uncompressed grey-level files sharing one integer rescale need no decoder:
their stored values are read straight into the volume's memory where the header
scan found them. Other classic single-frame files go through SimpleITK (GDCM
decodes JPEG, JPEG-LS, JPEG 2000 and RLE natively, and applies the rescale);
what it cannot read, and the frames of enhanced multi-frame files (whose
rescale sits in per-frame functional groups), go through pydicom. Each file's
pixel data is read once.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk

from napari_medai.core.errors import UnreadableFileError
from napari_medai.core.io.dicom.headers import SliceRef
from napari_medai.core.io.validate import fresh_memory
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.volume import volume_from_sitk

#: Target duration of one decoding step (cancelling waits at most about this long).
CHUNK_SECONDS = 0.5
#: Runs of files decoded at once (GDCM decodes without the GIL); two cores are common.
DECODE_THREADS = min(2, os.cpu_count() or 1)
#: How often a whole-series read reports its progress.
PROGRESS_SECONDS = 0.1


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

    Uncompressed grey-level files with one integer rescale are read directly
    (:func:`_direct_read_job`). Another uncompressed series with one rescale is
    one series read into the volume's memory (:func:`_series_read_job`).
    Otherwise runs of single-frame files are decoded :data:`DECODE_THREADS` at
    a time (SimpleITK lets go of the GIL while GDCM decodes). With ``series_reads``,
    each run is one series read, sized to take about ``CHUNK_SECONDS`` so
    cancelling stays quick. Pass False for stacks whose slice steps vary: ITK's
    series reader would print a spacing warning on them.
    """
    as_float = needs_float(slices)
    if not as_float and _directly_readable(slices):
        block = yield from _direct_read_job(slices)
        if block is not None:
            return block
    if series_reads and _one_native_run(slices):
        try:
            return (yield from _series_read_job(slices, as_float))
        except RuntimeError:
            pass  # a file GDCM cannot decode: run by run, with pydicom as fallback
    frames: dict[Path, np.ndarray] = {}
    output: np.ndarray | None = None
    pending: deque[tuple[int, Future[tuple[np.ndarray, float]]]] = deque()
    index, run_limit = 0, 8 if series_reads else 1
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="dicom-decode") as pool:
        try:
            while index < len(slices) or pending:
                while index < len(slices) and len(pending) < DECODE_THREADS:
                    future, count = _start(pool, slices, index, run_limit, as_float, frames)
                    pending.append((index, future))
                    index += count
                start, future = pending.popleft()
                block, seconds = future.result()
                output = _placed(block, output, slices, start)
                if series_reads:
                    per_slice = max(seconds, 1e-4) / block.shape[1]
                    run_limit = int(np.clip(CHUNK_SECONDS / per_slice, 1, 256))
                yield Progress((start + block.shape[1]) / len(slices), "decoding DICOM pixels")
        finally:
            for _, future in pending:
                future.cancel()
    return output


def _one_native_run(slices: Sequence[SliceRef]) -> bool:
    """Whether ``slices`` are uncompressed single-frame files sharing one rescale.

    Such a series costs copying more than decoding: one series read, straight
    into the volume's memory, beats runs decoded side by side and copied.
    """
    if any(ref.compressed for ref in slices):
        return False
    return _run_length(slices, 0, len(slices)) == len(slices)


def _directly_readable(slices: Sequence[SliceRef]) -> bool:
    """Whether every slice is a single-frame file whose stored values can be read as they lie.

    They must share their stored type, size and rescale (one block, one rescale).
    """
    first = slices[0]
    if first.stored is None or first.rows * first.columns == 0:
        return False
    return _run_length(slices, 0, len(slices)) == len(slices) and all(
        ref.stored is not None
        and (ref.stored.dtype, ref.stored.bits) == (first.stored.dtype, first.stored.bits)
        and (ref.rows, ref.columns) == (first.rows, first.columns)
        for ref in slices
    )


def _direct_read_job(slices: Sequence[SliceRef]) -> Job[np.ndarray | None]:
    """The stored values of every file read into one array, then rescaled in place.

    Decoding an uncompressed file is copying: the header scan already found
    where its values lie and checked their length, so they are read straight
    into the volume's memory, with no decoder and no second parse of each
    header (SimpleITK's series read parses every file again, which made the
    reader slower than a bare SimpleITK read). Returns (1, n, rows, columns),
    or None when a value lies outside BitsStored (overlay bits, or a sign the
    writer did not extend): a decoder decides what such values mean.
    """
    first = slices[0]
    dtype, bits = first.stored.dtype, first.stored.bits
    plane = first.rows * first.columns * dtype.itemsize
    _prefetch(slices, plane)
    memory = fresh_memory(plane * len(slices))
    target = memoryview(memory)
    reported = time.perf_counter()
    for index, ref in enumerate(slices):
        _read_stored(ref, target[index * plane : (index + 1) * plane])
        if time.perf_counter() - reported >= PROGRESS_SECONDS:
            reported = time.perf_counter()
            yield Progress(index / len(slices), "decoding DICOM pixels")
    stored = np.frombuffer(memory, dtype).reshape(len(slices), first.rows, first.columns)
    if not dtype.isnative:
        stored = stored.byteswap(inplace=True).view(dtype.newbyteorder("="))
    low, high = int(stored.min()), int(stored.max())
    if dtype.kind == "u":
        fits = high < 1 << bits
    else:
        fits = -(1 << (bits - 1)) <= low and high < 1 << (bits - 1)
    if not fits:
        return None
    yield Progress(1.0, "decoding DICOM pixels")
    return _rescaled_in_place(stored, first, low, high)[np.newaxis]


def _prefetch(slices: Sequence[SliceRef], nbytes: int) -> None:
    """Ask the system to start reading every file's ``nbytes`` of pixels now, where it can.

    The disk then works while memory is mapped and earlier files are copied,
    instead of one file at a time: a series not yet in the page cache opens sooner.
    """
    if not hasattr(os, "posix_fadvise"):
        return
    for ref in slices:
        try:
            handle = os.open(ref.path, os.O_RDONLY)
        except OSError:
            continue  # _read_stored says what is wrong with it
        try:
            os.posix_fadvise(handle, ref.stored.offset, nbytes, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(handle)


def _read_stored(ref: SliceRef, target: memoryview) -> None:
    """Fill ``target`` with ``ref``'s stored pixel bytes; refuse a file cut short since its scan."""
    try:
        with open(ref.path, "rb", buffering=0) as handle:
            handle.seek(ref.stored.offset)
            filled = 0
            while filled < len(target):
                count = handle.readinto(target[filled:])
                if not count:
                    raise UnreadableFileError(
                        f"{ref.path.name} ends before the pixel data its header describes "
                        "(was it truncated or replaced while the series was being opened?)"
                    )
                filled += count
    except OSError as error:
        raise UnreadableFileError(f"cannot read the pixels of {ref.path.name} ({error})") from error


def _rescaled_in_place(stored: np.ndarray, ref: SliceRef, low: int, high: int) -> np.ndarray:
    """Stored values (``low`` to ``high``) to modality values with ``ref``'s integer rescale.

    The values go to the narrowest type of at least the stored width that holds
    them (int16 for CT stored as uint16 with intercept -1024): over the stored
    values when it is as wide, else into new memory.
    """
    slope, intercept = int(ref.slope), int(ref.intercept)
    if (slope, intercept) == (1, 0):
        return stored
    scaled = (low * slope, high * slope)
    ends = sorted(value + intercept for value in scaled)
    dtype = _narrowest(*ends, stored.itemsize)
    if dtype.itemsize == stored.itemsize:
        return _rescaled_modulo(stored, slope, intercept).view(dtype)
    output = np.frombuffer(fresh_memory(stored.size * dtype.itemsize), dtype)
    output = output.reshape(stored.shape)
    values = np.empty(stored.shape[1:], _narrowest(min(*scaled, *ends), max(*scaled, *ends), 4))
    for index in range(len(stored)):  # through one slice's wider buffer, not a second volume
        np.copyto(values, stored[index])
        values *= slope
        values += intercept
        np.copyto(output[index], values, casting="unsafe")  # every value fits (ends above)
    return output


def _rescaled_modulo(stored: np.ndarray, slope: int, intercept: int) -> np.ndarray:
    """``stored * slope + intercept`` in place, in unsigned arithmetic of the stored width.

    Arithmetic modulo 2**bits gives every result that fits a type of that width
    exactly, as that type's bit pattern (wrap-arounds cancel): one pass over
    the volume, no wider copy. The caller has checked that every result fits.
    """
    unsigned = stored.view(f"u{stored.itemsize}")
    modulus = 1 << (8 * stored.itemsize)
    if slope != 1:
        np.multiply(unsigned, unsigned.dtype.type(slope % modulus), out=unsigned)
    if intercept:
        np.add(unsigned, unsigned.dtype.type(intercept % modulus), out=unsigned)
    return unsigned


def _narrowest(low: int, high: int, itemsize: int) -> np.dtype:
    """The narrowest integer type at least ``itemsize`` bytes wide holding ``low`` to ``high``."""
    kind = "i" if low < 0 else "u"
    sizes = [size for size in (1, 2, 4) if size >= itemsize]
    for dtype in (np.dtype(f"{kind}{size}") for size in sizes):
        if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
            return dtype
    return np.dtype(f"{kind}8")  # rescales are bounded (headers.MAX_RESCALE_*): always fits


def _series_read_job(slices: Sequence[SliceRef], as_float: bool) -> Job[np.ndarray]:
    """Every file in one SimpleITK series read, as a bare read does: one buffer, kept.

    It runs in a thread; progress is ITK's (per file), and a consumer that stops
    aborts the read at the next file. Raises RuntimeError when a file fails.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(ref.path) for ref in slices])
    if as_float:
        reader.SetOutputPixelType(_pixel_type(slices[0].samples))
    done = {"fraction": 0.0}
    stop = threading.Event()

    def on_progress() -> None:  # in the reading thread, between files
        done["fraction"] = reader.GetProgress()
        if stop.is_set():
            reader.Abort()

    reader.AddCommand(sitk.sitkProgressEvent, on_progress)
    with ThreadPoolExecutor(1, thread_name_prefix="dicom-decode") as pool:
        reading = pool.submit(reader.Execute)
        try:
            while not wait([reading], timeout=PROGRESS_SECONDS).done:
                yield Progress(done["fraction"], "decoding DICOM pixels")
        finally:
            stop.set()
    block = _checked(_as_block(reading.result()), slices[0])
    yield Progress(1.0, "decoding DICOM pixels")
    return block


def _start(
    pool: ThreadPoolExecutor,
    slices: Sequence[SliceRef],
    index: int,
    run_limit: int,
    as_float: bool,
    frames: dict[Path, np.ndarray],
) -> tuple[Future[tuple[np.ndarray, float]], int]:
    """Start decoding from ``index``: a run of single-frame files in ``pool``, or one frame here.

    Returns the decoding and how many slices it covers. Frames are decoded in
    this thread, with pydicom: their cache holds one file and is not shared.
    """
    ref = slices[index]
    if ref.frame is not None:
        return _done(_timed(_frame_block, ref, frames, as_float)), 1
    count = _run_length(slices, index, run_limit)
    return pool.submit(_timed, _classic_run, slices[index : index + count], as_float), count


def _placed(
    block: np.ndarray, output: np.ndarray | None, slices: Sequence[SliceRef], start: int
) -> np.ndarray:
    """``output`` (made, or widened to hold ``block``'s type) with ``block`` at ``start``."""
    _checked(block, slices[start])
    if output is None:
        output = np.empty((block.shape[0], len(slices), *block.shape[2:]), block.dtype)
    elif not np.can_cast(block.dtype, output.dtype, "safe"):
        output = output.astype(np.result_type(output.dtype, block.dtype))
    output[:, start : start + block.shape[1]] = block
    return output


def _checked(block: np.ndarray, ref: SliceRef) -> np.ndarray:
    """``block``, refused unless its slices have the size ``ref``'s header states."""
    if block.shape[-2:] != (ref.rows, ref.columns):
        raise UnreadableFileError(
            f"{ref.path.name} holds {block.shape[-2:]} pixels but its header says "
            f"{(ref.rows, ref.columns)}"
        )
    return block


def _frame_block(ref: SliceRef, cache: dict[Path, np.ndarray], as_float: bool) -> np.ndarray:
    """One frame of a multi-frame file as (channels, 1, rows, columns), rescaled."""
    stored = _frames(ref, cache)[ref.frame]
    return _channels_first(_rescaled(stored, ref, as_float), ref.samples)[:, np.newaxis]


def _timed(decode: Callable[..., np.ndarray], *args: Any) -> tuple[np.ndarray, float]:
    """``decode(*args)`` and the seconds it took."""
    started = time.perf_counter()
    return decode(*args), time.perf_counter() - started


def _done(result: tuple[np.ndarray, float]) -> Future[tuple[np.ndarray, float]]:
    future: Future[tuple[np.ndarray, float]] = Future()
    future.set_result(result)
    return future
