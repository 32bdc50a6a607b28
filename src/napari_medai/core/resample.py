"""Resampling between grids through SimpleITK (labels: nearest neighbour only)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from napari_medai.core.geometry import Geometry
from napari_medai.core.volume import LabelMap, Volume, volume_from_sitk, volume_to_sitk


def reference_image(geometry: Geometry, shape: tuple[int, ...]) -> sitk.Image:
    """An empty SimpleITK image on a grid, to resample onto."""
    return volume_to_sitk(Volume(np.zeros(shape, dtype=np.uint8), geometry))


def resample_label_map(
    label_map: LabelMap, geometry: Geometry, shape: tuple[int, int, int]
) -> LabelMap:
    """Map ``label_map`` onto another grid in the same world space.

    Nearest neighbour keeps label values; voxels outside the source are 0.
    """
    if label_map.geometry == geometry and label_map.spatial_shape == tuple(shape):
        return label_map
    resampled = sitk.Resample(
        volume_to_sitk(label_map),
        reference_image(geometry, shape),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    array = volume_from_sitk(resampled).array.astype(label_map.array.dtype, copy=False)
    return LabelMap(array, geometry, dict(label_map.metadata), dict(label_map.label_names))
