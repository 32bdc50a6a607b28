"""Per-label statistics: voxel count, volume in mL from the real spacing, intensities under it.

Counts, sums and extremes come from one pass each (``np.bincount`` and
``scipy.ndimage.minimum``/``maximum`` with an index), so a 512x512x300 map takes
about a second. An image on another grid gets the labels resampled onto its grid
(nearest neighbour) for the intensities only; counts and volumes stay those of
the label map itself.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_medai.core.errors import MedaiError
from napari_medai.core.jobs import Job, Progress
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap, Volume

CSV_COLUMNS = ("value", "name", "voxels", "volume_ml", "mean", "std", "min", "max")


@dataclass(frozen=True)
class LabelStatistics:
    """One label: its size and the image values under it (None without an image)."""

    value: int
    name: str
    voxels: int
    volume_ml: float
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def voxel_volume_mm3(labels: LabelMap) -> float:
    """One voxel's volume: the spacing product (exact) unless the grid is sheared."""
    geometry = labels.geometry
    if geometry.is_orthonormal:
        return float(np.prod(geometry.spacing))
    return float(abs(np.linalg.det(geometry.direction @ np.diag(geometry.spacing))))


def label_statistics(
    labels: LabelMap, image: Volume | None = None
) -> tuple[list[LabelStatistics], list[str]]:
    """Statistics of every non-zero label, ascending, and warnings about the inputs."""
    from scipy import ndimage

    # Counted over the values present (np.unique), not one slot per value up to the
    # largest: a label 2**31-1 would otherwise ask bincount for 17 GB.
    present, index = np.unique(labels.array, return_inverse=True)
    counts = np.bincount(index.ravel(), minlength=len(present))
    slots = [k for k, value in enumerate(present) if value != 0]
    voxel_mm3 = voxel_volume_mm3(labels)
    warnings: list[str] = []
    intensity: dict[int, tuple[float, float, float, float]] = {}
    if image is not None and slots:
        if image.array.ndim != 3:
            raise MedaiError(
                "intensity statistics need a 3D scan with one value per voxel; this one has "
                f"shape {image.array.shape}. Measure without the scan, or pick a 3D one"
            )
        under = labels
        if labels.spatial_shape != image.spatial_shape or not labels.geometry.is_close(
            image.geometry, 1e-4
        ):
            under = resample_label_map(labels, image.geometry, image.spatial_shape)
            warnings.append(
                "the labels were on another grid than the image; intensities were measured "
                "on the image grid (labels resampled, nearest neighbour)"
            )
        # Nearest-neighbour resampling keeps only values the labels had.
        flat = np.searchsorted(present, under.array.ravel())
        pixels = image.array.ravel().astype(np.float64)
        n = np.bincount(flat, minlength=len(present))
        sums = np.bincount(flat, weights=pixels, minlength=len(present))
        squares = np.bincount(flat, weights=pixels * pixels, minlength=len(present))
        measured = [k for k in slots if n[k]]
        lows = ndimage.minimum(pixels, flat, measured)
        highs = ndimage.maximum(pixels, flat, measured)
        for k, low, high in zip(measured, lows, highs):
            mean = sums[k] / n[k]
            variance = max(squares[k] / n[k] - mean * mean, 0.0)
            intensity[k] = (float(mean), float(np.sqrt(variance)), float(low), float(high))
    rows = []
    for k in slots:
        value = int(present[k])
        mean, std, low, high = intensity.get(k, (None, None, None, None))
        rows.append(
            LabelStatistics(
                value=value,
                name=labels.label_names.get(value, str(value)),
                voxels=int(counts[k]),
                volume_ml=int(counts[k]) * voxel_mm3 / 1000.0,
                mean=mean,
                std=std,
                min=low,
                max=high,
            )
        )
    return rows, warnings


def statistics_job(
    labels: LabelMap, image: Volume | None = None
) -> Job[tuple[list[LabelStatistics], list[str]]]:
    """:func:`label_statistics` as a job, for the GUI's runner (one step: about a second)."""
    yield Progress(0.0, "measuring the labels")
    result = label_statistics(labels, image)
    yield Progress(1.0, f"measured {len(result[0])} label(s)")
    return result


def statistics_csv(rows: list[LabelStatistics]) -> str:
    """The rows as CSV text with a header line (for the table's export and the CLI)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if val is None else val for key, val in row.to_dict().items()})
    return buffer.getvalue()
