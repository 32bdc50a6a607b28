"""npe2 writer: a Labels layer saved on the grid of the scan it was drawn on."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import napari
import numpy as np
from napari.layers import Image, Labels

from napari_medai._napari.layers import label_map_from_layer, layer_geometry, stored_geometry
from napari_medai.core.geometry import Geometry
from napari_medai.core.io.writing import write_label_map
from napari_medai.core.resample import resample_label_map
from napari_medai.core.volume import LabelMap

logger = logging.getLogger(__name__)


def _overlap(a: Geometry, a_shape: tuple, b: Geometry, b_shape: tuple) -> float:
    """Fraction of grid a's bounding box (world) that lies inside grid b's."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in a_shape], indexing="ij")).reshape(3, -1).T
    world = a.index_to_world(corners)
    to_b = np.linalg.inv(b.direction @ np.diag(b.spacing))
    index_b = (world - b.origin) @ to_b.T
    inside = np.all((index_b >= -0.5) & (index_b <= np.array(b_shape) - 0.5), axis=1)
    return float(inside.mean())


def reference_image(label_map: LabelMap, images: list[Image]) -> Image | None:
    """The scan a hand-made label layer was drawn on, if it is not already on one.

    An image whose grid equals the labels' wins; otherwise the scan the labels
    overlap most (napari's "new labels" with several layers selected spans the
    union of their extents on an axis-aligned grid).
    """
    scans = [image for image in images if stored_geometry(image) is not None]
    shape = label_map.spatial_shape
    for image in scans:
        if layer_geometry(image) == label_map.geometry and image.data.shape[-3:] == shape:
            return None
    scored = [
        (_overlap(layer_geometry(i), i.data.shape[-3:], label_map.geometry, shape), i)
        for i in scans
    ]
    scored = [(score, image) for score, image in scored if score > 0]
    return max(scored, key=lambda pair: pair[0])[1] if scored else None


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """Write one Labels layer to .nii.gz, .nii, .nrrd or .mha.

    napari's save dialog has already asked before replacing a file.
    """
    layer = Labels(np.asarray(data), **meta)
    label_map = label_map_from_layer(layer)
    viewer = napari.current_viewer()
    images = [lay for lay in viewer.layers if isinstance(lay, Image)] if viewer else []
    image = reference_image(label_map, images)
    if image is not None:
        logger.warning("resampling %r onto the grid of %r", layer.name, image.name)
        label_map = resample_label_map(label_map, layer_geometry(image), image.data.shape[-3:])
    return [str(write_label_map(label_map, Path(path), overwrite=True))]
