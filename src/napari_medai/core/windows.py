"""Display windows for CT and MR: named CT presets and cheap percentile limits.

A CT window is a (level, width) pair in Hounsfield units; the display maps
``level - width/2 .. level + width/2`` to black..white. Percentiles are
computed on a strided subsample so a huge float volume is never scanned whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_medai.core.volume import Volume

#: Upper bound on the voxels read to estimate display limits.
MAX_SAMPLES = 1_000_000


@dataclass(frozen=True)
class WindowPreset:
    """A named window: ``level`` (centre) and ``width``, in the units of ``modality``.

    Every preset here is a CT window in Hounsfield units (``modality`` "CT");
    on an MR image, whose values have no fixed unit, such a window shows noise
    or nothing, so the widget offers it only for CT.
    """

    name: str
    level: float
    width: float
    modality: str = "CT"

    @property
    def contrast_limits(self) -> tuple[float, float]:
        """(low, high) display limits in HU."""
        return (self.level - self.width / 2.0, self.level + self.width / 2.0)


#: Standard radiology windows (level, width in HU), e.g. Radiopaedia's "Windowing (CT)".
PRESETS: dict[str, WindowPreset] = {
    preset.name: preset
    for preset in (
        WindowPreset("soft tissue", 40.0, 400.0),
        WindowPreset("lung", -600.0, 1500.0),
        WindowPreset("bone", 400.0, 1800.0),
        WindowPreset("brain", 40.0, 80.0),
        WindowPreset("liver", 60.0, 160.0),
    )
}


def subsample(array: Any, max_samples: int = MAX_SAMPLES) -> np.ndarray:
    """At most ``max_samples`` finite values of ``array``, as float64, taken on a regular grid.

    ``array`` may be any array-like that supports strided slicing (numpy,
    memmap, dask, zarr); only the sampled voxels are read.
    """
    shape = tuple(int(n) for n in np.shape(array))
    steps = [1] * len(shape)

    def sampled(axis: int) -> int:
        return -(-shape[axis] // steps[axis])

    while shape and np.prod([sampled(axis) for axis in range(len(shape))]) > max_samples:
        longest = max(range(len(shape)), key=sampled)
        steps[longest] += 1
    values = np.asarray(array[tuple(slice(None, None, step) for step in steps)], dtype=np.float64)
    values = values.ravel()
    return values[np.isfinite(values)]


def _increasing(low: float, high: float) -> tuple[float, float]:
    """(low, high) with high > low; constant data is widened as napari does."""
    if high > low:
        return (low, high)
    return (min(low, 0.0), max(high, 1.0))


def percentile_limits(
    array: Any, low: float = 0.5, high: float = 99.5, max_samples: int = MAX_SAMPLES
) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``array``, estimated on a subsample."""
    values = subsample(array, max_samples)
    if values.size == 0:
        return (0.0, 1.0)
    lo, hi = np.percentile(values, [low, high])
    return _increasing(float(lo), float(hi))


def value_range(array: Any, max_samples: int = MAX_SAMPLES) -> tuple[float, float]:
    """(min, max) of ``array``, estimated on a subsample (for sizing a contrast slider)."""
    values = subsample(array, max_samples)
    if values.size == 0:
        return (0.0, 1.0)
    return _increasing(float(values.min()), float(values.max()))


def display_defaults(volume: Volume) -> dict[str, Any]:
    """napari ``Image`` keyword arguments for showing ``volume``.

    CT (``volume.modality == "CT"``) gets the soft-tissue window, set without
    reading the data; anything else (MR, unknown) the 0.5-99.5 percentiles of a
    subsample. Only ``contrast_limits`` and ``colormap`` are returned: napari
    sizes the contrast slider to the given limits and takes no range argument.
    """
    if volume.modality == "CT":
        limits = PRESETS["soft tissue"].contrast_limits
    else:
        limits = percentile_limits(volume.array)
    return {"contrast_limits": limits, "colormap": "gray"}
