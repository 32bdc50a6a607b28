"""napari side of Generate: synthetic samples as layers, and the shared augmentation strengths.

Synthetic layers (GAN samples, augmentation previews) never sit on a
patient's anatomy and never change the scan's slice slider: they are shown
beside the scan, on its own slices (the scan's slice spacing, direction and
range), so napari's slider keeps its range and step. One sample per slice;
more samples than slices go into further columns. Without a 3D scan to stand
beside, they get a grid of their own. Every one has a name starting with
"synthetic" and ``synthetic: True`` in its metadata (top level and under
``napari_medai``), which the writer refuses.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.layers import Layer
from napari.types import LayerDataTuple

from napari_medai._napari.layers import METADATA_KEY, world_geometry
from napari_medai.core.generative.config import SYNTHETIC_PREFIX
from napari_medai.core.training.strengths import SEGMENTATION_AUGMENTATION, AugmentStrengths

#: Voxels of the scan's grid left between the scan and the synthetic images beside it.
GAP_VOXELS = 8

_STRENGTHS: weakref.WeakKeyDictionary[Any, AugmentStrengths] = weakref.WeakKeyDictionary()


def set_augmentation(viewer: Any, strengths: AugmentStrengths) -> None:
    """Make ``strengths`` the augmentation the Train widget of ``viewer`` uses."""
    _STRENGTHS[viewer] = strengths


def augmentation_for(viewer: Any) -> AugmentStrengths:
    """The augmentation strengths chosen in ``viewer`` (else the CLI's training defaults)."""
    return _STRENGTHS.get(viewer, SEGMENTATION_AUGMENTATION)


def is_synthetic(metadata: dict[str, Any]) -> bool:
    """Whether a layer's metadata marks it as generated, not patient data."""
    return bool(metadata.get("synthetic") or metadata.get(METADATA_KEY, {}).get("synthetic"))


def _metadata(info: dict[str, Any]) -> dict[str, Any]:
    return {"synthetic": True, METADATA_KEY: {"synthetic": True, **info}}


def beside(
    scan: Layer, first_slice: int, pixel_spacing: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Layer arguments placing a stack on ``scan``'s slices from ``first_slice``, beside it.

    The stack's slice axis is the scan's (same spacing and direction), so the
    slider keeps its range and step; in plane, its pixels keep their own
    ``pixel_spacing`` (mm; the scan's when None) and start ``GAP_VOXELS`` past
    the scan's last column.
    """
    geometry = world_geometry(scan)
    to_scan = np.eye(4)
    to_scan[:3, 3] = (first_slice, 0.0, scan.data.shape[-1] + GAP_VOXELS)
    if pixel_spacing is not None:
        to_scan[1:3, 1:3] = np.diag(np.asarray(pixel_spacing, dtype=float) / geometry.spacing[1:])
    return {
        "affine": geometry.affine() @ to_scan,
        "units": ("mm", "mm", "mm"),
        "axis_labels": tuple(scan.axis_labels[-3:]),
    }


def own_grid(pixel_spacing: tuple[float, float]) -> dict[str, Any]:
    """Layer arguments for a stack with no scan to stand beside: 1 mm between slices."""
    return {"scale": (1.0, *pixel_spacing), "units": ("mm", "mm", "mm")}


def centred_rows(count: int, slices: int, displayed: int) -> tuple[int, int]:
    """(rows, first slice) for ``count`` samples on a scan of ``slices``, around ``displayed``."""
    rows = min(count, slices)
    return rows, int(np.clip(displayed - rows // 2, 0, slices - rows))


def in_columns(images: np.ndarray, rows: int, fill: float) -> np.ndarray:
    """(n, y, x) -> (rows, y, columns * x): image i on row i % rows, column i // rows.

    Places left over in the last column hold ``fill``.
    """
    count, height, width = images.shape
    columns = -(-count // rows)
    padded = np.full((rows * columns, height, width), fill, dtype=images.dtype)
    padded[:count] = images
    return (
        padded.reshape(columns, rows, height, width)
        .transpose(1, 2, 0, 3)
        .reshape(rows, height, columns * width)
    )


def mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """(n, y, x) -> one slice (1, rows * y, columns * x), read left to right, top to bottom."""
    count, height, width = images.shape
    rows = -(-count // columns)
    padded = np.full((rows * columns, height, width), images.min(), dtype=images.dtype)
    padded[:count] = images
    grid = padded.reshape(rows, columns, height, width).transpose(0, 2, 1, 3)
    return grid.reshape(1, rows * height, columns * width)


def synthetic_layers(
    samples: Any, title: str, placement: dict[str, Any], rows: int
) -> list[LayerDataTuple]:
    """An image stack (one sample per row slice) and, for paired samples, a Labels stack.

    ``placement`` is :func:`beside` or :func:`own_grid`; ``rows`` the slices used.
    """
    name = f"{SYNTHETIC_PREFIX} {title}"
    images = np.asarray(samples.images)
    low, high = (float(v) for v in np.percentile(images, [0.5, 99.5]))
    layers: list[LayerDataTuple] = [
        (
            in_columns(images, rows, low),
            {
                "name": name,
                **placement,
                "metadata": _metadata(dict(samples.metadata)),
                "contrast_limits": (low, high if high > low else low + 1.0),
                "colormap": "gray",
            },
            "image",
        )
    ]
    if samples.masks is not None:
        names = {str(k): v for k, v in samples.label_names.items()}
        layers.append(
            (
                in_columns(np.asarray(samples.masks).astype(np.int32), rows, 0),
                {
                    "name": f"{name} masks",
                    **placement,
                    "metadata": _metadata({**samples.metadata, "label_names": names}),
                    "opacity": 0.5,
                },
                "labels",
            )
        )
    return layers


def preview_layer(grid: np.ndarray, placement: dict[str, Any], name: str) -> LayerDataTuple:
    """A preview stack (e.g. augmented copies of a slice as one mosaic), marked synthetic."""
    return (
        np.asarray(grid, dtype=np.float32),
        {"name": f"{SYNTHETIC_PREFIX} {name}", **placement, "metadata": _metadata({})},
        "image",
    )


def add_or_update(viewer: Any, layer_data: LayerDataTuple) -> Any:
    """Add the layer, or replace the data and place of the synthetic layer of that name."""
    data, kwargs, kind = layer_data
    for layer in viewer.layers:
        if layer.name == kwargs["name"] and is_synthetic(layer.metadata):
            layer.data = data
            for key in ("affine", "scale", "contrast_limits"):
                if key in kwargs:
                    setattr(layer, key, kwargs[key])
            return layer
    return getattr(viewer, f"add_{kind}")(data, **kwargs)
